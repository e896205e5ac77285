package pep_test

import (
	"context"
	"encoding/xml"
	"errors"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/pep"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/form"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/pubsub"
	"mellium.im/xmpp/stanza"
)

const (
	devicesNode = "urn:xmpp:omemo:2:devices"
	bundlesNode = "urn:xmpp:omemo:2:bundles"
	capsURI     = "https://mellium.im/omemo/pep-test"
)

var (
	deviceListOpts = pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: "1"}
	bundleOpts     = pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: pep.MaxItemsMax}
)

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// payload returns <name xmlns='urn:test'>text</name>.
func payload(name, text string) xml.TokenReader {
	return xmlstream.Wrap(xmlstream.Token(xml.CharData(text)), xml.StartElement{Name: xml.Name{Space: "urn:test", Local: name}})
}

func devices(ids ...string) xml.TokenReader {
	var rs []xml.TokenReader
	for _, id := range ids {
		rs = append(rs, xmlstream.Wrap(nil, xml.StartElement{
			Name: xml.Name{Space: "urn:xmpp:omemo:2", Local: "device"},
			Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: id}},
		}))
	}
	return xmlstream.Wrap(xmlstream.MultiReader(rs...), xml.StartElement{Name: xml.Name{Space: "urn:xmpp:omemo:2", Local: "devices"}})
}

func mustPublish(t *testing.T, s *xmpp.Session, node, id string, p xml.TokenReader, opts pep.PublishOptions) {
	t.Helper()
	if err := pep.Publish(ctxT(t), s, node, id, p, opts); err != nil {
		t.Fatalf("publish %s/%s: %v", node, id, err)
	}
}

func config(t *testing.T, s *xmpp.Session, node string) (access, maxItems string) {
	t.Helper()
	cfg, err := pubsub.GetConfig(ctxT(t), s, node)
	if err != nil {
		t.Fatalf("get config of %s: %v", node, err)
	}
	access, _ = cfg.GetString(pep.FieldAccessModel)
	maxItems, _ = cfg.GetString(pep.FieldMaxItems)
	return access, maxItems
}

func TestIntegrationPublishAndFetch(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)

	// Device-list style: one item, open, max_items=1.
	mustPublish(t, alice, devicesNode, "current", devices("1001"), deviceListOpts)
	mustPublish(t, alice, devicesNode, "current", devices("1001", "1002"), deviceListOpts)
	if access, max := config(t, alice, devicesNode); access != "open" || max != "1" {
		t.Fatalf("devices node config: access_model=%q max_items=%q", access, max)
	}

	// Bundles style: one item per device, max_items=max.
	for _, id := range []string{"1001", "1002", "1003"} {
		mustPublish(t, alice, bundlesNode, id, payload("bundle", "b"+id), bundleOpts)
	}
	if access, max := config(t, alice, bundlesNode); access != "open" || max != "max" {
		t.Fatalf("bundles node config: access_model=%q max_items=%q", access, max)
	}

	// One item among several, by the owner and by a stranger (open access,
	// no roster relationship).
	for _, s := range []*xmpp.Session{alice, bob} {
		it, err := pep.FetchItem(ctx, s, srv.JID("alice"), bundlesNode, "1002")
		if err != nil {
			t.Fatalf("fetch bundle 1002 as %v: %v", s.LocalAddr(), err)
		}
		if it.ID != "1002" || string(it.Payload) != `<bundle xmlns="urn:test">b1002</bundle>` {
			t.Fatalf("fetched %q %s", it.ID, it.Payload)
		}
	}
	// The own account may also be addressed with the zero JID.
	if it, err := pep.FetchItem(ctx, alice, jid.JID{}, bundlesNode, "1003"); err != nil || it.ID != "1003" {
		t.Fatalf("own fetch: %v %v", it, err)
	}

	items, err := pep.FetchItems(ctx, bob, srv.JID("alice"), bundlesNode, 0)
	if err != nil || len(items) != 3 {
		t.Fatalf("fetch all bundles: %d items, %v", len(items), err)
	}

	latest, err := pep.FetchLatest(ctx, bob, srv.JID("alice"), devicesNode)
	if err != nil {
		t.Fatal(err)
	}
	if latest.ID != "current" || !strings.Contains(string(latest.Payload), `id="1002"`) {
		t.Fatalf("latest device list: %q %s", latest.ID, latest.Payload)
	}
	// max_items=1 kept only the newest device list.
	if items, err := pep.FetchItems(ctx, bob, srv.JID("alice"), devicesNode, 0); err != nil || len(items) != 1 {
		t.Fatalf("device list items: %d, %v", len(items), err)
	}
}

func TestIntegrationPreconditionRecovery(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"})
	alice := srv.Dial(t, "alice", nil)
	ctx := ctxT(t)

	// The node exists with another configuration.
	cfg := form.New(
		form.Hidden("FORM_TYPE", form.Value(pep.NSNodeConfig)),
		form.List(pep.FieldAccessModel, form.Value("presence")),
		form.Text(pep.FieldMaxItems, form.Value("5")),
	)
	if err := pubsub.CreateNode(ctx, alice, bundlesNode, cfg); err != nil {
		t.Fatalf("create node: %v", err)
	}
	if access, max := config(t, alice, bundlesNode); access != "presence" || max != "5" {
		t.Fatalf("precondition setup: access_model=%q max_items=%q", access, max)
	}

	// Without recovery the server's error is parsed in full.
	err := pep.PublishOnce(ctx, alice, bundlesNode, "1", nil, bundleOpts)
	var pe *pep.Error
	if !errors.As(err, &pe) || !errors.Is(err, pep.ErrPreconditionNotMet) ||
		pe.Condition != stanza.Conflict || pe.Type != stanza.Cancel || pe.Text == "" {
		t.Fatalf("raw publish error: %#v (%v)", pe, err)
	}

	// Publish reconfigures and succeeds.
	mustPublish(t, alice, bundlesNode, "1001", payload("bundle", "x"), bundleOpts)
	if access, max := config(t, alice, bundlesNode); access != "open" || max != "max" {
		t.Fatalf("after recovery: access_model=%q max_items=%q", access, max)
	}
	if _, err := pep.FetchItem(ctx, alice, jid.JID{}, bundlesNode, "1001"); err != nil {
		t.Fatal(err)
	}
	// A second publish needs no recovery any more and still works.
	mustPublish(t, alice, bundlesNode, "1002", payload("bundle", "y"), bundleOpts)
}

func TestIntegrationNotFound(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)

	check := func(name string, err error, cond stanza.Condition) {
		t.Helper()
		if !errors.Is(err, pep.ErrNotFound) {
			t.Fatalf("%s: %v, want ErrNotFound", name, err)
		}
		var pe *pep.Error
		if cond != "" && (!errors.As(err, &pe) || pe.Condition != cond) {
			t.Fatalf("%s: underlying error %v, want %s", name, err, cond)
		}
	}

	// Own missing node: item-not-found.
	_, err := pep.FetchLatest(ctx, alice, jid.JID{}, devicesNode)
	check("own missing node", err, stanza.ItemNotFound)
	// Another account's missing node: Prosody answers forbidden.
	_, err = pep.FetchItem(ctx, bob, srv.JID("alice"), bundlesNode, "1")
	check("foreign missing node", err, stanza.Forbidden)
	if !errors.Is(err, pep.ErrForbidden) {
		t.Fatalf("forbidden not reachable: %v", err)
	}
	_, err = pep.FetchItems(ctx, bob, srv.JID("alice"), devicesNode, 0)
	check("foreign missing node (all items)", err, stanza.Forbidden)

	// Missing item in an existing node.
	mustPublish(t, alice, bundlesNode, "1", payload("bundle", "1"), bundleOpts)
	_, err = pep.FetchItem(ctx, bob, srv.JID("alice"), bundlesNode, "2")
	check("missing item", err, "")
}

func TestIntegrationRetractAndDelete(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"})
	alice := srv.Dial(t, "alice", nil)
	ctx := ctxT(t)

	mustPublish(t, alice, bundlesNode, "1", payload("bundle", "1"), bundleOpts)
	mustPublish(t, alice, bundlesNode, "2", payload("bundle", "2"), bundleOpts)

	if err := pep.Retract(ctx, alice, bundlesNode, "1", true); err != nil {
		t.Fatalf("retract: %v", err)
	}
	if _, err := pep.FetchItem(ctx, alice, jid.JID{}, bundlesNode, "1"); !errors.Is(err, pep.ErrNotFound) {
		t.Fatalf("retracted item still there: %v", err)
	}
	if _, err := pep.FetchItem(ctx, alice, jid.JID{}, bundlesNode, "2"); err != nil {
		t.Fatalf("other item gone: %v", err)
	}
	// Retracting what is not there is success.
	if err := pep.Retract(ctx, alice, bundlesNode, "1", false); err != nil {
		t.Fatalf("retract missing item: %v", err)
	}
	if err := pep.Retract(ctx, alice, "no-such-node", "1", false); err != nil {
		t.Fatalf("retract from missing node: %v", err)
	}

	if err := pep.DeleteNode(ctx, alice, bundlesNode); err != nil {
		t.Fatalf("delete node: %v", err)
	}
	if _, err := pep.FetchItems(ctx, alice, jid.JID{}, bundlesNode, 0); !errors.Is(err, pep.ErrNotFound) {
		t.Fatalf("deleted node still there: %v", err)
	}
	if err := pep.DeleteNode(ctx, alice, bundlesNode); err != nil {
		t.Fatalf("delete missing node: %v", err)
	}
}

// events collects notifications without ever blocking the Serve goroutine.
type events chan pep.Event

func (c events) handle(ev pep.Event) {
	select {
	case c <- ev:
	default:
	}
}

// next returns the next event for node that satisfies ok.
func (c events) next(t *testing.T, who, node string, ok func(pep.Event) bool) pep.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-c:
			if ev.Node == node && ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("%s: no matching event for %s", who, node)
		}
	}
}

func itemWith(id, content string) func(pep.Event) bool {
	return func(ev pep.Event) bool {
		for _, it := range ev.Items {
			if it.ID == id && strings.Contains(string(it.Payload), content) {
				return true
			}
		}
		return false
	}
}

// notifyClient dials name with a mux that advertises +notify for node
// through entity capabilities and sends its caps presence.
func notifyClient(t *testing.T, srv *prosodytest.Server, name, node string) (*xmpp.Session, events) {
	t.Helper()
	c := make(events, 32)
	m := mux.New(stanza.NSClient,
		pep.HandleDisco(capsURI),
		mux.Feature(pep.NotifyFeatures(node)),
		pep.HandleEvents(c.handle),
	)
	s := srv.Dial(t, name, m)
	p, err := pep.CapsPresence(m, capsURI, stanza.Presence{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctxT(t), p); err != nil {
		t.Fatal(err)
	}
	return s, c
}

func TestIntegrationNotify(t *testing.T) {
	srv := prosodytest.Start(t,
		prosodytest.User{Name: "alice", Contacts: []string{"bob"}},
		prosodytest.User{Name: "bob"},
	)
	ctx := ctxT(t)
	alice := srv.Dial(t, "alice", nil)
	mustPublish(t, alice, devicesNode, "current", devices("1"), deviceListOpts)

	// On their caps presence the server queries the caps node (which only
	// works with the resetting hash, since two clients ask) and then sends
	// the last item: this also proves the interest was registered.
	_, bobEvents := notifyClient(t, srv, "bob", devicesNode)
	_, aliceEvents := notifyClient(t, srv, "alice", devicesNode)
	ev := bobEvents.next(t, "bob", devicesNode, itemWith("current", `id="1"`))
	if !ev.From.Equal(srv.JID("alice")) {
		t.Fatalf("bob's event from %v", ev.From)
	}
	ev = aliceEvents.next(t, "alice", devicesNode, itemWith("current", `id="1"`))
	if !ev.From.Equal(jid.JID{}) {
		t.Fatalf("own event from %v, want the zero JID", ev.From)
	}

	// A new publish reaches both.
	mustPublish(t, alice, devicesNode, "current", devices("1", "2"), deviceListOpts)
	bobEvents.next(t, "bob", devicesNode, itemWith("current", `id="2"`))
	aliceEvents.next(t, "alice", devicesNode, itemWith("current", `id="2"`))

	// Retraction with notify.
	if err := pep.Retract(ctx, alice, devicesNode, "current", true); err != nil {
		t.Fatal(err)
	}
	ev = bobEvents.next(t, "bob", devicesNode, func(ev pep.Event) bool { return len(ev.Retracted) > 0 })
	if ev.Retracted[0] != "current" {
		t.Fatalf("retracted %v", ev.Retracted)
	}

	// Node deletion.
	if err := pep.DeleteNode(ctx, alice, devicesNode); err != nil {
		t.Fatal(err)
	}
	bobEvents.next(t, "bob", devicesNode, func(ev pep.Event) bool { return ev.Deleted })
	aliceEvents.next(t, "alice", devicesNode, func(ev pep.Event) bool { return ev.Deleted })
}

func TestIntegrationSubscribe(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "carol"})
	ctx := ctxT(t)
	alice := srv.Dial(t, "alice", nil)
	mustPublish(t, alice, devicesNode, "current", devices("1"), deviceListOpts)

	// Carol has no roster relationship with alice and advertises no
	// +notify; an explicit subscription brings the notifications.
	c := make(events, 32)
	carol := srv.Dial(t, "carol", mux.New(stanza.NSClient, pep.HandleEvents(c.handle)))
	if err := carol.Send(ctx, stanza.Presence{}.Wrap(nil)); err != nil {
		t.Fatal(err)
	}
	if err := pep.Subscribe(ctx, carol, srv.JID("alice"), devicesNode); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	mustPublish(t, alice, devicesNode, "current", devices("1", "7"), deviceListOpts)
	ev := c.next(t, "carol", devicesNode, itemWith("current", `id="7"`))
	if !ev.From.Equal(srv.JID("alice")) {
		t.Fatalf("event from %v", ev.From)
	}

	if err := pep.Unsubscribe(ctx, carol, srv.JID("alice"), devicesNode); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	if err := pep.Unsubscribe(ctx, carol, srv.JID("alice"), devicesNode); err != nil {
		t.Fatalf("second unsubscribe: %v", err)
	}
}
