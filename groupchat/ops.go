package groupchat

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sync"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Limits on what is read of the network.
const (
	maxItems  = 10000 // items of an affiliation list or a muc#user element
	maxStatus = 64    // status codes of a muc#user element
)

// ParseUserX parses a muc#user <x> element; r yields it from its start
// element to its end element.
func ParseUserX(r xml.TokenReader) (UserX, error) {
	var x UserX
	depth := 0
	for {
		tok, err := r.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				depth++
				if depth == 1 {
					if t.Name.Space != NSUser || t.Name.Local != "x" {
						return UserX{}, fmt.Errorf("%w: not a muc#user x", ErrMalformed)
					}
					break
				}
				if depth != 2 || t.Name.Space != NSUser {
					break
				}
				switch t.Name.Local {
				case "item":
					if len(x.Items) >= maxItems {
						return UserX{}, fmt.Errorf("%w: too many items", ErrMalformed)
					}
					it, err := parseItem(t)
					if err != nil {
						return UserX{}, err
					}
					x.Items = append(x.Items, it)
				case "status":
					if len(x.Status) >= maxStatus {
						return UserX{}, fmt.Errorf("%w: too many status codes", ErrMalformed)
					}
					var code int
					if _, err := fmt.Sscanf(attr(t, "code"), "%d", &code); err == nil && code >= 100 && code <= 999 {
						x.Status = append(x.Status, code)
					}
				}
			case xml.EndElement:
				depth--
				if depth == 0 {
					return x, nil
				}
			}
		}
		if err == io.EOF {
			if depth != 0 {
				return UserX{}, fmt.Errorf("%w: truncated", ErrMalformed)
			}
			return x, nil
		}
		if err != nil {
			return UserX{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
}

func parseItem(t xml.StartElement) (Item, error) {
	it := Item{Nick: attr(t, "nick"), Affiliation: attr(t, "affiliation"), Role: attr(t, "role")}
	if v := attr(t, "jid"); v != "" {
		j, err := jid.Parse(v)
		if err != nil {
			return Item{}, fmt.Errorf("%w: item with an invalid jid", ErrMalformed)
		}
		it.JID = j
	}
	switch it.Affiliation {
	case "", Owner, Admin, Member, Outcast, None:
	default:
		return Item{}, fmt.Errorf("%w: unknown affiliation", ErrMalformed)
	}
	return it, nil
}

func attr(t xml.StartElement, local string) string {
	for _, a := range t.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

// JoinPresence returns the presence that joins room (room@service/nick),
// asking for no join history: missed messages come from the room's archive,
// where they can be recognised as duplicates.
func JoinPresence(room jid.JID) xml.TokenReader {
	return stanza.Presence{To: room}.Wrap(xmlstream.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "history"}, Attr: []xml.Attr{{Name: xml.Name{Local: "maxstanzas"}, Value: "0"}}}),
		xml.StartElement{Name: xml.Name{Space: NS, Local: "x"}},
	))
}

// Join joins room (room@service/nick) with send (which sends the presence;
// it must not block on the session's handlers) and waits until the room
// confirms the own occupant, then reads its configuration and lists
// (Refresh). The room must have been added to t, and the presences of the
// room must reach t.HandlePresence meanwhile. It reports whether the join
// created the room (then it is locked until configured, see Create).
func (t *Tracker) Join(ctx context.Context, s *xmpp.Session, room jid.JID, send func(context.Context, xml.TokenReader) error) (*Room, error) {
	r := t.Add(room)
	if err := send(ctx, JoinPresence(room)); err != nil {
		return nil, fmt.Errorf("groupchat: joining %s: %w", room.Bare(), err)
	}
	select {
	case <-r.joinedCh:
	case <-ctx.Done():
		return nil, fmt.Errorf("groupchat: joining %s: %w", room.Bare(), ctx.Err())
	}
	r.mu.Lock()
	err := r.joinErr
	created := r.created
	r.mu.Unlock()
	if err != nil {
		t.Remove(room)
		return nil, err
	}
	if created {
		// A new room is locked until it is configured; its lists and
		// features say nothing yet.
		return r, nil
	}
	return r, t.Refresh(ctx, s, room)
}

// Refresh reads the room's configuration (disco#info features
// muc_nonanonymous and muc_membersonly) and its owner, admin and member
// lists (one query each, in parallel). A list the room refuses (plain
// members may read them only in members-only non-anonymous rooms on
// Prosody) leaves the affiliations seen in presences and is reported by
// Room.Affiliations, not as an error of Refresh.
func (t *Tracker) Refresh(ctx context.Context, s *xmpp.Session, room jid.JID) error {
	r, ok := t.Room(room)
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotTracked, room.Bare())
	}
	info, err := disco.GetInfo(ctx, "", room.Bare(), s)
	if err != nil {
		return fmt.Errorf("groupchat: reading the configuration of %s: %w", room.Bare(), err)
	}
	var nonAnonymous, membersOnly bool
	for _, f := range info.Features {
		switch f.Var {
		case "muc_nonanonymous":
			nonAnonymous = true
		case "muc_membersonly":
			membersOnly = true
		}
	}
	r.setConfig(nonAnonymous, membersOnly)

	affs := []string{Owner, Admin, Member}
	lists := make([][]jid.JID, len(affs))
	errs := make([]error, len(affs))
	var wg sync.WaitGroup
	for i, a := range affs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lists[i], errs[i] = FetchAffiliations(ctx, s, room, a)
		}()
	}
	wg.Wait()
	read := map[string][]jid.JID{}
	var refused []error
	for i, a := range affs {
		switch {
		case errs[i] == nil:
			read[a] = lists[i]
		case errors.Is(errs[i], ErrListsForbidden):
			refused = append(refused, errs[i])
		default:
			return errs[i]
		}
	}
	r.setLists(read, errors.Join(refused...))
	return nil
}

// FetchAffiliations reads the real bare JIDs with an affiliation (owner,
// admin, member or outcast) of room (XEP-0045 §9.5, §10.5, §10.8). A room
// that refuses gives an error matching ErrListsForbidden.
func FetchAffiliations(ctx context.Context, s *xmpp.Session, room jid.JID, affiliation string) ([]jid.JID, error) {
	q := xmlstream.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "item"}, Attr: []xml.Attr{{Name: xml.Name{Local: "affiliation"}, Value: affiliation}}}),
		xml.StartElement{Name: xml.Name{Space: NSAdmin, Local: "query"}},
	)
	resp, err := s.SendIQElement(ctx, q, stanza.IQ{Type: stanza.GetIQ, To: room.Bare()})
	if err != nil {
		return nil, fmt.Errorf("groupchat: reading the %s list of %s: %w", affiliation, room.Bare(), err)
	}
	defer resp.Close()
	var out []jid.JID
	var iqErr error
	depth := 0
	for {
		tok, err := resp.Token()
		if tok != nil {
			switch t := tok.(type) {
			case xml.StartElement:
				depth++
				switch {
				case depth == 1 && attr(t, "type") == string(stanza.ErrorIQ):
					iqErr = errorOf(resp, t)
					depth--
				case depth == 3 && t.Name.Local == "item" && t.Name.Space == NSAdmin:
					if len(out) >= maxItems {
						return nil, fmt.Errorf("%w: more than %d items", ErrMalformed, maxItems)
					}
					if it, err := parseItem(t); err == nil && !it.JID.Equal(jid.JID{}) && it.Affiliation == affiliation {
						out = append(out, it.JID.Bare())
					}
				}
			case xml.EndElement:
				depth--
			}
		}
		if err == io.EOF || iqErr != nil {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("groupchat: reading the %s list of %s: %w", affiliation, room.Bare(), err)
		}
	}
	if iqErr != nil {
		return nil, listError(affiliation, room, iqErr)
	}
	return out, nil
}

// errorOf reads the stanza error of an error IQ whose start was read.
func errorOf(r xml.TokenReader, start xml.StartElement) error {
	d := xml.NewTokenDecoder(xmlstream.MultiReader(xmlstream.Token(start), r))
	var e struct {
		Err stanza.Error `xml:"error"`
	}
	if err := d.Decode(&e); err != nil {
		return fmt.Errorf("%w: undecodable error", ErrMalformed)
	}
	return e.Err
}

func listError(affiliation string, room jid.JID, err error) error {
	var se stanza.Error
	if errors.As(err, &se) && (se.Condition == stanza.Forbidden || se.Condition == stanza.NotAllowed || se.Condition == stanza.NotAuthorized) {
		return fmt.Errorf("%w: the %s list of %s: %w", ErrListsForbidden, affiliation, room.Bare(), err)
	}
	return fmt.Errorf("groupchat: reading the %s list of %s: %w", affiliation, room.Bare(), err)
}

// SetAffiliation gives who (a real JID) an affiliation in room (XEP-0045
// §9.3, §10.3); one request per JID, as Prosody applies only the first
// item of a request.
func SetAffiliation(ctx context.Context, s *xmpp.Session, room, who jid.JID, affiliation string) error {
	q := xmlstream.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "item"}, Attr: []xml.Attr{
			{Name: xml.Name{Local: "affiliation"}, Value: affiliation},
			{Name: xml.Name{Local: "jid"}, Value: who.Bare().String()},
		}}),
		xml.StartElement{Name: xml.Name{Space: NSAdmin, Local: "query"}},
	)
	if err := s.UnmarshalIQElement(ctx, q, stanza.IQ{Type: stanza.SetIQ, To: room.Bare()}, nil); err != nil {
		return fmt.Errorf("groupchat: making %s %s of %s: %w", who.Bare(), affiliation, room.Bare(), err)
	}
	return nil
}

// Configure submits a room configuration form with the given fields
// (XEP-0045 §10.2); the room keeps the fields not named.
func Configure(ctx context.Context, s *xmpp.Session, room jid.JID, fields [][2]string) error {
	toks := []xml.Token{
		xml.StartElement{Name: xml.Name{Space: "jabber:x:data", Local: "x"}, Attr: []xml.Attr{{Name: xml.Name{Local: "type"}, Value: "submit"}}},
	}
	field := func(name, value string) {
		toks = append(toks,
			xml.StartElement{Name: xml.Name{Local: "field"}, Attr: []xml.Attr{{Name: xml.Name{Local: "var"}, Value: name}}},
			xml.StartElement{Name: xml.Name{Local: "value"}}, xml.CharData(value), xml.EndElement{Name: xml.Name{Local: "value"}},
			xml.EndElement{Name: xml.Name{Local: "field"}},
		)
	}
	field("FORM_TYPE", "http://jabber.org/protocol/muc#roomconfig")
	for _, f := range fields {
		field(f[0], f[1])
	}
	toks = append(toks, xml.EndElement{Name: xml.Name{Space: "jabber:x:data", Local: "x"}})
	q := xmlstream.Wrap(xmlstream.ReaderFunc(tokenFunc(toks)), xml.StartElement{Name: xml.Name{Space: NSOwner, Local: "query"}})
	if err := s.UnmarshalIQElement(ctx, q, stanza.IQ{Type: stanza.SetIQ, To: room.Bare()}, nil); err != nil {
		return fmt.Errorf("groupchat: configuring %s: %w", room.Bare(), err)
	}
	return nil
}

func tokenFunc(toks []xml.Token) func() (xml.Token, error) {
	i := 0
	return func() (xml.Token, error) {
		if i >= len(toks) {
			return nil, io.EOF
		}
		i++
		return xml.CopyToken(toks[i-1]), nil
	}
}

// OMEMOConfig is the configuration an OMEMO room needs (XEP-0384 §6.3:
// non-anonymous, and members-only as recommended), persistent so that it
// outlives its occupants.
var OMEMOConfig = [][2]string{
	{"muc#roomconfig_whois", "anyone"},
	{"muc#roomconfig_membersonly", "1"},
	{"muc#roomconfig_persistentroom", "1"},
}

// Create joins room (room@service/nick); if the join created it, it
// configures it with OMEMOConfig (the joiner is its owner), then gives the
// members their affiliation (one request each) and reads the room's state.
// It reports whether the room was created.
func (t *Tracker) Create(ctx context.Context, s *xmpp.Session, room jid.JID, members []jid.JID, send func(context.Context, xml.TokenReader) error) (created bool, err error) {
	r, err := t.Join(ctx, s, room, send)
	if err != nil {
		return false, err
	}
	created = r.Created()
	if created {
		if err := Configure(ctx, s, room, OMEMOConfig); err != nil {
			return true, err
		}
	}
	for _, m := range members {
		if err := SetAffiliation(ctx, s, room, m, Member); err != nil {
			return created, err
		}
	}
	return created, t.Refresh(ctx, s, room)
}

// LeavePresence returns the presence that leaves room.
func LeavePresence(room jid.JID) xml.TokenReader {
	return stanza.Presence{To: room, Type: stanza.UnavailablePresence}.Wrap(nil)
}
