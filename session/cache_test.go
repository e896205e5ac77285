package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// flippingPolicy is BTBV whose blind trust turns into distrust on demand:
// a Policy need not be a pure function, so cached device information must
// be evaluated again on every use.
type flippingPolicy struct {
	trust.Policy
	distrustBlind atomic.Bool
}

func (p *flippingPolicy) Evaluate(name string) (trust.Level, error) {
	if name == trust.LevelBlindlyTrusted && p.distrustBlind.Load() {
		return trust.Distrusted, nil
	}
	return p.Policy.Evaluate(name)
}

// The read cache never serves device information that a later write
// changed: the own label, trust decisions, device lists, and the policy's
// evaluation. Callers cannot corrupt it through returned values.
func TestDeviceInfoCacheFollowsChanges(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	policy := &flippingPolicy{Policy: trust.BTBV(nil)}
	alice, err := session.New(ctx, store.NewMemory(), srv.Network("alice@example.org"), session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory},
		StartSynced: true, Trust: policy,
		OnError: func(err error) { t.Errorf("background error: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	a := &client{jid: "alice@example.org", m: alice}
	bob := newClient(t, srv, "bob@example.org")
	if err := alice.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}

	// Warm every cache: two messages and two reads.
	for range 2 {
		send(t, srv, a, "hello", bob.jid)
		if _, err := alice.Devices(ctx, bob.jid); err != nil {
			t.Fatal(err)
		}
		if _, _, err := alice.OwnDevices(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := deliverAll(t, srv, bob); len(got) != 2 {
		t.Fatalf("bob decrypted %q", got)
	}

	// A caller that modifies what it got does not modify the cache.
	devs, err := alice.Devices(ctx, bob.jid)
	if err != nil || len(devs) != 1 {
		t.Fatalf("bob's devices: %v, %v", devs, err)
	}
	devs[0].Active[0], devs[0].Namespaces[0], devs[0].Trust = "x", "x", "x"
	devs, err = alice.Devices(ctx, bob.jid)
	if err != nil || devs[0].Active[0] != twomemo.Namespace || devs[0].Namespaces[0] != twomemo.Namespace ||
		devs[0].Trust != trust.LevelBlindlyTrusted {
		t.Fatalf("bob's devices after modifying a returned copy: %+v, %v", devs, err)
	}

	// The own label.
	if err := alice.SetOwnLabel(ctx, "phone"); err != nil {
		t.Fatal(err)
	}
	if self, _, err := alice.OwnDevices(ctx); err != nil || self.Label != "phone" {
		t.Fatalf("own label after SetOwnLabel: %q, %v", self.Label, err)
	}

	// A new device of bob's.
	bob2 := newClient(t, srv, bob.jid)
	if err := alice.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	res := send(t, srv, a, "two devices", bob.jid)
	if len(res.Recipients) != 2 {
		t.Fatalf("after bob's second device appeared: %+v", res.Recipients)
	}
	deliverAll(t, srv, bob2)
	deliverAll(t, srv, bob)

	// The policy's evaluation, with nothing stored in between (and the
	// cache filled again first).
	if _, err := alice.Devices(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	if _, _, err := alice.OwnDevices(ctx); err != nil {
		t.Fatal(err)
	}
	policy.distrustBlind.Store(true)
	_, err = alice.Encrypt(ctx, []string{bob.jid}, plaintexts("must not be encrypted"), nil)
	var ne *session.NoEligibleDevicesError
	if !errors.As(err, &ne) {
		t.Fatalf("every device of bob distrusted by the policy: %v", err)
	}
	policy.distrustBlind.Store(false)

	// A stored trust decision.
	devs, err = alice.Devices(ctx, bob.jid)
	if err != nil || len(devs) != 2 {
		t.Fatalf("bob's devices: %v, %v", devs, err)
	}
	if err := alice.SetTrust(ctx, bob.jid, devs[0].IdentityKey, trust.LevelDistrusted); err != nil {
		t.Fatal(err)
	}
	res = send(t, srv, a, "one device left", bob.jid)
	if len(res.Recipients) != 1 || res.Recipients[0].DeviceID != devs[1].DeviceID {
		t.Fatalf("after distrusting device %d: %+v", devs[0].DeviceID, res.Recipients)
	}
}
