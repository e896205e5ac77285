package omemo

import (
	"context"
	"slices"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session/sessiontest"
)

// retraction is a PEP notification retracting item id of the device list
// node of namespace, from (the own account if "").
func retraction(from, namespace, id string) string {
	f := ""
	if from != "" {
		f = ` from='` + from + `'`
	}
	return `<message xmlns='jabber:client'` + f + ` to='bob@example.org/b' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='` +
		devicelist.Node(namespace) + `'><retract id='` + id + `'/></items></event></message>`
}

func activeIDs(t *testing.T, d *device, jid, namespace string) []uint32 {
	t.Helper()
	infos, err := d.p.Manager().Devices(context.Background(), jid)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint32
	for _, i := range infos {
		if slices.Contains(i.Active, namespace) {
			out = append(out, i.DeviceID)
		}
	}
	slices.Sort(out)
	return out
}

var namespaceCases = []struct{ name, ns string }{{"OMEMO 2", ns.OMEMO2}, {"legacy", ns.Legacy}}

// backendsFor returns the backends of a device that speaks namespace
// (OMEMO 2 devices speak legacy OMEMO too).
func backendsFor(namespace string) []backends.Factory {
	if namespace == ns.Legacy {
		return legacyOnly
	}
	return both
}

func publishedIDs(srv *sessiontest.Server, namespace, jid string) []uint32 {
	var out []uint32
	for _, d := range srv.DeviceList(namespace, jid).Devices {
		out = append(out, d.ID)
	}
	slices.Sort(out)
	return out
}

// A retraction notification says nothing about a contact's devices: only a
// retraction of the list's item counts, and then the list is fetched again
// instead of being assumed empty.
func TestContactListRetraction(t *testing.T) {
	for _, tc := range namespaceCases {
		t.Run(tc.name, func(t *testing.T) {
			srv, bes := sessiontest.NewServer(), backendsFor(tc.ns)
			bob := newDevice(t, srv, "bob@example.org/b", bes, true)
			carol := newDevice(t, srv, "carol@example.org/c", bes, true)
			carolID := carol.p.Manager().DeviceID()
			ctx := context.Background()
			if err := bob.p.Manager().RefreshDeviceLists(ctx, "carol@example.org"); err != nil {
				t.Fatal(err)
			}
			want := []uint32{carolID}
			for _, id := range []string{"some-other-item", devicelist.ItemID} {
				bob.deliver(retraction("carol@example.org", tc.ns, id))
				if got := activeIDs(t, bob, "carol@example.org", tc.ns); !slices.Equal(got, want) {
					t.Fatalf("after retracting %q: active devices %v, want %v", id, got, want)
				}
				if _, errs := bob.take(); len(errs) != 0 {
					t.Fatalf("errors %v", errs)
				}
				if _, err := bob.p.Send(ctx, carol.full.Bare(), "still reachable"); err != nil {
					t.Fatalf("after retracting %q: %v", id, err)
				}
			}
			// When the list is really gone, the fetch says so.
			srv.SetDeviceList("carol@example.org", devicelist.List{Namespace: tc.ns})
			bob.deliver(retraction("carol@example.org", tc.ns, devicelist.ItemID))
			if got := activeIDs(t, bob, "carol@example.org", tc.ns); len(got) != 0 {
				t.Fatalf("after the list was emptied: active %v", got)
			}
		})
	}
}

// The own account is never republished with devices dropped because of a
// retraction: not for a retraction of another item, not for one of the
// list, not even when the server lost the list.
func TestOwnListRetraction(t *testing.T) {
	for _, tc := range namespaceCases {
		t.Run(tc.name, func(t *testing.T) {
			srv, bes := sessiontest.NewServer(), backendsFor(tc.ns)
			b2 := newDevice(t, srv, "bob@example.org/b2", bes, true)
			b1 := newDevice(t, srv, "bob@example.org/b", bes, true)
			want := []uint32{b1.p.Manager().DeviceID(), b2.p.Manager().DeviceID()}
			slices.Sort(want)
			if got := publishedIDs(srv, tc.ns, "bob@example.org"); !slices.Equal(got, want) {
				t.Fatalf("published %v, want %v", got, want)
			}
			if err := b1.p.Manager().RefreshDeviceLists(context.Background(), "bob@example.org"); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"other", devicelist.ItemID} {
				b1.deliver(retraction("", tc.ns, id))
				if got := publishedIDs(srv, tc.ns, "bob@example.org"); !slices.Equal(got, want) {
					t.Fatalf("after retracting %q: published %v, want %v", id, got, want)
				}
			}
			// The server lost the list (node deleted): the own devices
			// known active are published again, not just this one.
			srv.SetDeviceList("bob@example.org", devicelist.List{Namespace: tc.ns})
			b1.deliver(retraction("", tc.ns, devicelist.ItemID))
			if got := publishedIDs(srv, tc.ns, "bob@example.org"); !slices.Equal(got, want) {
				t.Fatalf("after the list was lost: published %v, want %v", got, want)
			}
			if _, errs := b1.take(); len(errs) != 0 {
				t.Fatalf("errors %v", errs)
			}
		})
	}
}
