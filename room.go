package omemo

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"sync"
	"time"

	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/internal/muxgate"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// Group chats (XEP-0045 rooms, XEP-0384 §6.3). The room state lives in
// package groupchat; this file wires it into the plugin: the muc#user
// presences and status messages feed the tracker, group messages are
// encrypted for every real JID that belongs to the room and decrypted with
// the real JID the room state gives for the sending nick.

// Errors of group chats.
var (
	// ErrForgedReflection reports a room message from the own nick and
	// the own device that this plugin did not send (or no longer
	// remembers): it is not delivered.
	ErrForgedReflection = errors.New("omemo: room message from the own device that was not sent by it")
	// ErrRoomNotJoined reports an operation on a room the plugin does not
	// track (JoinRoom, CreateRoom or TrackRoom first).
	ErrRoomNotJoined = errors.New("omemo: room not joined")
)

// maxReflections bounds the sent room messages remembered until the room
// reflects them.
const maxReflections = 256

// mucPresenceHandler receives the muc#user presences (and the error
// presences of joins).
type mucPresenceHandler struct {
	p    *Plugin
	gate *muxgate.Gate
}

// HandlePresence implements mux.PresenceHandler. It never returns an error.
func (h mucPresenceHandler) HandlePresence(pres stanza.Presence, t xmlstream.TokenReadEncoder) error {
	p := h.p
	defer func() {
		if r := recover(); r != nil {
			p.report(fmt.Errorf("%w: internal error in a room presence: %v", ErrMalformedStanza, r))
		}
	}()
	tok, err := t.Token()
	start, ok := tok.(xml.StartElement)
	if err != nil || !ok || h.gate.Repeat(start) {
		return nil
	}
	toks, calls, err := muxgate.Read(start, t, stanzaLimits, func(n xml.Name) bool {
		return n.Local == "x" && (n.Space == groupchat.NSUser || n.Space == groupchat.NS)
	})
	h.gate.Handled(start, calls-1)
	if err != nil {
		p.report(fmt.Errorf("omemo: room presence from %s: %w: %w", pres.From, ErrMalformedStanza, err))
		return nil
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil
	}
	x := groupchat.UserX{}
	if ux := root.child(groupchat.NSUser, "x"); ux != nil {
		if x, err = groupchat.ParseUserX(tokenSlice(ux.toks)); err != nil {
			p.report(fmt.Errorf("omemo: room presence from %s: %w", pres.From, err))
			return nil
		}
	}
	if _, err := p.rooms.HandlePresence(pres, x); err != nil {
		p.report(fmt.Errorf("omemo: room presence from %s refused: %w", pres.From, err))
	}
	// The application's muc.Client sees every presence, as if it had
	// registered its own handler.
	if c := p.cfg.MUCClient; c != nil && pres.Type != stanza.ErrorPresence {
		_ = c.HandlePresence(pres, struct {
			xml.TokenReader
			xmlstream.Encoder
		}{tokenSlice(toks), t})
	}
	return nil
}

// mucMessageHandler receives room status messages (groupchat) and
// mediated invitations (normal) that carry a muc#user element.
type mucMessageHandler struct {
	p    *Plugin
	gate *muxgate.Gate
}

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h mucMessageHandler) HandleMessage(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
	p := h.p
	defer func() {
		if r := recover(); r != nil {
			p.report(fmt.Errorf("%w: internal error in a room message: %v", ErrMalformedStanza, r))
		}
	}()
	tok, err := t.Token()
	start, ok := tok.(xml.StartElement)
	if err != nil || !ok || h.gate.Repeat(start) {
		return nil
	}
	toks, calls, err := muxgate.Read(start, t, stanzaLimits, func(n xml.Name) bool {
		return n.Local == "x" && n.Space == groupchat.NSUser
	})
	h.gate.Handled(start, calls-1)
	if err != nil {
		return nil
	}
	if msg.Type == stanza.NormalMessage {
		if c := p.cfg.MUCClient; c != nil {
			_ = c.HandleMessage(msg, struct {
				xml.TokenReader
				xmlstream.Encoder
			}{tokenSlice(toks), t})
		}
		return nil
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil
	}
	ux := root.child(groupchat.NSUser, "x")
	if ux == nil {
		return nil
	}
	x, err := groupchat.ParseUserX(tokenSlice(ux.toks))
	if err != nil {
		return nil
	}
	if p.rooms.HandleMessage(msg.From, x) {
		// The configuration changed: read it again, off the Serve
		// goroutine.
		room := msg.From.Bare()
		go func() {
			ctx, done := bounded(p.workCtx, p.cfg.NetworkTimeout)
			defer done()
			s, err := p.session()
			if err != nil {
				return
			}
			if err := p.rooms.Refresh(ctx, s, room); err != nil && p.workCtx.Err() == nil {
				p.report(fmt.Errorf("omemo: reading the changed configuration of %s: %w", room, err))
			}
		}()
	}
	return nil
}

// handleRooms registers the room handlers on the mux.
func (p *Plugin) handleRooms(m *mux.ServeMux) {
	user := xmlName(groupchat.NSUser, "x")
	ph := mucPresenceHandler{p: p, gate: &muxgate.Gate{}}
	mux.Presence(stanza.AvailablePresence, user, ph)(m)
	mux.Presence(stanza.UnavailablePresence, user, ph)(m)
	// A refused join comes back as an error presence carrying the
	// muc <x/> of the request.
	mux.Presence(stanza.ErrorPresence, xmlName(groupchat.NS, "x"), ph)(m)
	mh := mucMessageHandler{p: p, gate: &muxgate.Gate{}}
	mux.Message(stanza.GroupChatMessage, user, mh)(m)
	mux.Message(stanza.NormalMessage, user, mh)(m)
}

// JoinRoom joins a room (room@service/nick) and tracks it: its
// configuration, its occupants with their real JIDs and its owner, admin
// and member lists. It returns once the room confirmed the own occupant
// and the state was read. No join history is requested: CatchUpRoom reads
// missed messages from the room's archive.
func (p *Plugin) JoinRoom(ctx context.Context, room jid.JID) (*groupchat.Room, error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	if _, err := p.manager(); err != nil {
		return nil, err
	}
	s, err := p.session()
	if err != nil {
		return nil, err
	}
	if room.Resourcepart() == "" {
		return nil, fmt.Errorf("omemo: joining %s: no nick (room@service/nick)", room)
	}
	jctx, jdone := bounded(ctx, 2*p.cfg.NetworkTimeout)
	defer jdone()
	r, err := p.rooms.Join(jctx, s, room, p.sendReaderCtx)
	if err != nil {
		return nil, err
	}
	if err := p.writeEpoch(ctx, roomEpochKey(room)); err != nil {
		return r, fmt.Errorf("omemo: recording the first join of %s: %w", room.Bare(), err)
	}
	return r, nil
}

// maxParallelRejoins bounds the rooms joined again at once after a
// reconnection.
const maxParallelRejoins = 8

// rejoinRooms joins the tracked rooms again on a new connection. A room
// that refuses is no longer tracked; one that does not answer stays
// tracked, not joined, until the next connection. Both are reported to
// OnError.
func (p *Plugin) rejoinRooms(ctx context.Context) {
	s, err := p.session()
	if err != nil {
		return
	}
	slots := make(chan struct{}, maxParallelRejoins)
	var wg sync.WaitGroup
	for _, r := range p.rooms.Rooms() {
		if r.Joined() {
			continue
		}
		full, err := r.JID().WithResource(r.Nick())
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			jctx, jdone := bounded(ctx, 2*p.cfg.NetworkTimeout)
			defer jdone()
			if _, err := p.rooms.Join(jctx, s, full, p.sendReaderCtx); err != nil {
				if errors.Is(err, groupchat.ErrJoinRefused) {
					p.rooms.Remove(full)
				} else {
					p.rooms.Add(full) // Join stopped tracking it: keep it for the next connection
				}
				p.report(fmt.Errorf("omemo: joining %s again after reconnecting: %w", full.Bare(), err))
			}
		}()
	}
	wg.Wait()
}

// CreateRoom joins room (room@service/nick) and, if the join created it,
// configures it as OMEMO needs (non-anonymous, members-only, persistent;
// the creator is its owner); then it gives each of members the member
// affiliation. It reports whether the room was created.
func (p *Plugin) CreateRoom(ctx context.Context, room jid.JID, members ...jid.JID) (created bool, err error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	if _, err := p.manager(); err != nil {
		return false, err
	}
	s, err := p.session()
	if err != nil {
		return false, err
	}
	cctx, cdone := bounded(ctx, time.Duration(4+len(members))*p.cfg.NetworkTimeout)
	defer cdone()
	created, err = p.rooms.Create(cctx, s, room, members, p.sendReaderCtx)
	if err != nil {
		return created, err
	}
	if err := p.writeEpoch(ctx, roomEpochKey(room)); err != nil {
		return created, fmt.Errorf("omemo: recording the first join of %s: %w", room.Bare(), err)
	}
	return created, nil
}

// TrackRoom starts tracking a room the application joins itself (with
// mellium.im/xmpp/muc, passing its muc.Client in Config.MUCClient): call it
// before joining, so that the join's presences are recorded, then call
// RefreshRoom once joined.
func (p *Plugin) TrackRoom(room jid.JID) *groupchat.Room {
	return p.rooms.Add(room)
}

// RefreshRoom reads a tracked room's configuration and lists again.
func (p *Plugin) RefreshRoom(ctx context.Context, room jid.JID) error {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	s, err := p.session()
	if err != nil {
		return err
	}
	rctx, rdone := bounded(ctx, p.cfg.NetworkTimeout)
	defer rdone()
	return p.rooms.Refresh(rctx, s, room)
}

// Room returns a tracked room's state.
func (p *Plugin) Room(room jid.JID) (*groupchat.Room, bool) {
	return p.rooms.Room(room)
}

// LeaveRoom leaves a room and stops tracking it.
func (p *Plugin) LeaveRoom(ctx context.Context, room jid.JID) error {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	r, ok := p.rooms.Room(room)
	if !ok {
		return fmt.Errorf("%w: %s", ErrRoomNotJoined, room.Bare())
	}
	p.rooms.Remove(room)
	full, err := room.Bare().WithResource(r.Nick())
	if err != nil {
		return err
	}
	return p.sendReaderCtx(ctx, groupchat.LeavePresence(full))
}

// sendReaderCtx sends a stanza built by r.
func (p *Plugin) sendReaderCtx(ctx context.Context, r xml.TokenReader) error {
	return p.sendReader(ctx, r)
}

// SkipMembersWithoutOMEMO lets SendGroup send to a room in which some
// members have no device that can be encrypted for: they are named in
// SendResult.Unreached. By default such a send fails and nothing is sent.
func SkipMembersWithoutOMEMO() SendOption {
	return func(o *sendOptions) { o.skipUnreached = true }
}

// SendGroup encrypts body for a room the plugin tracks and sends it there
// (type groupchat): for every device of every real JID that belongs to
// the room (owners, admins and members, present or not), of every occupant
// present, and of the own account (but this device), under the trust
// policy. Device lists and bundles of all of them are fetched in parallel.
// The OMEMO 2 envelope's <to> is the room.
//
// It fails closed, before anything is sent: a room that is not
// non-anonymous (groupchat.ErrAnonymous), an occupant whose real JID is
// hidden (groupchat.ErrUnknownOccupant), a member without a usable device
// (session.ErrNoEligibleDevices, unless SkipMembersWithoutOMEMO), a device
// left undecided by the policy (session.ErrStillUndecided).
func (p *Plugin) SendGroup(ctx context.Context, room jid.JID, body string, opts ...SendOption) (*SendResult, error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	mgr, err := p.manager()
	if err != nil {
		return nil, err
	}
	if err := p.connected(); err != nil {
		return nil, err
	}
	r, ok := p.rooms.Room(room)
	if !ok || !r.Joined() {
		return nil, fmt.Errorf("%w: %s", ErrRoomNotJoined, room.Bare())
	}
	members, err := r.Recipients()
	if err != nil {
		return nil, fmt.Errorf("omemo: sending to %s: %w", room.Bare(), err)
	}
	o := p.sendOptionsOf(opts)
	roomJID := room.Bare()
	listErr := p.ensureDeviceLists(ctx, mgr, append(members, p.own)...)

	plaintexts, err := p.plaintexts(mgr, body, roomJID)
	if err != nil {
		return nil, err
	}
	to := make([]string, 0, len(members))
	for _, j := range members {
		to = append(to, j.String())
	}
	var eopts []session.EncryptOption
	if o.skipUnreached {
		eopts = append(eopts, session.AllowUnreached())
	}
	p.rememberReflection(roomJID, o.id, body)
	res, err := mgr.Encrypt(ctx, to, plaintexts, func(res *session.EncryptResult) error {
		toks, err := outgoingTokensOfType(roomJID, stanza.GroupChatMessage, o.id, res.Messages, o.fallback)
		if err != nil {
			return fmt.Errorf("%w: %w", session.ErrNotSent, err)
		}
		return p.send(ctx, toks)
	}, eopts...)
	if err != nil {
		p.forgetReflection(roomJID, o.id)
		if listErr != nil && errors.Is(err, session.ErrNoEligibleDevices) {
			return nil, fmt.Errorf("%w; fetching the device lists: %w", err, listErr)
		}
		return nil, err
	}
	return &SendResult{ID: o.id, Recipients: res.Recipients, Failures: res.Failures, Unreached: res.Unreached}, nil
}

// plaintexts builds what each loaded backend encrypts: the SCE envelope
// (to: the recipient, or the room) for OMEMO 2, the body for legacy OMEMO.
func (p *Plugin) plaintexts(mgr *session.Manager, body string, to jid.JID) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, namespace := range mgr.Namespaces() {
		switch namespace {
		case ns.OMEMO2:
			env, err := sce.New(bodyContent(body), p.own, to, p.cfg.Now(), p.cfg.Rand)
			if err != nil {
				return nil, fmt.Errorf("omemo: building the SCE envelope: %w", err)
			}
			raw, err := env.Marshal()
			if err != nil {
				return nil, fmt.Errorf("omemo: building the SCE envelope: %w", err)
			}
			out[namespace] = raw
		case ns.Legacy:
			out[namespace] = []byte(body)
		}
	}
	return out, nil
}

// reflections remembers the room messages sent and not reflected yet.
type reflections struct {
	mu    sync.Mutex
	order []string
	body  map[string]string // room + "\x00" + id
}

func (p *Plugin) rememberReflection(room jid.JID, id, body string) {
	r := &p.reflect
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.body == nil {
		r.body = map[string]string{}
	}
	key := room.String() + "\x00" + id
	r.body[key] = body
	r.order = append(r.order, key)
	for len(r.order) > maxReflections {
		delete(r.body, r.order[0])
		r.order = r.order[1:]
	}
}

func (p *Plugin) forgetReflection(room jid.JID, id string) {
	r := &p.reflect
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.body, room.String()+"\x00"+id)
}

// takeReflection returns and forgets the body of a sent room message.
func (p *Plugin) takeReflection(room jid.JID, id string) (string, bool) {
	r := &p.reflect
	r.mu.Lock()
	defer r.mu.Unlock()
	key := room.String() + "\x00" + id
	b, ok := r.body[key]
	delete(r.body, key)
	return b, ok
}

// CatchUpRoom reads a tracked room's archive (XEP-0313 on the room's JID)
// and hands every OMEMO message in it to the Handler with Archived and Room
// set, decrypted with the real JID the archive names (non-anonymous rooms
// add it), or the room state gives. Messages already received are skipped,
// as are the own ones.
//
// Without since it continues from the room's stored archive position (or
// from when the room was first joined); with since it reads from that
// time on. CatchUp does this for every joined room.
func (p *Plugin) CatchUpRoom(ctx context.Context, room jid.JID, since ...time.Time) error {
	if len(since) > 1 {
		return errors.New("omemo: CatchUpRoom takes at most one time")
	}
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	if _, err := p.manager(); err != nil {
		return err
	}
	s, err := p.session()
	if err != nil {
		return err
	}
	roomJID := room.Bare()
	if _, ok := p.rooms.Room(roomJID); !ok {
		return fmt.Errorf("%w: %s", ErrRoomNotJoined, roomJID)
	}
	gen := p.connGen()
	if len(since) == 1 {
		err = p.readArchive(ctx, s, roomJID, since[0], "", roomPositionKey(roomJID))
	} else {
		err = p.continueArchive(ctx, s, roomJID, roomPositionKey(roomJID), roomEpochKey(roomJID))
	}
	if err != nil {
		return err
	}
	p.setCaughtUp(gen, roomJID)
	return nil
}
