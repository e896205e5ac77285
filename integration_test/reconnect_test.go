package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/reconnect"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/xmpp"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// roamer is an account kept connected by reconnect.Run.
type roamer struct {
	t      *testing.T
	p      *omemo.Plugin
	msgs   chan omemo.Message
	events chan reconnect.Event

	mu   sync.Mutex
	sess *xmpp.Session // the current session
	errs []error
}

// startRoamer runs reconnect.Run for name with a store that outlives it.
func startRoamer(t *testing.T, srv *prosodytest.Server, name string, st store.Store) *roamer {
	t.Helper()
	r := &roamer{t: t, msgs: make(chan omemo.Message, 256), events: make(chan reconnect.Event, 64)}
	p, err := omemo.NewDetached(srv.JID(name), omemo.Config{
		Store:        st,
		SendPresence: true,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		OnError: func(err error) {
			r.mu.Lock()
			r.errs = append(r.errs, err)
			r.mu.Unlock()
			t.Logf("%s: OnError: %v", name, err)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(msg omemo.Message) { r.msgs <- msg })))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- reconnect.Run(ctx, p, reconnect.Config{
			Dial:    func(ctx context.Context) (*xmpp.Session, error) { return srv.DialSession(ctx, name) },
			Handler: m,
			OnEvent: func(e reconnect.Event) {
				t.Logf("%s: event %+v", name, e)
				r.events <- e
			},
			OnConnect: func(_ context.Context, s *xmpp.Session) error {
				r.mu.Lock()
				r.sess = s
				r.mu.Unlock()
				return nil
			},
			MinDelay: 300 * time.Millisecond,
			MaxDelay: 2 * time.Second,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: Run did not stop within 5s", name)
		}
		_ = p.Close()
	})
	r.waitEvent(true, 20*time.Second)
	return r
}

// waitEvent waits for the next event with Connected == connected.
func (r *roamer) waitEvent(connected bool, timeout time.Duration) reconnect.Event {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case e := <-r.events:
			if e.Connected == connected {
				return e
			}
		case <-deadline:
			r.t.Fatalf("no event connected=%v within %v", connected, timeout)
		}
	}
}

// cut closes the TCP connection under the current session, without a
// closing stream.
func (r *roamer) cut() {
	r.mu.Lock()
	s := r.sess
	r.mu.Unlock()
	_ = s.Conn().Close()
}

// expectOther is c.expect without the room's reflections of c's own
// messages.
func expectOther(c *client, timeout time.Duration) omemo.Message {
	c.t.Helper()
	for {
		if m := c.expect(timeout); !m.Reflected {
			return m
		}
	}
}

// collect receives messages until want (bodies) all arrived, then watches a
// little longer for duplicates; every body must arrive exactly once.
func collect(t *testing.T, msgs <-chan omemo.Message, want []string, timeout time.Duration) []omemo.Message {
	t.Helper()
	need := map[string]bool{}
	for _, w := range want {
		need[w] = true
	}
	seen := map[string]int{}
	var got []omemo.Message
	deadline := time.After(timeout)
	for len(need) > 0 {
		select {
		case m := <-msgs:
			seen[m.Body]++
			got = append(got, m)
			delete(need, m.Body)
		case <-deadline:
			t.Fatalf("missing %d of %d messages after %v: %v", len(need), len(want), timeout, need)
		}
	}
	quiet := time.After(time.Second)
	for waiting := true; waiting; {
		select {
		case m := <-msgs:
			seen[m.Body]++
			got = append(got, m)
		case <-quiet:
			waiting = false
		}
	}
	for body, n := range seen {
		if n > 1 {
			t.Errorf("%q delivered %d times", body, n)
		}
	}
	return got
}

// A client kept up by reconnect.Run loses its TCP connection (no closing
// stream): sending fails fast with ErrDisconnected without using a ratchet
// step, it reconnects by itself, gets what was sent meanwhile (1:1 from
// offline storage and the archive, the room from the room's archive)
// exactly once, joins its room again and talks in both directions.
func TestIntegrationReconnect(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
	alice := startRoamer(t, srv, "alice", store.NewMemory())
	bob := connect(t, srv, "bob", store.NewMemory(), omemo.Config{SendPresence: true}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	aliceJID, bobJID := srv.JID("alice"), srv.JID("bob")

	room := roomJID(t, "roaming", "alice")
	if _, err := alice.p.CreateRoom(ctx, room, bobJID); err != nil {
		t.Fatal(err)
	}
	join(t, bob, roomJID(t, "roaming", "bob"))
	if err := alice.p.RefreshRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	send(t, bob, aliceJID, "before 1")
	sendGroup(t, bob, room.Bare(), "room before")
	collect(t, alice.msgs, []string{"before 1", "room before"}, 20*time.Second)

	alice.cut()
	alice.waitEvent(false, 10*time.Second)
	chains, err := alice.p.Manager().SendingChainLength(ctx, bobJID.String(), bob.p.Manager().DeviceID())
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_, err = alice.p.Send(ctx, bobJID, "while away")
	if !errors.Is(err, omemo.ErrDisconnected) {
		t.Fatalf("Send while disconnected: %v, want ErrDisconnected", err)
	}
	if d := time.Since(began); d > 100*time.Millisecond {
		t.Errorf("Send while disconnected took %v", d)
	}
	if _, err := alice.p.SendGroup(ctx, room.Bare(), "while away"); !errors.Is(err, omemo.ErrDisconnected) && !errors.Is(err, omemo.ErrRoomNotJoined) {
		t.Fatalf("SendGroup while disconnected: %v", err)
	}
	after, err := alice.p.Manager().SendingChainLength(ctx, bobJID.String(), bob.p.Manager().DeviceID())
	if err != nil {
		t.Fatal(err)
	}
	for ns, n := range chains {
		if after[ns] != n {
			t.Fatalf("%s: sending chain %d after a refused send, was %d", ns, after[ns], n)
		}
	}

	var want []string
	for i := range 5 {
		body := fmt.Sprint("away ", i)
		send(t, bob, aliceJID, body)
		want = append(want, body)
	}
	for i := range 3 {
		body := fmt.Sprint("room away ", i)
		sendGroup(t, bob, room.Bare(), body)
		want = append(want, body)
	}
	alice.waitEvent(true, 30*time.Second)
	got := collect(t, alice.msgs, want, 30*time.Second)
	for _, m := range got {
		if m.DeliveryID == 0 {
			t.Errorf("%q without a DeliveryID", m.Body)
		}
		t.Logf("%q: archived %v, offline %v, room %v", m.Body, m.Archived, !m.Delay.IsZero(), m.Room)
		// The room does not keep history for an absent occupant: only
		// its archive has it.
		if strings.HasPrefix(m.Body, "room away") && (!m.Archived || !m.Room.Equal(room.Bare())) {
			t.Errorf("%q not from the room's archive", m.Body)
		}
	}

	// Both directions, 1:1 and in the room, on the new session.
	if _, err := alice.p.Send(ctx, bobJID, "back"); err != nil {
		t.Fatal(err)
	}
	if m := expectOther(bob, 20*time.Second); m.Body != "back" {
		t.Fatalf("bob got %q", m.Body)
	}
	if _, err := alice.p.SendGroup(ctx, room.Bare(), "back in the room"); err != nil {
		t.Fatalf("SendGroup after reconnecting: %v", err)
	}
	if m := expectOther(bob, 20*time.Second); m.Body != "back in the room" {
		t.Fatalf("bob got %q", m.Body)
	}
	send(t, bob, aliceJID, "welcome back")
	collect(t, alice.msgs, []string{"welcome back"}, 20*time.Second)
	if errs := bob.decryptErrors(); len(errs) > 0 {
		t.Errorf("bob: %v", errs)
	}
}

// The server goes away while a peer keeps sending (it reconnects too, and
// sends again what failed with ErrDisconnected): stopped cleanly, or killed
// (connections break without a closing stream), then started again on the
// same data. The listener reconnects and gets every message exactly once,
// and both still talk afterwards.
func TestIntegrationReconnectServerRestart(t *testing.T) {
	for _, kill := range []bool{false, true} {
		name := "stop"
		if kill {
			name = "kill"
		}
		t.Run(name, func(t *testing.T) {
			srv := prosodytest.Start(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
			alice := startRoamer(t, srv, "alice", store.NewMemory())
			bob := startRoamer(t, srv, "bob", store.NewMemory())
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			const n = 60
			ids := make([]string, n)
			sent := make(chan error, 1)
			go func() {
				for i := range n {
					body := fmt.Sprint("msg ", i)
					for {
						res, err := bob.p.Send(ctx, srv.JID("alice"), body)
						if err == nil {
							ids[i] = res.ID
							break
						}
						if !errors.Is(err, omemo.ErrDisconnected) && !errors.Is(err, session.ErrNetwork) && !isConnError(err) {
							sent <- fmt.Errorf("send %d: %w", i, err)
							return
						}
						if ctx.Err() != nil {
							sent <- ctx.Err()
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
					time.Sleep(30 * time.Millisecond)
				}
				sent <- nil
			}()
			time.Sleep(500 * time.Millisecond)
			if kill {
				srv.Kill(t)
			} else {
				srv.Stop(t)
			}
			alice.waitEvent(false, 15*time.Second)
			time.Sleep(time.Second)
			srv.Restart(t)
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			// Without stream management (XEP-0198, which mellium lacks) a
			// message written just before the server went away can die
			// in transit, unknown to both clients. What the server
			// accepted is in alice's archive: all of that must arrive.
			var want, lost []string
			for i, id := range ids {
				if srv.Archived(t, "alice", id) {
					want = append(want, fmt.Sprint("msg ", i))
				} else {
					lost = append(lost, fmt.Sprint("msg ", i))
				}
			}
			t.Logf("%d messages accepted by the server, lost in transit: %q", len(want), lost)
			if len(lost) > 3 {
				t.Errorf("%d messages lost in transit", len(lost))
			}
			collect(t, alice.msgs, want, 60*time.Second)
			if _, err := alice.p.Send(ctx, srv.JID("bob"), "still here"); err != nil {
				t.Fatal(err)
			}
			collect(t, bob.msgs, []string{"still here"}, 20*time.Second)
		})
	}
}

// isConnError reports a send that failed on a connection that broke under
// it (the plugin has not noticed the end of the session yet).
func isConnError(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded)
}
