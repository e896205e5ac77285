package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
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
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// peer is an OMEMO client of the test (the library, not the command),
// kept connected by reconnect.Run, that records the bodies it receives.
type peer struct {
	t *testing.T
	p *omemo.Plugin

	mu     sync.Mutex
	bodies map[string]int
}

func startPeer(t *testing.T, srv *prosodytest.Server, name string) *peer {
	t.Helper()
	pe := &peer{t: t, bodies: map[string]int{}}
	p, err := omemo.NewDetached(srv.JID(name), omemo.Config{
		Store:        store.NewMemory(),
		SendPresence: true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnError:      func(err error) { t.Logf("%s: %v", name, err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	pe.p = p
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(msg omemo.Message) {
		pe.mu.Lock()
		pe.bodies[msg.Body]++
		pe.mu.Unlock()
	})))
	ctx, cancel := context.WithCancel(context.Background())
	up := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- reconnect.Run(ctx, p, reconnect.Config{
			Dial: func(ctx context.Context) (*xmpp.Session, error) {
				// Run's context lives as long as the session.
				return srv.DialSession(ctx, name)
			},
			Handler: m,
			OnEvent: func(e reconnect.Event) {
				if e.Connected {
					select {
					case up <- struct{}{}:
					default:
					}
				}
			},
			MinDelay: 200 * time.Millisecond,
			MaxDelay: time.Second,
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
			t.Errorf("%s: Run did not stop", name)
		}
		_ = p.Close()
	})
	select {
	case <-up:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not connect", name)
	}
	return pe
}

// count returns how often body was received.
func (pe *peer) count(body string) int {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	return pe.bodies[body]
}

// waitBody waits until body was received.
func (pe *peer) waitBody(body string, timeout time.Duration) {
	pe.t.Helper()
	deadline := time.Now().Add(timeout)
	for pe.count(body) == 0 {
		if time.Now().After(deadline) {
			pe.t.Fatalf("%q not received within %v", body, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// send sends body with the stanza id id, again (as id-1, id-2…) while it
// fails because a connection is down, and returns the ids and bodies of
// the attempts: an attempt that failed may still have reached the server.
func (pe *peer) send(ctx context.Context, to jid.JID, id, body string) (ids, bodies []string, err error) {
	for a := 0; ; a++ {
		aid, abody := id, body
		if a > 0 {
			aid, abody = fmt.Sprintf("%s-%d", id, a), fmt.Sprintf("%s (again %d)", body, a)
		}
		ids, bodies = append(ids, aid), append(bodies, abody)
		_, err := pe.p.Send(ctx, to, abody, omemo.WithID(aid))
		if err == nil {
			return ids, bodies, nil
		}
		if !connectionError(err) || ctx.Err() != nil {
			return ids, bodies, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sendRoom sends body to the room with the stanza id id, again (as
// id-1…) while the connection is down or the room not joined again.
func (pe *peer) sendRoom(ctx context.Context, room jid.JID, id, body string) (bodies []string, err error) {
	for a := 0; ; a++ {
		aid, abody := id, body
		if a > 0 {
			aid, abody = fmt.Sprintf("%s-%d", id, a), fmt.Sprintf("%s (again %d)", body, a)
		}
		bodies = append(bodies, abody)
		_, err := pe.p.SendGroup(ctx, room, abody, omemo.WithID(aid))
		if err == nil {
			return bodies, nil
		}
		// Just after joining again the room's state may not name the
		// listener yet (no eligible device but the own).
		if !connectionError(err) && !errors.Is(err, omemo.ErrRoomNotJoined) && !errors.Is(err, session.ErrNoEligibleDevices) || ctx.Err() != nil {
			return bodies, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLine waits until p printed a line that contains want, and returns
// the number of lines so far.
func waitLine(t *testing.T, p *proc, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range p.stdout() {
			if strings.Contains(l, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v: no line with %q within %v; stdout:\n%s\nstderr:\n%s", p.cmd.Args[1:], want, timeout,
				strings.Join(p.stdout(), "\n"), p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listenLines splits the -json output of listen into the bodies of the
// messages (all from from) and the events.
func listenLines(t *testing.T, lines []string, from string) (bodies map[string]int, events []connEventJSON) {
	t.Helper()
	bodies = map[string]int{}
	for _, line := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if ev, ok := v["event"]; ok {
			if _, ok := v["body"]; ok {
				t.Errorf("event line with a body: %s", line)
			}
			if ev == "joined" {
				continue
			}
			events = append(events, decode[connEventJSON](t, line))
			continue
		}
		if _, ok := v["room"]; ok {
			m := decode[roomMessageJSON](t, line)
			if m.From != from || m.Nick != strings.TrimSuffix(from, "@localhost") {
				t.Errorf("room message from %s: %s", m.From, line)
			}
			bodies[m.Body]++
			continue
		}
		m := decode[messageJSON](t, line)
		if m.From != from {
			t.Errorf("message from %s: %s", m.From, line)
		}
		bodies[m.Body]++
	}
	return bodies, events
}

// TestCLIReconnect runs listen -echo while a peer keeps sending and the
// server goes away: stopped cleanly, or killed (the connection breaks
// without a closing stream), then started again on the same data. listen
// prints the disconnected and connected events, and every message the
// server accepted (what its archive holds) exactly once, those sent while
// it was away from offline storage or the archive; the peer gets the
// echoes. Then SIGINT ends listen within 2 s with status 0, and the next
// run with the same state file prints only new messages.
func TestCLIReconnect(t *testing.T) {
	bin := buildCLI(t)
	for _, kill := range []bool{false, true} {
		name := "stop"
		if kill {
			name = "kill"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testReconnect(t, bin, kill)
		})
	}
}

func testReconnect(t *testing.T, bin string, kill bool) {
	began := time.Now()
	srv := prosodytest.Start(t, prosodytest.User{Name: "lis"}, prosodytest.User{Name: "peer"}, prosodytest.User{Name: "cha"})
	c := &cli{bin: bin, srv: srv}
	state := t.TempDir()

	// A first login that fails ends listen and chat at once, as before.
	for _, args := range [][]string{{"listen"}, {"chat", "peer@localhost"}} {
		wrong := c.args(state, "lis", args...)
		wrong[slices.Index(wrong, "-password")+1] = "wrong"
		start := time.Now()
		out, errOut, code := c.run(t, wrong...)
		if code != exitError || out != "" || !strings.Contains(errOut, "omemo: logging in to "+srv.Addr+" as lis@localhost") || time.Since(start) > 10*time.Second {
			t.Fatalf("%q with a wrong password: exit %d after %v\nstdout: %s\nstderr: %s", args, code, time.Since(start), out, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "lis.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed login left a state file (%v)", err)
	}

	for _, p := range []*proc{c.start(t, c.args(state, "lis", "fingerprint")...), c.start(t, c.args(state, "cha", "fingerprint")...)} {
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("%v: exit %d; stderr:\n%s", p.cmd.Args[1:], code, p.stderr)
		}
	}
	pe := startPeer(t, srv, "peer")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lis, cha := srv.JID("lis"), srv.JID("cha")

	// chat stays connected too.
	k := c.start(t, c.args(state, "cha", "-json", "chat", "peer@localhost")...)
	if _, _, err := pe.send(ctx, cha, "chat1", "to chat"); err != nil {
		t.Fatal(err)
	}
	waitLine(t, k, `"body":"to chat"`, 20*time.Second)

	// The listener is in a room too, with the peer.
	room := jid.MustParse("lobby@" + prosodytest.MUCDomain)
	c.mustRun(t, c.args(state, "lis", "room", "create", "-members", "peer@localhost", room.String())...)

	// The race detector waits a second before the process exits
	// (atexit_sleep_ms): not while the time to exit is measured.
	l := c.startIn(t, "", []string{"GORACE=atexit_sleep_ms=0"}, c.args(state, "lis", "-json", "listen", "-echo", "-room", room.String(), "-for", "2m")...)
	joined(t, l, room.String(), "lis")
	if _, err := pe.p.JoinRoom(ctx, jid.MustParse(room.String()+"/peer")); err != nil {
		t.Fatal(err)
	}
	// From now on the peer's position in the room's archive moves: after
	// reconnecting it reads only what is new there.
	if err := pe.p.CatchUpRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	if _, _, err := pe.send(ctx, lis, "hello", "hello"); err != nil {
		t.Fatal(err)
	}
	pe.waitBody("echo: hello", 20*time.Second)
	if _, err := pe.sendRoom(ctx, room, "r1", "room hello"); err != nil {
		t.Fatal(err)
	}
	pe.waitBody("echo: room hello", 20*time.Second)
	t.Logf("listening after %v", time.Since(began))

	// The peer sends 40 messages, each again while it fails.
	const n = 40
	var (
		mu       sync.Mutex
		ids      = []string{"hello"}
		sentBody = []string{"hello"}
	)
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			id, b, err := pe.send(ctx, lis, fmt.Sprint("m", i), fmt.Sprint("msg ", i))
			mu.Lock()
			ids, sentBody = append(ids, id...), append(sentBody, b...)
			mu.Unlock()
			if err != nil {
				sent <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			time.Sleep(40 * time.Millisecond)
		}
		sent <- nil
	}()
	time.Sleep(600 * time.Millisecond)
	if kill {
		srv.Kill(t)
	} else {
		srv.Stop(t)
	}
	waitLine(t, l, `{"event":"disconnected","error":"`, 15*time.Second)
	waitLine(t, k, `{"event":"disconnected","error":"`, 15*time.Second)
	type attempts struct {
		ids, bodies []string
		err         error
	}
	toChat, toRoom := make(chan attempts, 1), make(chan attempts, 1)
	go func() {
		ids, bodies, err := pe.send(ctx, cha, "chat2", "to chat while away")
		toChat <- attempts{ids, bodies, err}
	}()
	go func() {
		bodies, err := pe.sendRoom(ctx, room, "r2", "room while away")
		toRoom <- attempts{bodies: bodies, err: err}
	}()
	time.Sleep(time.Second)
	srv.Restart(t)
	waitLine(t, l, `{"event":"connected"}`, 30*time.Second)
	t.Logf("reconnected after %v", time.Since(began))
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	// chat: what was sent while it was away is printed once, and it
	// sends again.
	waitLine(t, k, `{"event":"connected"}`, 30*time.Second)
	away := <-toChat
	if away.err != nil {
		t.Fatal(away.err)
	}
	for i, id := range away.ids {
		if srv.Archived(t, "cha", id) {
			waitLine(t, k, `"body":"`+away.bodies[i]+`"`, 20*time.Second)
		}
	}
	if _, err := io.WriteString(k.stdin, "from chat\n"); err != nil {
		t.Fatal(err)
	}
	pe.waitBody("from chat", 20*time.Second)
	_ = k.stdin.Close()
	if code := k.wait(15 * time.Second); code != 0 {
		t.Fatalf("chat: exit %d; stderr:\n%s", code, k.stderr)
	}
	var chatLines []string
	for _, line := range k.stdout() {
		if strings.HasPrefix(line, `{"to":`) {
			if res := decode[sendJSON](t, line); res.To != "peer@localhost" || len(res.Devices) != 1 {
				t.Errorf("chat send result %s", line)
			}
			continue
		}
		chatLines = append(chatLines, line)
	}
	chatBodies, chatEvents := listenLines(t, chatLines, "peer@localhost")
	t.Logf("chat printed %v, events %+v", chatBodies, chatEvents)
	for body, k := range chatBodies {
		if k != 1 || body != "to chat" && !strings.HasPrefix(body, "to chat while away") {
			t.Errorf("chat printed %q %d times", body, k)
		}
	}
	if len(chatEvents) != 2 || chatEvents[0].Event != "disconnected" || chatEvents[1] != (connEventJSON{Event: "connected"}) {
		t.Errorf("chat events %+v", chatEvents)
	}

	// The room message sent while the listener was away comes from the
	// room's archive (or live, if the listener was back first).
	inRoom := <-toRoom
	if inRoom.err != nil {
		t.Fatal(inRoom.err)
	}
	roomAway := inRoom.bodies[len(inRoom.bodies)-1]
	sentBody = append(append(sentBody, "room hello"), inRoom.bodies...)

	// Without stream management a message written just before the server
	// went away can die in transit; what the server accepted is in the
	// listener's archive, and all of it must be printed.
	want := []string{"room hello", roomAway}
	accepted := map[string]bool{} // the messages (m0, m1…) of which an attempt was
	for i, id := range ids {
		if srv.Archived(t, "lis", id) {
			want = append(want, sentBody[i])
			accepted[strings.Split(id, "-")[0]] = true
		}
	}
	t.Logf("%d attempts of %d messages, %d accepted by the server", len(ids), n+1, len(accepted))
	if lost := n + 1 - len(accepted); lost > 3 {
		t.Fatalf("%d of %d messages lost in transit", lost, n+1)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		bodies, _ := listenLines(t, l.stdout(), "peer@localhost")
		var missing []string
		for _, w := range want {
			if bodies[w] == 0 {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen did not print %q; stdout:\n%s\nstderr:\n%s", missing, strings.Join(l.stdout(), "\n"), l.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Watch for duplicates a little longer.
	time.Sleep(time.Second)
	bodies, events := listenLines(t, l.stdout(), "peer@localhost")
	for body, k := range bodies {
		if k != 1 {
			t.Errorf("%q printed %d times", body, k)
		}
		if !containsString(sentBody, body) {
			t.Errorf("%q printed, never sent", body)
		}
	}
	for _, w := range want {
		if bodies[w] != 1 {
			t.Errorf("%q printed %d times", w, bodies[w])
		}
	}
	if len(events) < 2 || len(events)%2 != 0 {
		t.Errorf("events %+v, want disconnected and connected", events)
	}
	for i, ev := range events {
		if i%2 == 0 && (ev.Event != "disconnected" || ev.Error == "") || i%2 == 1 && ev != (connEventJSON{Event: "connected"}) {
			t.Errorf("event %d: %+v", i, ev)
		}
	}
	t.Logf("events %+v", events)

	// The echoes reach the peer; one written just before the server went
	// away may die in transit.
	lost := 0
	deadline = time.Now().Add(15 * time.Second)
	for body := range bodies {
		for pe.count("echo: "+body) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if pe.count("echo: "+body) == 0 {
			t.Logf("no echo of %q", body)
			lost++
		}
	}
	if lost > 2 {
		t.Errorf("%d of %d echoes missing; listen stderr:\n%s", lost, len(bodies), l.stderr)
	}

	// SIGINT ends listen within 2 s, cleanly.
	sig := time.Now()
	if err := l.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	code := l.wait(10 * time.Second)
	if d := time.Since(sig); code != 0 || d > 2*time.Second {
		t.Fatalf("listen after SIGINT: exit %d after %v; stderr:\n%s", code, d, l.stderr)
	}
	t.Logf("SIGINT: exited after %v", time.Since(sig))
	// The next run with the same state file prints only what is new.
	l = c.start(t, c.args(state, "lis", "-json", "listen", "-count", "1", "-for", "30s")...)
	if _, _, err := pe.send(ctx, lis, "after", "after"); err != nil {
		t.Fatal(err)
	}
	if code := l.wait(30 * time.Second); code != 0 {
		t.Fatalf("listen after the restart: exit %d; stderr:\n%s", code, l.stderr)
	}
	if lines := l.stdout(); len(lines) != 1 || decode[messageJSON](t, lines[0]).Body != "after" {
		t.Fatalf("the next listen printed %q, want only the new message", lines)
	}
	t.Logf("took %v", time.Since(began))
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
