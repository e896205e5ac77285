package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// TestIntegrationForgedBundle: Alice verifies Bob's device, then Bob's
// bundle on the server is replaced by one of another identity (published
// here with Bob's credentials, as a hostile server or anyone who can write
// Bob's node could) before Alice's first message. The message must not be
// encrypted for the forged bundle: Send fails closed (it is Bob's only
// device), Bob receives nothing, and Alice's stored key and trust for
// Bob's device are unchanged.
func TestIntegrationForgedBundle(t *testing.T) {
	// Accounts per namespace, so that each has one device.
	srv := prosodytest.Start(t,
		prosodytest.User{Name: "alice2"}, prosodytest.User{Name: "bob2"}, prosodytest.User{Name: "mallory2"},
		prosodytest.User{Name: "alice0"}, prosodytest.User{Name: "bob0"}, prosodytest.User{Name: "mallory0"},
	)
	for _, tc := range []struct {
		name, alice, bob, mallory string
		f                         backends.Factory
	}{{"OMEMO 2", "alice2", "bob2", "mallory2", twomemo.Factory}, {"legacy", "alice0", "bob0", "mallory0", oldmemo.Factory}} {
		t.Run(tc.name, func(t *testing.T) {
			bobJID, malloryJID := srv.JID(tc.bob), srv.JID(tc.mallory)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			only := omemo.Config{SendPresence: true, Backends: []backends.Factory{tc.f}}
			alice := connect(t, srv, tc.alice, store.NewMemory(), omemo.Config{SendPresence: true, Trust: trust.Manual(nil)}, true)
			bob := connect(t, srv, tc.bob, store.NewMemory(), only, true)
			mallory := connect(t, srv, tc.mallory, store.NewMemory(), only, true)
			defer alice.disconnect()
			defer bob.disconnect()
			defer mallory.disconnect()
			bobDev := bob.p.Manager().DeviceID()

			// Alice looks at Bob's devices and verifies the fingerprint.
			mgr := alice.p.Manager()
			if err := mgr.RefreshDeviceLists(ctx, bobJID.String()); err != nil {
				t.Fatal(err)
			}
			devs, err := mgr.Devices(ctx, bobJID.String())
			if err != nil || len(devs) != 1 || devs[0].DeviceID != bobDev || devs[0].IdentityKey != bob.p.Manager().IdentityKey() {
				t.Fatalf("alice sees %+v, %v; want bob's device %d", devs, err, bobDev)
			}
			if err := mgr.SetTrust(ctx, bobJID.String(), devs[0].IdentityKey, trust.LevelTrusted); err != nil {
				t.Fatal(err)
			}

			// The bundle is replaced on the server.
			forged, err := bundle.Fetch(ctx, mallory.s, malloryJID, tc.f.Namespace, mallory.p.Manager().DeviceID())
			if err != nil {
				t.Fatal(err)
			}
			if err := bundle.Publish(ctx, bob.s, bobDev, forged); err != nil {
				t.Fatal(err)
			}
			if got, err := bundle.Fetch(ctx, alice.s, bobJID, tc.f.Namespace, bobDev); err != nil || !equalBundles(got, forged) {
				t.Fatalf("the forged bundle is not what the server serves: %v", err)
			}

			res, err := alice.p.Send(ctx, bobJID, "for bob's eyes only")
			var ne *session.NoEligibleDevicesError
			if !errors.As(err, &ne) || res != nil {
				t.Fatalf("Send = %+v, %v; want *session.NoEligibleDevicesError", res, err)
			}
			var mm *session.IdentityMismatchError
			found := false
			for _, f := range ne.Failures {
				if errors.As(f, &mm) && f.DeviceID == bobDev && mm.Stored == bob.p.Manager().IdentityKey() && mm.Published == mallory.p.Manager().IdentityKey() {
					found = true
				}
			}
			if !found {
				t.Fatalf("failures %v do not report the forged bundle of bob's device", ne.Failures)
			}
			bob.expectNone(500 * time.Millisecond)
			devs, err = mgr.Devices(ctx, bobJID.String())
			if err != nil || len(devs) != 1 || devs[0].IdentityKey != bob.p.Manager().IdentityKey() || devs[0].Trust != trust.LevelTrusted {
				t.Fatalf("after the refused send alice sees %+v, %v", devs, err)
			}
		})
	}
}

func equalBundles(a, b bundle.Bundle) bool {
	return a.IdentityKey == b.IdentityKey && a.SignedPreKey == b.SignedPreKey && a.SignedPreKeyID == b.SignedPreKeyID
}
