package omemo

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/internal/muxgate"
	"mellium.im/omemo/sce"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/carbons"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Namespaces of the wrappers the plugin opens.
const (
	nsClient  = stanza.NSClient
	nsMAM     = "urn:xmpp:mam:2"
	nsForward = "urn:xmpp:forward:0"
	nsDelay   = "urn:xmpp:delay"
	nsSID     = "urn:xmpp:sid:0"
)

// Limits on a received stanza, far above what an honest OMEMO message
// needs (see the limits of package encrypted), so that a hostile stanza
// cannot make the handler retain unbounded memory.
const (
	maxStanzaTokens = 1 << 17
	maxStanzaBytes  = 2 * encrypted.MaxTotalSize
	maxDepth        = 32
)

func xmlName(space, local string) xml.Name { return xml.Name{Space: space, Local: local} }

func encryptedName(namespace string) xml.Name { return xmlName(namespace, "encrypted") }

func devicelistNode(namespace string) string { return devicelist.Node(namespace) }

// elem is an element of a received stanza.
type elem struct {
	start    xml.StartElement
	toks     []xml.Token // from the start to the end element, inclusive
	children []*elem
}

func (e *elem) attr(local string) string {
	for _, a := range e.start.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

func (e *elem) is(space, local string) bool {
	return e.start.Name.Space == space && e.start.Name.Local == local
}

// child returns the first child element named {space}local.
func (e *elem) child(space, local string) *elem {
	for _, c := range e.children {
		if c.is(space, local) {
			return c
		}
	}
	return nil
}

// count returns the number of child elements named {space}local.
func (e *elem) count(space, local string) int {
	n := 0
	for _, c := range e.children {
		if c.is(space, local) {
			n++
		}
	}
	return n
}

// buildTree turns the tokens of one element into a tree.
func buildTree(toks []xml.Token) (*elem, error) {
	var root *elem
	n := 0
	for _, tok := range toks {
		if _, ok := tok.(xml.StartElement); ok {
			n++
		}
	}
	// All elements in one allocation, the stacks on the stack.
	elems := make([]elem, n)
	stack := make([]*elem, 0, maxDepth)
	starts := make([]int, 0, maxDepth)
	for i, tok := range toks {
		switch t := tok.(type) {
		case xml.StartElement:
			if root != nil && len(stack) == 0 {
				return nil, fmt.Errorf("%w: trailing element", ErrMalformedStanza)
			}
			if len(stack) >= maxDepth {
				return nil, fmt.Errorf("%w: nested too deeply", ErrMalformedStanza)
			}
			e := &elems[0]
			elems = elems[1:]
			e.start = t
			if len(stack) > 0 {
				parent := stack[len(stack)-1]
				parent.children = append(parent.children, e)
			} else {
				root = e
			}
			stack = append(stack, e)
			starts = append(starts, i)
		case xml.EndElement:
			if len(stack) == 0 {
				return nil, fmt.Errorf("%w: unbalanced end element", ErrMalformedStanza)
			}
			e := stack[len(stack)-1]
			if e.start.Name != t.Name {
				return nil, fmt.Errorf("%w: mismatched end element", ErrMalformedStanza)
			}
			e.toks = toks[starts[len(starts)-1] : i+1]
			stack, starts = stack[:len(stack)-1], starts[:len(starts)-1]
		case xml.CharData:
			if len(stack) == 0 && len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: text outside the element", ErrMalformedStanza)
			}
		}
	}
	if root == nil || len(stack) != 0 {
		return nil, fmt.Errorf("%w: incomplete element", ErrMalformedStanza)
	}
	return root, nil
}

// inbound is a received OMEMO message, copied out of the Serve goroutine.
type inbound struct {
	msg       stanza.Message // attributes of the (inner) message stanza
	sender    jid.JID        // bare JID of the sending account
	senderStr string         // sender.String(), once queued (senderString)
	encs      []*encrypted.Encrypted
	originID  string
	archiveID string
	delay     time.Time
	carbon    bool
	sent      bool
	archived  bool
	// room is the bare JID of the room of a group chat message and nick the
	// sender's nick; ownNick tells the own nick (the room's reflection of
	// a message of this device, or one of another device of the account).
	room    jid.JID
	nick    string
	ownNick bool
	// stanzaIDs are the XEP-0359 stanza-ids (by, id) of a live message.
	stanzaIDs [][2]string
	// bookkeeping is written with the decryption (the archive position
	// that a live message moves, see history.go), if the worker allows it.
	bookkeeping [][2]string
	// spillSeq is the spill entry the message came from (0: none);
	// consumed reports that its decryption committed (and removed it).
	spillSeq uint64
	consumed bool
}

// senderString returns in.sender.String(); sender must not change once it
// was called (it is final once the message is queued).
func (in *inbound) senderString() string {
	if in.senderStr == "" {
		in.senderStr = in.sender.String()
	}
	return in.senderStr
}

// kinds of received stanzas.
const (
	kindDirect  = "direct"
	kindCarbon  = "carbon"
	kindArchive = "archive"
	kindGroup   = "group"
)

// maxOMEMOChildren bounds the children of one stanza that the plugin's
// handlers match (<encrypted> of each namespace, carbon wrappers, MAM
// results). An honest stanza has at most one <encrypted> per namespace or
// one wrapper; a stanza with more is rejected once, as a whole.
const maxOMEMOChildren = 8

type directHandler struct {
	p         *Plugin
	namespace string
}

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h directHandler) HandleMessage(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(msg, t)
	return nil
}

type carbonHandler struct{ p *Plugin }

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h carbonHandler) HandleMessage(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(msg, t)
	return nil
}

type archiveHandler struct{ p *Plugin }

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h archiveHandler) HandleMessage(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(msg, t)
	return nil
}

// report hands err to Config.OnError.
func (p *Plugin) report(err error) {
	defer func() { _ = recover() }()
	p.cfg.OnError(err)
}

// kindOf returns the kind of child a handler registered by Handle receives
// in a message of type typ, "" for children no handler of the plugin
// receives. It mirrors the patterns Handle registers, so that the number
// of calls the mux makes for a stanza is known after the first.
func (p *Plugin) kindOf(typ stanza.MessageType, name xml.Name) string {
	switch typ {
	case stanza.ChatMessage, stanza.NormalMessage:
	case stanza.GroupChatMessage:
		if name.Local == "encrypted" && p.supports(name.Space) {
			return kindGroup
		}
		return ""
	default:
		return ""
	}
	switch {
	case name.Local == "encrypted" && p.supports(name.Space):
		return kindDirect
	case name.Space == carbons.NS && (name.Local == "received" || name.Local == "sent"):
		return kindCarbon
	case typ == stanza.NormalMessage && name.Space == nsMAM && name.Local == "result":
		return kindArchive
	}
	return ""
}

// receive runs in the Serve goroutine: it copies and parses the stanza,
// checks its wrappers and queues it for decryption. It does no network
// work, never blocks and never fails (errors go to OnError).
//
// The mux calls it once per matching child, each time with a reader that
// replays the whole stanza: the first call handles the stanza whole (every
// kind of OMEMO content in it, once) and the following calls for the same
// stanza return after one token, so the work stays linear in its size.
func (p *Plugin) receive(msg stanza.Message, t xmlstream.TokenReadEncoder) {
	defer func() {
		if r := recover(); r != nil {
			p.report(fmt.Errorf("%w: internal error: %v", ErrMalformedStanza, r))
		}
	}()
	select {
	case <-p.closing:
		return
	default:
	}
	tok, err := t.Token()
	start, ok := tok.(xml.StartElement)
	if err != nil || !ok {
		p.report(&DecryptError{ID: msg.ID, Err: fmt.Errorf("%w: no stanza start", ErrMalformedStanza)})
		return
	}
	if p.gate.Repeat(start) {
		return
	}
	kinds := map[string]bool{}
	// The mux's own copies, read only: nothing of them is kept once
	// receive returned (parsing copies what it keeps).
	toks, calls, err := muxgate.Read(start, t, receiveLimits, func(n xml.Name) bool {
		k := p.kindOf(msg.Type, n)
		if k != "" {
			kinds[k] = true
		}
		return k != ""
	})
	p.gate.Handled(start, calls-1)
	if err != nil {
		p.report(&DecryptError{From: msg.From, ID: msg.ID, Err: fmt.Errorf("%w: %w", ErrMalformedStanza, err)})
		return
	}
	if calls > maxOMEMOChildren {
		p.report(&DecryptError{From: msg.From, ID: msg.ID, Err: fmt.Errorf("%w: %d OMEMO elements (at most %d)", ErrMalformedStanza, calls, maxOMEMOChildren)})
		return
	}
	root, err := buildTree(toks)
	if err != nil {
		p.report(&DecryptError{From: msg.From, ID: msg.ID, Err: err})
		return
	}
	for _, kind := range []string{kindDirect, kindCarbon, kindArchive, kindGroup} {
		if kinds[kind] {
			p.receiveKind(kind, msg, root, toks, t)
		}
	}
}

// stanzaLimits bound what receive copies of one stanza.
var stanzaLimits = muxgate.Limits{Tokens: maxStanzaTokens, Bytes: maxStanzaBytes}

// receiveLimits are stanzaLimits without the copies (see receive).
var receiveLimits = muxgate.Limits{Tokens: maxStanzaTokens, Bytes: maxStanzaBytes, Shared: true}

// receiveKind queues the OMEMO content of one kind of a received stanza;
// msg holds the attributes of root as the mux parsed them.
func (p *Plugin) receiveKind(kind string, msg stanza.Message, root *elem, toks []xml.Token, t xmlstream.Encoder) {
	var in *inbound
	var err error
	switch kind {
	case kindDirect:
		in, err = p.parseMessageOf(root, msg)
		if err == nil && in != nil {
			// A message addressed to us that claims no sender comes
			// from our own bare JID (mellium removes it).
			if in.sender.Equal(jid.JID{}) {
				in.sender = p.own
			}
			if id := in.archiveIDBy(p.own); id != "" {
				in.bookkeeping = [][2]string{{keyOwnPosition, p.positionValue(id)}}
			}
		}
	case kindCarbon:
		in, err = p.openCarbon(root)
	case kindArchive:
		in, err = p.openArchive(root)
	case kindGroup:
		in, err = p.openGroup(root)
		if err == nil && in != nil {
			if id := in.archiveIDBy(in.room); id != "" {
				in.bookkeeping = [][2]string{{roomPositionKey(in.room), p.positionValue(id)}}
			}
		}
	}
	if err != nil {
		p.report(err)
		return
	}
	if in == nil {
		// Not OMEMO: hand wrappers on untouched.
		if kind != kindDirect && p.cfg.Passthrough != nil {
			_ = p.cfg.Passthrough.HandleMessage(messageOf(root), struct {
				xml.TokenReader
				xmlstream.Encoder
			}{tokenSlice(toks), t})
		}
		return
	}
	p.enqueue(job{in: in})
}

// readOnly reads tokens that the consumer only reads (and keeps nothing
// of), without copies.
type readOnly struct{ toks []xml.Token }

func (r *readOnly) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}

// messageOf returns the stanza attributes of a <message> element.
func messageOf(e *elem) stanza.Message {
	m, err := stanza.NewMessage(e.start)
	if err != nil {
		// Only an unparsable from/to fails; keep the rest.
		m = stanza.Message{XMLName: e.start.Name, ID: e.attr("id"), Type: stanza.MessageType(e.attr("type"))}
	}
	return m
}

// parseMessage extracts the OMEMO parts of a message stanza. It returns
// nil (and no error) for a message without <encrypted> of a configured
// namespace.
func (p *Plugin) parseMessage(m *elem) (*inbound, error) {
	msg := messageOf(m)
	from, err := jidAttr(m, "from")
	if err != nil {
		return nil, &DecryptError{ID: msg.ID, Err: err}
	}
	msg.From = from
	return p.parseMessageOf(m, msg)
}

// parseMessageOf is parseMessage of a message whose attributes were
// parsed (into msg) already.
func (p *Plugin) parseMessageOf(m *elem, msg stanza.Message) (*inbound, error) {
	from := msg.From
	in := &inbound{msg: msg, sender: from.Bare()}
	for _, f := range p.cfg.Backends {
		switch m.count(f.Namespace, "encrypted") {
		case 0:
			continue
		case 1:
		default:
			return nil, &DecryptError{From: from, ID: msg.ID, Namespace: f.Namespace, Err: fmt.Errorf("%w: repeated <encrypted>", ErrMalformedStanza)}
		}
		e := m.child(f.Namespace, "encrypted")
		enc, err := encrypted.Parse(&readOnly{toks: e.toks[1:]}, e.start)
		if err != nil {
			return nil, &DecryptError{From: from, ID: msg.ID, Namespace: f.Namespace, Err: fmt.Errorf("%w: %w", ErrMalformedStanza, err)}
		}
		in.encs = append(in.encs, enc)
	}
	if len(in.encs) == 0 {
		return nil, nil
	}
	if o := m.child(nsSID, "origin-id"); o != nil {
		in.originID = o.attr("id")
	}
	for _, c := range m.children {
		if c.is(nsSID, "stanza-id") && len(in.stanzaIDs) < maxStanzaIDs {
			in.stanzaIDs = append(in.stanzaIDs, [2]string{c.attr("by"), c.attr("id")})
		}
	}
	in.delay = p.serverDelay(m)
	return in, nil
}

// maxStanzaIDs bounds the stanza-ids kept of one message (a server adds
// one per archive that stored it).
const maxStanzaIDs = 4

// archiveID returns the id that the archive of by (a bare JID) gave the
// message, "" unless exactly one stanza-id names it. Servers remove
// stanza-ids that claim their own archives from what they relay
// (XEP-0359), so only the archive itself can have added it.
func (in *inbound) archiveIDBy(by jid.JID) string {
	id := ""
	for _, sid := range in.stanzaIDs {
		j, err := jid.Parse(sid[0])
		if err != nil || !j.Equal(by) {
			continue
		}
		if id != "" || sid[1] == "" {
			return ""
		}
		id = sid[1]
	}
	return id
}

// serverDelay returns the XEP-0203 delay stamp that the own server added
// to a message it stored for offline delivery (from its domain or the own
// bare JID), zero if there is none. A <delay> from anyone else is the
// sender's claim: servers pass it on untouched, so a live message could
// otherwise pretend to be old. Senders can still copy the server's from;
// Message.SentAt is the authenticated sending time.
func (p *Plugin) serverDelay(m *elem) time.Time {
	for _, c := range m.children {
		if !c.is(nsDelay, "delay") {
			continue
		}
		from := c.attr("from")
		if from != p.own.Domainpart() && from != p.ownStr {
			continue
		}
		if t, err := time.Parse(time.RFC3339Nano, c.attr("stamp")); err == nil {
			return t
		}
	}
	return time.Time{}
}

// jidAttr parses a JID attribute; absent is the zero JID.
func jidAttr(e *elem, local string) (jid.JID, error) {
	v := e.attr(local)
	if v == "" {
		return jid.JID{}, nil
	}
	j, err := jid.Parse(v)
	if err != nil {
		return jid.JID{}, fmt.Errorf("%w: invalid %s: %w", ErrMalformedStanza, local, err)
	}
	return j, nil
}

// fromOwnAccount reports whether a wrapper comes from the own bare JID:
// mellium turns it into "" for top-level stanzas.
func (p *Plugin) fromOwnAccount(wrapper *elem) (jid.JID, bool) {
	from, err := jidAttr(wrapper, "from")
	if err != nil {
		return jid.JID{}, false
	}
	return from, from.Equal(jid.JID{}) || from.Equal(p.own)
}

// forwarded returns the <message> inside <forwarded> of a wrapper child,
// and the delay stamp of the forwarded element.
func forwarded(e *elem) (*elem, time.Time) {
	fw := e.child(nsForward, "forwarded")
	if fw == nil || fw.count(nsClient, "message") != 1 {
		return nil, time.Time{}
	}
	var stamp time.Time
	if dl := fw.child(nsDelay, "delay"); dl != nil {
		stamp, _ = time.Parse(time.RFC3339Nano, dl.attr("stamp"))
	}
	return fw.child(nsClient, "message"), stamp
}

// openCarbon checks a message carbon (XEP-0280) and extracts the OMEMO
// message it forwards. Only the own account's server may send carbons:
// any other sender is a forgery.
func (p *Plugin) openCarbon(root *elem) (*inbound, error) {
	if wrapperFrom, ok := p.fromOwnAccount(root); !ok {
		return nil, &DecryptError{From: wrapperFrom, ID: root.attr("id"), Err: ErrForgedCarbon}
	}
	var wrap *elem
	n := 0
	for _, c := range root.children {
		if c.start.Name.Space == carbons.NS && (c.start.Name.Local == "received" || c.start.Name.Local == "sent") {
			wrap = c
			n++
		}
	}
	if n != 1 {
		return nil, &DecryptError{ID: root.attr("id"), Err: fmt.Errorf("%w: %d carbon elements", ErrMalformedStanza, n)}
	}
	inner, _ := forwarded(wrap)
	if inner == nil {
		return nil, &DecryptError{ID: root.attr("id"), Err: fmt.Errorf("%w: carbon without forwarded message", ErrMalformedStanza)}
	}
	in, err := p.parseMessage(inner)
	if err != nil || in == nil {
		return nil, err
	}
	in.carbon = true
	in.sent = wrap.start.Name.Local == "sent"
	to, err := jidAttr(inner, "to")
	if err != nil {
		return nil, &DecryptError{From: in.msg.From, ID: in.msg.ID, Err: err}
	}
	// A sent carbon copies what the own account sent, a received carbon
	// what it received: anything else is not a carbon of ours.
	if in.sent && !in.sender.Equal(p.own) || !in.sent && !to.Bare().Equal(p.own) {
		return nil, &DecryptError{From: in.msg.From, ID: in.msg.ID, Err: fmt.Errorf("%w: forwarded message not of the own account", ErrForgedCarbon)}
	}
	return in, nil
}

// openArchive checks a MAM result (XEP-0313) and extracts the OMEMO
// message it forwards. Only results of the own archive (from the own bare
// JID) for a query of CatchUp are accepted.
func (p *Plugin) openArchive(root *elem) (*inbound, error) {
	res := root.child(nsMAM, "result")
	if res == nil {
		return nil, nil
	}
	p.mu.Lock()
	ours := p.queries[res.attr("queryid")]
	room, roomQuery := p.roomQueries[res.attr("queryid")]
	p.mu.Unlock()
	if !ours {
		// Someone else's query (the application's own MAM use).
		return nil, nil
	}
	if roomQuery {
		return p.openRoomArchive(root, res, room)
	}
	if wrapperFrom, ok := p.fromOwnAccount(root); !ok {
		return nil, &DecryptError{From: wrapperFrom, ID: res.attr("id"), Err: ErrForgedArchive}
	}
	inner, stamp := forwarded(res)
	if inner == nil {
		return nil, &DecryptError{ID: res.attr("id"), Err: fmt.Errorf("%w: result without forwarded message", ErrMalformedStanza)}
	}
	in, err := p.parseMessage(inner)
	if err != nil || in == nil {
		return nil, err
	}
	if in.sender.Equal(jid.JID{}) {
		in.sender = p.own
	}
	in.archived = true
	in.sent = in.sender.Equal(p.own)
	in.archiveID = res.attr("id")
	if !stamp.IsZero() {
		in.delay = stamp
	}
	return in, nil
}

// openGroup checks a group chat message (from room@service/nick) and
// takes the sender's real JID from the room's state at the moment it
// arrives: never from the message.
func (p *Plugin) openGroup(root *elem) (*inbound, error) {
	in, err := p.parseMessage(root)
	if err != nil || in == nil {
		return in, err
	}
	from := in.msg.From
	r, ok := p.rooms.Room(from)
	if !ok {
		return nil, &DecryptError{From: from, ID: in.msg.ID, Err: fmt.Errorf("%w: %s", ErrRoomNotJoined, from.Bare())}
	}
	nick := from.Resourcepart()
	if nick == "" {
		return nil, &DecryptError{From: from, ID: in.msg.ID, Err: fmt.Errorf("%w: room message without a nick", ErrMalformedStanza)}
	}
	in.room, in.nick = r.JID(), nick
	in.ownNick = nick == r.Nick()
	real, err := r.RealJID(nick)
	switch {
	case err == nil:
		in.sender = real
	case in.ownNick:
		in.sender = p.own
	default:
		return nil, &DecryptError{From: from, ID: in.msg.ID, Err: err}
	}
	return in, nil
}

// openRoomArchive checks a result of CatchUpRoom: it must come from the
// room, and the real JID of the sender is the one the archive names
// (non-anonymous rooms add a muc#user item), else the room state's.
func (p *Plugin) openRoomArchive(root, res *elem, room jid.JID) (*inbound, error) {
	wrapperFrom, err := jidAttr(root, "from")
	if err != nil || !wrapperFrom.Equal(room) {
		return nil, &DecryptError{From: wrapperFrom, ID: res.attr("id"), Err: ErrForgedArchive}
	}
	inner, stamp := forwarded(res)
	if inner == nil {
		return nil, &DecryptError{ID: res.attr("id"), Err: fmt.Errorf("%w: result without forwarded message", ErrMalformedStanza)}
	}
	in, err := p.parseMessage(inner)
	if err != nil || in == nil {
		return nil, err
	}
	if !in.msg.From.Bare().Equal(room) || in.msg.From.Resourcepart() == "" {
		return nil, &DecryptError{From: in.msg.From, ID: res.attr("id"), Err: fmt.Errorf("%w: archived message not of the room", ErrForgedArchive)}
	}
	in.room, in.nick = room, in.msg.From.Resourcepart()
	in.sender = jid.JID{}
	if x := inner.child(groupchat.NSUser, "x"); x != nil {
		if ux, err := groupchat.ParseUserX(tokenSlice(x.toks)); err == nil && len(ux.Items) > 0 && !ux.Items[0].JID.Equal(jid.JID{}) {
			in.sender = ux.Items[0].JID.Bare()
		}
	}
	if in.sender.Equal(jid.JID{}) {
		r, ok := p.rooms.Room(room)
		if !ok {
			return nil, &DecryptError{From: in.msg.From, ID: res.attr("id"), Err: fmt.Errorf("%w: %s", ErrRoomNotJoined, room)}
		}
		real, err := r.RealJID(in.nick)
		if err != nil {
			return nil, &DecryptError{From: in.msg.From, ID: res.attr("id"), Err: err}
		}
		in.sender = real
	}
	in.archived = true
	in.sent = in.sender.Equal(p.own)
	in.archiveID = res.attr("id")
	if !stamp.IsZero() {
		in.delay = stamp
	}
	return in, nil
}

// choose picks the element to decrypt: the first (in backend priority
// order) that carries a key for this device, else the first one.
func (in *inbound) choose(own string, dev uint32) *encrypted.Encrypted {
	for _, e := range in.encs {
		if len(e.KeysFor(own, dev)) > 0 {
			return e
		}
	}
	return in.encs[0]
}

// contentBody returns the text of the first top-level <body
// xmlns='jabber:client'> of canonical SCE content (sce.Envelope.Content).
// A content that starts with a body holding only text, which is what
// clients send, is read directly (canonical text escapes only '&', '<',
// '>' and CR); anything else goes through bodyOf.
func contentBody(env *sce.Envelope) (string, error) {
	const open, end = `<body xmlns='jabber:client'>`, `</body>`
	c := env.Content
	if !bytes.HasPrefix(c, []byte(open)) {
		return bodyOf(env.ContentTokens())
	}
	text := c[len(open):]
	i := bytes.IndexByte(text, '<')
	if i < 0 || !bytes.HasPrefix(text[i:], []byte(end)) {
		return bodyOf(env.ContentTokens())
	}
	text = text[:i]
	if bytes.IndexByte(text, '\r') >= 0 || !utf8.Valid(text) {
		// Not canonical (an Envelope built by hand): the full path.
		return bodyOf(env.ContentTokens())
	}
	if bytes.IndexByte(text, '&') < 0 {
		return string(text), nil
	}
	var b strings.Builder
	b.Grow(len(text))
	for len(text) > 0 {
		j := bytes.IndexByte(text, '&')
		if j < 0 {
			b.Write(text)
			break
		}
		b.Write(text[:j])
		text = text[j:]
		switch {
		case bytes.HasPrefix(text, []byte("&amp;")):
			b.WriteByte('&')
			text = text[5:]
		case bytes.HasPrefix(text, []byte("&lt;")):
			b.WriteByte('<')
			text = text[4:]
		case bytes.HasPrefix(text, []byte("&gt;")):
			b.WriteByte('>')
			text = text[4:]
		case bytes.HasPrefix(text, []byte("&#xD;")):
			b.WriteByte('\r')
			text = text[5:]
		default:
			// Not canonical (an Envelope built by hand): the full path.
			return bodyOf(env.ContentTokens())
		}
	}
	return b.String(), nil
}

// bodyOf returns the text of the first top-level <body xmlns='jabber:client'>
// of SCE content.
func bodyOf(r xml.TokenReader) (string, error) {
	depth := 0
	inBody, found := false, false
	var b strings.Builder
	for {
		tok, err := r.Token()
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 && !found && t.Name.Space == nsClient && t.Name.Local == "body" {
				inBody, found = true, true
			}
			depth++
		case xml.EndElement:
			depth--
			if depth == 0 {
				inBody = false
			}
		case xml.CharData:
			if inBody && depth == 1 {
				b.Write(t)
			}
		}
		if err == io.EOF {
			return b.String(), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// legacyPayload is the <body> a legacy OMEMO message stands for.
func legacyPayload(body string) []byte {
	var b bytes.Buffer
	b.WriteString(`<body xmlns='jabber:client'>`)
	_ = xml.EscapeText(&b, []byte(body))
	b.WriteString(`</body>`)
	return b.Bytes()
}
