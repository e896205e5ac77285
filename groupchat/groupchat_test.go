package groupchat

import (
	"encoding/xml"
	"errors"
	"slices"
	"strings"
	"testing"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// presence builds a room presence from room/nick and parses its muc#user
// element.
func presence(t *testing.T, from, typ, x string) (stanza.Presence, UserX) {
	t.Helper()
	p := stanza.Presence{From: jid.MustParse(from), Type: stanza.PresenceType(typ)}
	ux, err := ParseUserX(xml.NewDecoder(strings.NewReader(x)))
	if err != nil {
		t.Fatalf("ParseUserX(%s): %v", x, err)
	}
	return p, ux
}

func userX(items, status string) string {
	return `<x xmlns='http://jabber.org/protocol/muc#user'>` + items + status + `</x>`
}

func item(real, aff, role string) string {
	s := `<item affiliation='` + aff + `' role='` + role + `'`
	if real != "" {
		s += ` jid='` + real + `'`
	}
	return s + `/>`
}

func status(codes ...string) string {
	var b strings.Builder
	for _, c := range codes {
		b.WriteString(`<status code='` + c + `'/>`)
	}
	return b.String()
}

func apply(t *testing.T, tr *Tracker, from, typ, x string) error {
	t.Helper()
	p, ux := presence(t, from, typ, x)
	tracked, err := tr.HandlePresence(p, ux)
	if !tracked {
		t.Fatalf("presence from %s not tracked", from)
	}
	return err
}

func bare(ss ...string) []jid.JID {
	var out []jid.JID
	for _, s := range ss {
		out = append(out, jid.MustParse(s))
	}
	return out
}

func TestRoomState(t *testing.T) {
	tr := NewTracker(jid.MustParse("alice@example.org"))
	room := jid.MustParse("room@muc.example.org/alice")
	r := tr.Add(room)
	if _, err := r.Recipients(); !errors.Is(err, ErrAnonymous) {
		t.Fatalf("before the join: %v, want ErrAnonymous", err)
	}
	// Others first, then the own presence with 110 (and 100: non-anonymous).
	if err := apply(t, tr, "room@muc.example.org/bob", "", userX(item("bob@example.org/phone", "member", "participant"), "")); err != nil {
		t.Fatal(err)
	}
	if r.Joined() {
		t.Fatal("joined before the own presence")
	}
	if err := apply(t, tr, "room@muc.example.org/alice", "", userX(item("alice@example.org/pc", "owner", "moderator"), status("110", "100"))); err != nil {
		t.Fatal(err)
	}
	if !r.Joined() || !r.NonAnonymous() || r.Created() {
		t.Fatalf("joined %v non-anonymous %v created %v", r.Joined(), r.NonAnonymous(), r.Created())
	}
	if j, err := r.RealJID("bob"); err != nil || !j.Equal(jid.MustParse("bob@example.org")) {
		t.Fatalf("bob's real JID: %v, %v", j, err)
	}
	if _, err := r.RealJID("carol"); !errors.Is(err, ErrUnknownOccupant) {
		t.Fatalf("absent nick: %v", err)
	}

	// Lists read: carol is an absent member.
	r.setLists(map[string][]jid.JID{Owner: bare("alice@example.org"), Admin: nil, Member: bare("bob@example.org", "carol@example.org")}, nil)
	got, err := r.Recipients()
	if err != nil || !slices.EqualFunc(got, bare("alice@example.org", "bob@example.org", "carol@example.org"), jid.JID.Equal) {
		t.Fatalf("recipients %v, %v", got, err)
	}

	// A presence cannot give bob another real JID while he is there.
	err = apply(t, tr, "room@muc.example.org/bob", "", userX(item("mallory@evil.example/x", "member", "participant"), ""))
	if !errors.Is(err, ErrRealJIDChanged) {
		t.Fatalf("real JID change: %v", err)
	}
	if j, _ := r.RealJID("bob"); !j.Equal(jid.MustParse("bob@example.org")) {
		t.Fatalf("bob is now %v", j)
	}

	// A nick change keeps the real JID under the new nick.
	if err := apply(t, tr, "room@muc.example.org/bob", "unavailable", userX(`<item affiliation='member' role='participant' nick='robert' jid='bob@example.org/phone'/>`, status("303"))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RealJID("bob"); !errors.Is(err, ErrUnknownOccupant) {
		t.Fatalf("old nick still known: %v", err)
	}
	if j, err := r.RealJID("robert"); err != nil || !j.Equal(jid.MustParse("bob@example.org")) {
		t.Fatalf("new nick: %v, %v", j, err)
	}

	// Carol loses her membership (seen in a presence about her): no key
	// for her from now on.
	if err := apply(t, tr, "room@muc.example.org/carol", "unavailable", userX(item("carol@example.org", "none", "none"), status("321"))); err != nil {
		t.Fatal(err)
	}
	got, _ = r.Recipients()
	if !slices.EqualFunc(got, bare("alice@example.org", "bob@example.org"), jid.JID.Equal) {
		t.Fatalf("after carol's removal: %v", got)
	}

	// An occupant whose real JID the room hides makes sending impossible.
	if err := apply(t, tr, "room@muc.example.org/ghost", "", userX(item("", "none", "participant"), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Recipients(); !errors.Is(err, ErrUnknownOccupant) {
		t.Fatalf("hidden occupant: %v", err)
	}
	if err := apply(t, tr, "room@muc.example.org/ghost", "unavailable", userX(item("", "none", "none"), "")); err != nil {
		t.Fatal(err)
	}

	// The room becomes semi-anonymous: no more sending until it is fixed.
	if !tr.HandleMessage(jid.MustParse("room@muc.example.org"), UserX{Status: []int{StatusNowSemiAnonymous}}) {
		t.Fatal("no refresh asked for a privacy change")
	}
	if _, err := r.Recipients(); !errors.Is(err, ErrAnonymous) {
		t.Fatalf("after 173: %v", err)
	}
	// Only the room itself may say so.
	if tr.HandleMessage(jid.MustParse("room@muc.example.org/bob"), UserX{Status: []int{StatusNowNonAnonymous}}) || r.NonAnonymous() {
		t.Fatal("an occupant changed the room's privacy")
	}

	// Leaving.
	if err := apply(t, tr, "room@muc.example.org/alice", "unavailable", userX(item("alice@example.org/pc", "owner", "none"), status("110"))); err != nil {
		t.Fatal(err)
	}
	if r.Joined() {
		t.Fatal("still joined after leaving")
	}
	if p, ux := presence(t, "other@muc.example.org/x", "", userX("", "")); func() bool { tracked, _ := tr.HandlePresence(p, ux); return tracked }() {
		t.Fatal("a presence of an untracked room was applied")
	}
}

func TestAffiliationsIncomplete(t *testing.T) {
	r := NewTracker(jid.MustParse("bob@example.org")).Add(jid.MustParse("room@muc.example.org/bob"))
	if _, _, _, err := r.Affiliations(); !errors.Is(err, ErrListsForbidden) {
		t.Fatalf("unread lists: %v", err)
	}
	refused := errors.Join(ErrListsForbidden)
	r.setLists(map[string][]jid.JID{Owner: bare("alice@example.org")}, refused)
	owners, _, _, err := r.Affiliations()
	if !errors.Is(err, ErrListsForbidden) || len(owners) != 1 {
		t.Fatalf("owners %v, %v", owners, err)
	}
	r.setLists(map[string][]jid.JID{Owner: bare("alice@example.org"), Admin: nil, Member: nil}, nil)
	if _, _, _, err := r.Affiliations(); err != nil {
		t.Fatal(err)
	}
}

func TestParseUserX(t *testing.T) {
	x, err := ParseUserX(xml.NewDecoder(strings.NewReader(userX(item("a@b/c", "member", "participant"), status("110", "100", "abc", "9999")))))
	if err != nil || len(x.Items) != 1 || !slices.Equal(x.Status, []int{110, 100}) || !x.Items[0].JID.Equal(jid.MustParse("a@b/c")) {
		t.Fatalf("%+v %v", x, err)
	}
	for _, bad := range []string{
		`<x xmlns='urn:other'/>`,
		userX(`<item jid='@@@'/>`, ""),
		userX(`<item affiliation='emperor'/>`, ""),
		`<x xmlns='http://jabber.org/protocol/muc#user'><item`,
	} {
		if _, err := ParseUserX(xml.NewDecoder(strings.NewReader(bad))); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", bad, err)
		}
	}
}

func FuzzParseUserX(f *testing.F) {
	f.Add(userX(item("a@b/c", "member", "participant"), status("110")))
	f.Add(`<x xmlns='http://jabber.org/protocol/muc#user'><item jid='a@b' nick='n'/><status code='303'/></x>`)
	f.Fuzz(func(t *testing.T, s string) {
		x, err := ParseUserX(xml.NewDecoder(strings.NewReader(s)))
		if err != nil {
			return
		}
		tr := NewTracker(jid.MustParse("me@example.org"))
		tr.Add(jid.MustParse("room@muc.example.org/me"))
		for _, typ := range []stanza.PresenceType{"", stanza.UnavailablePresence, stanza.ErrorPresence} {
			_, _ = tr.HandlePresence(stanza.Presence{From: jid.MustParse("room@muc.example.org/someone"), Type: typ}, x)
			_, _ = tr.HandlePresence(stanza.Presence{From: jid.MustParse("room@muc.example.org/me"), Type: typ}, x)
		}
		tr.HandleMessage(jid.MustParse("room@muc.example.org"), x)
		r, _ := tr.Room(jid.MustParse("room@muc.example.org"))
		_, _ = r.Recipients()
		_, _, _, _ = r.Affiliations()
	})
}
