package session_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// Peers that fetched the bundle before its republication may pick the pre
// key a key exchange just used. It stays (hidden) for the grace period, so
// their first messages decrypt; afterwards it is deleted, and a key
// exchange on it fails.
func TestPreKeyGrace(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			clock := newFakeClock()
			srv := sessiontest.NewServer()
			alice, err := session.New(ctx, store.NewMemory(), srv.Network("alice@example.org"), session.Config{
				JID: "alice@example.org", Backends: []backends.Factory{be.f}, StartSynced: true, Now: clock.Now,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer alice.Close()
			b, _ := srv.Bundle(be.f.Namespace, "alice@example.org", alice.DeviceID())
			b.PreKeys = b.PreKeys[:1]
			srv.SetBundle("alice@example.org", alice.DeviceID(), b)
			var peers []*client
			for _, j := range []string{"bob@example.org", "carol@example.org", "dave@example.org"} {
				c := newClient(t, srv, j, be.f)
				if err := c.m.RefreshDeviceLists(ctx, "alice@example.org"); err != nil {
					t.Fatal(err)
				}
				send(t, srv, c, "from "+j, "alice@example.org")
				peers = append(peers, c)
			}
			in := srv.Inbox("alice@example.org")
			if len(in) != 3 {
				t.Fatalf("%d messages", len(in))
			}
			for _, d := range in[:2] {
				if dec, err := alice.Decrypt(ctx, d.From, d.Message); err != nil || string(dec.Plaintext) != "from "+d.From {
					t.Fatalf("%s's key exchange on the shared pre key: %v, %v", d.From, dec, err)
				}
			}
			// The grace period ends; the sweep deletes the pre key.
			clock.Advance(session.DefaultPreKeyGrace + time.Second)
			if err := alice.SweepPreKeys(ctx); err != nil {
				t.Fatal(err)
			}
			_, err = alice.Decrypt(ctx, in[2].From, in[2].Message)
			if !errors.Is(err, backends.ErrKeyExchange) {
				t.Fatalf("a key exchange after the grace period: %v", err)
			}
		})
	}
}
