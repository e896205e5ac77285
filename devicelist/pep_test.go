package devicelist_test

import (
	"context"
	"encoding/xml"
	"errors"
	"reflect"
	"strings"
	"testing"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp/jid"
)

// event parses a notification the way pep.HandleEvents does.
func event(t *testing.T, msg string) pep.Event {
	t.Helper()
	ev, err := pep.ParseEvent(xml.NewDecoder(strings.NewReader(msg)))
	if err != nil {
		t.Fatalf("ParseEvent: %v", err)
	}
	return ev
}

const (
	evHead = `<message xmlns='jabber:client' from='juliet@capulet.lit' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'>`
	evTail = `</event></message>`
)

func TestFromEvent(t *testing.T) {
	two := `<devices xmlns='urn:xmpp:omemo:2'><device id='1' label='phone'/><device id='2'/></devices>`
	for _, tc := range []struct {
		name    string
		msg     string
		ns      string
		ok      bool
		devices []uint32
		errs    []error
	}{{
		name:    "omemo2 item",
		msg:     evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='current'>` + two + `</item></items>` + evTail,
		ns:      ns.OMEMO2,
		ok:      true,
		devices: []uint32{1, 2},
	}, {
		name:    "legacy item",
		msg:     evHead + `<items node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list></item></items>` + evTail,
		ns:      ns.Legacy,
		ok:      true,
		devices: []uint32{7},
	}, {
		name: "current preferred over the newest",
		msg: evHead + `<items node='urn:xmpp:omemo:2:devices'>` +
			`<item id='current'>` + two + `</item>` +
			`<item id='other'><devices xmlns='urn:xmpp:omemo:2'><device id='9'/></devices></item>` +
			`</items>` + evTail,
		ns:      ns.OMEMO2,
		ok:      true,
		devices: []uint32{1, 2},
	}, {
		name:    "newest without current",
		msg:     evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='a'>` + two + `</item><item id='b'><devices xmlns='urn:xmpp:omemo:2'><device id='9'/></devices></item></items>` + evTail,
		ns:      ns.OMEMO2,
		ok:      true,
		devices: []uint32{9},
	}, {
		name:    "empty list",
		msg:     evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'/></item></items>` + evTail,
		ns:      ns.OMEMO2,
		ok:      true,
		devices: []uint32{},
	}, {
		name: "retract",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'><retract id='current'/></items>` + evTail,
		ns:   ns.OMEMO2,
		ok:   true,
		errs: []error{devicelist.ErrListRetracted},
	}, {
		name: "legacy retract",
		msg:  evHead + `<items node='eu.siacs.conversations.axolotl.devicelist'><retract id='x'/><retract id='current'/></items>` + evTail,
		ns:   ns.Legacy,
		ok:   true,
		errs: []error{devicelist.ErrListRetracted},
	}, {
		// Only the list's own item counts: a retraction of any other
		// item says nothing about the devices.
		name: "retract other item",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'><retract id='old'/></items>` + evTail,
	}, {
		name: "legacy retract other item",
		msg:  evHead + `<items node='eu.siacs.conversations.axolotl.devicelist'><retract id='1'/></items>` + evTail,
	}, {
		name: "purge",
		msg:  evHead + `<purge node='eu.siacs.conversations.axolotl.devicelist'/>` + evTail,
		ns:   ns.Legacy,
		ok:   true,
		errs: []error{devicelist.ErrListRetracted},
	}, {
		name: "delete",
		msg:  evHead + `<delete node='urn:xmpp:omemo:2:devices'/>` + evTail,
		ns:   ns.OMEMO2,
		ok:   true,
		errs: []error{devicelist.ErrListRetracted},
	}, {
		name: "other node",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:bundles'><item id='1'>` + two + `</item></items>` + evTail,
	}, {
		name: "legacy bundle node",
		msg:  evHead + `<delete node='eu.siacs.conversations.axolotl.bundles:1'/>` + evTail,
	}, {
		name: "no content",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'/>` + evTail,
	}, {
		name: "invalid id",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='0'/></devices></item></items>` + evTail,
		ns:   ns.OMEMO2,
		ok:   true,
		errs: []error{devicelist.ErrInvalidItem, devicelist.ErrInvalidID},
	}, {
		name: "legacy list in the omemo2 node",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='current'><list xmlns='eu.siacs.conversations.axolotl'><device id='7'/></list></item></items>` + evTail,
		ns:   ns.OMEMO2,
		ok:   true,
		errs: []error{devicelist.ErrInvalidItem, devicelist.ErrWrongElement},
	}, {
		name: "foreign payload",
		msg:  evHead + `<items node='eu.siacs.conversations.axolotl.devicelist'><item id='current'><x xmlns='urn:other'/></item></items>` + evTail,
		ns:   ns.Legacy,
		ok:   true,
		errs: []error{devicelist.ErrInvalidItem, devicelist.ErrWrongElement},
	}, {
		name: "no payload",
		msg:  evHead + `<items node='urn:xmpp:omemo:2:devices'><item id='current'/></items>` + evTail,
		ns:   ns.OMEMO2,
		ok:   true,
		errs: []error{devicelist.ErrInvalidItem},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			gotNS, l, ok, err := devicelist.FromEvent(event(t, tc.msg))
			if gotNS != tc.ns || ok != tc.ok {
				t.Fatalf("namespace %q ok %v, want %q %v", gotNS, ok, tc.ns, tc.ok)
			}
			if len(tc.errs) > 0 {
				for _, want := range tc.errs {
					if !errors.Is(err, want) {
						t.Errorf("error %v does not match %v", err, want)
					}
				}
				if l.Namespace != "" || l.Devices != nil {
					t.Errorf("list %+v returned with an error", l)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				if !reflect.DeepEqual(l, devicelist.List{}) {
					t.Fatalf("list %+v for an unrelated event", l)
				}
				return
			}
			if l.Namespace != tc.ns {
				t.Fatalf("list namespace %q", l.Namespace)
			}
			ids := []uint32{}
			for _, d := range l.Devices {
				ids = append(ids, d.ID)
			}
			if !reflect.DeepEqual(ids, tc.devices) {
				t.Fatalf("devices %v, want %v", ids, tc.devices)
			}
		})
	}
}

func TestFromEventLabel(t *testing.T) {
	_, l, ok, err := devicelist.FromEvent(event(t, evHead+`<items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1' label='phone'/></devices></item></items>`+evTail))
	if err != nil || !ok || len(l.Devices) != 1 || l.Devices[0].Label != "phone" {
		t.Fatalf("%+v %v %v", l, ok, err)
	}
}

func TestNamespaceOfNode(t *testing.T) {
	for node, want := range map[string]string{
		ns.OMEMO2Devices:       ns.OMEMO2,
		ns.LegacyDevices:       ns.Legacy,
		ns.OMEMO2Bundles:       "",
		ns.LegacyBundles(1):    "",
		"":                     "",
		ns.OMEMO2Devices + "x": "",
	} {
		if got := devicelist.NamespaceOfNode(node); got != want {
			t.Errorf("NamespaceOfNode(%q) = %q, want %q", node, got, want)
		}
		if want != "" && devicelist.Node(want) != node {
			t.Errorf("Node(%q) != %q", want, node)
		}
	}
}

// Invalid input is refused before the session is used (a nil session would
// panic otherwise).
func TestPublishFetchRefuseBeforeSending(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		l    devicelist.List
		want error
	}{
		{devicelist.List{Namespace: "urn:other"}, devicelist.ErrUnknownNamespace},
		{devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 0}}}, devicelist.ErrInvalidID},
		{devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 3}, {ID: 3}}}, devicelist.ErrDuplicateID},
		{devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 3, Label: "a\x00b"}}}, devicelist.ErrInvalidLabel},
	} {
		if err := devicelist.Publish(ctx, nil, tc.l); !errors.Is(err, tc.want) {
			t.Errorf("Publish(%+v) = %v, want %v", tc.l, err, tc.want)
		}
	}
	if _, err := devicelist.Fetch(ctx, nil, jid.JID{}, "urn:other"); !errors.Is(err, devicelist.ErrUnknownNamespace) {
		t.Errorf("Fetch of an unknown namespace: %v", err)
	}
}
