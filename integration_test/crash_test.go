package integration_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/reconnect"
	"mellium.im/omemo/store"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// Environment of the listener child process of TestIntegrationCrash.
const (
	crashDirEnv  = "OMEMO_CRASH_CHILD_DIR"
	crashAddrEnv = "OMEMO_CRASH_CHILD_ADDR"
	crashPrefix  = "omemo-crash: "
)

// TestIntegrationCrashChild is the listener of TestIntegrationCrash: bob on
// a bbolt store, kept connected by reconnect.Run. Its handler writes each
// message durably (appended to a file and synced) unless it has its
// DeliveryID already, as an application that deduplicates on it does; the
// plugin acknowledges when the handler returns. It answers "final" with
// "final answer".
func TestIntegrationCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("the child process of TestIntegrationCrash")
	}
	fail := func(err error) {
		fmt.Println(crashPrefix+"FAIL", err)
		os.Exit(3)
	}
	st, err := store.Open(filepath.Join(dir, "bob.db"), &store.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		fail(err)
	}
	rec, err := openRecord(filepath.Join(dir, "handled"))
	if err != nil {
		fail(err)
	}
	bob := jid.MustParse("bob@" + prosodytest.Domain)
	p, err := omemo.NewDetached(bob, omemo.Config{Store: st, SendPresence: true, OnError: func(err error) {
		fmt.Println(crashPrefix+"warning", err)
	}})
	if err != nil {
		fail(err)
	}
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 1))
	answer := make(chan struct{}, 1)
	h := omemo.HandlerFunc(func(m omemo.Message) {
		// Some work, so that kills land in the handler too.
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		if err := rec.add(m.DeliveryID, m.Body); err != nil {
			fail(err)
		}
		if m.Body == "final" {
			select {
			case answer <- struct{}{}:
			default:
			}
		}
	})
	m := mux.New(stanza.NSClient, p.Handle(h))
	addr := os.Getenv(crashAddrEnv)
	ctx := context.Background()
	go func() {
		for range answer {
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := p.Send(sctx, jid.MustParse("alice@"+prosodytest.Domain), "final answer")
			cancel()
			if err != nil {
				fmt.Println(crashPrefix+"warning answering:", err)
				continue
			}
			fmt.Println(crashPrefix + "answered")
		}
	}()
	err = reconnect.Run(ctx, p, reconnect.Config{
		Dial:    func(ctx context.Context) (*xmpp.Session, error) { return dialRaw(ctx, addr, bob, "password") },
		Handler: m,
		OnEvent: func(e reconnect.Event) {
			if e.Connected {
				fmt.Println(crashPrefix + "connected")
			}
		},
		MinDelay: 100 * time.Millisecond,
		MaxDelay: time.Second,
	})
	fail(fmt.Errorf("Run returned: %v", err))
}

// dialRaw logs in to the test server at addr (the child has no
// prosodytest.Server).
func dialRaw(ctx context.Context, addr string, j jid.JID, password string) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return nil, err
	}
	// The negotiation is bounded without cancelling its context later
	// (mellium watches it for the life of the connection).
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	s, err := xmpp.NewClientSession(ctx, j, conn,
		// #nosec G402 -- loopback test server with a throw-away certificate.
		xmpp.StartTLS(&tls.Config{ServerName: prosodytest.Domain, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}),
		xmpp.SASL("", password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return s, nil
}

// record is the application's durable log of what its handler got.
type record struct {
	f    *os.File
	seen map[uint64]bool
}

func openRecord(path string) (*record, error) {
	r := &record{seen: map[uint64]bool{}}
	lines, err := readRecord(path)
	if err != nil {
		return nil, err
	}
	for _, l := range lines {
		r.seen[l.id] = true
	}
	if r.f, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		return nil, err
	}
	return r, nil
}

// add writes a message unless its DeliveryID is there already.
func (r *record) add(id uint64, body string) error {
	if id == 0 {
		return fmt.Errorf("%q without a DeliveryID", body)
	}
	if r.seen[id] {
		fmt.Printf("%sredelivered %d\n", crashPrefix, id)
		return nil
	}
	// A line torn by a kill before its sync has no newline: each line
	// starts on a fresh one.
	if _, err := fmt.Fprintf(r.f, "\n%d %s\n", id, body); err != nil {
		return err
	}
	if err := r.f.Sync(); err != nil {
		return err
	}
	r.seen[id] = true
	return nil
}

type recordLine struct {
	id   uint64
	body string
}

func readRecord(path string) ([]recordLine, error) {
	raw, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []recordLine
	for _, l := range strings.Split(string(raw), "\n") {
		id, body, ok := strings.Cut(l, " ")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil {
			continue // empty, or torn
		}
		out = append(out, recordLine{n, body})
	}
	return out, nil
}

// crashChild is one run of the listener process.
type crashChild struct {
	cmd       *exec.Cmd
	connected chan struct{}
	answered  chan struct{}
	done      chan struct{}
	mu        sync.Mutex
	log       []string
}

func startCrashChild(t *testing.T, dir, addr string) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestIntegrationCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashAddrEnv+"="+addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, connected: make(chan struct{}), answered: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		var once, answered sync.Once
		for sc.Scan() {
			l := sc.Text()
			c.mu.Lock()
			c.log = append(c.log, l)
			c.mu.Unlock()
			switch {
			case l == crashPrefix+"connected":
				once.Do(func() { close(c.connected) })
			case l == crashPrefix+"answered":
				answered.Do(func() { close(c.answered) })
			case strings.HasPrefix(l, crashPrefix+"FAIL"):
				t.Errorf("listener: %s", l)
			}
		}
	}()
	return c
}

func (c *crashChild) kill() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	<-c.done
}

func (c *crashChild) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.log, "\n")
}

// The listener process is SIGKILLed at random moments, at least ten times,
// while 500 messages stream to it, and restarted each time on the same
// store: the union of what its handler recorded holds every message
// exactly once, and the session still works in both directions.
func TestIntegrationCrash(t *testing.T) {
	if os.Getenv(crashDirEnv) != "" {
		t.Skip("in the child process")
	}
	const n, minKills = 500, 10
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice", Contacts: []string{"bob"}}, prosodytest.User{Name: "bob"})
	dir := t.TempDir()
	child := startCrashChild(t, dir, srv.Addr)
	select {
	case <-child.connected:
	case <-time.After(60 * time.Second):
		child.kill()
		t.Fatalf("listener did not connect:\n%s", child.output())
	}
	alice := connect(t, srv, "alice", store.NewMemory(), omemo.Config{SendPresence: true}, true)
	bob := srv.JID("bob")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	ids := make([]string, n)
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			res, err := alice.p.Send(ctx, bob, fmt.Sprint("crash ", i))
			if err != nil {
				sent <- fmt.Errorf("send %d: %w", i, err)
				return
			}
			ids[i] = res.ID
			time.Sleep(25 * time.Millisecond)
		}
		sent <- nil
	}()

	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 2))
	kills, redelivered := 0, 0
	sendDone := false
	for !sendDone || kills < minKills {
		// Sometimes during start-up (login, catch-up), mostly while
		// messages flow.
		wait := time.Duration(150+rng.IntN(1200)) * time.Millisecond
		select {
		case err := <-sent:
			if err != nil {
				child.kill()
				t.Fatal(err)
			}
			sendDone = true
		case <-time.After(wait):
		}
		child.kill()
		kills++
		redelivered += strings.Count(child.output(), crashPrefix+"redelivered")
		child = startCrashChild(t, dir, srv.Addr)
	}
	defer child.kill()
	t.Logf("%d kills", kills)

	want := map[string]bool{}
	for i := range n {
		want[fmt.Sprint("crash ", i)] = true
	}
	deadline := time.Now().Add(2 * time.Minute)
	var lines []recordLine
	for {
		var err error
		if lines, err = readRecord(filepath.Join(dir, "handled")); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, l := range lines {
			got[l.body] = true
		}
		missing := 0
		for w := range want {
			if !got[w] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages never recorded\n%s", missing, n, child.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	count := map[string]int{}
	for _, l := range lines {
		count[l.body]++
	}
	for body, c := range count {
		if c > 1 {
			t.Errorf("%q recorded %d times", body, c)
		}
		if !want[body] {
			t.Errorf("unexpected %q", body)
		}
	}
	redelivered += strings.Count(child.output(), crashPrefix+"redelivered")
	t.Logf("%d messages recorded once each over %d kills; %d handed over again after a kill (dropped by DeliveryID)", len(count), kills, redelivered)

	// Both directions still work.
	send(t, alice, bob, "final")
	select {
	case <-child.answered:
	case <-time.After(30 * time.Second):
		t.Fatalf("the listener did not answer\n%s", child.output())
	}
	if m := alice.expect(30 * time.Second); m.Body != "final answer" {
		t.Fatalf("alice got %q", m.Body)
	}
	if errs := alice.decryptErrors(); len(errs) > 0 {
		t.Errorf("alice: %v", errs)
	}
}
