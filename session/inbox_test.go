package session_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// The inbox keeps a decrypted message from the decrypting transaction
// until it is acknowledged: across a restart, and without a commit of its
// own when acknowledgements ride on the next decryption.
func TestInbox(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	path := filepath.Join(t.TempDir(), "bob.db")
	st, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := session.Config{JID: "bob@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true}
	bob, err := session.New(ctx, st, srv.Network(cfg.JID), cfg)
	if err != nil {
		t.Fatal(err)
	}
	alice := newClient(t, srv, "alice@example.org", twomemo.Factory)
	if err := alice.m.RefreshDeviceLists(ctx, cfg.JID); err != nil {
		t.Fatal(err)
	}
	keep := session.Keep(func(d *session.Decrypted) ([]byte, error) { return append([]byte("rec:"), d.Plaintext...), nil })
	var seqs []uint64
	for i := range 3 {
		send(t, srv, alice, fmt.Sprint("m", i), cfg.JID)
		for _, d := range srv.Inbox(cfg.JID) {
			dec, err := bob.Decrypt(ctx, alice.jid, d.Message, keep)
			if err != nil {
				t.Fatal(err)
			}
			if dec.InboxSeq == 0 {
				t.Fatal("no inbox entry")
			}
			seqs = append(seqs, dec.InboxSeq)
		}
	}
	// A crash before any acknowledgement: everything is still there, in
	// order, after a restart.
	bob.Close()
	st.Close()
	if st, err = store.Open(path, nil); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if bob, err = session.New(ctx, st, srv.Network(cfg.JID), cfg); err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	in, err := bob.Inbox(ctx)
	if err != nil || len(in) != 3 || string(in[0].Record) != "rec:m0" || string(in[2].Record) != "rec:m2" || in[1].Seq != seqs[1] {
		t.Fatalf("inbox after restart: %+v, %v", in, err)
	}
	// Acknowledged entries disappear from the listing at once and from the
	// store with the next write, here the next decryption: one commit.
	bob.Ack(seqs[0], seqs[1])
	if in, _ := bob.Inbox(ctx); len(in) != 1 || in[0].Seq != seqs[2] {
		t.Fatalf("after Ack: %+v", in)
	}
	send(t, srv, alice, "m3", cfg.JID)
	if err := bob.Flush(ctx); err != nil { // the start's background work
		t.Fatal(err)
	}
	before := st.Stats().Commits
	for _, d := range srv.Inbox(cfg.JID) {
		if _, err := bob.Decrypt(ctx, alice.jid, d.Message, keep); err != nil {
			t.Fatal(err)
		}
	}
	if n := st.Stats().Commits - before; n != 1 {
		t.Fatalf("%d commits for a decryption with pending acknowledgements", n)
	}
	bob.Ack(seqs[2])
	if err := bob.FlushAcks(ctx); err != nil {
		t.Fatal(err)
	}
	if in, _ := bob.Inbox(ctx); len(in) != 1 || string(in[0].Record) != "rec:m3" {
		t.Fatalf("after FlushAcks: %+v", in)
	}

	// A Keep callback that refuses the message commits nothing: the
	// message decrypts again later.
	send(t, srv, alice, "refused once", cfg.JID)
	msgs := srv.Inbox(cfg.JID)
	refuse := errors.New("not now")
	if _, err := bob.Decrypt(ctx, alice.jid, msgs[0].Message, session.Keep(func(*session.Decrypted) ([]byte, error) { return nil, refuse })); !errors.Is(err, refuse) {
		t.Fatalf("refusing Keep: %v", err)
	}
	if dec, err := bob.Decrypt(ctx, alice.jid, msgs[0].Message, keep); err != nil || string(dec.Plaintext) != "refused once" {
		t.Fatalf("after the refusal: %v, %v", dec, err)
	}

	// Spill: in order, removed with the decryption that consumed it.
	for _, r := range []string{"s1", "s2"} {
		if _, err := bob.Spill(ctx, []byte(r)); err != nil {
			t.Fatal(err)
		}
	}
	sp, err := bob.Spilled(ctx)
	if err != nil || len(sp) != 2 || string(sp[0].Record) != "s1" {
		t.Fatalf("spilled %+v, %v", sp, err)
	}
	send(t, srv, alice, "from the spill", cfg.JID)
	for _, d := range srv.Inbox(cfg.JID) {
		if _, err := bob.Decrypt(ctx, alice.jid, d.Message, keep, session.Unspill(sp[0].Seq)); err != nil {
			t.Fatal(err)
		}
	}
	if err := bob.DropSpilled(ctx, sp[1].Seq); err != nil {
		t.Fatal(err)
	}
	if sp, _ := bob.Spilled(ctx); len(sp) != 0 {
		t.Fatalf("spill left: %+v", sp)
	}
}

// The inbox counter is read from the store once: later decryptions take it
// from memory (a round trip less each with PostgreSQL), and after a failed
// commit it is read again, so that sequence numbers never repeat.
func TestInboxCounterReadOnce(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	rc := &readCounter{Store: store.NewMemory()}
	cfg := session.Config{JID: "bob@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true}
	bob, err := session.New(ctx, rc, srv.Network(cfg.JID), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	alice := newClient(t, srv, "alice@example.org", twomemo.Factory)
	if err := alice.m.RefreshDeviceLists(ctx, cfg.JID); err != nil {
		t.Fatal(err)
	}
	keep := session.Keep(func(d *session.Decrypted) ([]byte, error) { return []byte("rec"), nil })
	counterReads := func() int {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return rc.keyReads["omemo/inbox-next"]
	}
	rc.mu.Lock()
	rc.keyReads = map[string]int{}
	rc.mu.Unlock()
	seen := map[uint64]bool{}
	decrypt := func(i int, keep session.DecryptOption) (*session.Decrypted, error) {
		send(t, srv, alice, fmt.Sprint("m", i), cfg.JID)
		in := srv.Inbox(cfg.JID)
		return bob.Decrypt(ctx, alice.jid, in[len(in)-1].Message, keep)
	}
	for i := range 5 {
		dec, err := decrypt(i, keep)
		if err != nil {
			t.Fatal(err)
		}
		if seen[dec.InboxSeq] {
			t.Fatalf("inbox sequence %d repeated", dec.InboxSeq)
		}
		seen[dec.InboxSeq] = true
	}
	if n := counterReads(); n != 1 {
		t.Fatalf("the inbox counter was read %d times for 5 decryptions, want 1", n)
	}
	// A decryption whose transaction fails (the application's record
	// cannot be made) commits nothing; the next one reads the counter again
	// and still gets a fresh number.
	failing := session.Keep(func(d *session.Decrypted) ([]byte, error) { return nil, errors.New("no record") })
	if _, err := decrypt(5, failing); err == nil {
		t.Fatal("a failing Keep did not fail the decryption")
	}
	dec, err := decrypt(6, keep)
	if err != nil {
		t.Fatal(err)
	}
	if seen[dec.InboxSeq] {
		t.Fatalf("inbox sequence %d repeated after a failed commit", dec.InboxSeq)
	}
	if n := counterReads(); n != 2 {
		t.Fatalf("the inbox counter was read %d times, want 2 (once more after the failed commit)", n)
	}
}
