package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store/postgres"
)

// TestSessionDurability runs two session Managers on accounts of one
// PostgreSQL database: they talk, stop (one of them while messages to it
// are in flight), start again from the database alone and go on talking.
// Every message is handed to the application exactly once, and a replay of
// any message after the restarts is refused as a duplicate.
func TestSessionDurability(t *testing.T) {
	ctx := context.Background()
	dsn := postgres.Cluster(t).CreateDatabase(t)
	srv := sessiontest.NewServer()
	const alice, bob = "alice@example.org", "bob@example.org"
	// Two DBs, as in two processes: each has its own lease connection.
	dbs := map[string]*postgres.DB{alice: postgres.OpenDB(t, dsn, nil), bob: postgres.OpenDB(t, dsn, nil)}

	type party struct {
		st *postgres.Store
		m  *session.Manager
	}
	ps := map[string]*party{}
	received := map[string][]string{} // what the application got, per account
	handed := map[string]bool{}       // "jid seq": inbox entries handed over
	var expected []string             // "to: text"
	var history []sessiontest.Delivered

	hand := func(jid string, seq uint64, text string) {
		if seq == 0 {
			t.Fatalf("%s: %q stored in no inbox entry", jid, text)
		}
		if key := fmt.Sprint(jid, " ", seq); !handed[key] {
			handed[key] = true
			received[jid] = append(received[jid], text)
		}
		ps[jid].m.Ack(seq)
	}
	start := func(jid string) {
		st, err := dbs[jid].Account(ctx, jid)
		if err != nil {
			t.Fatal(err)
		}
		m, err := session.New(ctx, st, srv.Network(jid), session.Config{
			JID: jid, Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory}, StartSynced: true,
			OnError: func(err error) {
				if !errors.Is(err, postgres.ErrLeaseLost) {
					t.Errorf("%s: background: %v", jid, err)
				}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ps[jid] = &party{st: st.(*postgres.Store), m: m}
		// What the inbox still holds is handed over again.
		entries, err := m.Inbox(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			hand(jid, e.Seq, string(e.Record))
		}
		if err := m.FlushAcks(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// learn has every running Manager fetch the device lists.
	learn := func() {
		for _, p := range ps {
			for _, jid := range []string{alice, bob} {
				if err := p.m.RefreshDeviceLists(ctx, jid); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	stop := func(jid string) {
		p := ps[jid]
		if err := p.m.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.st.Close(); err != nil {
			t.Fatal(err)
		}
		delete(ps, jid)
	}
	send := func(from, to, text string) {
		_, err := ps[from].m.Encrypt(ctx, []string{to}, map[string][]byte{
			twomemo.Namespace: []byte(text), oldmemo.Namespace: []byte(text),
		}, func(r *session.EncryptResult) error {
			for _, msg := range r.Messages {
				srv.Deliver(from, to, msg)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s encrypting %q: %v", from, text, err)
		}
		expected = append(expected, to+": "+text)
	}
	receive := func(jid string) {
		p := ps[jid]
		for _, d := range srv.Inbox(jid) {
			history = append(history, d)
			dec, err := p.m.Decrypt(ctx, d.From, d.Message, session.Keep(func(dec *session.Decrypted) ([]byte, error) {
				if dec.Empty {
					return nil, nil
				}
				return slices.Clone(dec.Plaintext), nil
			}))
			if errors.Is(err, session.ErrMessageNotForUs) || errors.Is(err, session.ErrUnknownNamespace) {
				continue
			}
			if err != nil {
				t.Fatalf("%s decrypting from %s: %v", jid, d.From, err)
			}
			if !dec.Empty {
				hand(jid, dec.InboxSeq, string(dec.Plaintext))
			}
		}
		if err := p.m.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.m.FlushAcks(ctx); err != nil {
			t.Fatal(err)
		}
	}

	start(alice)
	start(bob)
	learn()
	send(alice, bob, "a1")
	receive(bob)
	receive(alice) // the key exchange's empty answer
	send(bob, alice, "b1")
	send(bob, alice, "b2")
	receive(alice)
	send(alice, bob, "a2")
	receive(bob)

	// Bob stops; messages reach the server meanwhile.
	stop(bob)
	send(alice, bob, "a3")
	send(alice, bob, "a4")
	start(bob)
	learn()
	receive(bob)
	send(bob, alice, "b3")
	receive(alice)

	// Both stop and start again.
	stop(alice)
	stop(bob)
	start(alice)
	start(bob)
	learn()
	for i := range 5 {
		send(alice, bob, fmt.Sprint("a", 5+i))
		send(bob, alice, fmt.Sprint("b", 4+i))
		receive(bob)
		receive(alice)
	}

	// Bob's lease connection dies while a message arrives: decrypting
	// it fails and changes nothing; Bob starts again and decrypts it.
	postgres.TerminateLease(t, dsn, ps[bob].st)
	send(alice, bob, "a10")
	in := srv.Inbox(bob)
	for _, d := range in {
		_, err := ps[bob].m.Decrypt(ctx, d.From, d.Message)
		if errors.Is(err, session.ErrMessageNotForUs) || errors.Is(err, session.ErrUnknownNamespace) {
			continue
		}
		if !errors.Is(err, postgres.ErrLeaseLost) || !errors.Is(err, session.ErrStorage) {
			t.Fatalf("Decrypt after the lease was lost = %v, want ErrStorage wrapping ErrLeaseLost", err)
		}
	}
	stop(bob)
	start(bob)
	learn()
	for _, d := range in {
		srv.Deliver(d.From, d.To, d.Message)
	}
	receive(bob)
	receive(alice)
	send(bob, alice, "b9")
	receive(alice)

	// Replays of everything are refused and hand nothing over.
	for _, d := range history {
		_, err := ps[d.To].m.Decrypt(ctx, d.From, d.Message, session.Keep(func(*session.Decrypted) ([]byte, error) {
			t.Errorf("replay of a message from %s to %s decrypted", d.From, d.To)
			return nil, nil
		}))
		if err == nil || !(errors.Is(err, backends.ErrDuplicateMessage) || errors.Is(err, session.ErrMessageNotForUs) || errors.Is(err, session.ErrUnknownNamespace)) {
			t.Errorf("replay of a message from %s to %s: %v, want ErrDuplicateMessage", d.From, d.To, err)
		}
	}

	var got []string
	for jid, texts := range received {
		for _, text := range texts {
			got = append(got, jid+": "+text)
		}
	}
	slices.Sort(got)
	slices.Sort(expected)
	if !slices.Equal(got, expected) {
		t.Fatalf("handed over %q,\nwant each of %q once", got, expected)
	}
	var commits uint64
	for _, p := range ps {
		commits += p.st.Stats().Commits
	}
	t.Logf("%d messages, each handed over once; %d commits since the last start", len(expected), commits)
	for jid := range ps {
		stop(jid)
	}
}
