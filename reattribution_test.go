package omemo

import (
	"errors"
	"strings"
	"testing"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session/sessiontest"
)

// A hostile server re-attributes Alice's first message to Bob to Mallory,
// who republished Alice's device id and bundle under her own account
// (public data) before Bob ever saw Alice. Bob cannot tell the keys apart,
// but the OMEMO 2 envelope names its sender: the <from> affix contradicts
// the stanza and the message is rejected.
func TestReattributedFirstMessage(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	newDevice(t, srv, "mallory@example.org/m", both, true)
	aliceID := alice.p.Manager().DeviceID()
	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		l := srv.DeviceList(namespace, "mallory@example.org")
		l.Devices = append(l.Devices, devicelist.Device{ID: aliceID})
		srv.SetDeviceList("mallory@example.org", l)
		b, _ := srv.Bundle(namespace, "alice@example.org", aliceID)
		srv.SetBundle("mallory@example.org", aliceID, b)
	}
	raw := alice.send(bob.full.Bare(), "from alice")
	forged := strings.Replace(raw, `from="alice@example.org/a"`, `from="mallory@example.org/m"`, 1)
	if forged == raw {
		t.Fatal("no from to replace")
	}
	bob.deliver(forged)
	msgs, errs := bob.take()
	if len(msgs) != 0 || len(errs) != 1 || !errors.Is(errs[0], sce.ErrAffixMismatch) {
		t.Fatalf("re-attributed message: %+v %v; want one sce.ErrAffixMismatch", msgs, errs)
	}
}
