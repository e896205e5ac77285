package omemo

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

const testRoom = "room@muc.example.org"

// occupantPresence is the room's presence of an occupant (real may be "",
// a hidden real JID).
func occupantPresence(nick, real, to string, codes ...int) string {
	item := `<item affiliation='member' role='participant'`
	if real != "" {
		item += ` jid='` + real + `'`
	}
	item += `/>`
	for _, c := range codes {
		item += fmt.Sprintf(`<status code='%d'/>`, c)
	}
	return `<presence xmlns='jabber:client' from='` + testRoom + `/` + nick + `' to='` + to + `'><x xmlns='http://jabber.org/protocol/muc#user'>` + item + `</x></presence>`
}

// roomMessage encrypts plaintexts from d for the given accounts and
// returns the stanza as the room delivers it: from room/nick.
func (d *device) roomMessage(nick string, to []string, plaintexts map[string][]byte) string {
	d.t.Helper()
	var toks []xml.Token
	_, err := d.p.Manager().Encrypt(context.Background(), to, plaintexts, func(r *session.EncryptResult) error {
		var err error
		toks, err = outgoingTokensOfType(jid.MustParse(testRoom), stanza.GroupChatMessage, "gid-"+nick, r.Messages, "")
		return err
	})
	if err != nil {
		d.t.Fatalf("Encrypt: %v", err)
	}
	return stamp(d.t, toks, jid.MustParse(testRoom+"/"+nick))
}

func envelope(t *testing.T, body, from, to string) map[string][]byte {
	t.Helper()
	env, err := sce.New(bodyContent(body), jid.MustParse(from), jid.MustParse(to), time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{ns.OMEMO2: raw}
}

// Room messages are attributed to the real JID the room's presences gave
// for the sending nick, and nothing else: an unknown occupant, an envelope
// naming another sender or not naming the room, a presence that tries to
// give a present nick another real JID, and a forged reflection are each
// reported (typed) and deliver nothing.
func TestRoomBadInput(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	mallory := newDevice(t, srv, "mallory@example.org/m", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	bob.p.TrackRoom(jid.MustParse(testRoom + "/bob"))
	for _, p := range []string{
		occupantPresence("alice", "alice@example.org/a", "bob@example.org/b"),
		occupantPresence("mallory", "mallory@example.org/m", "bob@example.org/b"),
		occupantPresence("ghost", "", "bob@example.org/b"),
		occupantPresence("bob", "bob@example.org/b", "bob@example.org/b", 110, 100),
	} {
		bob.deliver(p)
	}
	if _, errs := bob.take(); len(errs) != 0 {
		t.Fatalf("presences: %v", errs)
	}
	to := []string{"bob@example.org"}
	for _, d := range []*device{alice, mallory} {
		if err := d.p.Manager().RefreshDeviceLists(context.Background(), "bob@example.org"); err != nil {
			t.Fatal(err)
		}
	}

	// The genuine message.
	bob.deliver(alice.roomMessage("alice", to, envelope(t, "hello room", "alice@example.org", testRoom)))
	msgs, errs := bob.take()
	if len(msgs) != 1 || len(errs) != 0 || msgs[0].Body != "hello room" || !msgs[0].Room.Equal(jid.MustParse(testRoom)) ||
		msgs[0].Nick != "alice" || !msgs[0].RealFrom.Equal(jid.MustParse("alice@example.org")) {
		t.Fatalf("genuine: %+v %v", msgs, errs)
	}

	for _, tc := range []struct {
		name string
		raw  func() string
		want error
	}{
		{"unknown occupant", func() string {
			return mallory.roomMessage("ghost", to, envelope(t, "who am i", "mallory@example.org", testRoom))
		}, groupchat.ErrUnknownOccupant},
		{"envelope names another sender", func() string {
			return mallory.roomMessage("mallory", to, envelope(t, "i am alice", "alice@example.org", testRoom))
		}, sce.ErrAffixMismatch},
		{"envelope names no room", func() string {
			return mallory.roomMessage("mallory", to, envelope(t, "private turned public", "mallory@example.org", "bob@example.org"))
		}, sce.ErrAffixMismatch},
		{"mallory's device under alice's nick", func() string {
			return mallory.roomMessage("alice", to, envelope(t, "from alice?", "alice@example.org", testRoom))
		}, session.ErrSenderNotFound},
		{"forged reflection", func() string {
			raw := alice.roomMessage("alice", to, envelope(t, "not mine", "bob@example.org", testRoom))
			raw = strings.Replace(raw, testRoom+"/alice", testRoom+"/bob", 1)
			return strings.Replace(raw, fmt.Sprintf(`sid="%d"`, alice.p.Manager().DeviceID()), fmt.Sprintf(`sid="%d"`, bob.p.Manager().DeviceID()), 1)
		}, ErrForgedReflection},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob.deliver(tc.raw())
			msgs, errs := bob.take()
			if len(msgs) != 0 || len(errs) != 1 || !errors.Is(errs[0], tc.want) {
				t.Fatalf("got %+v, errors %v; want one error matching %v", msgs, errs, tc.want)
			}
			var de *DecryptError
			if !errors.As(errs[0], &de) {
				t.Fatalf("%T is not a *DecryptError", errs[0])
			}
		})
	}

	// A presence that tries to give alice's nick mallory's real JID is
	// refused; alice's messages stay alice's.
	bob.deliver(occupantPresence("alice", "mallory@example.org/m", "bob@example.org/b"))
	if _, errs := bob.take(); len(errs) != 1 || !errors.Is(errs[0], groupchat.ErrRealJIDChanged) {
		t.Fatalf("real JID change: %v", errs)
	}
	r, _ := bob.p.Room(jid.MustParse(testRoom))
	if real, err := r.RealJID("alice"); err != nil || !real.Equal(jid.MustParse("alice@example.org")) {
		t.Fatalf("alice is now %v, %v", real, err)
	}
	bob.deliver(alice.roomMessage("alice", to, envelope(t, "still alice", "alice@example.org", testRoom)))
	if msgs, errs := bob.take(); len(msgs) != 1 || msgs[0].Body != "still alice" || !msgs[0].RealFrom.Equal(jid.MustParse("alice@example.org")) || len(errs) != 0 {
		t.Fatalf("after the refused change: %+v %v", msgs, errs)
	}
}
