package integration_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// A sender sends 2,000 messages as fast as it can to a listener whose
// handler takes 5 ms per message with a receive queue of 64: every message
// is delivered, in order, none twice (the messages beyond the queue wait
// in the listener's store, not decrypted yet).
func TestIntegrationBurst(t *testing.T) {
	const n = 2000
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
	st, err := store.Open(filepath.Join(t.TempDir(), "bob.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	var (
		mu      sync.Mutex
		got     []int
		seen    = map[uint64]bool{}
		dupes   []string
		allDone = make(chan struct{})
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Cancelled once the session is closed (see prosodytest.Dial).
	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(dcancel)
	s, err := srv.DialSession(dctx, "bob")
	if err != nil {
		t.Fatal(err)
	}
	var errMu sync.Mutex
	var errs []error
	p, err := omemo.New(s, omemo.Config{
		Store: st, SendPresence: true, QueueSize: 64,
		OnError: func(err error) {
			errMu.Lock()
			errs = append(errs, err)
			errMu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(msg omemo.Message) {
		time.Sleep(5 * time.Millisecond)
		i, err := strconv.Atoi(strings.TrimPrefix(msg.Body, "burst "))
		mu.Lock()
		defer mu.Unlock()
		if seen[msg.DeliveryID] || err != nil {
			dupes = append(dupes, msg.Body)
			return
		}
		seen[msg.DeliveryID] = true
		got = append(got, i)
		if len(got) == n {
			close(allDone)
		}
	})))
	serveDone := make(chan struct{})
	go func() {
		defer close(serveDone)
		_ = s.Serve(m)
	}()
	t.Cleanup(func() {
		_ = p.Close()
		_ = s.Close()
		select {
		case <-serveDone:
		case <-time.After(5 * time.Second):
			_ = s.Conn().Close()
		}
	})
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}

	alice := connect(t, srv, "alice", store.NewMemory(), omemo.Config{}, true)
	began := time.Now()
	for i := range n {
		if _, err := alice.p.Send(ctx, srv.JID("bob"), fmt.Sprint("burst ", i)); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	sent := time.Since(began)
	select {
	case <-allDone:
	case <-time.After(2 * time.Minute):
		mu.Lock()
		t.Fatalf("%d of %d messages delivered", len(got), n)
	}
	t.Logf("%d messages sent in %v, all delivered after %v", n, sent, time.Since(began))
	time.Sleep(500 * time.Millisecond) // any duplicate would come now
	mu.Lock()
	defer mu.Unlock()
	if len(dupes) > 0 {
		t.Fatalf("%d duplicate or unexpected deliveries, e.g. %q", len(dupes), dupes[0])
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("delivery %d is message %d: out of order", i, v)
		}
	}
	errMu.Lock()
	defer errMu.Unlock()
	for _, err := range errs {
		t.Errorf("OnError: %v", err)
	}
}
