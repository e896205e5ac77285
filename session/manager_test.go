package session_test

import (
	"context"
	"errors"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

type client struct {
	jid string
	st  *store.Memory
	m   *session.Manager
}

func newClient(t testing.TB, srv *sessiontest.Server, jid string, fs ...backends.Factory) *client {
	t.Helper()
	if len(fs) == 0 {
		fs = []backends.Factory{twomemo.Factory, oldmemo.Factory}
	}
	st := store.NewMemory()
	m, err := session.New(context.Background(), st, srv.Network(jid), session.Config{
		JID: jid, Backends: fs, StartSynced: true,
		OnError: func(err error) { t.Errorf("background error of %s: %v", jid, err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &client{jid: jid, st: st, m: m}
}

func plaintexts(s string) map[string][]byte {
	return map[string][]byte{twomemo.Namespace: []byte(s), oldmemo.Namespace: []byte(s)}
}

// deliverAll decrypts everything in c's inbox and returns the plaintexts.
func deliverAll(t testing.TB, srv *sessiontest.Server, c *client) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, d := range srv.Inbox(c.jid) {
		dec, err := c.m.Decrypt(ctx, d.From, d.Message)
		if errors.Is(err, session.ErrMessageNotForUs) {
			continue
		}
		if err != nil {
			t.Fatalf("%s decrypting from %s: %v", c.jid, d.From, err)
		}
		if !dec.Empty {
			out = append(out, string(dec.Plaintext))
		}
	}
	if err := c.m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return out
}

func send(t testing.TB, srv *sessiontest.Server, from *client, text string, to ...string) *session.EncryptResult {
	t.Helper()
	res, err := from.m.Encrypt(context.Background(), to, plaintexts(text), func(r *session.EncryptResult) error {
		for _, jid := range append(to, from.jid) {
			for _, msg := range r.Messages {
				srv.Deliver(from.jid, jid, msg)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s encrypting %q: %v", from.jid, text, err)
	}
	return res
}

func TestTwoParties(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	alice := newClient(t, srv, "alice@example.org")
	bob := newClient(t, srv, "bob@example.org")
	// Learn each other's devices (as PEP notifications would).
	for _, c := range []*client{alice, bob} {
		for _, o := range []*client{alice, bob} {
			if err := c.m.RefreshDeviceLists(ctx, o.jid); err != nil {
				t.Fatal(err)
			}
		}
	}
	res := send(t, srv, alice, "hello bob", bob.jid)
	if len(res.Recipients) != 1 || res.Recipients[0].Namespace != twomemo.Namespace {
		t.Fatalf("recipients = %+v, want bob's device over omemo:2", res.Recipients)
	}
	if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "hello bob" {
		t.Fatalf("bob got %q", got)
	}
	// Bob's device answered the key exchange with an empty message.
	if got := deliverAll(t, srv, alice); len(got) != 0 {
		t.Fatalf("alice got %q from an empty message", got)
	}
	for i := range 3 {
		send(t, srv, bob, "reply", alice.jid)
		if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != "reply" {
			t.Fatalf("round %d: alice got %q", i, got)
		}
		send(t, srv, alice, "again", bob.jid)
		if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "again" {
			t.Fatalf("round %d: bob got %q", i, got)
		}
	}
}
