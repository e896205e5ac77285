package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// countingNetwork counts the bundle downloads of one device id.
type countingNetwork struct {
	session.Network
	id uint32
	n  atomic.Int64
}

func (c *countingNetwork) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	if id == c.id {
		c.n.Add(1)
	}
	return c.Network.DownloadBundle(ctx, ns, jid, id)
}

// A listed device without a bundle (a stale one) is not asked for its
// bundle on every message: a minute after the first miss, then after
// doubling waits, and at once when the account's device list changes. It
// is reported as a failure every time.
func TestStaleDeviceBundleMisses(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	const stale = 4242
	clock := &simClock{now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	net := &countingNetwork{Network: srv.Network("alice@example.org"), id: stale}
	alice, err := session.New(ctx, store.NewMemory(), net, session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true, Now: clock.Now,
		OnError: func(err error) { t.Errorf("background error: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
	l := srv.DeviceList(twomemo.Namespace, bob.jid)
	l.Devices = append(l.Devices, devicelist.Device{ID: stale})
	srv.SetDeviceList(bob.jid, l)
	if err := alice.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}

	encrypt := func(wantDownloads int64, wantReached int) {
		t.Helper()
		res, err := alice.Encrypt(ctx, []string{bob.jid}, plaintexts("hi"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := net.n.Load(); got != wantDownloads {
			t.Fatalf("%d downloads of the stale device's bundle, want %d", got, wantDownloads)
		}
		if len(res.Recipients) != wantReached {
			t.Fatalf("reached %+v, want %d devices", res.Recipients, wantReached)
		}
		staleReported := false
		for _, f := range res.Failures {
			staleReported = staleReported || f.DeviceID == stale && errors.Is(f.Err, session.ErrBundleNotFound)
		}
		if wantReached == 1 && !staleReported {
			t.Fatalf("failures %v: the stale device is not reported", res.Failures)
		}
	}
	encrypt(1, 1)
	encrypt(1, 1) // deferred for a minute
	clock.Advance(61 * time.Second)
	encrypt(2, 1)
	clock.Advance(61 * time.Second)
	encrypt(2, 1) // the second miss waits two minutes
	clock.Advance(61 * time.Second)
	encrypt(3, 1)

	// A change of bob's device list retries at once.
	newClient(t, srv, bob.jid, twomemo.Factory)
	if err := alice.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	encrypt(4, 2)

	// The device publishes a bundle (bob's, for the test): once the wait
	// is over it is reached, and no longer deferred.
	b, ok := srv.Bundle(twomemo.Namespace, bob.jid, bob.m.DeviceID())
	if !ok {
		t.Fatal("bob has no bundle")
	}
	if err := srv.Network(bob.jid).UploadBundle(ctx, stale, b); err != nil {
		t.Fatal(err)
	}
	encrypt(4, 2)
	clock.Advance(61 * time.Second)
	encrypt(5, 3)
	encrypt(5, 3)
}
