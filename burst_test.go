package omemo

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"mellium.im/omemo/session/sessiontest"
)

// A burst far larger than the receive queue, to a handler that takes its
// time: nothing is dropped (what does not fit waits in the store), every
// message is delivered once, in order.
func TestBurstLargerThanQueue(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	var got []string
	slow := make(chan string, 1000)
	bob := newDevice(t, srv, "bob@example.org/b", both, true, func(c *Config) { c.QueueSize = 4 })
	bob.p.mu.Lock()
	bob.p.handler = HandlerFunc(func(m Message) {
		time.Sleep(2 * time.Millisecond)
		slow <- m.Body
	})
	bob.p.mu.Unlock()
	const n = 200
	var raws []string
	for i := range n {
		raws = append(raws, alice.send(bob.full.Bare(), fmt.Sprint("burst ", i)))
	}
	began := time.Now()
	for _, raw := range raws {
		if err := dispatch(bob.m, raw); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d messages handed to Serve in %v", n, time.Since(began))
	for len(got) < n {
		select {
		case b := <-slow:
			got = append(got, b)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d delivered", len(got), n)
		}
	}
	for i, b := range got {
		if b != fmt.Sprint("burst ", i) {
			t.Fatalf("message %d is %q", i, b)
		}
	}
	bob.wait()
	_, errs := bob.take()
	for _, err := range errs {
		if errors.Is(err, ErrQueueFull) {
			t.Fatalf("dropped: %v", err)
		}
	}
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	select {
	case b := <-slow:
		t.Fatalf("delivered twice: %q", b)
	case <-time.After(100 * time.Millisecond):
	}
	if sp, _ := bob.p.Manager().Spilled(t.Context()); len(sp) != 0 {
		t.Fatalf("%d spill entries left", len(sp))
	}
}
