package omemo

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/xmpp/jid"
)

// A server that refuses to show a contact's device list (forbidden) says
// nothing about the devices: the known ones stay active and are encrypted
// for, and a send to a contact with no known device fails closed with the
// refusal in the error.
func TestDeviceListAccessDenied(t *testing.T) {
	srv := sessiontest.NewServer()
	var refuse atomic.Bool
	srv.Fail = func(op, account string) error {
		if op == "DownloadDeviceList" && account == "bob@example.org" && refuse.Load() {
			return fmt.Errorf("%w: injected", devicelist.ErrAccessDenied)
		}
		return nil
	}
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	carol := newDevice(t, srv, "carol@example.org/c", both, true)
	newDevice(t, srv, "dave@example.org/d", both, true)
	ctx := context.Background()
	if err := bob.p.Manager().RefreshDeviceLists(ctx, "carol@example.org"); err != nil {
		t.Fatal(err)
	}
	refuse.Store(true)
	err := bob.p.Manager().RefreshDeviceLists(ctx, "carol@example.org")
	if !errors.Is(err, devicelist.ErrAccessDenied) {
		t.Fatalf("refresh = %v, want ErrAccessDenied", err)
	}
	if got := activeIDs(t, bob, "carol@example.org", "urn:xmpp:omemo:2"); len(got) != 1 || got[0] != carol.p.Manager().DeviceID() {
		t.Fatalf("carol's devices after the refusal: %v", got)
	}
	res, err := bob.p.Send(ctx, carol.full.Bare(), "still reachable")
	if err != nil || len(res.Recipients) == 0 {
		t.Fatalf("send to carol: %+v, %v", res, err)
	}
	// dave was never seen: nothing to encrypt for, and the error says why.
	_, err = bob.p.Send(ctx, jid.MustParse("dave@example.org"), "nobody knows dave")
	if !errors.Is(err, session.ErrNoEligibleDevices) || !errors.Is(err, devicelist.ErrAccessDenied) {
		t.Fatalf("send to dave = %v, want ErrNoEligibleDevices with ErrAccessDenied", err)
	}
}
