// Package groupchat keeps the state of the XEP-0045 rooms that OMEMO group
// chats depend on, and performs the room operations they need.
//
// OMEMO encrypts a room message for the real JIDs of everyone who belongs
// to the room (owners, admins and members, present or not) and everyone
// present, so a room must show real JIDs (be non-anonymous), and a
// receiver must know which real JID stands behind the nick that a message
// comes from. A Tracker follows the rooms of one account: their
// configuration (non-anonymous, members-only), their occupants with the
// real JIDs that the room's presences give, and their owner, admin and
// member lists, kept up to date from presences and status codes.
//
//	t := groupchat.NewTracker(own)
//	// in the presence handler of muc#user presences:
//	t.HandlePresence(p, x)
//	// once joined:
//	err := t.Refresh(ctx, s, room)
//	r, _ := t.Room(room)
//	recipients, err := r.Recipients()
//
// The real JID of an occupant is taken from the room's presences only and
// never changes while the occupant stays: a presence that tries to give a
// present nick another real JID is refused (ErrRealJIDChanged).
package groupchat // import "mellium.im/omemo/groupchat"

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"

	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Namespaces of XEP-0045.
const (
	NS      = "http://jabber.org/protocol/muc"
	NSUser  = "http://jabber.org/protocol/muc#user"
	NSAdmin = "http://jabber.org/protocol/muc#admin"
	NSOwner = "http://jabber.org/protocol/muc#owner"
)

// Affiliations and roles (XEP-0045 §5).
const (
	Owner   = "owner"
	Admin   = "admin"
	Member  = "member"
	Outcast = "outcast"
	None    = "none"
)

// Status codes (XEP-0045 §15.6) that this package acts on.
const (
	StatusNonAnonymous       = 100 // the room shows real JIDs to everyone
	StatusSelf               = 110 // the presence is about the own occupant
	StatusConfigChanged      = 104 // a non-privacy configuration change
	StatusNowNonAnonymous    = 172
	StatusNowSemiAnonymous   = 173
	StatusNowFullyAnonymous  = 174
	StatusCreated            = 201
	StatusNickChanged        = 303
	StatusAffiliationChanged = 321
	StatusMembersOnlyRemoval = 322
)

// Errors. They never quote data of the network.
var (
	// ErrAnonymous means that the room does not show real JIDs to every
	// occupant: OMEMO cannot know who to encrypt for.
	ErrAnonymous = errors.New("groupchat: the room is not non-anonymous: real JIDs are hidden")
	// ErrUnknownOccupant means that no real JID is known for an occupant.
	ErrUnknownOccupant = errors.New("groupchat: no real JID known for the occupant")
	// ErrRealJIDChanged means that a presence tried to give a present
	// occupant another real JID; it was refused.
	ErrRealJIDChanged = errors.New("groupchat: presence changes the real JID of a present occupant")
	// ErrNotTracked means that the room is not tracked.
	ErrNotTracked = errors.New("groupchat: room not tracked")
	// ErrListsForbidden means that the room refused (some of) its owner,
	// admin or member lists: only present occupants and the affiliations
	// seen in presences are known.
	ErrListsForbidden = errors.New("groupchat: the room refused its affiliation lists")
	// ErrJoinRefused means that the room answered the join with an error
	// (not a member, banned, the room is gone…).
	ErrJoinRefused = errors.New("groupchat: the room refused to let us join")
	// ErrMalformed reports a muc#user element that does not parse.
	ErrMalformed = errors.New("groupchat: malformed muc#user element")
)

// Occupant is someone present in a room.
type Occupant struct {
	Nick string
	// JID is the real full JID the room gave; zero if it hides it.
	JID         jid.JID
	Affiliation string
	Role        string
}

// Room is the state of one tracked room. It is safe for concurrent use;
// its methods return copies.
type Room struct {
	jid  jid.JID // bare
	nick string  // own

	mu            sync.Mutex
	joined        bool
	joinedCh      chan struct{}
	joinErr       error
	created       bool
	configKnown   bool
	nonAnonymous  bool
	membersOnly   bool
	occupants     map[string]Occupant
	affiliations  map[string]string // bare real JID -> owner/admin/member
	listsComplete bool
	listsErr      error
}

func newRoom(room jid.JID) *Room {
	return &Room{
		jid: room.Bare(), nick: room.Resourcepart(),
		joinedCh:     make(chan struct{}),
		occupants:    map[string]Occupant{},
		affiliations: map[string]string{},
	}
}

// JID returns the room's bare JID.
func (r *Room) JID() jid.JID { return r.jid }

// Nick returns the own nick.
func (r *Room) Nick() string { return r.nick }

// Joined reports whether the own occupant is in the room.
func (r *Room) Joined() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.joined
}

// Created reports whether the own join created the room (status 201).
func (r *Room) Created() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.created
}

// NonAnonymous reports whether the room shows real JIDs to every occupant,
// as far as known (from its configuration or the join's status 100).
func (r *Room) NonAnonymous() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nonAnonymous
}

// MembersOnly reports whether only members may enter (from the
// configuration).
func (r *Room) MembersOnly() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.membersOnly
}

// Occupant returns the present occupant with that nick.
func (r *Room) Occupant(nick string) (Occupant, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.occupants[nick]
	return o, ok
}

// RealJID returns the real bare JID of the occupant with that nick, or an
// error matching ErrUnknownOccupant.
func (r *Room) RealJID(nick string) (jid.JID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.occupants[nick]
	if !ok || o.JID.Equal(jid.JID{}) {
		return jid.JID{}, fmt.Errorf("%w: %s in %s", ErrUnknownOccupant, strconv.Quote(nick), r.jid)
	}
	return o.JID.Bare(), nil
}

// Occupants returns the present occupants, by nick.
func (r *Room) Occupants() []Occupant {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Occupant, 0, len(r.occupants))
	for _, o := range r.occupants {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Nick < out[j].Nick })
	return out
}

// Affiliations returns the real bare JIDs of the owners, admins and members
// known, and nil if the lists were read completely, else why not
// (matching ErrListsForbidden when the room refused them: then only the
// affiliations seen in presences are known).
func (r *Room) Affiliations() (owners, admins, members []jid.JID, incomplete error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for j, a := range r.affiliations {
		bare, err := jid.Parse(j)
		if err != nil {
			continue
		}
		switch a {
		case Owner:
			owners = append(owners, bare)
		case Admin:
			admins = append(admins, bare)
		case Member:
			members = append(members, bare)
		}
	}
	for _, l := range [][]jid.JID{owners, admins, members} {
		slices.SortFunc(l, func(a, b jid.JID) int { return compareString(a.String(), b.String()) })
	}
	if !r.listsComplete {
		incomplete = r.listsErr
		if incomplete == nil {
			incomplete = fmt.Errorf("%w: not read yet", ErrListsForbidden)
		}
	}
	return owners, admins, members, incomplete
}

func compareString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Recipients returns the real bare JIDs an OMEMO message to the room is
// encrypted for (XEP-0384 §6.3): the owners, admins and members, present
// or not, and the occupants present, sorted and without duplicates; the
// own account is among them when it belongs to the room. It fails with
// ErrAnonymous if the room does not show real JIDs, and with
// ErrUnknownOccupant if a present occupant's real JID is hidden.
func (r *Room) Recipients() ([]jid.JID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.nonAnonymous {
		return nil, fmt.Errorf("%w: %s", ErrAnonymous, r.jid)
	}
	seen := map[string]bool{}
	var out []jid.JID
	add := func(j jid.JID) {
		b := j.Bare()
		if !seen[b.String()] {
			seen[b.String()] = true
			out = append(out, b)
		}
	}
	for j, a := range r.affiliations {
		if a != Owner && a != Admin && a != Member {
			continue
		}
		if b, err := jid.Parse(j); err == nil {
			add(b)
		}
	}
	for _, o := range r.occupants {
		if o.JID.Equal(jid.JID{}) {
			return nil, fmt.Errorf("%w: %s in %s", ErrUnknownOccupant, strconv.Quote(o.Nick), r.jid)
		}
		add(o.JID)
	}
	slices.SortFunc(out, func(a, b jid.JID) int { return compareString(a.String(), b.String()) })
	return out, nil
}

// Tracker follows the rooms of one account. It is safe for concurrent use.
type Tracker struct {
	own jid.JID // bare

	mu    sync.Mutex
	rooms map[string]*Room
}

// NewTracker returns a tracker for the account own.
func NewTracker(own jid.JID) *Tracker {
	return &Tracker{own: own.Bare(), rooms: map[string]*Room{}}
}

// Add starts tracking room (room@service/nick, the own occupant JID), before
// joining it so that the presences of the join are recorded. A room that is
// tracked already with the same nick is returned as it is.
func (t *Tracker) Add(room jid.JID) *Room {
	t.mu.Lock()
	defer t.mu.Unlock()
	key := room.Bare().String()
	if r, ok := t.rooms[key]; ok && r.nick == room.Resourcepart() {
		return r
	}
	r := newRoom(room)
	t.rooms[key] = r
	return r
}

// Reset replaces every tracked room by a new one that is not joined, with
// the same own nick, and returns their occupant JIDs (room@service/nick):
// after the connection was lost the room no longer has the own occupant,
// and what was known of the others may be stale. Join them again.
func (t *Tracker) Reset() []jid.JID {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]jid.JID, 0, len(t.rooms))
	for key, r := range t.rooms {
		full, err := r.jid.WithResource(r.nick)
		if err != nil {
			delete(t.rooms, key)
			continue
		}
		t.rooms[key] = newRoom(full)
		out = append(out, full)
	}
	slices.SortFunc(out, func(a, b jid.JID) int { return compareString(a.String(), b.String()) })
	return out
}

// Remove stops tracking a room.
func (t *Tracker) Remove(room jid.JID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.rooms, room.Bare().String())
}

// Room returns the tracked room with that (bare) JID.
func (t *Tracker) Room(room jid.JID) (*Room, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.rooms[room.Bare().String()]
	return r, ok
}

// Rooms returns the tracked rooms.
func (t *Tracker) Rooms() []*Room {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Room, 0, len(t.rooms))
	for _, r := range t.rooms {
		out = append(out, r)
	}
	return out
}

// UserX is the muc#user <x> element of a room presence or message.
type UserX struct {
	Items  []Item
	Status []int
}

// Has reports whether the element carries a status code.
func (x UserX) Has(code int) bool { return slices.Contains(x.Status, code) }

// Item is an <item/> of a muc#user element.
type Item struct {
	JID         jid.JID
	Nick        string
	Affiliation string
	Role        string
}

// HandlePresence applies a presence from an occupant of a tracked room
// (from = room@service/nick) that carries the muc#user element x. It
// returns false for presences of rooms that are not tracked, and an error
// matching ErrRealJIDChanged for a presence that tries to give a present
// occupant another real JID (the occupant keeps the first one).
func (t *Tracker) HandlePresence(p stanza.Presence, x UserX) (tracked bool, err error) {
	r, ok := t.Room(p.From)
	if !ok {
		return false, nil
	}
	return true, r.applyPresence(p, x)
}

func (r *Room) applyPresence(p stanza.Presence, x UserX) error {
	nick := p.From.Resourcepart()
	if nick == "" {
		return nil
	}
	var item Item
	if len(x.Items) > 0 {
		item = x.Items[0]
	}
	self := x.Has(StatusSelf) || nick == r.nick
	r.mu.Lock()
	defer r.mu.Unlock()
	if o, present := r.occupants[nick]; present && p.Type != stanza.UnavailablePresence &&
		!item.JID.Equal(jid.JID{}) && !o.JID.Equal(jid.JID{}) && !o.JID.Bare().Equal(item.JID.Bare()) {
		return fmt.Errorf("%w: %s in %s", ErrRealJIDChanged, strconv.Quote(nick), r.jid)
	}
	// An affiliation seen for a real JID updates the lists too (for
	// present and absent users alike).
	if !item.JID.Equal(jid.JID{}) && item.Affiliation != "" {
		r.setAffiliationLocked(item.JID, item.Affiliation)
	}
	switch p.Type {
	case stanza.ErrorPresence:
		if self && !r.joined {
			r.joinErr = fmt.Errorf("%w: %s", ErrJoinRefused, r.jid)
			r.closeJoinedLocked()
		}
		return nil
	case stanza.UnavailablePresence:
		if x.Has(StatusNickChanged) && item.Nick != "" {
			if o, ok := r.occupants[nick]; ok {
				delete(r.occupants, nick)
				o.Nick = item.Nick
				r.occupants[item.Nick] = o
			}
			if self {
				r.nick = item.Nick
			}
			return nil
		}
		delete(r.occupants, nick)
		if self {
			r.joined = false
		}
		return nil
	case stanza.AvailablePresence:
	default:
		return nil
	}
	o := r.occupants[nick]
	o.Nick = nick
	if !item.JID.Equal(jid.JID{}) {
		o.JID = item.JID
	}
	if item.Affiliation != "" {
		o.Affiliation = item.Affiliation
	}
	if item.Role != "" {
		o.Role = item.Role
	}
	r.occupants[nick] = o
	if x.Has(StatusNonAnonymous) {
		r.nonAnonymous = true
	}
	if self {
		if x.Has(StatusCreated) {
			r.created = true
		}
		if !r.joined {
			r.joined = true
			r.closeJoinedLocked()
		}
	}
	return nil
}

func (r *Room) closeJoinedLocked() {
	select {
	case <-r.joinedCh:
	default:
		close(r.joinedCh)
	}
}

func (r *Room) setAffiliationLocked(real jid.JID, affiliation string) {
	key := real.Bare().String()
	switch affiliation {
	case Owner, Admin, Member:
		r.affiliations[key] = affiliation
	default:
		delete(r.affiliations, key)
	}
}

// HandleMessage applies the status codes of a message from a tracked room
// (from its bare JID) carrying the muc#user element x, and reports whether
// the room's configuration changed so that Refresh should run again.
func (t *Tracker) HandleMessage(from jid.JID, x UserX) (refresh bool) {
	r, ok := t.Room(from)
	if !ok || from.Resourcepart() != "" {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, code := range x.Status {
		switch code {
		case StatusNowNonAnonymous:
			r.nonAnonymous = true
			refresh = true
		case StatusNowSemiAnonymous, StatusNowFullyAnonymous:
			// Stop encrypting at once: until a refresh says otherwise,
			// real JIDs may be hidden from some occupants.
			r.nonAnonymous = false
			refresh = true
		case StatusConfigChanged:
			refresh = true
		}
	}
	return refresh
}

// setConfig records what the room's disco#info says.
func (r *Room) setConfig(nonAnonymous, membersOnly bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.configKnown = true
	r.nonAnonymous = nonAnonymous
	r.membersOnly = membersOnly
}

// setLists replaces the affiliations with the lists read; err says which
// could not be read (those keep what presences told).
func (r *Room) setLists(lists map[string][]jid.JID, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for affiliation, l := range lists {
		for k, a := range r.affiliations {
			if a == affiliation {
				delete(r.affiliations, k)
			}
		}
		for _, j := range l {
			r.setAffiliationLocked(j, affiliation)
		}
	}
	r.listsComplete = err == nil
	r.listsErr = err
}
