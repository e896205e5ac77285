// Package pypeer starts and drives the Python interop peer
// (testdata/interop/peer.py), which plays OMEMO devices with the reference
// python-omemo backends. It is test support only: non-test code must not
// import it.
//
// The peer speaks JSON lines: one request per line on its stdin, one response
// per line on its stdout. Every read has a deadline, so a stuck or crashed
// peer fails the test instead of hanging it.
package pypeer // import "mellium.im/omemo/internal/pypeer"

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/internal/oracle"
)

// Timeouts for the peer's answers.
const (
	// StartTimeout bounds the first answer: start-up compiles XML schemas
	// and takes a few seconds.
	StartTimeout = 30 * time.Second
	// RequestTimeout bounds every later answer.
	RequestTimeout = 10 * time.Second
)

// ErrPeerDead means the peer process did not answer in time, exited or
// wrote something that is not a JSON response. The peer is unusable after it.
var ErrPeerDead = errors.New("pypeer: peer process failed")

// Error is a request the peer answered with "ok": false. The peer keeps
// running and its state is unchanged.
type Error struct {
	Op      string
	Message string   // "ExceptionClassName: message"
	Causes  []string // the __cause__ chain, each "CauseClass: message"
}

func (e *Error) Error() string {
	s := "pypeer: " + e.Op + ": " + e.Message
	if len(e.Causes) > 0 {
		s += " (caused by " + strings.Join(e.Causes, "; ") + ")"
	}
	return s
}

// HasCause reports whether the error or one of its causes is of the Python
// exception class name.
func (e *Error) HasCause(class string) bool {
	for _, c := range append([]string{e.Message}, e.Causes...) {
		if strings.HasPrefix(c, class+":") || c == class {
			return true
		}
	}
	return false
}

// Addr is a device address: bare JID and device id. It is encoded as the
// 2-element JSON array the peer expects.
type Addr struct {
	JID    string
	Device uint32
}

// MarshalJSON implements json.Marshaler.
func (a Addr) MarshalJSON() ([]byte, error) {
	return json.Marshal([]any{a.JID, a.Device})
}

// Message is one encrypted message as it travels between devices: the
// content of the recipient's <key> element and the payload.
type Message struct {
	Key     []byte // exact <key> bytes
	Kex     bool   // the key element carries a key exchange
	Payload []byte // nil for an empty OMEMO message
	IV      []byte // legacy <iv>, also for empty messages; nil for OMEMO 2
}

// ChainLengths is the answer of the chain_lengths op.
type ChainLengths struct {
	Sending    uint32
	Receiving  uint32
	HasRecv    bool // false until the session has a receiving chain
	Confirmed  bool
	Initiation string // "ACTIVE" or "PASSIVE"
}

// response is the union of all response members. []byte members decode
// standard base64; JSON null leaves them nil.
type response struct {
	OK          bool     `json:"ok"`
	Error       string   `json:"error"`
	Causes      []string `json:"causes"`
	ID          *uint64  `json:"id"`
	BundleXML   string   `json:"bundle_xml"`
	IdentityKey []byte   `json:"identity_key"`
	Key         []byte   `json:"key"`
	Kex         bool     `json:"kex"`
	Payload     []byte   `json:"payload"`
	IV          []byte   `json:"iv"`
	Plaintext   []byte   `json:"plaintext"`
	Sending     uint32   `json:"sending"`
	Receiving   *uint32  `json:"receiving"`
	Confirmed   bool     `json:"confirmed"`
	Initiation  string   `json:"initiation"`
}

// Peer is a running peer process. Its methods are safe for concurrent use;
// requests are serialised.
type Peer struct {
	mu      sync.Mutex
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan []byte
	readErr chan error
	nextID  uint64
	started bool
	dead    error
	stderr  *syncBuffer
	waitErr chan error
}

// Start starts the peer with the oracle interpreter (skipping the test when
// it is missing, see oracle.Require) and kills it in tb.Cleanup. It does not
// wait for the peer to be ready: the first request gets StartTimeout.
func Start(tb testing.TB) *Peer {
	tb.Helper()
	return start(tb, "peer.py")
}

// start runs testdata/interop/<name> with the oracle interpreter; see Start.
func start(tb testing.TB, name string) *Peer {
	tb.Helper()
	python := oracle.Require(tb)
	script := filepath.Join(oracle.RepoRoot(), "testdata", "interop", name)
	cmd := exec.Command(python, script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	p := &Peer{
		cmd:     cmd,
		stdin:   stdin,
		lines:   make(chan []byte),
		readErr: make(chan error, 1),
		stderr:  &syncBuffer{},
		waitErr: make(chan error, 1),
	}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("pypeer: starting %s: %v", script, err)
	}
	done := make(chan struct{})
	go p.readLoop(stdout, done)
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		<-done // the pipe closes once the process is gone
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("peer stderr (tail):\n%s", p.stderr.tail(4000))
		}
	})
	return p
}

func (p *Peer) readLoop(stdout io.Reader, done chan<- struct{}) {
	defer close(done)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		select {
		case p.lines <- line:
		case <-time.After(RequestTimeout):
			// Nobody waits any more (the caller timed out); give up.
			p.readErr <- fmt.Errorf("%w: unread output", ErrPeerDead)
			return
		}
	}
	err := sc.Err()
	if err == nil {
		err = io.EOF
	}
	p.readErr <- fmt.Errorf("%w: stdout closed: %v", ErrPeerDead, err)
}

// call sends one request and decodes its response. A transport failure kills
// the peer and makes every later call fail.
func (p *Peer) call(req map[string]any) (*response, error) {
	var resp response
	if err := p.callInto(req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// envelope is the part of every response that callInto checks.
type envelope struct {
	OK     bool     `json:"ok"`
	Error  string   `json:"error"`
	Causes []string `json:"causes"`
	ID     *uint64  `json:"id"`
}

// callInto sends one request and decodes a successful response into out. A
// transport failure kills the peer and makes every later call fail.
func (p *Peer) callInto(req map[string]any, out any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead != nil {
		return p.dead
	}
	p.nextID++
	id := p.nextID
	req["id"] = id
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("pypeer: encoding request: %w", err)
	}
	fail := func(err error) error {
		p.dead = fmt.Errorf("%w (stderr: %s)", err, p.stderr.tail(2000))
		_ = p.cmd.Process.Kill()
		return p.dead
	}
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		return fail(fmt.Errorf("%w: writing request: %v", ErrPeerDead, err))
	}
	timeout := RequestTimeout
	if !p.started {
		timeout = StartTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case got := <-p.lines:
		p.started = true
		var env envelope
		if err := json.Unmarshal(got, &env); err != nil {
			return fail(fmt.Errorf("%w: bad response %q: %v", ErrPeerDead, got, err))
		}
		if env.ID == nil || *env.ID != id {
			return fail(fmt.Errorf("%w: response %q does not answer request %d", ErrPeerDead, got, id))
		}
		if !env.OK {
			return &Error{Op: fmt.Sprint(req["op"]), Message: env.Error, Causes: env.Causes}
		}
		if err := json.Unmarshal(got, out); err != nil {
			return fail(fmt.Errorf("%w: bad %v response %q: %v", ErrPeerDead, req["op"], got, err))
		}
		return nil
	case err := <-p.readErr:
		return fail(err)
	case <-timer.C:
		return fail(fmt.Errorf("%w: no answer to %v within %v", ErrPeerDead, req["op"], timeout))
	}
}

// b64 returns raw for JSON encoding: nil becomes null, anything else
// standard base64 (encoding/json's []byte encoding).
func b64(raw []byte) any {
	if raw == nil {
		return nil
	}
	return raw
}

// Init creates a fresh identity (ns, a) in the peer and returns its bundle
// XML and its Ed25519 identity key.
func (p *Peer) Init(ns string, a Addr) (bundleXML string, identityKey [32]byte, err error) {
	resp, err := p.call(map[string]any{"op": "init", "ns": ns, "jid": a.JID, "device": a.Device})
	if err != nil {
		return "", identityKey, err
	}
	return bundleOf(resp)
}

// Bundle returns the current bundle of identity (ns, a).
func (p *Peer) Bundle(ns string, a Addr) (bundleXML string, identityKey [32]byte, err error) {
	resp, err := p.call(map[string]any{"op": "bundle", "ns": ns, "self": a})
	if err != nil {
		return "", identityKey, err
	}
	return bundleOf(resp)
}

func bundleOf(resp *response) (string, [32]byte, error) {
	var ik [32]byte
	if len(resp.IdentityKey) != len(ik) {
		return "", ik, fmt.Errorf("pypeer: identity key of %d bytes", len(resp.IdentityKey))
	}
	copy(ik[:], resp.IdentityKey)
	return resp.BundleXML, ik, nil
}

// Encrypt encrypts plaintext (nil: an empty OMEMO message) from identity
// from to device to. Without a session, bundleXML (the recipient's bundle;
// "" sends null) builds an active one.
func (p *Peer) Encrypt(ns string, from, to Addr, bundleXML string, plaintext []byte) (Message, error) {
	var bx any
	if bundleXML != "" {
		bx = bundleXML
	}
	resp, err := p.call(map[string]any{
		"op": "encrypt", "ns": ns, "from": from, "to": to,
		"bundle_xml": bx, "plaintext": b64(plaintext),
	})
	if err != nil {
		return Message{}, err
	}
	return Message{Key: resp.Key, Kex: resp.Kex, Payload: resp.Payload, IV: resp.IV}, nil
}

// Decrypt decrypts m, sent by from, at identity to. fromIdentityKey is the
// sender's Ed25519 identity key (required for legacy key exchanges; nil sends
// null). The plaintext is nil for an empty OMEMO message.
func (p *Peer) Decrypt(ns string, to, from Addr, fromIdentityKey []byte, m Message) ([]byte, error) {
	resp, err := p.call(map[string]any{
		"op": "decrypt", "ns": ns, "to": to, "from": from,
		"from_identity_key": b64(fromIdentityKey),
		"key":               m.Key, "kex": m.Kex, "payload": b64(m.Payload), "iv": b64(m.IV),
	})
	if err != nil {
		return nil, err
	}
	return resp.Plaintext, nil
}

// ChainLengths reports the state of self's session with peer.
func (p *Peer) ChainLengths(ns string, self, peer Addr) (ChainLengths, error) {
	resp, err := p.call(map[string]any{"op": "chain_lengths", "ns": ns, "self": self, "peer": peer})
	if err != nil {
		return ChainLengths{}, err
	}
	c := ChainLengths{Sending: resp.Sending, Confirmed: resp.Confirmed, Initiation: resp.Initiation}
	if resp.Receiving != nil {
		c.Receiving, c.HasRecv = *resp.Receiving, true
	}
	return c, nil
}

// syncBuffer collects the peer's stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Keep memory bounded: only the end is ever shown.
	if b.buf.Len() > 1<<20 {
		rest := append([]byte(nil), b.buf.Bytes()[b.buf.Len()-1<<19:]...)
		b.buf.Reset()
		b.buf.Write(rest)
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
