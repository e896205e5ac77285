package omemo

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"

	"mellium.im/omemo/ns"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/stanza"
)

func carbon(from, to, kind, inner string) string {
	fromAttr := ""
	if from != "" {
		fromAttr = ` from='` + from + `'`
	}
	return `<message xmlns='jabber:client'` + fromAttr + ` to='` + to + `' type='chat'><` + kind + ` xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>` + inner + `</forwarded></` + kind + `></message>`
}

func archived(from, to, queryID, inner string) string {
	fromAttr := ""
	if from != "" {
		fromAttr = ` from='` + from + `'`
	}
	return `<message xmlns='jabber:client'` + fromAttr + ` to='` + to + `'><result xmlns='urn:xmpp:mam:2' queryid='` + queryID + `' id='arch-1'><forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' stamp='2026-01-02T03:04:05Z'/>` + inner + `</forwarded></result></message>`
}

// onlyError checks that exactly one error matching target was reported
// and no message delivered.
func onlyError(t *testing.T, d *device, target error) {
	t.Helper()
	msgs, errs := d.take()
	if len(msgs) != 0 || len(errs) != 1 || !errors.Is(errs[0], target) {
		t.Fatalf("got messages %+v, errors %v; want only %v", msgs, errs, target)
	}
	var de *DecryptError
	if !errors.As(errs[0], &de) {
		t.Fatalf("error %T is not a *DecryptError", errs[0])
	}
}

type passthrough struct {
	mu   sync.Mutex
	msgs []string
}

func (p *passthrough) HandleMessage(m stanza.Message, t xmlstream.TokenReadEncoder) error {
	toks, err := xmlstream.ReadAll(t)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, string(m.Type)+":"+strconv.Itoa(len(toks)))
	return nil
}

func TestCarbons(t *testing.T) {
	srv := sessiontest.NewServer()
	pt := &passthrough{}
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	bob2 := newDevice(t, srv, "bob@example.org/b2", both, true, func(c *Config) { c.Passthrough = pt })
	raw := alice.send(bob.full.Bare(), "for both bobs")

	// Anyone can send a carbon wrapper: only the own account's is taken.
	bob2.deliver(carbon("mallory@evil.example/x", bob2.full.String(), "received", raw))
	onlyError(t, bob2, ErrForgedCarbon)
	bob2.deliver(carbon("bob@example.org/b", bob2.full.String(), "received", raw))
	onlyError(t, bob2, ErrForgedCarbon)
	// A received carbon of a message to someone else is no carbon of ours.
	bob2.deliver(carbon("", bob2.full.String(), "received", strings.Replace(raw, `to="bob@example.org"`, `to="carol@example.org"`, 1)))
	onlyError(t, bob2, ErrForgedCarbon)

	// mellium turns the own bare JID into ""; both forms are accepted.
	for i, from := range []string{"", "bob@example.org"} {
		bob2.deliver(carbon(from, bob2.full.String(), "received", raw))
		msgs, errs := bob2.take()
		if i == 0 && (len(msgs) != 1 || len(errs) != 0) {
			t.Fatalf("received carbon: %+v %v", msgs, errs)
		}
		if i == 1 {
			// The same message again: the ratchet refuses it.
			if len(msgs) != 0 || len(errs) != 1 {
				t.Fatalf("repeated carbon: %+v %v", msgs, errs)
			}
			continue
		}
		m := msgs[0]
		if m.Body != "for both bobs" || !m.Carbon || m.Sent || !m.From.Equal(alice.full) || m.Namespace != ns.OMEMO2 {
			t.Fatalf("received carbon decrypted as %+v", m)
		}
	}

	// bob's answer reaches bob2 as a sent carbon.
	reply := bob.send(alice.full.Bare(), "answer")
	bob2.deliver(carbon("", bob2.full.String(), "sent", reply))
	msgs, errs := bob2.take()
	if len(msgs) != 1 || len(errs) != 0 {
		t.Fatalf("sent carbon: %+v %v", msgs, errs)
	}
	if m := msgs[0]; m.Body != "answer" || !m.Carbon || !m.Sent || !m.From.Equal(bob.full) || !m.To.Equal(alice.full.Bare()) {
		t.Fatalf("sent carbon decrypted as %+v", m)
	}
	// A sent carbon must be sent by the own account.
	bob2.deliver(carbon("", bob2.full.String(), "sent", raw))
	onlyError(t, bob2, ErrForgedCarbon)

	// Carbons without OMEMO go to the passthrough handler, once.
	bob2.deliver(carbon("", bob2.full.String(), "received", `<message xmlns='jabber:client' from='alice@example.org/a' to='bob@example.org' type='chat'><body>plain</body></message>`))
	if msgs, errs := bob2.take(); len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("plaintext carbon: %+v %v", msgs, errs)
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if len(pt.msgs) != 1 || !strings.HasPrefix(pt.msgs[0], "chat:") {
		t.Fatalf("passthrough got %v", pt.msgs)
	}
}

func TestArchive(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	raw := alice.send(bob.full.Bare(), "archived")
	own := alice.send(bob.full.Bare(), "own message")

	bob.p.mu.Lock()
	bob.p.queries["q1"] = true
	bob.p.mu.Unlock()

	// Results of someone else's archive, or of an unknown query, are not ours.
	bob.deliver(archived("mallory@evil.example", bob.full.String(), "q1", raw))
	onlyError(t, bob, ErrForgedArchive)
	bob.deliver(archived("", bob.full.String(), "other-query", raw))
	if msgs, errs := bob.take(); len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("foreign query: %+v %v", msgs, errs)
	}

	bob.deliver(archived("", bob.full.String(), "q1", raw))
	msgs, errs := bob.take()
	if len(msgs) != 1 || len(errs) != 0 {
		t.Fatalf("archived: %+v %v", msgs, errs)
	}
	m := msgs[0]
	if m.Body != "archived" || !m.Archived || m.Sent || m.ArchiveID != "arch-1" || m.Delay.IsZero() || !m.From.Equal(alice.full) {
		t.Fatalf("archived message decrypted as %+v", m)
	}
	// The same result again (a second catch-up) is skipped silently.
	bob.deliver(archived("bob@example.org", bob.full.String(), "q1", raw))
	if msgs, errs := bob.take(); len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("repeated result: %+v %v", msgs, errs)
	}

	// alice's own archive holds her own message: skipped silently.
	alice.p.mu.Lock()
	alice.p.queries["q2"] = true
	alice.p.mu.Unlock()
	alice.deliver(archived("", alice.full.String(), "q2", own))
	if msgs, errs := alice.take(); len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("own archived message: %+v %v", msgs, errs)
	}
}

// Whatever arrives, the handlers return nil (an error would close the
// stream); problems go to OnError.
func TestHandlersNeverFail(t *testing.T) {
	srv := sessiontest.NewServer()
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	enc := `<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='bob@example.org'><key rid='2'>AAAA</key></keys></header><payload>AAAA</payload></encrypted>`
	for i, raw := range []string{
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'><encrypted xmlns='urn:xmpp:omemo:2'/></message>`,
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'><encrypted xmlns='urn:xmpp:omemo:2'><header sid='x'/></encrypted></message>`,
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'><encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='1'>!!</key><iv>AAAA</iv></header></encrypted></message>`,
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'>` + enc + enc + `</message>`,
		`<message xmlns='jabber:client' type='normal' from='alice@example.org/a'>` + enc + `</message>`,
		`<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>`,
		`<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'/></received><sent xmlns='urn:xmpp:carbons:2'/></message>`,
		`<message xmlns='jabber:client'><result xmlns='urn:xmpp:mam:2' queryid='q'/></message>`,
		`<message xmlns='jabber:client' from='alice@example.org' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='0'/></devices></item></items></event></message>`,
	} {
		if err := dispatch(bob.m, raw); err != nil {
			t.Fatalf("%d: handler returned %v", i, err)
		}
		bob.wait()
		if msgs, _ := bob.take(); len(msgs) != 0 {
			t.Fatalf("%d: garbage reached the application: %+v", i, msgs)
		}
	}
}

// Messages that arrive before Start wait in the bounded queue; overflow is
// reported, never blocking the Serve goroutine.
func TestQueueBeforeStart(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	first := newDevice(t, srv, "bob@example.org/b", both, true)
	st := first.p.cfg.Store
	if err := first.p.Close(); err != nil {
		t.Fatal(err)
	}
	raw1 := alice.send(first.full.Bare(), "one")
	raw2 := alice.send(first.full.Bare(), "two")
	raw3 := alice.send(first.full.Bare(), "three")

	bob := newDevice(t, srv, "bob@example.org/b", both, false, func(c *Config) {
		c.Store = st
		c.QueueSize = 1
	})
	// The queue holds one message until Start; the others are dropped.
	for _, raw := range []string{raw1, raw2, raw3} {
		if err := dispatch(bob.m, raw); err != nil {
			t.Fatal(err)
		}
	}
	if _, errs := bob.take(); len(errs) != 2 || !errors.Is(errs[0], ErrQueueFull) || !errors.Is(errs[1], ErrQueueFull) {
		t.Fatalf("errors %v, want ErrQueueFull", errs)
	}
	if _, err := bob.p.Send(context.Background(), alice.full.Bare(), "x"); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Send before Start: %v", err)
	}
	bob.start()
	bob.wait()
	if msgs, errs := bob.take(); len(msgs) != 1 || msgs[0].Body != "one" || len(errs) != 0 {
		t.Fatalf("after Start: %+v %v", msgs, errs)
	}
	if err := bob.p.Start(context.Background()); !errors.Is(err, ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if err := bob.p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.p.Send(context.Background(), alice.full.Bare(), "x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := dispatch(bob.m, raw2); err != nil {
		t.Fatalf("handler after Close: %v", err)
	}
}

// A device list notification updates the session manager, for the account
// that sent it.
func TestDeviceListEvent(t *testing.T) {
	srv := sessiontest.NewServer()
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	carol := newDevice(t, srv, "carol@example.org/c", both, true)
	carolID := carol.p.Manager().DeviceID()
	ctx := context.Background()
	if devs, _ := bob.p.Manager().Devices(ctx, "carol@example.org"); len(devs) != 0 {
		t.Fatalf("bob knows carol's devices already: %v", devs)
	}
	event := func(from string) string {
		return `<message xmlns='jabber:client' from='` + from + `' to='bob@example.org/b' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='` + strconv.FormatUint(uint64(carolID), 10) + `'/></devices></item></items></event></message>`
	}
	// A notification from a full JID is not a PEP notification.
	bob.deliver(event("carol@example.org/c"))
	if devs, _ := bob.p.Manager().Devices(ctx, "carol@example.org"); len(devs) != 0 {
		t.Fatalf("full-JID notification was applied: %v", devs)
	}
	bob.deliver(event("carol@example.org"))
	devs, err := bob.p.Manager().Devices(ctx, "carol@example.org")
	if err != nil || len(devs) != 1 || devs[0].DeviceID != carolID {
		t.Fatalf("devices of carol: %+v, %v", devs, err)
	}
	if _, errs := bob.take(); len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
}

// MAM results of queries the plugin did not send (the application's own
// archive queries, of its account or of a room) are never decrypted or
// handed to the Handler, whoever sent them: they go to Config.Passthrough
// untouched, still encrypted, and the application, which knows which
// archive it asked, checks their from. The plugin cannot: a room's archive
// legitimately answers from the room's JID.
func TestForeignArchiveResults(t *testing.T) {
	srv := sessiontest.NewServer()
	pt := &passthrough{}
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true, func(c *Config) { c.Passthrough = pt })
	raw := alice.send(bob.full.Bare(), "archived")
	for _, from := range []string{"", "bob@example.org", "mallory@evil.example", "room@conference.example.org"} {
		bob.deliver(archived(from, bob.full.String(), "app-query", raw))
		if msgs, errs := bob.take(); len(msgs) != 0 || len(errs) != 0 {
			t.Fatalf("from %q: %+v %v", from, msgs, errs)
		}
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if len(pt.msgs) != 4 {
		t.Fatalf("passthrough got %v, want the 4 results", pt.msgs)
	}
	// The message is still unread: the plugin's own catch-up decrypts it.
	bob.p.mu.Lock()
	bob.p.queries["q"] = true
	bob.p.mu.Unlock()
	bob.deliver(archived("", bob.full.String(), "q", raw))
	if msgs, errs := bob.take(); len(msgs) != 1 || msgs[0].Body != "archived" || len(errs) != 0 {
		t.Fatalf("own query: %+v %v", msgs, errs)
	}
}
