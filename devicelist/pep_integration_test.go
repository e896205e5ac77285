package devicelist_test

import (
	"context"
	"encoding/xml"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/pubsub"
	"mellium.im/xmpp/stanza"
)

// ctxT returns a context that ends with the test. It is cancelled in
// t.Cleanup, after the test's own work but before the sessions dialled
// earlier are closed.
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// raw returns a token reader over an XML snippet.
func raw(s string) xml.TokenReader { return xml.NewDecoder(strings.NewReader(s)) }

func ids(l devicelist.List) []uint32 {
	out := []uint32{}
	for _, d := range l.Devices {
		out = append(out, d.ID)
	}
	return out
}

func TestIntegrationPublishFetch(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)

	lists := map[string]devicelist.List{
		ns.OMEMO2: {Namespace: ns.OMEMO2, Devices: []devicelist.Device{
			{ID: 1001, Label: "laptop", LabelSignature: []byte{1, 2, 3}},
			{ID: 1002},
		}},
		ns.Legacy: {Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 2001}, {ID: 2002}, {ID: 2003}}},
	}
	for namespace, want := range lists {
		// Nothing published yet: an empty list for the owner; a stranger
		// gets forbidden from Prosody, which is not "no devices".
		for name, owner := range map[string]jid.JID{"own": {}, "own bare": srv.JID("alice")} {
			got, err := devicelist.Fetch(ctx, alice, owner, namespace)
			if err != nil || got.Namespace != namespace || len(got.Devices) != 0 {
				t.Fatalf("%s: %s fetch before publishing: %+v, %v", namespace, name, got, err)
			}
		}
		if got, err := devicelist.Fetch(ctx, bob, srv.JID("alice"), namespace); !errors.Is(err, devicelist.ErrAccessDenied) || !errors.Is(err, pep.ErrForbidden) {
			t.Fatalf("%s: stranger fetch before publishing: %+v, %v; want ErrAccessDenied", namespace, got, err)
		}

		// A first version, then the real one: the item is replaced.
		first := devicelist.List{Namespace: namespace, Devices: []devicelist.Device{{ID: 7}}}
		if err := devicelist.Publish(ctx, alice, first); err != nil {
			t.Fatalf("%s: publish: %v", namespace, err)
		}
		if err := devicelist.Publish(ctx, alice, want); err != nil {
			t.Fatalf("%s: republish: %v", namespace, err)
		}

		// The owner, and bob without any roster relationship (open access).
		for _, c := range []struct {
			name  string
			sess  *xmpp.Session
			owner jid.JID
		}{{"own", alice, jid.JID{}}, {"stranger", bob, srv.JID("alice")}} {
			got, err := devicelist.Fetch(ctx, c.sess, c.owner, namespace)
			if err != nil {
				t.Fatalf("%s: %s fetch: %v", namespace, c.name, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: %s fetch:\n got %+v\nwant %+v", namespace, c.name, got, want)
			}
		}

		// The node is configured as XEP-0384 requires.
		cfg, err := pubsub.GetConfig(ctx, alice, devicelist.Node(namespace))
		if err != nil {
			t.Fatal(err)
		}
		access, _ := cfg.GetString(pep.FieldAccessModel)
		maxItems, _ := cfg.GetString(pep.FieldMaxItems)
		if access != "open" || maxItems != "1" {
			t.Fatalf("%s: node config access_model=%q max_items=%q", namespace, access, maxItems)
		}
	}
	// The two namespaces are independent.
	if got, err := devicelist.Fetch(ctx, bob, srv.JID("alice"), ns.OMEMO2); err != nil || !reflect.DeepEqual(ids(got), []uint32{1001, 1002}) {
		t.Fatalf("omemo2 list after legacy publish: %+v, %v", got, err)
	}
}

// Lists published under another item id (profanity-im/profanity#1385), nodes
// holding several items, and items that do not parse.
func TestIntegrationFetchQuirks(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)
	aliceJID := srv.JID("alice")
	many := pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: "10"}

	// Only an item with another id: it is used.
	if err := pep.Publish(ctx, alice, ns.LegacyDevices, "5f3a", raw(`<list xmlns='eu.siacs.conversations.axolotl'><device id='42'/></list>`), many); err != nil {
		t.Fatal(err)
	}
	got, err := devicelist.Fetch(ctx, bob, aliceJID, ns.Legacy)
	if err != nil || !reflect.DeepEqual(ids(got), []uint32{42}) {
		t.Fatalf("list under another id: %+v, %v", got, err)
	}

	// "current" plus a newer item with another id: "current" wins.
	if err := pep.Publish(ctx, alice, ns.OMEMO2Devices, devicelist.ItemID, raw(`<devices xmlns='urn:xmpp:omemo:2'><device id='1'/></devices>`), many); err != nil {
		t.Fatal(err)
	}
	if err := pep.Publish(ctx, alice, ns.OMEMO2Devices, "newer", raw(`<devices xmlns='urn:xmpp:omemo:2'><device id='2'/></devices>`), many); err != nil {
		t.Fatal(err)
	}
	got, err = devicelist.Fetch(ctx, bob, aliceJID, ns.OMEMO2)
	if err != nil || !reflect.DeepEqual(ids(got), []uint32{1}) {
		t.Fatalf("current among several: %+v, %v", got, err)
	}

	// Publishing reconfigures the node to a single item.
	if err := devicelist.Publish(ctx, alice, devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 3}}}); err != nil {
		t.Fatal(err)
	}
	items, err := pep.FetchItems(ctx, bob, aliceJID, ns.OMEMO2Devices, 0)
	if err != nil || len(items) != 1 || items[0].ID != devicelist.ItemID {
		t.Fatalf("items after publish: %+v, %v", items, err)
	}

	// Invalid payloads are reported, not silently treated as empty.
	for _, tc := range []struct {
		payload string
		want    error
	}{
		{`<devices xmlns='urn:xmpp:omemo:2'><device id='0'/></devices>`, devicelist.ErrInvalidID},
		{`<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/></list>`, devicelist.ErrWrongElement},
		{`<devices xmlns='urn:other'/>`, devicelist.ErrWrongElement},
	} {
		if err := pep.Publish(ctx, alice, ns.OMEMO2Devices, devicelist.ItemID, raw(tc.payload), pep.PublishOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := devicelist.Fetch(ctx, bob, aliceJID, ns.OMEMO2)
		if !errors.Is(err, devicelist.ErrInvalidItem) || !errors.Is(err, tc.want) {
			t.Fatalf("fetch of %s: %v, want ErrInvalidItem and %v", tc.payload, err, tc.want)
		}
	}

	// A deleted node reads as an empty list again for the owner; Prosody
	// answers a stranger forbidden.
	if err := pep.DeleteNode(ctx, alice, ns.OMEMO2Devices); err != nil {
		t.Fatal(err)
	}
	got, err = devicelist.Fetch(ctx, alice, jid.JID{}, ns.OMEMO2)
	if err != nil || got.Namespace != ns.OMEMO2 || len(got.Devices) != 0 {
		t.Fatalf("after delete: %+v, %v", got, err)
	}
	if _, err := devicelist.Fetch(ctx, bob, aliceJID, ns.OMEMO2); !errors.Is(err, devicelist.ErrAccessDenied) {
		t.Fatalf("stranger after delete: %v, want ErrAccessDenied", err)
	}
}

// Notifications of a subscribed device list node turn into lists.
func TestIntegrationFromEvent(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	events := make(chan pep.Event, 32)
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", mux.New(stanza.NSClient, pep.HandleEvents(func(ev pep.Event) {
		select {
		case events <- ev:
		default:
		}
	})))
	ctx := ctxT(t)
	aliceJID := srv.JID("alice")

	if err := devicelist.Publish(ctx, alice, devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1}}}); err != nil {
		t.Fatal(err)
	}
	// Notifications go to the bare JID: bob must be available to get them.
	if err := bob.Send(ctx, stanza.Presence{}.Wrap(nil)); err != nil {
		t.Fatal(err)
	}
	if err := pep.Subscribe(ctx, bob, aliceJID, ns.OMEMO2Devices); err != nil {
		t.Fatal(err)
	}

	// next returns the next device list notification; want nil waits for
	// the notice that the list is gone.
	next := func(want []uint32) {
		t.Helper()
		for {
			select {
			case ev := <-events:
				namespace, l, ok, err := devicelist.FromEvent(ev)
				if !ok {
					continue
				}
				if want == nil && errors.Is(err, devicelist.ErrListRetracted) && namespace == ns.OMEMO2 && ev.From.Equal(aliceJID) {
					return
				}
				if err != nil || namespace != ns.OMEMO2 || !ev.From.Equal(aliceJID) {
					t.Fatalf("event %+v: %q %+v %v", ev, namespace, l, err)
				}
				if reflect.DeepEqual(ids(l), want) {
					return
				}
				t.Logf("skipping list %v (waiting for %v)", ids(l), want)
			case <-ctx.Done():
				t.Fatalf("no notification with %v", want)
			}
		}
	}

	if err := devicelist.Publish(ctx, alice, devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1}, {ID: 2}}}); err != nil {
		t.Fatal(err)
	}
	next([]uint32{1, 2})
	if err := pep.DeleteNode(ctx, alice, ns.OMEMO2Devices); err != nil {
		t.Fatal(err)
	}
	next(nil)
}
