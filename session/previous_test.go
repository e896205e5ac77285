package session_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session/sessiontest"
)

// Both sides start a session at the same time: each builds an active
// session, then replaces it with a passive one when the other's key
// exchange arrives, so each side's next message (the automatic empty reply
// included) is on a session the other just replaced. The replaced session
// is kept for decryption, so no message is lost, and the two converge.
func TestSimultaneousSessionStart(t *testing.T) {
	for _, f := range []backends.Factory{twomemo.Factory, oldmemo.Factory} {
		t.Run(f.Namespace, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			alice := newClient(t, srv, "alice@example.org", f)
			bob := newClient(t, srv, "bob@example.org", f)
			if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
				t.Fatal(err)
			}
			if err := bob.m.RefreshDeviceLists(ctx, alice.jid); err != nil {
				t.Fatal(err)
			}
			send(t, srv, alice, "from alice", bob.jid)
			send(t, srv, bob, "from bob", alice.jid)
			// deliverAll fails the test on any decryption error; it also
			// flushes the empty replies, which cross as well.
			var gotA, gotB []string
			for range 3 {
				gotB = append(gotB, deliverAll(t, srv, bob)...)
				gotA = append(gotA, deliverAll(t, srv, alice)...)
			}
			for i := range 4 {
				send(t, srv, alice, "a"+string(rune('0'+i)), bob.jid)
				if i%2 == 0 {
					// Both write before reading: the sessions cross again.
					send(t, srv, bob, "b"+string(rune('0'+i)), alice.jid)
				}
				gotB = append(gotB, deliverAll(t, srv, bob)...)
				gotA = append(gotA, deliverAll(t, srv, alice)...)
				if i%2 == 1 {
					send(t, srv, bob, "b"+string(rune('0'+i)), alice.jid)
					gotA = append(gotA, deliverAll(t, srv, alice)...)
				}
			}
			if want := []string{"from alice", "a0", "a1", "a2", "a3"}; !slices.Equal(gotB, want) {
				t.Errorf("bob decrypted %q, want %q", gotB, want)
			}
			if want := []string{"from bob", "b0", "b1", "b2", "b3"}; !slices.Equal(gotA, want) {
				t.Errorf("alice decrypted %q, want %q", gotA, want)
			}
		})
	}
}

// Messages the peer sent on the old session before it learnt of a
// replacement still decrypt.
func TestReplaceSessionKeepsInFlightMessages(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	alice := newClient(t, srv, "alice@example.org")
	bob := newClient(t, srv, "bob@example.org")
	if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	send(t, srv, alice, "hello", bob.jid)
	deliverAll(t, srv, bob)
	deliverAll(t, srv, alice) // bob's empty reply confirms the session

	send(t, srv, bob, "in flight", alice.jid) // on the old session
	if errs := alice.m.ReplaceSession(ctx, bob.jid, bob.m.DeviceID()); len(errs) > 0 {
		t.Fatalf("ReplaceSession: %v", errs)
	}
	in := srv.Inbox(alice.jid)
	if len(in) != 1 {
		t.Fatalf("alice's inbox: %d messages", len(in))
	}
	dec, err := alice.m.Decrypt(ctx, in[0].From, in[0].Message)
	if err != nil || string(dec.Plaintext) != "in flight" {
		t.Fatalf("alice decrypting the message sent before the replacement: %v, %v", dec, err)
	}
	// A replay is a duplicate, as on the current session.
	if _, err := alice.m.Decrypt(ctx, in[0].From, in[0].Message); !errors.Is(err, backends.ErrDuplicateMessage) {
		t.Fatalf("replay through the previous session: %v", err)
	}
	// A forged message (one bit of the key element flipped) fails with a
	// typed error through both sessions and changes neither: the genuine
	// one still decrypts.
	send(t, srv, bob, "also in flight", alice.jid)
	in = srv.Inbox(alice.jid)
	if len(in) != 1 {
		t.Fatalf("alice's inbox: %d messages", len(in))
	}
	forged := *in[0].Message
	forged.Keys = slices.Clone(forged.Keys)
	for i, k := range forged.Keys {
		if k.RID == alice.m.DeviceID() {
			forged.Keys[i].Data = slices.Clone(k.Data)
			forged.Keys[i].Data[len(k.Data)-1] ^= 1
		}
	}
	if _, err := alice.m.Decrypt(ctx, in[0].From, &forged); !errors.Is(err, backends.ErrAuthentication) {
		t.Fatalf("forged message: %v, want ErrAuthentication", err)
	}
	if dec, err := alice.m.Decrypt(ctx, in[0].From, in[0].Message); err != nil || string(dec.Plaintext) != "also in flight" {
		t.Fatalf("the genuine message after the forged one: %v, %v", dec, err)
	}

	deliverAll(t, srv, bob) // the replacement's key exchange
	send(t, srv, bob, "on the new session", alice.jid)
	send(t, srv, alice, "answer", bob.jid)
	if got := deliverAll(t, srv, alice); !slices.Equal(got, []string{"on the new session"}) {
		t.Fatalf("alice decrypted %q", got)
	}
	if got := deliverAll(t, srv, bob); !slices.Equal(got, []string{"answer"}) {
		t.Fatalf("bob decrypted %q", got)
	}
}
