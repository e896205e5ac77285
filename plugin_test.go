package omemo

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// device is one plugin on an in-memory server: its sent stanzas are
// captured, received stanzas are fed to its mux by the test.
type device struct {
	t    testing.TB
	p    *Plugin
	m    *mux.ServeMux
	full jid.JID

	mu   sync.Mutex
	msgs []Message
	errs []error
	sent [][]xml.Token
}

var (
	both       = []backends.Factory{twomemo.Factory, oldmemo.Factory}
	legacyOnly = []backends.Factory{oldmemo.Factory}
)

func newDevice(t testing.TB, srv *sessiontest.Server, full string, bes []backends.Factory, start bool, mod ...func(*Config)) *device {
	t.Helper()
	return newDeviceOn(t, srv.Network(jid.MustParse(full).Bare().String()), full, bes, start, mod...)
}

// newDeviceOn is newDevice on a network of the test's making.
func newDeviceOn(t testing.TB, net session.Network, full string, bes []backends.Factory, start bool, mod ...func(*Config)) *device {
	t.Helper()
	j := jid.MustParse(full)
	d := &device{t: t, full: j}
	cfg := Config{
		Store:    store.NewMemory(),
		Backends: bes,
		OnError: func(err error) {
			d.mu.Lock()
			d.errs = append(d.errs, err)
			d.mu.Unlock()
		},
	}
	for _, f := range mod {
		f(&cfg)
	}
	p, err := newPlugin(j.Bare(), cfg, net, func(_ context.Context, toks []xml.Token) error {
		d.mu.Lock()
		d.sent = append(d.sent, toks)
		d.mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	d.p = p
	d.m = mux.New(stanza.NSClient, p.Handle(HandlerFunc(func(m Message) {
		d.mu.Lock()
		d.msgs = append(d.msgs, m)
		d.mu.Unlock()
	})))
	t.Cleanup(func() { _ = p.Close() })
	if start {
		d.start()
	}
	return d
}

func (d *device) start() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.p.Start(ctx); err != nil {
		d.t.Fatalf("Start: %v", err)
	}
}

// take returns and clears the received messages and errors.
func (d *device) take() ([]Message, []error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, e := d.msgs, d.errs
	d.msgs, d.errs = nil, nil
	return m, e
}

func (d *device) lastSent() []xml.Token {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.sent) == 0 {
		d.t.Fatal("nothing sent")
	}
	return d.sent[len(d.sent)-1]
}

// send sends body to `to` and returns the stanza as the server would
// route it: with a from attribute.
func (d *device) send(to jid.JID, body string) string {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.p.Send(ctx, to, body); err != nil {
		d.t.Fatalf("Send: %v", err)
	}
	return stamp(d.t, d.lastSent(), d.full)
}

// stamp serialises a stanza, adding from (as the server does) and the
// jabber:client namespace.
func stamp(t testing.TB, toks []xml.Token, from jid.JID) string {
	t.Helper()
	toks = append([]xml.Token(nil), toks...)
	start := xml.CopyToken(toks[0]).(xml.StartElement)
	start.Name.Space = stanza.NSClient
	start.Attr = append(start.Attr, xml.Attr{Name: xml.Name{Local: "from"}, Value: from.String()})
	toks[0] = start
	end := toks[len(toks)-1].(xml.EndElement)
	end.Name.Space = stanza.NSClient
	toks[len(toks)-1] = end
	return encode(t, toks)
}

func encode(t testing.TB, toks []xml.Token) string {
	t.Helper()
	var b bytes.Buffer
	e := xml.NewEncoder(&b)
	for _, tok := range toks {
		if err := e.EncodeToken(tok); err != nil {
			t.Fatalf("encode: %v", err)
		}
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// deliver hands a stanza to the device's mux as Serve would, checks that
// the handlers returned no error and waits until the worker is done.
func (d *device) deliver(raw string) {
	d.t.Helper()
	if err := dispatch(d.m, raw); err != nil {
		d.t.Fatalf("handler returned an error: %v", err)
	}
	d.wait()
}

func (d *device) wait() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.p.barrier(ctx); err != nil {
		d.t.Fatalf("barrier: %v", err)
	}
}

// dispatch feeds one top-level element to m as xmpp.Session.Serve does:
// the start element separately, the reader positioned after it.
func dispatch(m *mux.ServeMux, raw string) error {
	dec := xml.NewDecoder(strings.NewReader(raw))
	var start xml.StartElement
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if s, ok := tok.(xml.StartElement); ok {
			start = s.Copy()
			break
		}
	}
	t := struct {
		xml.TokenReader
		xmlstream.Encoder
	}{dec, xml.NewEncoder(io.Discard)}
	return m.HandleXMPP(t, &start)
}

func TestSendAndReceive(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)

	raw := alice.send(bob.full.Bare(), "Hello <Bob> & co")
	for _, want := range []string{
		`<encrypted xmlns="urn:xmpp:omemo:2">`,
		`<encryption xmlns="urn:xmpp:eme:0" namespace="urn:xmpp:omemo:2" name="OMEMO 2">`,
		`<store xmlns="urn:xmpp:hints">`,
		`<origin-id xmlns="urn:xmpp:sid:0" id="`,
		`<body>` + strings.ReplaceAll(DefaultFallbackBody, "'", "&#39;") + `</body>`,
		`type="chat"`,
	} {
		if !strings.Contains(raw, want) {
			t.Errorf("sent stanza lacks %s:\n%s", want, raw)
		}
	}
	if strings.Contains(raw, "Hello") || strings.Contains(raw, ns.Legacy) {
		t.Errorf("sent stanza leaks plaintext or carries an unneeded legacy element:\n%s", raw)
	}
	bob.deliver(raw)
	msgs, errs := bob.take()
	if len(errs) > 0 || len(msgs) != 1 {
		t.Fatalf("bob got %d messages, errors %v", len(msgs), errs)
	}
	m := msgs[0]
	if m.Body != "Hello <Bob> & co" || m.Namespace != ns.OMEMO2 || !m.From.Equal(alice.full) || !m.KeyExchange || m.Carbon || m.Archived {
		t.Fatalf("bob got %+v", m)
	}
	if got, want := string(m.Payload), `<body xmlns='jabber:client'>Hello &lt;Bob&gt; &amp; co</body>`; got != want && got != strings.ReplaceAll(want, "'", `"`) {
		t.Errorf("payload %s, want %s", got, want)
	}
	if m.ID == "" || m.OriginID != m.ID || m.SenderDevice != alice.p.Manager().DeviceID() {
		t.Errorf("ids: %q %q device %d", m.ID, m.OriginID, m.SenderDevice)
	}

	// bob's manager answered the key exchange with an empty message; it is
	// consumed silently at alice.
	if err := bob.p.Manager().Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	inbox := srv.Inbox(alice.full.Bare().String())
	if len(inbox) == 0 {
		t.Fatal("no empty message from bob's manager")
	}
	for _, dl := range inbox {
		toks, err := messageTokens(alice.full.Bare(), dl.Message)
		if err != nil {
			t.Fatal(err)
		}
		alice.deliver(stamp(t, toks, bob.full))
	}
	if msgs, errs := alice.take(); len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("empty message reached the application: %v %v", msgs, errs)
	}

	// bob answers over the established session.
	alice.deliver(bob.send(alice.full.Bare(), "hi"))
	if msgs, errs := alice.take(); len(msgs) != 1 || msgs[0].Body != "hi" || msgs[0].KeyExchange || len(errs) != 0 {
		t.Fatalf("alice got %+v, %v", msgs, errs)
	}
}

// A stanza that needs both backends carries both <encrypted> elements in
// a fixed order, with the EME hint naming OMEMO 2.
func TestOutgoingStanzaExactXML(t *testing.T) {
	two := &encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 7, Keys: []encrypted.Key{{JID: "bob@example.org", RID: 9, Data: []byte{1, 2}}}, Payload: []byte{3}}
	old := &encrypted.Encrypted{Namespace: ns.Legacy, SID: 7, Keys: []encrypted.Key{{RID: 11, KeyExchange: true, Data: []byte{4}}}, IV: make([]byte, 12), Payload: []byte{5}}
	// Legacy first on input: the output order does not depend on it.
	toks, err := outgoingTokens(jid.MustParse("bob@example.org"), "ID1", []*encrypted.Encrypted{old, two}, "fallback & more")
	if err != nil {
		t.Fatal(err)
	}
	encOf := func(e *encrypted.Encrypted) string {
		toks, err := xmlstream.ReadAll(e.TokenReader())
		if err != nil {
			t.Fatal(err)
		}
		return encode(t, toks)
	}
	want := `<message type="chat" to="bob@example.org" id="ID1">` +
		encOf(two) + encOf(old) +
		`<encryption xmlns="urn:xmpp:eme:0" namespace="urn:xmpp:omemo:2" name="OMEMO 2"></encryption>` +
		`<store xmlns="urn:xmpp:hints"></store>` +
		`<origin-id xmlns="urn:xmpp:sid:0" id="ID1"></origin-id>` +
		`<body>fallback &amp; more</body>` +
		`</message>`
	if got := encode(t, toks); got != want {
		t.Fatalf("stanza\n got: %s\nwant: %s", got, want)
	}
	if !strings.Contains(want, `<encrypted xmlns="urn:xmpp:omemo:2"><header sid="7">`) || !strings.Contains(want, `<encrypted xmlns="eu.siacs.conversations.axolotl"><header sid="7">`) {
		t.Fatalf("unexpected element encoding: %s", want)
	}

	// Legacy only: the EME hint names legacy OMEMO; no fallback body.
	toks, err = outgoingTokens(jid.MustParse("bob@example.org"), "ID2", []*encrypted.Encrypted{old}, "")
	if err != nil {
		t.Fatal(err)
	}
	want = `<message type="chat" to="bob@example.org" id="ID2">` + encOf(old) +
		`<encryption xmlns="urn:xmpp:eme:0" namespace="eu.siacs.conversations.axolotl" name="OMEMO"></encryption>` +
		`<store xmlns="urn:xmpp:hints"></store>` +
		`<origin-id xmlns="urn:xmpp:sid:0" id="ID2"></origin-id>` +
		`</message>`
	if got := encode(t, toks); got != want {
		t.Fatalf("stanza\n got: %s\nwant: %s", got, want)
	}
}

// A message encrypted for a both-backends device and a legacy-only device
// carries both elements; each receiver handles it exactly once, although
// the mux calls the handler once per <encrypted> child.
func TestBothElementsHandledOnce(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	bobOld := newDevice(t, srv, "bob@example.org/old", legacyOnly, true)

	raw := alice.send(bob.full.Bare(), "twice?")
	if !strings.Contains(raw, `<encrypted xmlns="urn:xmpp:omemo:2">`) || !strings.Contains(raw, `<encrypted xmlns="eu.siacs.conversations.axolotl">`) {
		t.Fatalf("stanza lacks an element:\n%s", raw)
	}
	for _, d := range []*device{bob, bobOld} {
		d.deliver(raw)
		msgs, errs := d.take()
		if len(msgs) != 1 || len(errs) != 0 || msgs[0].Body != "twice?" {
			t.Fatalf("%v: %d messages %+v, errors %v", d.full, len(msgs), msgs, errs)
		}
	}
}

func TestSCEAffixes(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	// Establish sessions (bob learns alice's device).
	bob.deliver(alice.send(bob.full.Bare(), "setup"))
	bob.take()

	carol := jid.MustParse("carol@example.org")
	for i, tc := range []struct {
		envelope string
		want     error
	}{
		0: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>x</body></content><rpad>ab</rpad><to jid='` + carol.String() + `'/><from jid='alice@example.org'/></envelope>`, sce.ErrAffixMismatch},
		1: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>x</body></content><rpad>ab</rpad><to jid='bob@example.org'/><from jid='carol@example.org'/></envelope>`, sce.ErrAffixMismatch},
		2: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>x</body></content><to jid='bob@example.org'/></envelope>`, sce.ErrMissingAffix},
		3: {`<envelope xmlns='urn:xmpp:sce:1'><content><body>x</body></content>`, sce.ErrMalformed},
		4: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>ok</body></content><rpad>x</rpad><to jid='bob@example.org/any'/><from jid='alice@example.org/other'/></envelope>`, nil},
	} {
		raw := alice.encryptRaw(bob.full.Bare(), map[string][]byte{ns.OMEMO2: []byte(tc.envelope)})
		bob.deliver(raw)
		msgs, errs := bob.take()
		if tc.want == nil {
			if len(msgs) != 1 || msgs[0].Body != "ok" || len(errs) != 0 {
				t.Fatalf("%d: got %+v %v", i, msgs, errs)
			}
			continue
		}
		if len(msgs) != 0 || len(errs) != 1 {
			t.Fatalf("%d: got messages %+v errors %v", i, msgs, errs)
		}
		var de *DecryptError
		if !errors.As(errs[0], &de) || !errors.Is(errs[0], tc.want) || de.Namespace != ns.OMEMO2 || !de.From.Equal(alice.full) {
			t.Fatalf("%d: error %v, want a DecryptError wrapping %v", i, errs[0], tc.want)
		}
	}
}

// encryptRaw encrypts custom plaintexts with the session manager and
// returns the routed stanza.
func (d *device) encryptRaw(to jid.JID, plaintexts map[string][]byte) string {
	d.t.Helper()
	var toks []xml.Token
	_, err := d.p.Manager().Encrypt(context.Background(), []string{to.String()}, plaintexts, func(r *session.EncryptResult) error {
		var err error
		toks, err = outgoingTokens(to, "raw", r.Messages, "")
		return err
	})
	if err != nil {
		d.t.Fatalf("Encrypt: %v", err)
	}
	return stamp(d.t, toks, d.full)
}

func TestDetach(t *testing.T) {
	parent, cancelParent := context.WithCancel(context.Background())
	closing, cancelClosing := context.WithCancel(context.Background())
	defer cancelClosing()

	// Cancelled while running: propagated.
	ctx, done := detach(parent, closing)
	cancelClosing()
	<-ctx.Done()
	done()

	// Cancelled after the operation returned: not propagated, so that
	// mellium's deadline goroutines cannot fire after the call.
	ctx, done = detach(parent)
	done()
	cancelParent()
	select {
	case <-ctx.Done():
		t.Fatal("cancellation after done reached the detached context")
	case <-time.After(20 * time.Millisecond):
	}

	// An already cancelled parent cancels at once.
	ctx, done = detach(parent)
	defer done()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		t.Fatal("cancelled parent not propagated")
	}
}
