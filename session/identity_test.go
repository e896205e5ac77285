package session_test

import (
	"context"
	"errors"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// forgeBundle publishes, under victim's device id, the bundle of another
// identity (mallory's), as a hostile server or anyone able to write the
// victim's bundle node could.
func forgeBundle(t *testing.T, srv *sessiontest.Server, ns string, victim *client, mallory *client) {
	t.Helper()
	b, ok := srv.Bundle(ns, mallory.jid, mallory.m.DeviceID())
	if !ok {
		t.Fatalf("mallory has no %s bundle", ns)
	}
	srv.SetBundle(victim.jid, victim.m.DeviceID(), b)
}

// deviceOf returns what c knows about device dev of jid.
func deviceOf(t *testing.T, c *client, jid string, dev uint32) session.DeviceInfo {
	t.Helper()
	infos, err := c.m.Devices(context.Background(), jid)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range infos {
		if d.DeviceID == dev {
			return d
		}
	}
	t.Fatalf("%s does not know device %d of %s", c.jid, dev, jid)
	return session.DeviceInfo{}
}

// wantMismatch checks that err reports the forged bundle of dev.
func wantMismatch(t *testing.T, err error, ns, jid string, dev uint32, stored, published [32]byte) {
	t.Helper()
	if !errors.Is(err, session.ErrPublicDataInconsistency) {
		t.Fatalf("error %v does not match ErrPublicDataInconsistency", err)
	}
	var mm *session.IdentityMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("error %v is not an *IdentityMismatchError", err)
	}
	if mm.Namespace != ns || mm.JID != jid || mm.DeviceID != dev || mm.Stored != stored || mm.Published != published {
		t.Fatalf("mismatch error = %+v, want %s device %d of %s", mm, ns, dev, jid)
	}
}

// aliceBobMallory starts three accounts with one backend; Alice and Bob
// know each other's devices.
func aliceBobMallory(t *testing.T, f backends.Factory) (srv *sessiontest.Server, alice, bob, mallory *client) {
	t.Helper()
	srv = sessiontest.NewServer()
	alice = newClient(t, srv, "alice@example.org", f)
	bob = newClient(t, srv, "bob@example.org", f)
	mallory = newClient(t, srv, "mallory@example.org", f)
	for _, c := range []*client{alice, bob} {
		for _, o := range []*client{alice, bob} {
			if err := c.m.RefreshDeviceLists(context.Background(), o.jid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return srv, alice, bob, mallory
}

// claimDevice makes mallory announce victim's device id with victim's
// bundle (both public), as an account out to have victim's messages
// attributed to it would.
func claimDevice(srv *sessiontest.Server, ns string, victim, mallory *client) {
	l := srv.DeviceList(ns, mallory.jid)
	l.Devices = append(l.Devices, devicelist.Device{ID: victim.m.DeviceID()})
	srv.SetDeviceList(mallory.jid, l)
	b, _ := srv.Bundle(ns, victim.jid, victim.m.DeviceID())
	srv.SetBundle(mallory.jid, victim.m.DeviceID(), b)
}

var singleBackends = []struct {
	name string
	f    backends.Factory
}{{"twomemo", twomemo.Factory}, {"oldmemo", oldmemo.Factory}}

// A device whose key the user verified gets its bundle swapped before the
// first message: Encrypt must refuse the bundle, fail closed (the device is
// the contact's only one), leave the stored key and its trust as they
// were, and send nothing.
func TestEncryptRefusesForgedBundleOfVerifiedDevice(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			alice := newClient(t, srv, "alice@example.org", be.f)
			bob := newClient(t, srv, "bob@example.org", be.f)
			mallory := newClient(t, srv, "mallory@example.org", be.f)
			if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
				t.Fatal(err)
			}
			// Alice verifies Bob's fingerprint.
			d := deviceOf(t, alice, bob.jid, bob.m.DeviceID())
			if d.IdentityKey != bob.m.IdentityKey() {
				t.Fatal("alice learnt a wrong identity key")
			}
			if err := alice.m.SetTrust(ctx, bob.jid, d.IdentityKey, trust.LevelTrusted); err != nil {
				t.Fatal(err)
			}
			genuine, _ := srv.Bundle(be.f.Namespace, bob.jid, bob.m.DeviceID())
			forgeBundle(t, srv, be.f.Namespace, bob, mallory)

			delivered := false
			_, err := alice.m.Encrypt(ctx, []string{bob.jid}, plaintexts("secret"), func(*session.EncryptResult) error {
				delivered = true
				return nil
			})
			var ne *session.NoEligibleDevicesError
			if !errors.As(err, &ne) {
				t.Fatalf("Encrypt = %v, want *NoEligibleDevicesError", err)
			}
			if delivered {
				t.Fatal("a message was handed over")
			}
			found := false
			for _, f := range ne.Failures {
				if f.DeviceID == bob.m.DeviceID() {
					found = true
					wantMismatch(t, f, be.f.Namespace, bob.jid, bob.m.DeviceID(), bob.m.IdentityKey(), mallory.m.IdentityKey())
				}
			}
			if !found {
				t.Fatalf("failures %v do not name bob's device", ne.Failures)
			}
			after := deviceOf(t, alice, bob.jid, bob.m.DeviceID())
			if after.IdentityKey != bob.m.IdentityKey() || after.Trust != trust.LevelTrusted || after.Level != trust.Trusted {
				t.Fatalf("stored device changed: %+v", after)
			}
			if got, err := alice.m.SendingChainLength(ctx, bob.jid, bob.m.DeviceID()); err != nil || len(got) != 0 {
				t.Fatalf("a session was stored: %v, %v", got, err)
			}
			if n := len(srv.Inbox(bob.jid)); n != 0 {
				t.Fatalf("%d messages reached bob", n)
			}

			// Once the genuine bundle is back, the message goes out.
			srv.SetBundle(bob.jid, bob.m.DeviceID(), genuine)
			send(t, srv, alice, "secret", bob.jid)
			if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "secret" {
				t.Fatalf("bob got %q", got)
			}
		})
	}
}

// Bob has two devices; one of them gets a forged bundle. Alice's message
// reaches the genuine device and reports the forged one as a per-device
// failure. The forged bundle is the "other device learnt while decrypting":
// Alice learnt both of Bob's keys from his first message.
func TestEncryptRefusesForgedBundleOfDeviceLearntWhileDecrypting(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			alice := newClient(t, srv, "alice@example.org", be.f)
			bob := newClient(t, srv, "bob@example.org", be.f)
			bob2 := newClient(t, srv, "bob@example.org", be.f)
			mallory := newClient(t, srv, "mallory@example.org", be.f)
			for _, c := range []*client{bob, bob2} {
				if err := c.m.RefreshDeviceLists(ctx, alice.jid); err != nil {
					t.Fatal(err)
				}
			}
			if err := bob.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
				t.Fatal(err)
			}
			// Alice has never looked at Bob's devices: his first message
			// makes her learn both.
			send(t, srv, bob, "hi alice", alice.jid)
			srv.Inbox(bob.jid)
			if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != "hi alice" {
				t.Fatalf("alice got %q", got)
			}
			d2 := deviceOf(t, alice, bob.jid, bob2.m.DeviceID())
			if d2.IdentityKey != bob2.m.IdentityKey() {
				t.Fatal("alice learnt a wrong key for bob's second device")
			}
			forgeBundle(t, srv, be.f.Namespace, bob2, mallory)

			res := send(t, srv, alice, "reply", bob.jid)
			if len(res.Recipients) != 1 || res.Recipients[0].DeviceID != bob.m.DeviceID() {
				t.Fatalf("recipients = %+v, want bob's first device only", res.Recipients)
			}
			if len(res.Failures) != 1 {
				t.Fatalf("failures = %v, want one", res.Failures)
			}
			wantMismatch(t, res.Failures[0], be.f.Namespace, bob.jid, bob2.m.DeviceID(), bob2.m.IdentityKey(), mallory.m.IdentityKey())
			for _, msg := range res.Messages {
				for _, k := range msg.Keys {
					if k.RID == bob2.m.DeviceID() {
						t.Fatal("the message carries a key for the forged bundle")
					}
				}
			}
			if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "reply" {
				t.Fatalf("bob got %q", got)
			}
			// (Its trust was decided, by BTBV, on the stored key.)
			if after := deviceOf(t, alice, bob.jid, bob2.m.DeviceID()); after.IdentityKey != bob2.m.IdentityKey() {
				t.Fatalf("stored identity key changed: %+v, was %+v", after, d2)
			}
		})
	}
}

// ReplaceSession downloads the bundle again: a forged one is refused, the
// working session stays.
func TestReplaceSessionRefusesForgedBundle(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv, alice, bob, mallory := aliceBobMallory(t, be.f)
			send(t, srv, alice, "one", bob.jid)
			if got := deliverAll(t, srv, bob); len(got) != 1 {
				t.Fatalf("bob got %q", got)
			}
			deliverAll(t, srv, alice)
			before, err := alice.m.SendingChainLength(ctx, bob.jid, bob.m.DeviceID())
			if err != nil || len(before) != 1 {
				t.Fatalf("chain lengths %v, %v", before, err)
			}
			forgeBundle(t, srv, be.f.Namespace, bob, mallory)

			errs := alice.m.ReplaceSession(ctx, bob.jid, bob.m.DeviceID())
			if len(errs) != 1 {
				t.Fatalf("ReplaceSession = %v, want one failure", errs)
			}
			err = errs[be.f.Namespace]
			wantMismatch(t, err, be.f.Namespace, bob.jid, bob.m.DeviceID(), bob.m.IdentityKey(), mallory.m.IdentityKey())
			if errors.Is(err, session.ErrStorage) {
				t.Fatalf("a refused bundle is reported as a storage failure: %v", err)
			}
			if n := len(srv.Inbox(bob.jid)); n != 0 {
				t.Fatalf("%d messages reached bob", n)
			}
			after, err := alice.m.SendingChainLength(ctx, bob.jid, bob.m.DeviceID())
			if err != nil || after[be.f.Namespace] != before[be.f.Namespace] {
				t.Fatalf("session changed: %v -> %v (%v)", before, after, err)
			}
			// The old session still works.
			send(t, srv, alice, "two", bob.jid)
			if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "two" {
				t.Fatalf("bob got %q", got)
			}
			if d := deviceOf(t, alice, bob.jid, bob.m.DeviceID()); d.IdentityKey != bob.m.IdentityKey() {
				t.Fatal("stored identity key changed")
			}
		})
	}
}

// An identity key belongs to the account that announced it first. Mallory
// republishes Bob's device id and bundle (public data) under her account,
// and a hostile server re-attributes Bob's message to her: Alice, who
// knows Bob, refuses the device of Mallory's that claims Bob's key, both
// as a sender and as a recipient. (Legacy OMEMO binds no sender JID into
// a message; OMEMO 2 only through the optional <from> affix.)
func TestIdentityKeyOfAnotherAccount(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv, alice, bob, mallory := aliceBobMallory(t, be.f)
			deviceOf(t, alice, bob.jid, bob.m.DeviceID())

			// Mallory announces Bob's device as hers.
			claimDevice(srv, be.f.Namespace, bob, mallory)

			send(t, srv, bob, "from bob", alice.jid)
			in := srv.Inbox(alice.jid)
			if len(in) != 1 {
				t.Fatalf("%d messages", len(in))
			}
			_, err := alice.m.Decrypt(ctx, mallory.jid, in[0].Message)
			var claimed *session.IdentityClaimedError
			if !errors.Is(err, session.ErrSenderNotFound) || !errors.As(err, &claimed) || claimed.Owner != bob.jid || claimed.IdentityKey != bob.m.IdentityKey() {
				t.Fatalf("re-attributed message: %v; want ErrSenderNotFound with the claim by bob", err)
			}
			// The genuine message still decrypts as Bob's.
			dec, err := alice.m.Decrypt(ctx, bob.jid, in[0].Message)
			if err != nil || string(dec.Plaintext) != "from bob" {
				t.Fatalf("bob's message: %v, %v", dec, err)
			}
			// Nothing is encrypted for the claiming device either.
			res, err := alice.m.Encrypt(ctx, []string{mallory.jid}, plaintexts("hi"), nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res.Recipients {
				if r.JID == mallory.jid && r.DeviceID == bob.m.DeviceID() {
					t.Fatal("encrypted for the device that claims bob's key")
				}
			}
			found := false
			for _, f := range res.Failures {
				found = found || f.JID == mallory.jid && f.DeviceID == bob.m.DeviceID() && errors.As(f, &claimed)
			}
			if !found {
				t.Fatalf("failures %v do not report the claim", res.Failures)
			}
		})
	}
}

// A store written before identity owners were recorded gets them from its
// device records at the next start.
func TestIdentityOwnersOfOlderStores(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	alice := newClient(t, srv, "alice@example.org", twomemo.Factory)
	bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
	mallory := newClient(t, srv, "mallory@example.org", twomemo.Factory)
	if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	deviceOf(t, alice, bob.jid, bob.m.DeviceID())
	if err := alice.m.Close(); err != nil {
		t.Fatal(err)
	}
	// As the store was before: no owners, no mark.
	if err := alice.st.Update(ctx, func(tx store.Tx) error {
		if err := tx.DeletePrefix("omemo/identity-owner"); err != nil {
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	m, err := session.New(ctx, alice.st, srv.Network(alice.jid), session.Config{JID: alice.jid, Backends: []backends.Factory{twomemo.Factory}, StartSynced: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	claimDevice(srv, twomemo.Namespace, bob, mallory)
	if err := m.RefreshDeviceLists(ctx, mallory.jid); err != nil {
		t.Fatal(err)
	}
	infos, err := m.Devices(ctx, mallory.jid)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range infos {
		if d.DeviceID == bob.m.DeviceID() {
			t.Fatalf("mallory's device with bob's key was accepted: %+v", d)
		}
	}
}

// By default a recipient without a usable device fails the whole message;
// with AllowUnreached it is named and the others get the message.
func TestAllowUnreached(t *testing.T) {
	ctx := context.Background()
	srv, alice, bob, _ := aliceBobMallory(t, twomemo.Factory)
	const nobody = "nobody@example.org"
	if _, err := alice.m.Encrypt(ctx, []string{bob.jid, nobody}, plaintexts("x"), nil); !errors.Is(err, session.ErrNoEligibleDevices) {
		t.Fatalf("default: %v, want ErrNoEligibleDevices", err)
	}
	res, err := alice.m.Encrypt(ctx, []string{bob.jid, nobody}, plaintexts("x"), func(r *session.EncryptResult) error {
		for _, msg := range r.Messages {
			srv.Deliver(alice.jid, bob.jid, msg)
		}
		return nil
	}, session.AllowUnreached())
	if err != nil || len(res.Unreached) != 1 || res.Unreached[0] != nobody {
		t.Fatalf("AllowUnreached: %+v, %v", res, err)
	}
	if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "x" {
		t.Fatalf("bob got %q", got)
	}
	if _, err := alice.m.Encrypt(ctx, []string{nobody}, plaintexts("x"), nil, session.AllowUnreached()); !errors.Is(err, session.ErrNoEligibleDevices) {
		t.Fatalf("nobody reachable: %v", err)
	}
}
