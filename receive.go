package omemo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
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
	text     []byte // character data directly inside the element
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

// readStanza copies the whole element from r (the reader a mux message
// handler gets, starting at <message>), within the limits above.
func readStanza(r xml.TokenReader) ([]xml.Token, error) {
	var toks []xml.Token
	size := 0
	for {
		tok, err := r.Token()
		if tok != nil {
			if len(toks) >= maxStanzaTokens {
				return nil, fmt.Errorf("%w: too many tokens", ErrMalformedStanza)
			}
			switch t := tok.(type) {
			case xml.CharData:
				size += len(t)
			case xml.StartElement:
				size += len(t.Name.Local) + len(t.Name.Space)
				for _, a := range t.Attr {
					size += len(a.Value) + len(a.Name.Local) + len(a.Name.Space)
				}
			}
			if size > maxStanzaBytes {
				return nil, fmt.Errorf("%w: stanza too large", ErrMalformedStanza)
			}
			toks = append(toks, xml.CopyToken(tok))
		}
		if err == io.EOF {
			return toks, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedStanza, err)
		}
	}
}

// buildTree turns the tokens of one element into a tree.
func buildTree(toks []xml.Token) (*elem, error) {
	var root *elem
	var stack []*elem
	var starts []int
	for i, tok := range toks {
		switch t := tok.(type) {
		case xml.StartElement:
			if root != nil && len(stack) == 0 {
				return nil, fmt.Errorf("%w: trailing element", ErrMalformedStanza)
			}
			if len(stack) >= maxDepth {
				return nil, fmt.Errorf("%w: nested too deeply", ErrMalformedStanza)
			}
			e := &elem{start: t}
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
			if len(stack) > 0 {
				e := stack[len(stack)-1]
				e.text = append(e.text, t...)
			} else if len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: text outside the element", ErrMalformedStanza)
			}
		}
	}
	if root == nil || len(stack) != 0 {
		return nil, fmt.Errorf("%w: incomplete element", ErrMalformedStanza)
	}
	return root, nil
}

// digest identifies a stanza by its tokens. The mux calls a message
// handler once per matching child element, with a reader that replays the
// whole stanza, and the calls for one stanza follow each other in the
// Serve goroutine: the digest of the last stanza seen lets every call but
// the first return at once, so a message that carries both <encrypted>
// elements (or any repeated child) is decrypted exactly once.
func digest(kind string, toks []xml.Token) [32]byte {
	h := sha256.New()
	var n [8]byte
	str := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	str(kind)
	for _, tok := range toks {
		switch t := tok.(type) {
		case xml.StartElement:
			str("<")
			str(t.Name.Space)
			str(t.Name.Local)
			for _, a := range t.Attr {
				str(a.Name.Space)
				str(a.Name.Local)
				str(a.Value)
			}
		case xml.EndElement:
			str(">")
		case xml.CharData:
			str("t")
			str(string(t))
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// inbound is a received OMEMO message, copied out of the Serve goroutine.
type inbound struct {
	msg       stanza.Message // attributes of the (inner) message stanza
	sender    jid.JID        // bare JID of the sending account
	encs      []*encrypted.Encrypted
	originID  string
	archiveID string
	delay     time.Time
	carbon    bool
	sent      bool
	archived  bool
}

// job is one unit of work of the receive worker.
type job struct {
	in      *inbound
	ev      *pep.Event
	barrier chan struct{}
}

// kinds of received stanzas (also the digest domain).
const (
	kindDirect  = "direct"
	kindCarbon  = "carbon"
	kindArchive = "archive"
)

type directHandler struct {
	p         *Plugin
	namespace string
}

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h directHandler) HandleMessage(_ stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(kindDirect, t)
	return nil
}

type carbonHandler struct{ p *Plugin }

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h carbonHandler) HandleMessage(_ stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(kindCarbon, t)
	return nil
}

type archiveHandler struct{ p *Plugin }

// HandleMessage implements mux.MessageHandler. It never returns an error.
func (h archiveHandler) HandleMessage(_ stanza.Message, t xmlstream.TokenReadEncoder) error {
	h.p.receive(kindArchive, t)
	return nil
}

// report hands err to Config.OnError.
func (p *Plugin) report(err error) {
	defer func() { _ = recover() }()
	p.cfg.OnError(err)
}

// receive runs in the Serve goroutine: it copies and parses the stanza,
// checks its wrappers and queues it for decryption. It does no network
// work, never blocks and never fails (errors go to OnError).
func (p *Plugin) receive(kind string, t xmlstream.TokenReadEncoder) {
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
	toks, err := readStanza(t)
	if err != nil {
		p.report(&DecryptError{Err: err})
		return
	}
	d := digest(kind, toks)
	p.mu.Lock()
	dup := d == p.lastDigest
	p.lastDigest = d
	p.mu.Unlock()
	if dup {
		return
	}
	root, err := buildTree(toks)
	if err != nil {
		p.report(&DecryptError{Err: err})
		return
	}
	var in *inbound
	switch kind {
	case kindDirect:
		in, err = p.parseMessage(root)
		if err == nil && in != nil {
			// A message addressed to us that claims no sender comes
			// from our own bare JID (mellium removes it).
			if in.sender.Equal(jid.JID{}) {
				in.sender = p.own
			}
		}
	case kindCarbon:
		in, err = p.openCarbon(root)
	case kindArchive:
		in, err = p.openArchive(root)
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
		enc, err := encrypted.Parse(tokenSlice(e.toks[1:]), e.start)
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
	if dl := m.child(nsDelay, "delay"); dl != nil {
		in.delay, _ = time.Parse(time.RFC3339Nano, dl.attr("stamp"))
	}
	return in, nil
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
	p.mu.Unlock()
	if !ours {
		// Someone else's query (the application's own MAM use).
		return nil, nil
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

// enqueue hands a job to the worker without blocking.
func (p *Plugin) enqueue(j job) {
	select {
	case <-p.closing:
		return
	default:
	}
	select {
	case p.queue <- j:
	default:
		err := ErrQueueFull
		if j.in != nil {
			p.report(&DecryptError{From: j.in.msg.From, ID: j.in.msg.ID, Err: err})
			return
		}
		p.report(err)
	}
}

// handleEvent receives PEP notifications in the Serve goroutine and
// queues the device list ones.
func (p *Plugin) handleEvent(ev pep.Event) {
	namespace := devicelist.NamespaceOfNode(ev.Node)
	if namespace == "" || !p.supports(namespace) {
		return
	}
	p.enqueue(job{ev: &ev})
}

// work is the receive worker: it waits for Start, then decrypts the
// queued messages and applies device list notifications in order.
func (p *Plugin) work() {
	defer close(p.workDone)
	// Nothing leaves the queue before Start, so that it holds exactly
	// QueueSize messages meanwhile.
	select {
	case <-p.ready:
	case <-p.closing:
		return
	}
	for {
		select {
		case <-p.closing:
			return
		case j := <-p.queue:
			if j.barrier != nil {
				close(j.barrier)
				continue
			}
			p.process(j)
		}
	}
}

func (p *Plugin) process(j job) {
	defer func() {
		if r := recover(); r != nil {
			p.report(fmt.Errorf("omemo: internal error in receive worker: %v", r))
		}
	}()
	switch {
	case j.ev != nil:
		p.applyEvent(j.ev)
	case j.in != nil:
		if m, ok := p.decrypt(j.in); ok {
			if h := p.currentHandler(); h != nil {
				h.HandleOMEMO(m)
			}
		}
	}
}

// applyEvent feeds a device list notification to the session manager.
// The list belongs to the account that sent the notification (the zero
// JID is the own account); an item without a usable list makes the
// manager fetch it.
func (p *Plugin) applyEvent(ev *pep.Event) {
	owner := ev.From.Bare()
	if owner.Equal(jid.JID{}) {
		owner = p.own
	}
	namespace, l, ok, err := devicelist.FromEvent(*ev)
	if !ok {
		return
	}
	ctx := p.workCtx
	if err != nil {
		err = p.mgr.RefreshDeviceList(ctx, namespace, owner.String())
	} else {
		err = p.mgr.UpdateDeviceList(ctx, owner.String(), l)
	}
	if err != nil && ctx.Err() == nil {
		p.report(fmt.Errorf("omemo: device list of %s: %w", owner, err))
	}
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

// decrypt decrypts a queued message and checks it. ok is false when the
// message is dropped: rejected (reported to OnError) or empty.
func (p *Plugin) decrypt(in *inbound) (Message, bool) {
	mgr := p.mgr
	ctx := p.workCtx
	own := p.own.String()
	enc := in.choose(own, mgr.DeviceID())
	fail := func(err error) (Message, bool) {
		p.report(&DecryptError{From: in.msg.From, ID: in.msg.ID, Namespace: enc.Namespace, Err: err})
		return Message{}, false
	}
	sender := in.sender.String()
	if sender == own && enc.SID == mgr.DeviceID() {
		// Our own message, echoed back by the archive.
		return Message{}, false
	}
	dec, err := mgr.Decrypt(ctx, sender, enc)
	if err != nil {
		if ctx.Err() != nil {
			return Message{}, false
		}
		dup := errors.Is(err, backends.ErrDuplicateMessage)
		notForUs := errors.Is(err, session.ErrMessageNotForUs)
		// Nothing is lost when an archived or offline message was
		// already received (the archive and offline storage overlap with
		// live delivery), an archived message was sent before this
		// device existed, or a key transport message is for another
		// device of the account (they go to the bare JID, so every
		// device sees them).
		if dup && (in.archived || !in.delay.IsZero() || enc.Payload == nil) ||
			notForUs && (in.archived || enc.Payload == nil) {
			p.cfg.Logger.Debug("omemo: skipping message", "id", in.msg.ID, "from", in.msg.From.String(), "err", err)
			return Message{}, false
		}
		return fail(err)
	}
	if dec.Empty {
		// Key transport: consumed by the session manager.
		return Message{}, false
	}
	out := Message{
		Message:      in.msg,
		SenderDevice: enc.SID,
		IdentityKey:  dec.Sender.IdentityKey,
		Namespace:    dec.Namespace,
		Trust:        dec.Sender.Level,
		TrustLevel:   dec.Sender.Trust,
		KeyExchange:  dec.KeyExchange,
		Carbon:       in.carbon,
		Sent:         in.sent,
		Archived:     in.archived,
		OriginID:     in.originID,
		ArchiveID:    in.archiveID,
		Delay:        in.delay,
	}
	if out.From.Equal(jid.JID{}) {
		out.From = in.sender
	}
	switch dec.Namespace {
	case ns.OMEMO2:
		env, err := sce.Parse(dec.Plaintext)
		if err != nil {
			return fail(err)
		}
		to := in.msg.To.Bare()
		if to.Equal(jid.JID{}) {
			to = p.own
		}
		policy := sce.Policy{RequireRPad: true, RequireFrom: p.cfg.RequireAffixes, RequireTo: p.cfg.RequireAffixes}
		if err := env.Check(policy, in.sender, to); err != nil {
			return fail(err)
		}
		if len(env.Dropped) > 0 {
			p.cfg.Logger.Debug("omemo: dropped server-processed elements from the envelope", "id", in.msg.ID, "from", in.sender.String(), "elements", len(env.Dropped))
		}
		body, err := bodyOf(env.ContentTokens())
		if err != nil {
			return fail(err)
		}
		out.Body = body
		out.Payload = bytes.Clone(env.Content)
	case ns.Legacy:
		out.Body = strings.ToValidUTF8(string(dec.Plaintext), "\uFFFD")
		out.Payload = legacyPayload(out.Body)
	default:
		return fail(fmt.Errorf("%w: %s", session.ErrUnknownNamespace, dec.Namespace))
	}
	return out, true
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

// barrier waits until the worker has processed everything queued before
// the call.
func (p *Plugin) barrier(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case p.queue <- job{barrier: done}:
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}
