package omemo

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

var _ session.Network = pepNetwork{}

// element is a parsed XML element, for checking generated stanzas.
type element struct {
	name     xml.Name
	attrs    map[string]string
	children []*element
	raw      []xml.Token
}

// tree parses toks (one element) into an element tree.
func tree(t *testing.T, toks []xml.Token) *element {
	t.Helper()
	var stack []*element
	var root *element
	for _, tok := range toks {
		for _, e := range stack {
			e.raw = append(e.raw, xml.CopyToken(tok))
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := &element{name: tok.Name, attrs: map[string]string{}, raw: []xml.Token{tok.Copy()}}
			for _, a := range tok.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.children = append(p.children, e)
			} else if root == nil {
				root = e
			}
			stack = append(stack, e)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
	if root == nil || len(stack) != 0 {
		t.Fatalf("not one element: %v", toks)
	}
	return root
}

func testMessage(namespace string) *encrypted.Encrypted {
	m := &encrypted.Encrypted{
		Namespace: namespace,
		SID:       4711,
		Keys: []encrypted.Key{
			{JID: "bob@example.org", RID: 1, KeyExchange: true, Data: []byte("key exchange")},
			{JID: "bob@example.org", RID: 2, Data: []byte("ratchet message")},
		},
		Payload: []byte("payload"),
	}
	if namespace == ns.Legacy {
		m.IV = bytes.Repeat([]byte{7}, encrypted.IVSize)
		for i := range m.Keys {
			m.Keys[i].JID = ""
		}
	}
	return m
}

func TestMessageTokens(t *testing.T) {
	to := jid.MustParse("bob@example.org")
	ids := map[string]bool{}
	for _, tc := range []struct{ namespace, name string }{
		{ns.OMEMO2, "OMEMO 2"},
		{ns.Legacy, "OMEMO"},
	} {
		msg := testMessage(tc.namespace)
		for range 2 {
			toks, err := messageTokens(to, msg)
			if err != nil {
				t.Fatal(err)
			}
			root := tree(t, toks)
			if root.name.Local != "message" || root.attrs["type"] != "chat" || root.attrs["to"] != "bob@example.org" {
				t.Fatalf("message element %v %v", root.name, root.attrs)
			}
			id := root.attrs["id"]
			if len(id) < 16 || ids[id] {
				t.Fatalf("id %q not random", id)
			}
			ids[id] = true
			if _, ok := root.attrs["from"]; ok {
				t.Fatal("from set")
			}

			if len(root.children) != 3 {
				t.Fatalf("%d children", len(root.children))
			}
			enc, hint, eme := root.children[0], root.children[1], root.children[2]
			got, err := encrypted.Decode(xmlstream.MultiReader(tokenSlice(enc.raw)))
			if err != nil {
				t.Fatalf("<encrypted> does not decode: %v", err)
			}
			if !reflect.DeepEqual(got, msg) {
				t.Fatalf("<encrypted> round trip:\n got %+v\nwant %+v", got, msg)
			}
			if hint.name != (xml.Name{Space: "urn:xmpp:hints", Local: "store"}) || len(hint.children) != 0 {
				t.Fatalf("hint %v", hint.name)
			}
			if eme.name != (xml.Name{Space: "urn:xmpp:eme:0", Local: "encryption"}) ||
				eme.attrs["namespace"] != tc.namespace || eme.attrs["name"] != tc.name {
				t.Fatalf("eme %v %v", eme.name, eme.attrs)
			}
		}
	}
	// The serialisation is well-formed XML.
	toks, err := messageTokens(to, testMessage(ns.OMEMO2))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	e := xml.NewEncoder(&buf)
	if _, err := xmlstream.Copy(e, tokenSlice(toks)); err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), `<message type="chat" to="bob@example.org" id="`) ||
		!strings.Contains(buf.String(), `<store xmlns="urn:xmpp:hints"></store><encryption xmlns="urn:xmpp:eme:0" namespace="urn:xmpp:omemo:2" name="OMEMO 2"></encryption></message>`) {
		t.Fatalf("serialised as %s", buf.String())
	}
}

func TestMessageTokensInvalid(t *testing.T) {
	to := jid.MustParse("bob@example.org")
	noSID := testMessage(ns.OMEMO2)
	noSID.SID = 0
	noIV := testMessage(ns.Legacy)
	noIV.IV = nil
	for name, tc := range map[string]struct {
		msg  *encrypted.Encrypted
		want error
	}{
		"nil":               {nil, nil},
		"unknown namespace": {&encrypted.Encrypted{Namespace: "urn:other", SID: 1}, encrypted.ErrUnknownNamespace},
		"zero sid":          {noSID, encrypted.ErrInvalidID},
		"legacy without iv": {noIV, encrypted.ErrInvalidIV},
	} {
		_, err := messageTokens(to, tc.msg)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func TestParseBare(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "",
		"juliet@example.org":        "juliet@example.org",
		"juliet@example.org/phone":  "juliet@example.org",
		"example.org":               "example.org",
		"Juliet@Example.ORG/office": "juliet@example.org",
	} {
		j, err := parseBare(in)
		if err != nil || j.String() != want {
			t.Errorf("parseBare(%q) = %q, %v; want %q", in, j, err, want)
		}
	}
	for _, in := range []string{"@example.org", "juliet@", "a@b@c", "juliet@example.org/", strings.Repeat("a", 1024) + "@example.org"} {
		if _, err := parseBare(in); err == nil {
			t.Errorf("parseBare(%q) accepted", in)
		}
	}
}

// Untrusted JIDs are rejected before the session is used (a nil session
// would panic otherwise).
func TestNetworkRejectsInvalidJIDs(t *testing.T) {
	n := newNetwork(fixed(nil), time.Minute)
	ctx := context.Background()
	const bad = "a@b@c"
	if _, err := n.DownloadBundle(ctx, ns.OMEMO2, bad, 1); err == nil || errors.Is(err, session.ErrBundleNotFound) {
		t.Errorf("DownloadBundle: %v", err)
	}
	if _, err := n.DownloadDeviceList(ctx, ns.OMEMO2, bad); err == nil {
		t.Error("DownloadDeviceList accepted an invalid JID")
	}
	if err := n.SendMessage(ctx, bad, testMessage(ns.OMEMO2)); err == nil {
		t.Error("SendMessage accepted an invalid JID")
	}
	if err := n.SendMessage(ctx, "", testMessage(ns.OMEMO2)); !errors.Is(err, errEmptyJID) {
		t.Errorf("SendMessage to nobody: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := n.SendMessage(cancelled, "bob@example.org", testMessage(ns.OMEMO2)); !errors.Is(err, context.Canceled) {
		t.Errorf("SendMessage with a cancelled context: %v", err)
	}
}

// ctxT returns a context that ends with the test. Created after the
// sessions were dialled, it is cancelled in t.Cleanup before they are
// closed, and long after the writes of the test.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestIntegrationNetwork(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)
	an, bn := newNetwork(fixed(alice), time.Minute), newNetwork(fixed(bob), time.Minute)
	aliceJID := srv.JID("alice").String()

	// Nothing published: an empty list for the owner; Prosody answers a
	// stranger forbidden, which is not "no devices".
	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		l, err := an.DownloadDeviceList(ctx, namespace, aliceJID)
		if err != nil || l.Namespace != namespace || len(l.Devices) != 0 {
			t.Fatalf("%s: own missing list: %+v, %v", namespace, l, err)
		}
		if _, err := bn.DownloadDeviceList(ctx, namespace, aliceJID); !errors.Is(err, devicelist.ErrAccessDenied) {
			t.Fatalf("%s: stranger's missing list: %v, want ErrAccessDenied", namespace, err)
		}
		_, err = bn.DownloadBundle(ctx, namespace, aliceJID, 1)
		if !errors.Is(err, session.ErrBundleNotFound) || !errors.Is(err, pep.ErrNotFound) {
			t.Fatalf("%s: missing bundle: %v", namespace, err)
		}
	}

	// Uploads are visible to a stranger; the own account can be named by
	// its JID or "".
	l := devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5}}}
	if err := an.UploadDeviceList(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		n     session.Network
		owner string
	}{{bn, aliceJID}, {an, aliceJID}, {an, ""}, {bn, aliceJID + "/resource"}} {
		got, err := c.n.DownloadDeviceList(ctx, ns.OMEMO2, c.owner)
		if err != nil || !reflect.DeepEqual(got, l) {
			t.Fatalf("download list of %q: %+v, %v", c.owner, got, err)
		}
	}
	b := testBundleFor(ns.Legacy)
	if err := an.UploadBundle(ctx, 5, b); err != nil {
		t.Fatal(err)
	}
	if got, err := bn.DownloadBundle(ctx, ns.Legacy, aliceJID, 5); err != nil || !reflect.DeepEqual(got, b) {
		t.Fatalf("download bundle: %v", err)
	}
	if err := an.DeleteBundle(ctx, ns.Legacy, 5); err != nil {
		t.Fatal(err)
	}
	if _, err := bn.DownloadBundle(ctx, ns.Legacy, aliceJID, 5); !errors.Is(err, session.ErrBundleNotFound) {
		t.Fatalf("download of a deleted bundle: %v", err)
	}
	if err := an.DeleteBundle(ctx, ns.OMEMO2, 5); err != nil {
		t.Fatalf("delete of a missing bundle: %v", err)
	}
}

func testBundleFor(namespace string) (b bundle.Bundle) {
	b.Namespace = namespace
	for i := range b.IdentityKey {
		b.IdentityKey[i] = byte(i)
		b.SignedPreKey[i] = byte(i + 1)
	}
	b.SignedPreKeyID = 1
	b.SignedPreKeySignature[0] = 9
	return b
}

// capture collects the <encrypted> elements of chat messages, with the
// bare JID of their sender.
type capture struct {
	got chan received
}

type received struct {
	from string
	msg  *encrypted.Encrypted
	err  error
}

// HandleMessage runs in the Serve goroutine: it only parses and hands over.
func (c *capture) HandleMessage(m stanza.Message, r xmlstream.TokenReadEncoder) error {
	toks, err := xmlstream.ReadAll(r)
	rec := received{from: m.From.Bare().String(), err: err}
	if err == nil {
		rec.msg, rec.err = findEncrypted(toks)
	}
	select {
	case c.got <- rec:
	default:
	}
	return nil
}

// findEncrypted parses the first <encrypted> child of a message.
func findEncrypted(toks []xml.Token) (*encrypted.Encrypted, error) {
	depth := 0
	for i, tok := range toks {
		switch tok := tok.(type) {
		case xml.StartElement:
			depth++
			if _, ok := encrypted.Is(tok); ok && depth == 2 {
				return encrypted.Parse(tokenSlice(toks[i+1:]), tok)
			}
		case xml.EndElement:
			depth--
		}
	}
	return nil, io.ErrUnexpectedEOF
}

func newManager(t *testing.T, ctx context.Context, s *xmpp.Session, account string) *session.Manager {
	t.Helper()
	m, err := session.New(ctx, store.NewMemory(), newNetwork(fixed(s), time.Minute), session.Config{
		JID:         account,
		Backends:    []backends.Factory{twomemo.Factory, oldmemo.Factory},
		StartSynced: true,
		OnError:     func(err error) { t.Logf("background error of %s: %v", account, err) },
	})
	if err != nil {
		t.Fatalf("session manager of %s: %v", account, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// Two session managers on two accounts without roster relationship talk
// through the real PEP service and message routing.
func TestIntegrationManagers(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	c := &capture{got: make(chan received, 8)}
	h := mux.New(stanza.NSClient,
		mux.Message(stanza.ChatMessage, xml.Name{Space: ns.OMEMO2, Local: "encrypted"}, c),
		mux.Message(stanza.ChatMessage, xml.Name{Space: ns.Legacy, Local: "encrypted"}, c),
	)
	aliceSess := srv.Dial(t, "alice", h)
	bobSess := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)
	aliceJID, bobJID := srv.JID("alice").String(), srv.JID("bob").String()
	// Messages to the bare JID reach only available resources.
	if err := aliceSess.Send(ctx, stanza.Presence{}.Wrap(nil)); err != nil {
		t.Fatal(err)
	}

	alice := newManager(t, ctx, aliceSess, aliceJID)
	bob := newManager(t, ctx, bobSess, bobJID)

	// Start-up published both device lists and bundles.
	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		l, err := newNetwork(fixed(aliceSess), time.Minute).DownloadDeviceList(ctx, namespace, bobJID)
		if err != nil || len(l.Devices) != 1 || l.Devices[0].ID != bob.DeviceID() {
			t.Fatalf("%s: bob's list as seen by alice: %+v, %v", namespace, l, err)
		}
		if _, err := newNetwork(fixed(aliceSess), time.Minute).DownloadBundle(ctx, namespace, bobJID, bob.DeviceID()); err != nil {
			t.Fatalf("%s: bob's bundle: %v", namespace, err)
		}
	}

	if err := alice.RefreshDeviceLists(ctx, bobJID); err != nil {
		t.Fatal(err)
	}
	if err := bob.RefreshDeviceLists(ctx, aliceJID); err != nil {
		t.Fatal(err)
	}
	if devs, err := alice.Devices(ctx, bobJID); err != nil || len(devs) != 1 || devs[0].DeviceID != bob.DeviceID() {
		t.Fatalf("alice knows bob's devices %+v, %v", devs, err)
	}

	// Alice encrypts (the bundle is downloaded from PEP); bob decrypts the
	// object directly.
	text := []byte("hello over prosody")
	res, err := alice.Encrypt(ctx, []string{bobJID}, map[string][]byte{ns.OMEMO2: text, ns.Legacy: text}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Failures) != 0 || len(res.Recipients) != 1 || res.Recipients[0].DeviceID != bob.DeviceID() || res.Recipients[0].Namespace != ns.OMEMO2 {
		t.Fatalf("encrypt result: recipients %+v failures %+v", res.Recipients, res.Failures)
	}
	idx := slices.IndexFunc(res.Messages, func(m *encrypted.Encrypted) bool { return m.Namespace == res.Recipients[0].Namespace })
	if idx < 0 {
		t.Fatalf("no message in %s", res.Recipients[0].Namespace)
	}
	dec, err := bob.Decrypt(ctx, aliceJID, res.Messages[idx])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec.Plaintext, text) || !dec.KeyExchange || dec.Sender.DeviceID != alice.DeviceID() {
		t.Fatalf("bob decrypted %q (kex %v) from device %d", dec.Plaintext, dec.KeyExchange, dec.Sender.DeviceID)
	}

	// Bob's manager answers the key exchange with an empty message, sent as
	// a real message stanza.
	var rec received
	select {
	case rec = <-c.got:
	case <-ctx.Done():
		t.Fatal("no empty message from bob")
	}
	if rec.err != nil {
		t.Fatalf("parsing bob's message: %v", rec.err)
	}
	if rec.from != bobJID || rec.msg.Namespace != ns.OMEMO2 || rec.msg.SID != bob.DeviceID() || rec.msg.Payload != nil {
		t.Fatalf("message from %s device %d, payload %v", rec.from, rec.msg.SID, rec.msg.Payload)
	}
	empty, err := alice.Decrypt(ctx, rec.from, rec.msg)
	if err != nil {
		t.Fatalf("alice decrypting bob's answer: %v", err)
	}
	if !empty.Empty || empty.Plaintext != nil || empty.Sender.DeviceID != bob.DeviceID() || empty.KeyExchange {
		t.Fatalf("answer: %+v", empty)
	}

	// The session is complete: bob can now write to alice without a key
	// exchange.
	res, err = bob.Encrypt(ctx, []string{aliceJID}, map[string][]byte{ns.OMEMO2: []byte("hi"), ns.Legacy: []byte("hi")}, nil)
	if err != nil || len(res.Recipients) != 1 {
		t.Fatalf("bob encrypting: %+v, %v", res, err)
	}
	dec, err = alice.Decrypt(ctx, bobJID, res.Messages[slices.IndexFunc(res.Messages, func(m *encrypted.Encrypted) bool { return m.Namespace == res.Recipients[0].Namespace })])
	if err != nil || string(dec.Plaintext) != "hi" || dec.KeyExchange {
		t.Fatalf("alice decrypting: %+v, %v", dec, err)
	}
	for _, m := range []*session.Manager{alice, bob} {
		if err := m.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// fixed returns the session getter of a network that always uses s.
func fixed(s *xmpp.Session) func() (*xmpp.Session, error) {
	return func() (*xmpp.Session, error) { return s, nil }
}
