package integration_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/store"
)

// ownPosition reads the archive position the plugin stored.
func ownPosition(t *testing.T, st store.Store) string {
	t.Helper()
	var pos struct {
		ID string `json:"id"`
	}
	err := st.View(context.Background(), func(tx store.Tx) error {
		raw, err := tx.Get("omemo-plugin/mam/own")
		if err != nil {
			return err
		}
		return json.Unmarshal(raw, &pos)
	})
	if err != nil {
		t.Fatalf("archive position: %v", err)
	}
	return pos.ID
}

// The own archive position: a catch-up leaves it at the last archived
// message it read; a live message that carries the archive's stanza-id
// moves it once a catch-up completed on the connection; the next run's
// CatchUp without a time starts there and gets exactly what was missed.
func TestIntegrationArchivePosition(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
	st := store.NewMemory()
	bob := connect(t, srv, "bob", store.NewMemory(), omemo.Config{}, true)
	aliceJID := srv.JID("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Without presence nothing is delivered live or from offline storage:
	// only catch-ups bring messages.
	alice := connect(t, srv, "alice", st, omemo.Config{}, true)
	send(t, bob, aliceJID, "first")
	time.Sleep(300 * time.Millisecond)
	if err := alice.p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	m := alice.expect(10 * time.Second)
	if m.Body != "first" || !m.Archived || m.ArchiveID == "" {
		t.Fatalf("catch-up delivered %q (archived %v, id %q)", m.Body, m.Archived, m.ArchiveID)
	}
	if got := ownPosition(t, st); got != m.ArchiveID {
		t.Fatalf("position %q after the catch-up, want %q", got, m.ArchiveID)
	}
	alice.disconnect()

	// Live now (with presence): the position follows.
	alice = connect(t, srv, "alice", st, omemo.Config{SendPresence: true}, true)
	if err := alice.p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	alice.expectNone(500 * time.Millisecond) // "first" is not handed over again
	before := ownPosition(t, st)
	send(t, bob, aliceJID, "live")
	if m := alice.expect(10 * time.Second); m.Body != "live" || m.Archived {
		t.Fatalf("got %q (archived %v)", m.Body, m.Archived)
	}
	time.Sleep(300 * time.Millisecond) // the ack commit
	live := ownPosition(t, st)
	if live == before || live == "" {
		t.Fatalf("a live message left the position at %q", live)
	}
	alice.disconnect()

	send(t, bob, aliceJID, "missed 1")
	send(t, bob, aliceJID, "missed 2")
	alice = connect(t, srv, "alice", st, omemo.Config{}, true)
	if err := alice.p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"missed 1", "missed 2"} {
		if m := alice.expect(10 * time.Second); m.Body != want || !m.Archived {
			t.Fatalf("got %q (archived %v), want %q from the archive", m.Body, m.Archived, want)
		}
	}
	alice.expectNone(500 * time.Millisecond)
	if got := ownPosition(t, st); got == live {
		t.Fatal("the catch-up did not move the position")
	}
}
