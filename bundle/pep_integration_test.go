package bundle_test

import (
	"context"
	"encoding/xml"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/pubsub"
)

// ctxT returns a context that ends with the test (cancelled in t.Cleanup,
// before the sessions dialled earlier are closed).
func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func nodeConfig(t *testing.T, ctx context.Context, s *xmpp.Session, node string) (access, maxItems string) {
	t.Helper()
	cfg, err := pubsub.GetConfig(ctx, s, node)
	if err != nil {
		t.Fatalf("config of %s: %v", node, err)
	}
	access, _ = cfg.GetString(pep.FieldAccessModel)
	maxItems, _ = cfg.GetString(pep.FieldMaxItems)
	return access, maxItems
}

func TestIntegrationBundles(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)
	aliceJID := srv.JID("alice")
	devices := []uint32{11, 22, 4294967295}

	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		// Nothing published: not found, for owner and stranger.
		for _, s := range []*xmpp.Session{alice, bob} {
			if _, err := bundle.Fetch(ctx, s, aliceJID, namespace, 11); !errors.Is(err, pep.ErrNotFound) {
				t.Fatalf("%s: fetch before publishing: %v", namespace, err)
			}
		}

		published := map[uint32]bundle.Bundle{}
		for i, id := range devices {
			b := testBundle(namespace, byte(10*i))
			if err := bundle.Publish(ctx, alice, id, testBundle(namespace, 200)); err != nil {
				t.Fatalf("%s: publish %d: %v", namespace, id, err)
			}
			// Republishing replaces the bundle.
			if err := bundle.Publish(ctx, alice, id, b); err != nil {
				t.Fatalf("%s: republish %d: %v", namespace, id, err)
			}
			published[id] = b
		}

		// Every bundle, by id, for the owner (zero JID) and a stranger
		// without roster relationship.
		for id, want := range published {
			for _, c := range []struct {
				s     *xmpp.Session
				owner jid.JID
			}{{alice, jid.JID{}}, {bob, aliceJID}} {
				got, err := bundle.Fetch(ctx, c.s, c.owner, namespace, id)
				if err != nil {
					t.Fatalf("%s: fetch %d as %v: %v", namespace, id, c.s.LocalAddr(), err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("%s: fetch %d:\n got %+v\nwant %+v", namespace, id, got, want)
				}
			}
		}
		if _, err := bundle.Fetch(ctx, bob, aliceJID, namespace, 33); !errors.Is(err, pep.ErrNotFound) {
			t.Fatalf("%s: fetch of an unknown device: %v", namespace, err)
		}

		// Node layout and configuration.
		if namespace == ns.OMEMO2 {
			items, err := pep.FetchItems(ctx, bob, aliceJID, ns.OMEMO2Bundles, 0)
			if err != nil || len(items) != len(devices) {
				t.Fatalf("omemo2 bundles node: %d items, %v", len(items), err)
			}
			if access, maxItems := nodeConfig(t, ctx, alice, ns.OMEMO2Bundles); access != "open" || maxItems != pep.MaxItemsMax {
				t.Fatalf("omemo2 bundles node: access_model=%q max_items=%q", access, maxItems)
			}
		} else {
			for _, id := range devices {
				items, err := pep.FetchItems(ctx, bob, aliceJID, ns.LegacyBundles(id), 0)
				if err != nil || len(items) != 1 || items[0].ID != "current" {
					t.Fatalf("legacy bundle node of %d: %+v, %v", id, items, err)
				}
				if access, maxItems := nodeConfig(t, ctx, alice, ns.LegacyBundles(id)); access != "open" || maxItems != "1" {
					t.Fatalf("legacy bundle node of %d: access_model=%q max_items=%q", id, access, maxItems)
				}
			}
		}

		// Deleting one bundle leaves the others.
		if err := bundle.Delete(ctx, alice, namespace, 22); err != nil {
			t.Fatalf("%s: delete: %v", namespace, err)
		}
		if _, err := bundle.Fetch(ctx, bob, aliceJID, namespace, 22); !errors.Is(err, pep.ErrNotFound) {
			t.Fatalf("%s: fetch after delete: %v", namespace, err)
		}
		for _, id := range []uint32{11, 4294967295} {
			if got, err := bundle.Fetch(ctx, bob, aliceJID, namespace, id); err != nil || !reflect.DeepEqual(got, published[id]) {
				t.Fatalf("%s: fetch %d after deleting another: %v", namespace, id, err)
			}
		}
		if namespace == ns.Legacy {
			// The whole node is gone.
			if _, err := pep.FetchItems(ctx, alice, jid.JID{}, ns.LegacyBundles(22), 0); !errors.Is(err, pep.ErrNotFound) {
				t.Fatalf("legacy node after delete: %v", err)
			}
		}
		// Deleting what does not exist succeeds.
		for _, id := range []uint32{22, 33} {
			if err := bundle.Delete(ctx, alice, namespace, id); err != nil {
				t.Fatalf("%s: delete of missing %d: %v", namespace, id, err)
			}
		}
	}
}

func TestIntegrationBundleQuirks(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	alice := srv.Dial(t, "alice", nil)
	bob := srv.Dial(t, "bob", nil)
	ctx := ctxT(t)
	aliceJID := srv.JID("alice")
	raw := func(b bundle.Bundle) xml.TokenReader { return b.TokenReader() }
	many := pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: "10"}

	// A legacy bundle under another item id is still found.
	want := testBundle(ns.Legacy, 5)
	if err := pep.Publish(ctx, alice, ns.LegacyBundles(5), "abc", raw(want), many); err != nil {
		t.Fatal(err)
	}
	if got, err := bundle.Fetch(ctx, bob, aliceJID, ns.Legacy, 5); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("legacy bundle under another id: %v", err)
	}
	// With "current" and a newer item, "current" wins.
	if err := pep.Publish(ctx, alice, ns.LegacyBundles(5), "current", raw(testBundle(ns.Legacy, 6)), many); err != nil {
		t.Fatal(err)
	}
	if err := pep.Publish(ctx, alice, ns.LegacyBundles(5), "newer", raw(testBundle(ns.Legacy, 7)), many); err != nil {
		t.Fatal(err)
	}
	if got, err := bundle.Fetch(ctx, bob, aliceJID, ns.Legacy, 5); err != nil || !reflect.DeepEqual(got, testBundle(ns.Legacy, 6)) {
		t.Fatalf("legacy current among several: %v", err)
	}

	// Payloads that are not bundles of the namespace.
	for _, tc := range []struct {
		payload xml.TokenReader
		want    error
	}{
		{raw(testBundle(ns.Legacy, 1)), bundle.ErrWrongElement},
		{xml.NewDecoder(strings.NewReader(`<bundle xmlns='urn:xmpp:omemo:2'><spk id='1'>AAAA</spk></bundle>`)), bundle.ErrInvalidKey},
		{xml.NewDecoder(strings.NewReader(`<x xmlns='urn:other'/>`)), bundle.ErrWrongElement},
	} {
		if err := pep.Publish(ctx, alice, ns.OMEMO2Bundles, "9", tc.payload, many); err != nil {
			t.Fatal(err)
		}
		_, err := bundle.Fetch(ctx, bob, aliceJID, ns.OMEMO2, 9)
		if !errors.Is(err, bundle.ErrInvalidItem) || !errors.Is(err, tc.want) {
			t.Fatalf("invalid payload: %v, want ErrInvalidItem and %v", err, tc.want)
		}
	}
}
