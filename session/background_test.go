package session_test

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

var errUploadRefused = errors.New("upload refused")

// holdNetwork holds bundle uploads while held is set, until their context
// ends, and signals each one held.
type holdNetwork struct {
	session.Network
	mu      sync.Mutex
	hold    bool
	holding chan struct{}
}

func (h *holdNetwork) setHold(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold = on
}

func (h *holdNetwork) UploadBundle(ctx context.Context, id uint32, b bundle.Bundle) error {
	h.mu.Lock()
	hold := h.hold
	h.mu.Unlock()
	if hold {
		h.holding <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	return h.Network.UploadBundle(ctx, id, b)
}

// bgManager is a Manager of the background tests, its clock and the
// errors its background work reported.
type bgManager struct {
	*session.Manager
	jid   string
	srv   *sessiontest.Server
	clock *fakeClock
	errs  chan error
}

func newBGManager(t *testing.T, srv *sessiontest.Server, jid string, st store.Store, net session.Network, sched *session.Scheduler, clock *fakeClock) *bgManager {
	t.Helper()
	b := &bgManager{jid: jid, srv: srv, clock: clock, errs: make(chan error, 16)}
	m, err := session.New(context.Background(), st, net, session.Config{
		JID: jid, Backends: []backends.Factory{twomemo.Factory}, StartSynced: true,
		Now: clock.Now, Scheduler: sched,
		OnError: func(err error) { b.errs <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	b.Manager = m
	t.Cleanup(func() { m.Close() })
	return b
}

// signedPreKey is the id of the published signed pre key of b.
func (b *bgManager) signedPreKey(t *testing.T) uint32 {
	t.Helper()
	bu, ok := b.srv.Bundle(twomemo.Namespace, b.jid, b.DeviceID())
	if !ok {
		t.Fatal("no bundle published")
	}
	return bu.SignedPreKeyID
}

// settle waits until the checks of the own device list and the background
// work are over.
func (b *bgManager) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.WaitOwnList(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func (b *bgManager) noErrors(t *testing.T) {
	t.Helper()
	select {
	case err := <-b.errs:
		t.Fatalf("background error: %v", err)
	default:
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// The rotation checks run on timers of the Scheduler: a due rotation is
// published, a failed upload reported and retried with a doubling wait,
// and retried until it is published.
func TestBackgroundRotationTimer(t *testing.T) {
	defer session.SetOwnListChecks(5*time.Millisecond, 10*time.Millisecond)()
	srv := sessiontest.NewServer()
	const jid = "alice@example.org"
	m := newBGManager(t, srv, jid, store.NewMemory(), srv.Network(jid), session.NewScheduler(2), newFakeClock())
	m.settle(t)
	if d := session.RotationRetry(m.Manager); d != 0 {
		t.Fatalf("retry wait %v after a successful check", d)
	}
	first := m.signedPreKey(t)

	m.clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	session.FireRotation(m.Manager)
	eventually(t, "the rotated signed pre key to be published", func() bool { return m.signedPreKey(t) != first })
	m.settle(t)
	m.noErrors(t)
	second := m.signedPreKey(t)

	srv.Fail = func(op, _ string) error {
		if op == "UploadBundle" {
			return errUploadRefused
		}
		return nil
	}
	m.clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	for _, wantRetry := range []time.Duration{2 * time.Minute, 4 * time.Minute} {
		session.FireRotation(m.Manager)
		select {
		case err := <-m.errs:
			if !errors.Is(err, errUploadRefused) || !errors.Is(err, session.ErrNetwork) {
				t.Fatalf("reported %v, want the refused upload", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the failed rotation check was not reported")
		}
		m.settle(t)
		if d := session.RotationRetry(m.Manager); d != wantRetry {
			t.Fatalf("next retry wait %v, want %v", d, wantRetry)
		}
	}
	if m.signedPreKey(t) != second {
		t.Fatal("the published signed pre key changed while uploads failed")
	}
	srv.Fail = nil
	session.FireRotation(m.Manager)
	eventually(t, "the retried rotation to be published", func() bool { return m.signedPreKey(t) != second })
	m.settle(t)
	m.noErrors(t)
	if d := session.RotationRetry(m.Manager); d != 0 {
		t.Fatalf("retry wait %v after the retry succeeded", d)
	}
}

// After a publish of the own device list, timed checks put the device
// back on the list if another device's publish dropped it; Close ends the
// pending checks at once.
func TestBackgroundOwnListWatch(t *testing.T) {
	defer session.SetOwnListChecks(30*time.Millisecond, 60*time.Millisecond, 90*time.Millisecond)()
	base := runtime.NumGoroutine()
	srv := sessiontest.NewServer()
	const jid = "alice@example.org"
	m := newBGManager(t, srv, jid, store.NewMemory(), srv.Network(jid), session.NewScheduler(2), newFakeClock())
	if session.OwnListWatches(m.Manager) != 1 {
		t.Fatalf("%d own lists checked after the first publish, want 1", session.OwnListWatches(m.Manager))
	}
	// Another device of the account publishes a list it fetched before
	// ours.
	srv.SetDeviceList(jid, devicelist.List{Namespace: twomemo.Namespace, Devices: []devicelist.Device{{ID: 7}}})
	uploads := srv.CallCount("UploadDeviceList")
	m.settle(t)
	l := srv.DeviceList(twomemo.Namespace, jid)
	if !slices.ContainsFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == m.DeviceID() }) {
		t.Fatalf("the device is not back on the own list: %+v", l.Devices)
	}
	if !slices.ContainsFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == 7 }) {
		t.Fatalf("the other device was dropped: %+v", l.Devices)
	}
	if srv.CallCount("UploadDeviceList") <= uploads {
		t.Fatal("the list was not published again")
	}
	if n := session.OwnListWatches(m.Manager); n != 0 {
		t.Fatalf("%d own lists still checked", n)
	}
	m.noErrors(t)

	// A second account closes while its checks are pending.
	other := newBGManager(t, srv, "bob@example.org", store.NewMemory(), srv.Network("bob@example.org"), session.NewScheduler(2), newFakeClock())
	if session.OwnListWatches(other.Manager) != 1 {
		t.Fatal("no own list checked after the first publish")
	}
	other.Close()
	if n := session.OwnListWatches(other.Manager); n != 0 {
		t.Fatalf("%d own lists checked after Close", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := other.WaitOwnList(ctx); err != nil {
		t.Fatalf("waiting for the checks of a closed Manager: %v", err)
	}
	m.Close()
	goroutinesBack(t, base)
}

// goroutinesBack waits for the number of goroutines to fall to base.
func goroutinesBack(t *testing.T, base int) {
	t.Helper()
	if n := settledGoroutines(base); n > base {
		t.Fatalf("%d goroutines left, %d before", n, base)
	}
}

// Close cancels the running task and waits for it, without reporting it
// as a failure; the work it did not finish is done at the next start. A
// Manager whose task hangs on the network holds one worker: another
// Manager's background work goes on meanwhile.
func TestBackgroundCloseCancels(t *testing.T) {
	defer session.SetOwnListChecks(5*time.Millisecond, 10*time.Millisecond)()
	base := runtime.NumGoroutine()
	srv := sessiontest.NewServer()
	sched := session.NewScheduler(2)
	st := store.NewMemory()
	net := &holdNetwork{Network: srv.Network("alice@example.org"), holding: make(chan struct{}, 1)}
	clock := newFakeClock()
	slow := newBGManager(t, srv, "alice@example.org", st, net, sched, clock)
	other := newBGManager(t, srv, "bob@example.org", store.NewMemory(), srv.Network("bob@example.org"), sched, newFakeClock())
	slow.settle(t)
	other.settle(t)
	published := slow.signedPreKey(t)

	net.setHold(true)
	clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	session.FireRotation(slow.Manager)
	select {
	case <-net.holding:
	case <-time.After(10 * time.Second):
		t.Fatal("the rotation check did not upload")
	}

	// The other Manager's rotation runs while the slow one hangs.
	otherFirst := other.signedPreKey(t)
	other.clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	session.FireRotation(other.Manager)
	eventually(t, "the other Manager's rotation", func() bool { return other.signedPreKey(t) != otherFirst })
	other.settle(t)
	other.noErrors(t)

	closed := make(chan struct{})
	go func() {
		slow.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not cancel the running task")
	}
	slow.noErrors(t)
	if slow.signedPreKey(t) != published {
		t.Fatal("the held upload was published")
	}

	// The next start publishes the rotated key.
	net.setHold(false)
	again := newBGManager(t, srv, "alice@example.org", st, net, sched, clock)
	again.settle(t)
	if again.signedPreKey(t) == published {
		t.Fatal("the rotation that Close interrupted was not published at the next start")
	}
	again.noErrors(t)
	again.Close()
	other.Close()
	goroutinesBack(t, base)
}
