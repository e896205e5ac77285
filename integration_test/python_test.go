package integration_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/internal/oracle"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

// Timeouts of the Python client. A message must arrive within pyMsgTimeout;
// a request (log-in and publication, or a send with its device-list and
// bundle downloads) must be answered within pyReqTimeout. Start-up of the
// interpreter (importing the OMEMO stack compiles XML schemas) is covered by
// pyReqTimeout of the connect request, which is sent at once.
const (
	pyMsgTimeout = 15 * time.Second
	pyReqTimeout = 40 * time.Second
)

// pyEvent is one JSON line from testdata/interop/xmppclient.py.
type pyEvent struct {
	Event      string          `json:"event"`
	ID         *int            `json:"id,omitempty"`
	Op         string          `json:"op"`
	Error      string          `json:"error"`
	JID        string          `json:"jid"`
	Device     uint32          `json:"device"`
	Namespaces []string        `json:"namespaces"`
	To         string          `json:"to"`
	Recipients []pyRecipient   `json:"recipients"`
	From       string          `json:"from"`
	Namespace  string          `json:"namespace"`
	Body       string          `json:"body"`
	Devices    json.RawMessage `json:"devices"`
	Size       int64           `json:"size"`
	SHA256     string          `json:"sha256"`

	raw string // the line as received
}

type pyRecipient struct {
	JID       string `json:"jid"`
	Device    uint32 `json:"device"`
	Namespace string `json:"namespace"`
}

// pyClient is one python-omemo device on slixmpp, driven over JSON lines.
type pyClient struct {
	name    string
	stdin   io.WriteCloser
	resps   chan pyEvent  // answers to requests, in order
	msgs    chan pyEvent  // decrypted messages
	exited  chan struct{} // closed when stdout is at EOF
	stop    chan struct{} // closed in t.Cleanup: events are dropped from then on
	nextID  int
	device  uint32
	account jid.JID

	mu       sync.Mutex
	rejected []pyEvent
	stderr   bytes.Buffer
}

// lockedWriter appends the interpreter's log to the client's buffer.
type lockedWriter struct{ c *pyClient }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	return w.c.stderr.Write(b)
}

// requireSlixmpp is oracle.Require plus slixmpp, which the XMPP client
// needs on top of the OMEMO stack.
func requireSlixmpp(t *testing.T) string {
	t.Helper()
	py := oracle.Require(t)
	if out, err := exec.Command(py, "-c", "import slixmpp").CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("slixmpp unavailable in CI: %v: %s (apt-get install -y python3-slixmpp)", err, out)
		}
		t.Skipf("slixmpp unavailable: %v: %s (CI=true turns this into a failure)", err, out)
	}
	return py
}

// startPython launches xmppclient.py. The process is killed in t.Cleanup
// (after quit or EOF on stdin has had five seconds to end it) and its log
// goes to the test log if the test failed.
func startPython(t *testing.T, name string) *pyClient {
	t.Helper()
	py := requireSlixmpp(t)
	script := filepath.Join(oracle.RepoRoot(), "testdata", "interop", "xmppclient.py")
	cmd := exec.Command(py, script)
	c := &pyClient{
		name:   name,
		resps:  make(chan pyEvent, 16),
		msgs:   make(chan pyEvent, 64),
		exited: make(chan struct{}),
		stop:   make(chan struct{}),
	}
	cmd.Stderr = lockedWriter{c}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	var protocolErrs []string
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var ev pyEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				c.mu.Lock()
				protocolErrs = append(protocolErrs, fmt.Sprintf("bad line %q: %v", sc.Bytes(), err))
				c.mu.Unlock()
				continue
			}
			ev.raw = sc.Text()
			var ch chan pyEvent
			switch {
			case ev.ID != nil:
				ch = c.resps
			case ev.Event == "message":
				ch = c.msgs
			case ev.Event == "rejected":
				c.mu.Lock()
				c.rejected = append(c.rejected, ev)
				c.mu.Unlock()
				ch = c.msgs
			default:
				// Device-list notifications and other events: logged.
				c.mu.Lock()
				fmt.Fprintf(&c.stderr, "event: %s\n", ev.raw)
				c.mu.Unlock()
				continue
			}
			select {
			case ch <- ev:
			case <-c.stop:
			}
		}
	}()
	waited := make(chan struct{})
	go func() {
		<-c.exited
		_ = cmd.Wait()
		close(waited)
	}()
	t.Cleanup(func() {
		close(c.stop)
		_ = stdin.Close()
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-waited
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, e := range protocolErrs {
			t.Errorf("%s: %s", name, e)
		}
		if t.Failed() || testing.Verbose() {
			t.Logf("%s (python) log:\n%s", name, c.stderr.String())
		}
	})
	return c
}

// request sends one request and waits for its answer; an "error" answer
// fails the test.
func (c *pyClient) request(t *testing.T, req map[string]any, timeout time.Duration) pyEvent {
	t.Helper()
	c.nextID++
	id := c.nextID
	req["id"] = id
	line, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.stdin.Write(append(line, '\n')); err != nil {
		t.Fatalf("%s: writing request %s: %v", c.name, req["op"], err)
	}
	select {
	case ev := <-c.resps:
		if ev.ID == nil || *ev.ID != id {
			t.Fatalf("%s: answer %s to request %d", c.name, ev.raw, id)
		}
		if ev.Event == "error" {
			t.Fatalf("%s: %s failed: %s", c.name, req["op"], ev.Error)
		}
		return ev
	case <-c.exited:
		t.Fatalf("%s: python client exited during %s", c.name, req["op"])
	case <-time.After(timeout):
		t.Fatalf("%s: no answer to %s within %v", c.name, req["op"], timeout)
	}
	return pyEvent{}
}

// connect logs the Python device in with the given backends and waits until
// its device is published.
func (c *pyClient) connect(t *testing.T, srv *prosodytest.Server, user string, backends ...string) {
	t.Helper()
	ev := c.request(t, map[string]any{
		"op":       "connect",
		"jid":      srv.JID(user).String(),
		"password": srv.Password(user),
		"address":  srv.Addr,
		"backends": backends,
		"timeout":  pyReqTimeout.Seconds() - 5,
	}, pyReqTimeout)
	if ev.Event != "ready" || ev.Device == 0 || !slices.Equal(ev.Namespaces, backends) {
		t.Fatalf("%s: connect answered %s", c.name, ev.raw)
	}
	c.device = ev.Device
	c.account = srv.JID(user)
}

// send encrypts body for the bare JID to and returns the devices reached.
func (c *pyClient) send(t *testing.T, to jid.JID, body string) []pyRecipient {
	t.Helper()
	ev := c.request(t, map[string]any{"op": "send", "to": to.String(), "body": body}, pyReqTimeout)
	if ev.Event != "sent" {
		t.Fatalf("%s: send answered %s", c.name, ev.raw)
	}
	return ev.Recipients
}

// expect waits for the next decrypted message; a rejected message fails
// the test.
func (c *pyClient) expect(t *testing.T) pyEvent {
	t.Helper()
	select {
	case ev := <-c.msgs:
		if ev.Event != "message" {
			t.Fatalf("%s: %s", c.name, ev.raw)
		}
		return ev
	case <-c.exited:
		t.Fatalf("%s: python client exited", c.name)
	case <-time.After(pyMsgTimeout):
		t.Fatalf("%s: no message within %v", c.name, pyMsgTimeout)
	}
	return pyEvent{}
}

// expectNone checks that nothing arrives within d.
func (c *pyClient) expectNone(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-c.msgs:
		t.Errorf("%s: unexpected %s", c.name, ev.raw)
	case <-time.After(d):
	}
}

// quit disconnects the Python client and waits for it to exit.
func (c *pyClient) quit(t *testing.T) {
	t.Helper()
	if ev := c.request(t, map[string]any{"op": "quit"}, 10*time.Second); ev.Event != "bye" {
		t.Errorf("%s: quit answered %s", c.name, ev.raw)
	}
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		t.Errorf("%s: python client did not exit after quit", c.name)
	}
}

// step is one message of a conversation.
type step struct {
	fromGo bool
	body   string
}

// pyScenario is one Go device talking to one Python device.
type pyScenario struct {
	name      string
	goUser    string
	pyUser    string
	goConfig  omemo.Config
	pyBackend []string
	// wire is the namespace both directions must use.
	wire string
	// steps are sent in order; consecutive steps in one direction are
	// sent before the first of them is expected.
	steps []step
}

// TestIntegrationPython: the Go plugin and the Python reference client
// (python-omemo 1.0.2 on slixmpp, testdata/interop/xmppclient.py) talk
// through a real Prosody in both directions, for both backends. Every
// plaintext, the sender device and the namespace on the wire are checked
// on both sides.
func TestIntegrationPython(t *testing.T) {
	began := time.Now()
	requireSlixmpp(t)
	prosodytest.Require(t)

	both := []string{ns.OMEMO2, ns.Legacy}
	scenarios := []pyScenario{
		{
			name: "omemo2", goUser: "goa", pyUser: "pya",
			goConfig:  omemo.Config{SendPresence: true},
			pyBackend: both,
			wire:      ns.OMEMO2,
			steps: []step{
				{true, "hello python"},
				{true, "second <message> & \"quotes\" 'apostrophes'"},
				{false, "hello go 🐍"},
				{false, "ünïcödé ✓ and <xml/> &amp; entities"},
				{true, "third from go\nwith a new line"},
				{false, "bye"},
			},
		},
		{
			name: "go legacy only", goUser: "gob", pyUser: "pyb",
			goConfig:  omemo.Config{SendPresence: true, Backends: []backends.Factory{oldmemo.Factory}},
			pyBackend: both,
			wire:      ns.Legacy,
			steps: []step{
				// Python starts: Go answers a key exchange it received.
				{false, "hello legacy go"},
				{false, "second from python & <co>"},
				{true, "hello legacy python 🐹"},
				{true, "ünïcödé"},
				{false, "third from python"},
				{true, "bye"},
			},
		},
		{
			name: "python legacy only", goUser: "goc", pyUser: "pyc",
			goConfig:  omemo.Config{SendPresence: true},
			pyBackend: []string{ns.Legacy},
			wire:      ns.Legacy,
			steps: []step{
				{true, "hello legacy python"},
				{true, "second from go <&>"},
				{false, "hello go from legacy 🦀"},
				{false, "ünïcödé"},
				{true, "third from go"},
				{false, "bye"},
			},
		},
	}

	// The interpreters start (and import the OMEMO stack) while Prosody
	// starts.
	pys := make([]*pyClient, len(scenarios))
	var users []prosodytest.User
	for i, sc := range scenarios {
		pys[i] = startPython(t, sc.pyUser)
		users = append(users,
			prosodytest.User{Name: sc.goUser, Contacts: []string{sc.pyUser}},
			prosodytest.User{Name: sc.pyUser},
		)
	}
	srv := prosodytest.Start(t, users...)

	for i, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			runPyScenario(t, srv, pys[i], sc)
		})
	}
	if d := time.Since(began); d > 60*time.Second {
		t.Errorf("python interop test took %v", d)
	}
	t.Logf("took %v", time.Since(began))
}

func runPyScenario(t *testing.T, srv *prosodytest.Server, py *pyClient, sc pyScenario) {
	goJID, pyJID := srv.JID(sc.goUser), srv.JID(sc.pyUser)
	py.connect(t, srv, sc.pyUser, sc.pyBackend...)
	goc := connect(t, srv, sc.goUser, store.NewMemory(), sc.goConfig, true)
	goDevice := goc.p.Manager().DeviceID()

	for i := 0; i < len(sc.steps); {
		// A run of messages in one direction: all sent, then all expected
		// in order.
		j := i
		for j < len(sc.steps) && sc.steps[j].fromGo == sc.steps[i].fromGo {
			j++
		}
		run := sc.steps[i:j]
		if run[0].fromGo {
			for _, s := range run {
				res := send(t, goc, pyJID, s.body)
				want := []session.Recipient{{JID: pyJID.String(), DeviceID: py.device, Namespace: sc.wire}}
				if !slices.Equal(res.Recipients, want) || len(res.Failures) > 0 {
					t.Fatalf("Go → Python %q: recipients %+v, failures %v; want %+v", s.body, res.Recipients, res.Failures, want)
				}
			}
			for _, s := range run {
				m := py.expect(t)
				if m.Body != s.body || m.From != goJID.String() || m.Device != goDevice || m.Namespace != sc.wire {
					t.Fatalf("Python got %s; want %q from %v/%d in %s", m.raw, s.body, goJID, goDevice, sc.wire)
				}
			}
		} else {
			for _, s := range run {
				got := py.send(t, goJID, s.body)
				want := []pyRecipient{{JID: goJID.String(), Device: goDevice, Namespace: sc.wire}}
				if !slices.Equal(got, want) {
					t.Fatalf("Python → Go %q: recipients %+v; want %+v", s.body, got, want)
				}
			}
			for k, s := range run {
				m := goc.expect(pyMsgTimeout)
				if m.Body != s.body || !m.From.Bare().Equal(pyJID) || m.SenderDevice != py.device || m.Namespace != sc.wire || m.Carbon || m.Sent {
					t.Fatalf("Go got body %q from %v/%d in %s (carbon %v, sent %v); want %q from %v/%d in %s",
						m.Body, m.From, m.SenderDevice, m.Namespace, m.Carbon, m.Sent, s.body, pyJID, py.device, sc.wire)
				}
				if m.IdentityKey == ([32]byte{}) {
					t.Errorf("Go got %q without the sender's identity key", s.body)
				}
				// Python opened the conversation: its first message
				// carries the key exchange.
				if i == 0 && k == 0 && !m.KeyExchange {
					t.Errorf("Go got %q, Python's first message, without a key exchange", s.body)
				}
			}
		}
		i = j
	}

	// Exactly once, nothing rejected on either side.
	goc.expectNone(300 * time.Millisecond)
	py.expectNone(t, 300*time.Millisecond)
	if errs := goc.decryptErrors(); len(errs) > 0 {
		t.Errorf("Go rejected messages: %v", errs)
	}
	py.mu.Lock()
	rejected := slices.Clone(py.rejected)
	py.mu.Unlock()
	for _, ev := range rejected {
		t.Errorf("Python rejected a message: %s", ev.raw)
	}
	py.quit(t)
}
