package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/oracle"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

// The converse.js interop test (issue 12): our plugin and converse.js
// 14.0.0, whose OMEMO library libomemo.js runs as WebAssembly, in headless
// Debian Chromium, through Prosody over WebSocket on the loopback interface.
// testdata/converse/README.md explains the browser side.
//
// Trust is no part of it: converse encrypts for every active device its
// user has not marked untrusted (a new device is "undecided") and accepts
// the first identity key it sees for a device; our side uses BTBV, which
// trusts new devices blindly until one is verified.

// chromiumPath is Debian's chromium (apt-get install chromium): the test
// never downloads a browser.
const chromiumPath = "/usr/bin/chromium"

// converseVersion is the converse.js release under test (testdata/converse
// pins it in package.json and package-lock.json).
const converseVersion = "14.0.0"

// Timeouts: converseMsgTimeout for a message to arrive and be decrypted on
// either side, converseOpTimeout for a request to the driver (it answers on
// its own after 30 s), converseDriverLifetime after which the driver kills
// the browser whatever happens.
const (
	converseMsgTimeout     = 10 * time.Second
	converseOpTimeout      = 35 * time.Second
	converseDriverLifetime = 150 * time.Second
)

// converseCase is one namespace: a converse account in its own page and two
// accounts of ours whose devices only have that namespace's backend, so that
// converse, which speaks both, has to use it; or, in the last case, our
// default (both backends, OMEMO 2 first), where both sides should choose
// OMEMO 2.
type converseCase struct {
	name string
	// ns is the namespace both sides must use.
	ns string
	// backends of our devices (nil: the default, both).
	backends []backends.Factory
	// conv is the converse account (and page).
	conv string
	// a: converse starts the sessions with its converseFresh devices.
	// b: its converseInitiators devices start sessions with converse.
	a, b string
}

// converseFresh is the number of fresh devices of ours that converse starts
// a session with, per namespace. About half of all identity keys have an
// Ed25519 sign bit of 1, which a client that assumes 0 cannot verify: with
// four, such a bug shows in 15 of 16 runs.
const converseFresh = 4

// converseInitiators is the number of our devices that start a session with
// converse, per namespace.
const converseInitiators = 2

var converseCases = []converseCase{
	{name: "OMEMO 2", ns: ns.OMEMO2, backends: []backends.Factory{twomemo.Factory}, conv: "convtwo", a: "twoa", b: "twob"},
	{name: "legacy OMEMO", ns: ns.Legacy, backends: []backends.Factory{oldmemo.Factory}, conv: "convold", a: "olda", b: "oldb"},
	{name: "both", ns: ns.OMEMO2, conv: "convboth", a: "botha", b: "bothb"},
}

// TestIntegrationConverse needs /usr/bin/chromium, node and `npm ci` in
// testdata/converse (scripts/test.sh installs them); without them it is
// skipped, or fails with CI=true.
func TestIntegrationConverse(t *testing.T) {
	began := time.Now()
	dir := requireConverse(t)

	var users []prosodytest.User
	for _, c := range converseCases {
		// Mutual subscriptions: converse and our devices get each other's
		// device list notifications (PEP +notify through presence).
		users = append(users,
			prosodytest.User{Name: c.conv, Contacts: []string{c.a, c.b}},
			prosodytest.User{Name: c.a}, prosodytest.User{Name: c.b})
	}
	srv := prosodytest.StartWebSocket(t, users...)
	web := serveConverse(t, dir)
	drv := startConverseDriver(t, dir, web.URL)
	t.Logf("Prosody at %s, converse.js %s in %s", srv.WebSocketURL, converseVersion, drv.browser)

	// One browser, one page per case, all cases at once.
	t.Run("cases", func(t *testing.T) {
		for _, c := range converseCases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				runConverseCase(t, srv, drv, c)
			})
		}
	})
	d := time.Since(began)
	if d > 60*time.Second && !t.Failed() {
		t.Errorf("the converse.js test took %v", d)
	}
	t.Logf("took %v", d)
}

// runConverseCase: converse logs in while our devices start; converse sends
// the first message to the converseFresh devices of a (starting a session
// with each), which answer it; then the devices of b send first (starting
// sessions with converse), and converse answers them. Every message must be
// decrypted on the other side, in c.ns.
func runConverseCase(t *testing.T, srv *prosodytest.Server, drv *converseDriver, c converseCase) {
	convJID := srv.JID(c.conv)
	aJID, bJID := srv.JID(c.a), srv.JID(c.b)
	page := drv.page(c.conv)

	// Logging in takes longest (page, WebAssembly, 100 pre keys, PEP):
	// it runs while our devices start.
	type opened struct {
		Device uint32 `json:"device"`
		JID    string `json:"jid"`
	}
	var conv opened
	openErr := make(chan error, 1)
	go func() {
		openErr <- drv.call(map[string]any{"op": "open", "page": c.conv, "jid": convJID.String(),
			"password": srv.Password(c.conv), "websocket_url": srv.WebSocketURL}, &conv)
	}()

	// SendPresence: converse and our devices learn of each other's device
	// lists from PEP notifications. NoCarbons: the devices of one account
	// do not see each other's messages to converse, so that each device
	// only gets what the case sends to it.
	cfg := omemo.Config{Backends: c.backends, SendPresence: true, NoCarbons: true}
	as := startDevices(t, srv, c.a, converseFresh, cfg)
	bs := startDevices(t, srv, c.b, converseInitiators, cfg)
	if err := <-openErr; err != nil {
		t.Fatalf("converse (%s) could not log in: %v", c.conv, err)
	}
	t.Logf("converse %s is device %d", conv.JID, conv.Device)

	// converse must know all devices of a before its first message, or it
	// would encrypt for some of them only.
	waitConverseDevices(t, drv, c, aJID, deviceIDs(as))

	// Each step checks every device and goes on after a failure, so that
	// the log says which devices failed where.
	t.Run("converse starts", func(t *testing.T) {
		body := "converse starts with " + c.a + " in " + c.name
		marks := rejectMarks(as)
		sent := converseSend(t, drv, c, aJID, body)
		// converse has no session with them: every key is a key exchange.
		targets := checkConverseKeys(t, c, sent, aJID, as, true)
		for _, d := range targets {
			if m, ok := waitBody(t, d, body, marks[d]); ok {
				checkFromConverse(t, d, m, c, convJID, conv.Device, true)
			}
		}
	})

	// The bodies our devices sent, by account, for the final check.
	sent := map[string][]string{}

	t.Run("we answer", func(t *testing.T) {
		for i, d := range as {
			body := fmt.Sprintf("%s device %d answers in %s", c.a, i+1, c.name)
			if ourSend(t, d, convJID, conv.Device, c.ns, body) {
				sent[c.a] = append(sent[c.a], body)
				// An answer in a session converse started is no key
				// exchange.
				page.expect(t, c, d, body, false)
			}
		}
	})

	t.Run("we start", func(t *testing.T) {
		for i, d := range bs {
			body := fmt.Sprintf("%s device %d starts in %s", c.b, i+1, c.name)
			// One after the other: converse replaces the pre key a key
			// exchange used (under the same id) and republishes its
			// bundle in the background after decrypting the message. The
			// next device waits for that, or it might pick the replaced
			// pre key from the old bundle (1 in 100), and the test would
			// be about that race rather than the protocol.
			before := fetchBundle(d, convJID, c.ns, conv.Device)
			if ourSend(t, d, convJID, conv.Device, c.ns, body) {
				sent[c.b] = append(sent[c.b], body)
				page.expect(t, c, d, body, true)
				if i < len(bs)-1 {
					waitRepublished(t, d, convJID, c.ns, conv.Device, before)
				}
			}
		}
	})

	t.Run("converse answers", func(t *testing.T) {
		body := "converse answers " + c.b + " in " + c.name
		waitConverseDevices(t, drv, c, bJID, deviceIDs(bs))
		marks := rejectMarks(bs)
		sent := converseSend(t, drv, c, bJID, body)
		// The sessions exist (we started them): no key exchange.
		targets := checkConverseKeys(t, c, sent, bJID, bs, false)
		for _, d := range targets {
			if m, ok := waitBody(t, d, body, marks[d]); ok {
				checkFromConverse(t, d, m, c, convJID, conv.Device, false)
			}
		}
	})

	// What converse shows: the decrypted text of every message of ours, no
	// error message, in both chats.
	for _, acct := range []jid.JID{aJID, bJID} {
		var msgs []struct {
			Sender    string `json:"sender"`
			Body      string `json:"body"`
			Encrypted bool   `json:"encrypted"`
			Error     string `json:"error"`
		}
		if err := drv.call(map[string]any{"op": "chat", "page": c.conv, "jid": acct.String()}, &msgs); err != nil {
			t.Errorf("converse's chat with %v: %v", acct, err)
			continue
		}
		var theirs []string
		for _, m := range msgs {
			if m.Error != "" {
				t.Errorf("converse's chat with %v shows an error: %s", acct, m.Error)
			}
			if m.Sender == "them" && m.Body != "" {
				if !m.Encrypted {
					t.Errorf("converse's chat with %v: unencrypted message %q", acct, m.Body)
				}
				theirs = append(theirs, m.Body)
			}
		}
		t.Logf("converse's chat with %v: %d messages, %d of them ours", acct, len(msgs), len(theirs))
		for _, b := range sent[acct.Localpart()] {
			if !slices.Contains(theirs, b) {
				t.Errorf("converse's chat with %v lacks %q", acct, b)
			}
		}
	}
	for _, d := range append(slices.Clone(as), bs...) {
		if errs := d.decryptErrors(); len(errs) > 0 {
			t.Errorf("%s (device %d) rejected messages: %v", d.name, d.p.Manager().DeviceID(), errs)
		}
	}
	page.checkErrors(t)
}

// startDevices starts n fresh devices of account name at once.
func startDevices(t *testing.T, srv *prosodytest.Server, name string, n int, cfg omemo.Config) []*client {
	t.Helper()
	out := make([]*client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(t, srv, name, store.NewMemory(), cfg)
			if err != nil {
				errs[i] = err
				return
			}
			c.name = fmt.Sprintf("%s/%d", name, i+1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := c.p.Start(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: Start: %w", c.name, err)
			}
			out[i] = c
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out
}

func deviceIDs(cs []*client) []uint32 {
	var ids []uint32
	for _, c := range cs {
		ids = append(ids, c.p.Manager().DeviceID())
	}
	return ids
}

// waitConverseDevices waits until converse knows all devices want of acct
// in c.ns.
func waitConverseDevices(t *testing.T, drv *converseDriver, c converseCase, acct jid.JID, want []uint32) {
	t.Helper()
	deadline := time.Now().Add(converseMsgTimeout)
	for {
		var got []uint32
		if err := drv.call(map[string]any{"op": "devices", "page": c.conv, "jid": acct.String(), "version": c.ns}, &got); err != nil {
			t.Fatalf("converse's device list of %v: %v", acct, err)
		}
		missing := slices.DeleteFunc(slices.Clone(want), func(id uint32) bool { return slices.Contains(got, id) })
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("converse knows devices %v of %v in %s after %v; ours are %v", got, acct, c.ns, converseMsgTimeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// converseStanza is the driver's summary of an OMEMO message stanza.
type converseStanza struct {
	ID        string `json:"id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Encrypted []struct {
		Namespace string `json:"namespace"`
		SID       uint32 `json:"sid"`
		Payload   bool   `json:"payload"`
		Keys      []struct {
			JID string `json:"jid"`
			RID uint32 `json:"rid"`
			Kex bool   `json:"kex"`
		} `json:"keys"`
	} `json:"encrypted"`
}

func (s converseStanza) namespaces() []string {
	var out []string
	for _, e := range s.Encrypted {
		out = append(out, e.Namespace)
	}
	return out
}

// converseSend makes converse send body to acct, as its user would.
func converseSend(t *testing.T, drv *converseDriver, c converseCase, acct jid.JID, body string) converseStanza {
	t.Helper()
	var st converseStanza
	if err := drv.call(map[string]any{"op": "send", "page": c.conv, "to": acct.String(), "body": body}, &st); err != nil {
		t.Fatalf("converse → %v: %v", acct, err)
	}
	return st
}

// checkConverseKeys checks that converse's message is in c.ns only and has
// a key for every device of ours (a key exchange if kex), and returns the
// devices that got one.
func checkConverseKeys(t *testing.T, c converseCase, st converseStanza, acct jid.JID, devs []*client, kex bool) []*client {
	t.Helper()
	if got := st.namespaces(); !slices.Equal(got, []string{c.ns}) {
		t.Errorf("converse → %v: <encrypted> in %v, want only %s", acct, got, c.ns)
	}
	t.Logf("converse → %v: %+v", acct, st.Encrypted)
	var out []*client
	for _, d := range devs {
		id := d.p.Manager().DeviceID()
		found := false
		for _, e := range st.Encrypted {
			if e.Namespace != c.ns {
				continue
			}
			for _, k := range e.Keys {
				if k.RID != id || (c.ns == ns.OMEMO2 && k.JID != acct.String()) {
					continue
				}
				found = true
				if k.Kex != kex {
					t.Errorf("converse → %s (device %d): key exchange %v, want %v", d.name, id, k.Kex, kex)
				}
			}
		}
		if !found {
			// converse drops a device whose session it cannot build and
			// says why in its console (printed at the end).
			t.Errorf("converse → %s: no key for our device %d (converse could not build a session with it; see converse's console)", d.name, id)
			continue
		}
		out = append(out, d)
	}
	return out
}

// rejectMarks notes how many messages each device has rejected so far.
func rejectMarks(devs []*client) map[*client]int {
	m := make(map[*client]int)
	for _, d := range devs {
		m[d] = len(d.decryptErrors())
	}
	return m
}

// waitBody waits for body on device d, skipping messages without a body
// (converse sends chat states in OMEMO 2). It fails as soon as d has
// rejected more than the rejected messages it had before the body was sent.
func waitBody(t *testing.T, d *client, body string, rejected int) (omemo.Message, bool) {
	t.Helper()
	id := d.p.Manager().DeviceID()
	timeout := time.After(converseMsgTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case m := <-d.msgs:
			if m.Body == body {
				return m, true
			}
			if m.Body != "" {
				t.Errorf("%s (device %d): unexpected message %q from %v (ns %s)", d.name, id, m.Body, m.From, m.Namespace)
			} else {
				t.Logf("%s (device %d): message without body from %v (ns %s): %s", d.name, id, m.From, m.Namespace, m.Payload)
			}
		case <-tick.C:
			if errs := d.decryptErrors(); len(errs) > rejected {
				t.Errorf("%s (device %d) could not decrypt %q: %v", d.name, id, body, errs[rejected:])
				return omemo.Message{}, false
			}
		case <-timeout:
			t.Errorf("%s (device %d): %q not received within %v", d.name, id, body, converseMsgTimeout)
			return omemo.Message{}, false
		}
	}
}

// checkFromConverse checks what our device d says about converse's message.
func checkFromConverse(t *testing.T, d *client, m omemo.Message, c converseCase, convJID jid.JID, convDev uint32, kex bool) {
	t.Helper()
	if m.Namespace != c.ns {
		t.Errorf("%s: converse's message came in %s, want %s", d.name, m.Namespace, c.ns)
	}
	if !m.From.Bare().Equal(convJID) || m.SenderDevice != convDev {
		t.Errorf("%s: message from %v device %d, want %v device %d", d.name, m.From, m.SenderDevice, convJID, convDev)
	}
	if m.KeyExchange != kex {
		t.Errorf("%s: key exchange %v, want %v", d.name, m.KeyExchange, kex)
	}
}

// ourSend sends body from device d to converse and reports whether it was
// encrypted for converse's device in namespace. If not, it fetches
// converse's bundle and says what our parser thinks of it.
func ourSend(t *testing.T, d *client, convJID jid.JID, convDev uint32, namespace, body string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := d.p.Send(ctx, convJID, body)
	if err == nil {
		for _, f := range res.Failures {
			t.Errorf("%s → converse: could not encrypt for %v", d.name, f)
		}
		want := session.Recipient{JID: convJID.String(), DeviceID: convDev, Namespace: namespace}
		if slices.Contains(res.Recipients, want) {
			return true
		}
		err = fmt.Errorf("recipients %+v do not include converse's device %d in %s", res.Recipients, convDev, namespace)
	}
	diag := "our parser accepts it"
	if _, ferr := bundle.Fetch(ctx, d.s, convJID, namespace, convDev); ferr != nil {
		diag = ferr.Error()
	}
	t.Errorf("%s (device %d) → converse: Send: %v (converse's %s bundle of device %d: %s)", d.name, d.p.Manager().DeviceID(), err, namespace, convDev, diag)
	return false
}

func fetchBundle(d *client, owner jid.JID, namespace string, dev uint32) *bundle.Bundle {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := bundle.Fetch(ctx, d.s, owner, namespace, dev)
	if err != nil {
		return nil
	}
	return &b
}

// waitRepublished waits until the bundle of converse's device differs from
// before (its pre keys change when it replaces a used one).
func waitRepublished(t *testing.T, d *client, convJID jid.JID, namespace string, dev uint32, before *bundle.Bundle) {
	t.Helper()
	if before == nil {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b := fetchBundle(d, convJID, namespace, dev)
		if b != nil && !slices.Equal(b.PreKeys, before.PreKeys) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("converse's %s bundle unchanged 5 s after a key exchange", namespace)
}

// converseDriver is testdata/converse/driver.js: headless Chromium with one
// page per converse account.
type converseDriver struct {
	stdin   io.WriteCloser
	browser string // its version
	exited  chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan converseReply
	pages   map[string]*conversePage
	log     bytes.Buffer // the driver's stderr: the pages' consoles
	bad     []string     // protocol errors
}

type converseReply struct {
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
}

// converseEvent is a line of the driver that is not an answer.
type converseEvent struct {
	Event        string         `json:"event"`
	Page         string         `json:"page"`
	BrowserPID   int            `json:"browser_pid"`
	Version      string         `json:"version"`
	From         string         `json:"from"`
	Contact      string         `json:"contact"`
	Body         *string        `json:"body"`
	Encrypted    bool           `json:"encrypted"`
	OnlyKey      bool           `json:"only_key"`
	Error        string         `json:"error"`
	SenderDevice uint32         `json:"sender_device"`
	Namespace    string         `json:"namespace"`
	Kex          bool           `json:"kex"`
	Stanza       converseStanza `json:"stanza"`
}

// conversePage receives the messages one page reports.
type conversePage struct {
	name string
	msgs chan converseEvent

	mu   sync.Mutex
	errs []converseEvent // decryption errors
}

type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// requireConverse checks for Chromium, Node.js and the npm packages of
// testdata/converse; it skips the test without them, or fails it with
// CI=true. It returns the directory testdata/converse.
func requireConverse(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		prosodytest.Unavailable(t, "chromium", chromiumPath+" not found (apt-get install -y chromium)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		prosodytest.Unavailable(t, "node", "Node.js not found (apt-get install -y nodejs npm)")
	}
	dir := filepath.Join(oracle.RepoRoot(), "testdata", "converse")
	var pkg struct {
		Version string `json:"version"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "node_modules", "converse.js", "package.json"))
	if err == nil {
		err = json.Unmarshal(b, &pkg)
	}
	if err == nil && pkg.Version != converseVersion {
		err = fmt.Errorf("converse.js %s installed, want %s", pkg.Version, converseVersion)
	}
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "puppeteer-core", "package.json"))
	}
	if err != nil {
		prosodytest.Unavailable(t, "converse.js", fmt.Sprintf("%v (run npm ci in testdata/converse)", err))
	}
	return dir
}

// serveConverse serves index.html at / and converse's dist/ at /dist/ on
// 127.0.0.1.
func serveConverse(t *testing.T, dir string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	dist := filepath.Join(dir, "node_modules", "converse.js", "dist")
	mux.Handle("/dist/", http.StripPrefix("/dist/", http.FileServer(http.Dir(dist))))
	index, err := os.ReadFile(filepath.Join(dir, "index.html"))
	if err != nil {
		t.Fatal(err)
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(index)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// startConverseDriver launches node driver.js, which launches Chromium.
// In t.Cleanup the driver gets EOF on stdin (it closes the browser), then
// SIGTERM, then SIGKILL for its process group and the browser's; if the
// test failed, the pages' console output is written to the test log.
func startConverseDriver(t *testing.T, dir, baseURL string) *converseDriver {
	t.Helper()
	d := &converseDriver{
		exited:  make(chan struct{}),
		pending: make(map[int]chan converseReply),
		pages:   make(map[string]*conversePage),
	}
	cmd := exec.Command("node", "driver.js", baseURL+"/")
	cmd.Dir = dir
	// The browser profile goes to TMPDIR, removed with the test's.
	tmp := t.TempDir()
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromiumPath, "TMPDIR="+tmp,
		"DRIVER_LIFETIME_MS="+strconv.Itoa(int(converseDriverLifetime/time.Millisecond)))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = lockedBuffer{&d.mu, &d.log}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d.stdin = stdin
	if err := cmd.Start(); err != nil {
		t.Fatalf("start driver.js: %v", err)
	}
	ready := make(chan converseEvent, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			d.dispatch(sc.Bytes(), ready)
		}
	}()
	go func() {
		<-readerDone
		_ = cmd.Wait()
		close(d.exited)
	}()

	var browserPID int
	// Registered first, so it runs last: after the driver has exited, with
	// all of its output.
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, b := range d.bad {
			t.Errorf("driver: %s", b)
		}
		if t.Failed() {
			t.Logf("converse console (driver stderr, debug lines left out):\n%s", consoleWithoutDebug(d.log.String()))
		}
	})
	t.Cleanup(func() {
		_ = stdin.Close()
		pgid := cmd.Process.Pid
		select {
		case <-d.exited:
		case <-time.After(5 * time.Second):
			t.Logf("driver did not exit on EOF: SIGTERM")
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			select {
			case <-d.exited:
			case <-time.After(3 * time.Second):
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
				<-d.exited
			}
		}
		// puppeteer starts the browser in a process group of its own and
		// kills it when node exits; make sure, in case node was killed.
		if browserPID > 0 && isChromium(browserPID) {
			_ = syscall.Kill(-browserPID, syscall.SIGKILL)
		}
	})

	select {
	case ev := <-ready:
		browserPID = ev.BrowserPID
		d.browser = ev.Version
	case <-d.exited:
		t.Fatalf("driver.js exited at start-up:\n%s", d.stderr())
	case <-time.After(converseOpTimeout):
		t.Fatalf("driver.js: browser not started within %v:\n%s", converseOpTimeout, d.stderr())
	}
	return d
}

func isChromium(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte("chromium"))
}

func (d *converseDriver) stderr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.log.String()
}

// consoleWithoutDebug drops converse's debug lines (every stanza, hundreds
// of kilobytes) from the console output, keeping info, warnings, errors and
// the driver's own lines.
func consoleWithoutDebug(s string) string {
	var b strings.Builder
	dropped := 0
	for line := range strings.Lines(s) {
		if strings.HasPrefix(line, "[") && strings.Contains(line, "] debug: ") {
			dropped++
			continue
		}
		b.WriteString(line)
	}
	fmt.Fprintf(&b, "(%d debug lines left out)\n", dropped)
	return b.String()
}

func (d *converseDriver) dispatch(line []byte, ready chan<- converseEvent) {
	var probe struct {
		ID *int `json:"id"`
	}
	if err := json.Unmarshal(line, &probe); err != nil {
		d.mu.Lock()
		d.bad = append(d.bad, fmt.Sprintf("bad line %q: %v", line, err))
		d.mu.Unlock()
		return
	}
	if probe.ID != nil {
		var r converseReply
		_ = json.Unmarshal(line, &r)
		d.mu.Lock()
		ch := d.pending[*probe.ID]
		delete(d.pending, *probe.ID)
		d.mu.Unlock()
		if ch != nil {
			ch <- r
		}
		return
	}
	var ev converseEvent
	if err := json.Unmarshal(line, &ev); err != nil {
		d.mu.Lock()
		d.bad = append(d.bad, fmt.Sprintf("bad event %q: %v", line, err))
		d.mu.Unlock()
		return
	}
	switch ev.Event {
	case "ready":
		ready <- ev
	case "message":
		p := d.page(ev.Page)
		if ev.Error != "" {
			p.mu.Lock()
			p.errs = append(p.errs, ev)
			p.mu.Unlock()
		}
		select {
		case p.msgs <- ev:
		default:
			d.mu.Lock()
			d.bad = append(d.bad, fmt.Sprintf("page %s: message queue full, dropped %s", ev.Page, line))
			d.mu.Unlock()
		}
	default:
		d.mu.Lock()
		fmt.Fprintf(&d.log, "driver event: %s\n", line)
		d.mu.Unlock()
	}
}

// page returns the receiver of a page's messages.
func (d *converseDriver) page(name string) *conversePage {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pages[name]
	if p == nil {
		p = &conversePage{name: name, msgs: make(chan converseEvent, 64)}
		d.pages[name] = p
	}
	return p
}

// call sends one request and decodes its result into out (if not nil).
func (d *converseDriver) call(req map[string]any, out any) error {
	ch := make(chan converseReply, 1)
	d.mu.Lock()
	d.nextID++
	id := d.nextID
	d.pending[id] = ch
	req["id"] = id
	b, err := json.Marshal(req)
	if err == nil {
		// Written under the lock: one request per line.
		_, err = d.stdin.Write(append(b, '\n'))
	}
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	select {
	case r := <-ch:
		if r.Error != "" {
			return errors.New(r.Error)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-d.exited:
		return errors.New("driver exited")
	case <-time.After(converseOpTimeout):
		return fmt.Errorf("driver: no answer to %s within %v", req["op"], converseOpTimeout)
	}
}

// expect waits until converse has received body from our device d, and
// checks that it decrypted it, in c.ns, from d.
func (p *conversePage) expect(t *testing.T, c converseCase, d *client, body string, kex bool) {
	t.Helper()
	id := d.p.Manager().DeviceID()
	from := d.s.LocalAddr().Bare().String()
	timeout := time.After(converseMsgTimeout)
	for {
		select {
		case ev := <-p.msgs:
			if ev.Error != "" && ev.SenderDevice == id {
				// Reported again by checkErrors.
				t.Errorf("converse could not decrypt %q from %s (device %d)", body, d.name, id)
				return
			}
			if ev.Body == nil || *ev.Body != body {
				if ev.Body != nil && *ev.Body != "" {
					t.Errorf("converse: unexpected message %q from %s device %d", *ev.Body, ev.From, ev.SenderDevice)
				}
				continue
			}
			if ev.Namespace != c.ns {
				t.Errorf("converse decrypted %s's message in %q, want %s", d.name, ev.Namespace, c.ns)
			}
			if ev.Contact != from || ev.SenderDevice != id || !ev.Encrypted {
				t.Errorf("converse: message from %s device %d (encrypted %v), want %s device %d", ev.Contact, ev.SenderDevice, ev.Encrypted, from, id)
			}
			if ev.Kex != kex {
				t.Errorf("converse: %s's message is a key exchange: %v, want %v", d.name, ev.Kex, kex)
			}
			return
		case <-timeout:
			t.Errorf("converse did not receive %q from %s (device %d) within %v", body, d.name, id, converseMsgTimeout)
			return
		}
	}
}

// checkErrors reports every message converse could not decrypt.
func (p *conversePage) checkErrors(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range p.errs {
		t.Errorf("converse (%s) could not decrypt a message from %s device %d (%v): %s", p.name, ev.From, ev.SenderDevice, ev.Stanza.namespaces(), ev.Error)
	}
}
