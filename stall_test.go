package omemo

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
)

// silentNetwork never answers a download about one account: the IQ to a
// hostile or broken server that never comes back.
type silentNetwork struct {
	session.Network
	silent string
	asked  chan string
}

func (n silentNetwork) hang(ctx context.Context, what, jid string) error {
	select {
	case n.asked <- what + " " + jid:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

func (n silentNetwork) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	if jid == n.silent {
		return devicelist.List{}, n.hang(ctx, "device list", jid)
	}
	return n.Network.DownloadDeviceList(ctx, ns, jid)
}

func (n silentNetwork) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	if jid == n.silent {
		return bundle.Bundle{}, n.hang(ctx, "bundle", jid)
	}
	return n.Network.DownloadBundle(ctx, ns, jid, id)
}

// A message whose sender must be looked up waits aside for the lookup; a
// lookup that never gets an answer holds up nobody else, and ends with
// the network timeout.
func TestSilentLookupHoldsNobodyUp(t *testing.T) {
	srv := sessiontest.NewServer()
	const timeout = 2 * time.Second
	net := silentNetwork{Network: srv.Network("bob@example.org"), silent: "eve@example.org", asked: make(chan string, 8)}
	bob := newDeviceOn(t, net, "bob@example.org/b", both, true, func(c *Config) { c.NetworkTimeout = timeout })
	eve := newDevice(t, srv, "eve@example.org/e", both, true)
	senders := []*device{
		newDevice(t, srv, "alice@example.org/a", both, true),
		newDevice(t, srv, "carol@example.org/c", both, true),
		newDevice(t, srv, "dave@example.org/d", legacyOnly, true),
	}

	fromEve := eve.send(bob.full.Bare(), "stuck")
	var raws []string
	for i := range 6 {
		raws = append(raws, senders[i%3].send(bob.full.Bare(), fmt.Sprintf("message %d", i)))
	}
	began := time.Now()
	if err := dispatch(bob.m, fromEve); err != nil {
		t.Fatal(err)
	}
	select {
	case <-net.asked:
	case <-time.After(time.Second):
		t.Fatal("the lookup of eve never started")
	}
	for _, raw := range raws {
		if err := dispatch(bob.m, raw); err != nil {
			t.Fatal(err)
		}
	}
	var got []Message
	for len(got) < 6 && time.Since(began) < time.Second {
		msgs, errs := bob.take()
		if len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		got = append(got, msgs...)
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != 6 {
		t.Fatalf("%d of 6 messages delivered within a second", len(got))
	}
	t.Logf("6 messages behind a silent lookup delivered in %v", time.Since(began))
	for i, m := range got {
		if m.Body != fmt.Sprintf("message %d", i) && !sameSenderOrder(got, i) {
			t.Errorf("message %d: %q", i, m.Body)
		}
	}

	// The silent lookup ends with the timeout: eve's message is reported,
	// not delivered, and nothing else is lost.
	var errs []error
	for len(errs) == 0 && time.Since(began) < 4*timeout {
		var msgs []Message
		msgs, errs = bob.take()
		if len(msgs) != 0 {
			t.Fatalf("eve's message was delivered: %+v", msgs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if took := time.Since(began); len(errs) != 1 || !errors.Is(errs[0], session.ErrSenderNotFound) || !errors.Is(errs[0], context.DeadlineExceeded) {
		t.Fatalf("after %v: errors %v, want one ErrSenderNotFound after the deadline", took, errs)
	}
	// And the worker is free: a new message goes through.
	bob.deliver(senders[0].send(bob.full.Bare(), "after the timeout"))
	if msgs, errs := bob.take(); len(msgs) != 1 || msgs[0].Body != "after the timeout" || len(errs) != 0 {
		t.Fatalf("%+v %v", msgs, errs)
	}
}

// sameSenderOrder reports whether message i keeps the order of its sender's
// messages (the plugin keeps order per sender, not across senders).
func sameSenderOrder(got []Message, i int) bool {
	last := -1
	for _, m := range got[:i+1] {
		if !m.From.Bare().Equal(got[i].From.Bare()) {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(m.Body, "message %d", &n); err != nil || n <= last {
			return false
		}
		last = n
	}
	return true
}

// Messages from one sender keep their order while they wait for its
// lookup; other senders' messages go on meanwhile.
func TestLookupKeepsSenderOrder(t *testing.T) {
	srv := sessiontest.NewServer()
	gate := make(chan struct{})
	net := gatedNetwork{Network: srv.Network("bob@example.org"), gated: "alice@example.org", open: gate}
	bob := newDeviceOn(t, net, "bob@example.org/b", both, true)
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	carol := newDevice(t, srv, "carol@example.org/c", both, true)
	var raws []string
	for i := range 5 {
		raws = append(raws, alice.send(bob.full.Bare(), fmt.Sprintf("%d", i)))
	}
	for _, raw := range raws {
		if err := dispatch(bob.m, raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := dispatch(bob.m, carol.send(bob.full.Bare(), "carol first")); err != nil {
		t.Fatal(err)
	}
	if msgs, errs := bob.collect(1, time.Second); len(msgs) != 1 || msgs[0].Body != "carol first" || len(errs) != 0 {
		t.Fatalf("while alice is looked up: %+v %v", msgs, errs)
	}
	close(gate)
	bob.wait()
	msgs, errs := bob.take()
	if len(errs) != 0 || len(msgs) != 5 {
		t.Fatalf("%d messages, errors %v", len(msgs), errs)
	}
	for i, m := range msgs {
		if m.Body != fmt.Sprint(i) {
			t.Fatalf("message %d is %q", i, m.Body)
		}
	}
}

// gatedNetwork holds downloads about one account until open is closed.
type gatedNetwork struct {
	session.Network
	gated string
	open  chan struct{}
}

func (n gatedNetwork) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	if jid == n.gated {
		<-n.open
	}
	return n.Network.DownloadDeviceList(ctx, ns, jid)
}

// collect waits up to d for n messages (or an error) and returns what
// arrived.
func (d *device) collect(n int, timeout time.Duration) ([]Message, []error) {
	var msgs []Message
	var errs []error
	for end := time.Now().Add(timeout); len(msgs) < n && len(errs) == 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		m, e := d.take()
		msgs, errs = append(msgs, m...), append(errs, e...)
	}
	return msgs, errs
}
