package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

func roomJID(t *testing.T, room, nick string) jid.JID {
	t.Helper()
	j, err := jid.New(room, prosodytest.MUCDomain, nick)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func join(t *testing.T, c *client, room jid.JID) *groupchat.Room {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r, err := c.p.JoinRoom(ctx, room)
	if err != nil {
		t.Fatalf("%s joining %s: %v", c.name, room, err)
	}
	return r
}

func sendGroup(t *testing.T, c *client, room jid.JID, body string, opts ...omemo.SendOption) *omemo.SendResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := c.p.SendGroup(ctx, room, body, opts...)
	if err != nil {
		t.Fatalf("%s → %s: SendGroup: %v", c.name, room.Bare(), err)
	}
	return res
}

// expectRoom waits for the next message and checks it is body in room from
// the account from (by real JID).
func expectRoom(t *testing.T, c *client, room jid.JID, from jid.JID, body string) omemo.Message {
	t.Helper()
	m := c.expect(10 * time.Second)
	if !m.Room.Equal(room.Bare()) || m.Body != body || !m.RealFrom.Equal(from.Bare()) {
		t.Fatalf("%s got %q in %v from %v (nick %q, reflected %v), want %q from %v", c.name, m.Body, m.Room, m.RealFrom, m.Nick, m.Reflected, body, from)
	}
	return m
}

// TestIntegrationRoom: alice (two devices) creates a members-only room with
// bob and carol (legacy OMEMO only); every message reaches every other
// device exactly once, the sender gets the room's reflection, a member
// removed from the room gets no key for the next message, a member who
// was away reads the room's archive, and a member without OMEMO fails the
// send unless skipping was asked for.
func TestIntegrationRoom(t *testing.T) {
	runRoom(t, prosodytest.Start(t, roomUsers...))
}

// TestIntegrationRoomEjabberd runs the room scenario against ejabberd
// 23.01's mod_muc.
func TestIntegrationRoomEjabberd(t *testing.T) {
	runRoom(t, prosodytest.StartEjabberd(t, roomUsers...))
}

var roomUsers = []prosodytest.User{{Name: "alice"}, {Name: "bob"}, {Name: "carol"}, {Name: "dave"}}

func runRoom(t *testing.T, srv *prosodytest.Server) {
	aliceJID, bobJID, carolJID, daveJID := srv.JID("alice"), srv.JID("bob"), srv.JID("carol"), srv.JID("dave")
	cfg := omemo.Config{SendPresence: true}
	alice1 := connect(t, srv, "alice", store.NewMemory(), cfg, true)
	alice2 := connect(t, srv, "alice", store.NewMemory(), cfg, true)
	bob := connect(t, srv, "bob", store.NewMemory(), cfg, true)
	carolStore := store.NewMemory()
	carol := connect(t, srv, "carol", carolStore, omemo.Config{SendPresence: true, Backends: []backends.Factory{oldmemo.Factory}}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	room := roomJID(t, "team", "")
	created, err := alice1.p.CreateRoom(ctx, roomJID(t, "team", "alice1"), bobJID, carolJID)
	if err != nil || !created {
		t.Fatalf("CreateRoom: %v, %v", created, err)
	}
	join(t, alice2, roomJID(t, "team", "alice2"))
	join(t, bob, roomJID(t, "team", "bob"))
	join(t, carol, roomJID(t, "team", "carol"))
	r, _ := alice1.p.Room(room)
	if !r.NonAnonymous() || !r.MembersOnly() {
		t.Fatalf("room non-anonymous %v members-only %v", r.NonAnonymous(), r.MembersOnly())
	}
	if err := alice1.p.RefreshRoom(ctx, room); err != nil {
		t.Fatal(err)
	}

	res := sendGroup(t, alice1, room, "hello team")
	got := namespaces(res.Recipients)
	if len(got[ns.Legacy]) != 1 || got[ns.Legacy][0] != carolJID.String() {
		t.Fatalf("recipients %v: want carol under legacy OMEMO", got)
	}
	if m := alice1.expect(10 * time.Second); !m.Reflected || !m.Sent || m.Body != "hello team" || !m.Room.Equal(room) {
		t.Fatalf("alice1's reflection: %+v", m)
	}
	for _, c := range []*client{alice2, bob, carol} {
		m := expectRoom(t, c, room, aliceJID, "hello team")
		if m.Nick != "alice1" {
			t.Errorf("%s: nick %q", c.name, m.Nick)
		}
	}
	// Answers cross: bob and carol write at once.
	done := make(chan error, 2)
	for _, c := range []*client{bob, carol} {
		go func() {
			_, err := c.p.SendGroup(ctx, room, "from "+c.name)
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]map[string]bool{}
	for _, c := range []*client{alice1, alice2, bob, carol} {
		seen[c.name+c.s.LocalAddr().Resourcepart()] = map[string]bool{}
		for range 2 {
			m := c.expect(10 * time.Second)
			seen[c.name+c.s.LocalAddr().Resourcepart()][m.Body] = true
		}
	}
	for who, bodies := range seen {
		if !bodies["from bob"] || !bodies["from carol"] {
			t.Errorf("%s got %v", who, bodies)
		}
	}

	// carol leaves the room's members: no key for her from now on.
	if err := groupchat.SetAffiliation(ctx, alice1.s, room, carolJID, groupchat.None); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	res = sendGroup(t, alice1, room, "without carol")
	for _, rc := range res.Recipients {
		if rc.JID == carolJID.String() {
			t.Fatalf("carol still gets a key: %+v", res.Recipients)
		}
	}
	alice1.expect(10 * time.Second) // reflection
	for _, c := range []*client{alice2, bob} {
		expectRoom(t, c, room, aliceJID, "without carol")
	}
	carol.expectNone(500 * time.Millisecond)

	// dave has no OMEMO: as a member he fails the send, unless skipped.
	if err := groupchat.SetAffiliation(ctx, alice1.s, room, daveJID, groupchat.Member); err != nil {
		t.Fatal(err)
	}
	if err := alice1.p.RefreshRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	if _, err := alice1.p.SendGroup(ctx, room, "must not leave"); !errors.Is(err, session.ErrNoEligibleDevices) {
		t.Fatalf("a member without OMEMO: %v", err)
	}
	bob.expectNone(300 * time.Millisecond)
	res = sendGroup(t, alice1, room, "skipping dave", omemo.SkipMembersWithoutOMEMO())
	if len(res.Unreached) != 1 || res.Unreached[0] != daveJID.String() {
		t.Fatalf("unreached %v", res.Unreached)
	}
	alice1.expect(10 * time.Second)
	for _, c := range []*client{alice2, bob} {
		expectRoom(t, c, room, aliceJID, "skipping dave")
	}
}

// TestIntegrationRoomArchiveAndAnonymous: a member who was away reads the
// room's messages from its archive when she comes back (decrypted once, with
// the sender's real JID from the archive); a room that hides real JIDs is
// refused before anything is sent: neither the other occupant nor the
// room's archive gets anything.
func TestIntegrationRoomArchiveAndAnonymous(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	aliceJID, bobJID := srv.JID("alice"), srv.JID("bob")
	cfg := omemo.Config{SendPresence: true}
	alice := connect(t, srv, "alice", store.NewMemory(), cfg, true)
	bobStore := store.NewMemory()
	bob := connect(t, srv, "bob", bobStore, cfg, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	room := roomJID(t, "archived", "")
	if _, err := alice.p.CreateRoom(ctx, roomJID(t, "archived", "alice"), bobJID); err != nil {
		t.Fatal(err)
	}
	join(t, bob, roomJID(t, "archived", "bob"))
	sendGroup(t, alice, room, "first")
	alice.expect(10 * time.Second)
	expectRoom(t, bob, room, aliceJID, "first")

	bob.disconnect()
	since := time.Now().Add(-time.Second)
	sendGroup(t, alice, room, "while bob was away")
	alice.expect(10 * time.Second)
	bob2 := connect(t, srv, "bob", bobStore, cfg, true)
	join(t, bob2, roomJID(t, "archived", "bob"))
	if err := bob2.p.CatchUpRoom(ctx, room, since); err != nil {
		t.Fatal(err)
	}
	m := expectRoom(t, bob2, room, aliceJID, "while bob was away")
	if !m.Archived || m.Nick != "alice" || m.Delay.IsZero() {
		t.Fatalf("archived room message %+v", m)
	}
	bob2.expectNone(300 * time.Millisecond)
	// Reading the archive again finds nothing new.
	if err := bob2.p.CatchUpRoom(ctx, room, since); err != nil {
		t.Fatal(err)
	}
	bob2.expectNone(300 * time.Millisecond)
	if errs := bob2.decryptErrors(); len(errs) != 0 {
		t.Fatalf("decryption errors: %v", errs)
	}

	// The room now hides real JIDs from plain occupants.
	if err := groupchat.Configure(ctx, alice.s, room, [][2]string{{"muc#roomconfig_whois", "moderators"}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for r, _ := alice.p.Room(room); r.NonAnonymous() && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	after := time.Now()
	_, err := alice.p.SendGroup(ctx, room, "must not leave")
	if !errors.Is(err, groupchat.ErrAnonymous) {
		t.Fatalf("SendGroup to a semi-anonymous room: %v, want ErrAnonymous", err)
	}
	bob2.expectNone(500 * time.Millisecond)
	if err := bob2.p.CatchUpRoom(ctx, room, after); err != nil {
		t.Fatal(err)
	}
	bob2.expectNone(300 * time.Millisecond)
}
