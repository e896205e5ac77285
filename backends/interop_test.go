package backends_test

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/pb/twomemopb"
	"mellium.im/omemo/internal/pypeer"
	"mellium.im/omemo/ns"
)

// endpoint is one side of a conversation: a Go backend or a device played by
// the Python peer. Messages travel between them as pypeer.Message.
type endpoint interface {
	String() string
	// send encrypts plaintext (nil: an empty OMEMO message).
	send(t *testing.T, plaintext []byte) pypeer.Message
	// recv decrypts m; empty reports an empty OMEMO message.
	recv(m pypeer.Message) (plaintext []byte, empty bool, err error)
	// chains returns the session's sending and receiving chain lengths.
	chains(t *testing.T) (sending, receiving uint32, hasRecv bool)
	// wantRejected fails t unless err is the receiver's rejection of a
	// message of the given kind.
	wantRejected(t *testing.T, err error, why rejection)
}

// rejection is why a message must be rejected.
type rejection int

const (
	// replayed: a replay of a message of the current receiving chain.
	replayed rejection = iota
	// stale: a replay of a message of a superseded receiving chain.
	stale
	// tampered: a message with a flipped MAC byte.
	tampered
)

// goEnd is a Go backend talking to one peer device.
type goEnd struct {
	ns         string
	self, peer pypeer.Addr
	be         backends.Backend
	peerIK     [32]byte // Ed25519, from the peer's init response
	peerBundle bundle.Bundle
	s          backends.Session
}

func (e *goEnd) String() string { return "go(" + e.self.JID + ")" }

func (e *goEnd) send(t *testing.T, plaintext []byte) pypeer.Message {
	t.Helper()
	var c backends.Content
	var km []byte
	var err error
	if plaintext == nil {
		c, km, err = e.be.EncryptEmpty()
	} else {
		c, km, err = e.be.EncryptPlaintext(plaintext)
	}
	if err != nil {
		t.Fatalf("%v: encrypting: %v", e, err)
	}
	var ke backends.KeyElement
	if e.s == nil {
		e.s, ke, err = e.be.BuildSessionActive(e.peer.JID, e.peer.Device, e.peerBundle, km)
	} else {
		ke, err = e.be.EncryptKeyMaterial(e.s, km)
	}
	if err != nil {
		t.Fatalf("%v: encrypting key material: %v", e, err)
	}
	if ke.JID != e.peer.JID || ke.DeviceID != e.peer.Device {
		t.Fatalf("%v: key element addressed to %s/%d, want %s/%d", e, ke.JID, ke.DeviceID, e.peer.JID, e.peer.Device)
	}
	m := pypeer.Message{Key: ke.Data, Kex: ke.KeyExchange, IV: c.IV}
	if !c.Empty {
		m.Payload = c.Ciphertext
	}
	return m
}

// recv does what the session manager does: reuse the passive session for a
// repeated key exchange, otherwise build a new one and delete the used pre
// key.
func (e *goEnd) recv(m pypeer.Message) ([]byte, bool, error) {
	var km []byte
	var err error
	s := e.s
	built := false
	if m.Kex {
		kex, msg, err := e.be.ParseKeyExchange(m.Key, e.peerIK[31]&0x80 != 0)
		if err != nil {
			return nil, false, err
		}
		if kex.IdentityKey != e.peerIK {
			return nil, false, fmt.Errorf("key exchange identity key %x, want %x", kex.IdentityKey, e.peerIK)
		}
		if s != nil && s.Initiation() == backends.Passive && s.KeyExchange().BuildsSameSession(kex) {
			km, err = e.be.DecryptKeyMaterial(s, msg)
		} else {
			s, km, err = e.be.BuildSessionPassive(e.peer.JID, e.peer.Device, kex, msg)
			built = true
		}
		if err != nil {
			return nil, false, err
		}
	} else {
		if s == nil {
			return nil, false, errors.New("no session")
		}
		km, err = e.be.DecryptKeyMaterial(s, m.Key)
		if err != nil {
			return nil, false, err
		}
	}
	var pt []byte
	empty := m.Payload == nil
	if !empty {
		pt, err = e.be.DecryptPlaintext(backends.Content{Ciphertext: m.Payload, IV: m.IV}, km)
		if err != nil {
			return nil, false, err
		}
	}
	e.s = s
	if built && !e.be.DeletePreKey(s) {
		return nil, false, errors.New("used pre key not found for deletion")
	}
	return pt, empty, nil
}

func (e *goEnd) chains(t *testing.T) (uint32, uint32, bool) {
	t.Helper()
	r, ok := e.s.ReceivingChainLength()
	return e.s.SendingChainLength(), r, ok
}

// wantRejected: the Go ratchet remembers superseded peer ratchet keys, so it
// reports stale messages as duplicates too.
func (e *goEnd) wantRejected(t *testing.T, err error, why rejection) {
	t.Helper()
	want := backends.ErrDuplicateMessage
	if why == tampered {
		want = backends.ErrAuthentication
	}
	if !errors.Is(err, want) {
		t.Fatalf("%v: err = %v, want %v", e, err, want)
	}
}

// pyEnd is a device played by the Python peer.
type pyEnd struct {
	p          *pypeer.Peer
	ns         string
	self, peer pypeer.Addr
	peerBundle string // the Go device's bundle XML
	peerIK     [32]byte
}

func (e *pyEnd) String() string { return "python(" + e.self.JID + ")" }

func (e *pyEnd) send(t *testing.T, plaintext []byte) pypeer.Message {
	t.Helper()
	m, err := e.p.Encrypt(e.ns, e.self, e.peer, e.peerBundle, plaintext)
	if err != nil {
		t.Fatalf("%v: encrypt: %v", e, err)
	}
	return m
}

func (e *pyEnd) recv(m pypeer.Message) ([]byte, bool, error) {
	pt, err := e.p.Decrypt(e.ns, e.self, e.peer, e.peerIK[:], m)
	return pt, pt == nil, err
}

func (e *pyEnd) chains(t *testing.T) (uint32, uint32, bool) {
	t.Helper()
	c, err := e.p.ChainLengths(e.ns, e.self, e.peer)
	if err != nil {
		t.Fatalf("%v: chain_lengths: %v", e, err)
	}
	return c.Sending, c.Receiving, c.HasRecv
}

// wantRejected: python-doubleratchet treats a message with a superseded
// ratchet key as a new ratchet step, whose MAC then fails.
func (e *pyEnd) wantRejected(t *testing.T, err error, why rejection) {
	t.Helper()
	var pe *pypeer.Error
	if !errors.As(err, &pe) {
		t.Fatalf("%v: err = %v, want a rejection by the peer", e, err)
	}
	cause := "AuthenticationFailedException"
	if why == replayed {
		cause = "DuplicateMessageException"
	}
	if !pe.HasCause("DecryptionFailed") || !pe.HasCause(cause) {
		t.Fatalf("%v: err = %v, want DecryptionFailed caused by %s", e, err, cause)
	}
}

// tamper returns a copy of the non-key-exchange message m with one byte of
// its MAC flipped.
func tamper(t *testing.T, namespace string, m pypeer.Message) pypeer.Message {
	t.Helper()
	if m.Kex {
		t.Fatal("tamper: message carries a key exchange")
	}
	key := bytes.Clone(m.Key)
	switch namespace {
	case ns.OMEMO2:
		mac, _, err := twomemopb.ParseOMEMOAuthenticatedMessage(key)
		if err != nil || len(mac) != 16 {
			t.Fatalf("tamper: parsing OMEMOAuthenticatedMessage: %v (mac %d bytes)", err, len(mac))
		}
		mac[3] ^= 0x01 // mac aliases key
	case ns.Legacy:
		key[len(key)-1] ^= 0x01 // 0x33 ‖ WhisperMessage ‖ mac8
	}
	if bytes.Equal(key, m.Key) {
		t.Fatal("tamper: key element unchanged")
	}
	m.Key = key
	return m
}

// conv runs a conversation between two endpoints and asserts every
// plaintext.
type conv struct {
	t  *testing.T
	ns string
	n  int // message counter, to make every plaintext unique
}

func (c *conv) send(from endpoint, empty bool) (pypeer.Message, []byte) {
	c.t.Helper()
	var pt []byte
	if !empty {
		c.n++
		pt = fmt.Appendf(nil, "message %d from %v", c.n, from)
	}
	return from.send(c.t, pt), pt
}

// deliver decrypts m at to and asserts the plaintext (nil: empty message).
func (c *conv) deliver(to endpoint, m pypeer.Message, want []byte) {
	c.t.Helper()
	pt, empty, err := to.recv(m)
	if err != nil {
		c.t.Fatalf("%v receiving %q: %v", to, want, err)
	}
	if want == nil {
		if !empty || pt != nil {
			c.t.Fatalf("%v got %q (empty %v), want an empty message", to, pt, empty)
		}
		return
	}
	if empty || !bytes.Equal(pt, want) {
		c.t.Fatalf("%v got %q (empty %v), want %q", to, pt, empty, want)
	}
}

// exchange sends n messages from one side and delivers them in order.
func (c *conv) exchange(from, to endpoint, n int) pypeer.Message {
	c.t.Helper()
	var m pypeer.Message
	for range n {
		var pt []byte
		m, pt = c.send(from, false)
		if m.Kex {
			c.t.Fatalf("%v still sends a key exchange after the answer", from)
		}
		c.deliver(to, m, pt)
	}
	return m
}

// outOfOrder sends three messages and delivers the last first.
func (c *conv) outOfOrder(from, to endpoint) {
	c.t.Helper()
	var ms [3]pypeer.Message
	var pts [3][]byte
	for i := range ms {
		ms[i], pts[i] = c.send(from, false)
	}
	for _, i := range []int{2, 0, 1} {
		c.deliver(to, ms[i], pts[i])
	}
}

// run is the whole scenario; a starts the session with b.
func (c *conv) run(a, b endpoint) {
	t := c.t
	t.Helper()

	// Key exchange: it stays attached until b answers.
	a1, p1 := c.send(a, false)
	a2, p2 := c.send(a, false)
	a3, p3 := c.send(a, false)
	for i, m := range []pypeer.Message{a1, a2, a3} {
		if !m.Kex {
			t.Fatalf("message %d of an unconfirmed session has no key exchange", i+1)
		}
	}
	c.deliver(b, a1, p1)
	c.deliver(b, a2, p2)
	_, _, err := b.recv(a1)
	b.wantRejected(t, err, replayed)

	// The answer: a DH ratchet step at a, which confirms a's session.
	bm := c.exchange(b, a, 1)
	am := c.exchange(a, b, 1)
	// The last key exchange message arrives after the ratchet step: it is
	// decrypted with a skipped key of the passive session.
	c.deliver(b, a3, p3)

	// Several direction changes.
	for i := range 6 {
		if i%2 == 0 {
			bm = c.exchange(b, a, 1+i%3)
		} else {
			am = c.exchange(a, b, 1+i%3)
		}
	}

	// Out of order, both ways.
	c.outOfOrder(a, b)
	c.outOfOrder(b, a)

	// Empty messages, both ways, each one a ratchet step.
	e, _ := c.send(a, true)
	c.deliver(b, e, nil)
	e, _ = c.send(b, true)
	c.deliver(a, e, nil)

	// A flipped MAC byte is rejected, and the untampered message still
	// decrypts afterwards; replaying it fails.
	m, pt := c.send(a, false)
	_, _, err = b.recv(tamper(t, c.ns, m))
	b.wantRejected(t, err, tampered)
	c.deliver(b, m, pt)
	_, _, err = b.recv(m)
	b.wantRejected(t, err, replayed)
	m, pt = c.send(b, false)
	_, _, err = a.recv(tamper(t, c.ns, m))
	a.wantRejected(t, err, tampered)
	c.deliver(a, m, pt)
	_, _, err = a.recv(m)
	a.wantRejected(t, err, replayed)

	// Replays of messages from superseded chains are rejected.
	_, _, err = b.recv(am)
	b.wantRejected(t, err, stale)
	_, _, err = a.recv(bm)
	a.wantRejected(t, err, stale)

	// Messages still flow.
	c.exchange(b, a, 2)
	c.exchange(a, b, 3)

	// Both sides agree on the ratchet state: b's last chain carried the
	// message sent after the tampered one and 2 more, a's last chain 3, and
	// receiving a's new ratchet key started a fresh sending chain at b.
	as, ar, aok := a.chains(t)
	bs, br, bok := b.chains(t)
	if !aok || !bok || as != 3 || br != 3 || ar != 3 || bs != 0 {
		t.Fatalf("chain lengths: %v sending %d receiving %d (%v), %v sending %d receiving %d (%v); want 3/3 and 0/3",
			a, as, ar, aok, b, bs, br, bok)
	}
}

func TestInterop(t *testing.T) {
	peer := pypeer.Start(t)
	newBackend := map[string]func(*backends.IdentityKeyPair) (backends.Backend, error){
		ns.OMEMO2: func(id *backends.IdentityKeyPair) (backends.Backend, error) { return twomemo.New(id, nil, nil) },
		ns.Legacy: func(id *backends.IdentityKeyPair) (backends.Backend, error) { return oldmemo.New(id, nil, nil) },
	}
	dev := uint32(1000)
	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		for _, goFirst := range []bool{true, false} {
			name := namespace + "/python-initiates"
			if goFirst {
				name = namespace + "/go-initiates"
			}
			dev++
			goAddr := pypeer.Addr{JID: "go@example.org", Device: dev}
			pyAddr := pypeer.Addr{JID: "python@example.net", Device: dev + 100}
			t.Run(name, func(t *testing.T) {
				id, err := backends.GenerateIdentityKeyPair(rand.Reader)
				if err != nil {
					t.Fatal(err)
				}
				be, err := newBackend[namespace](id)
				if err != nil {
					t.Fatal(err)
				}
				gb, err := be.Bundle()
				if err != nil {
					t.Fatal(err)
				}
				goBundle, err := xml.Marshal(gb)
				if err != nil {
					t.Fatal(err)
				}

				pyBundle, pyIK, err := peer.Init(namespace, pyAddr)
				if err != nil {
					t.Fatal(err)
				}
				pb, err := bundle.Decode(xml.NewDecoder(strings.NewReader(pyBundle)))
				if err != nil {
					t.Fatalf("decoding the Python bundle: %v\n%s", err, pyBundle)
				}
				if len(pb.PreKeys) != 100 {
					t.Fatalf("Python bundle has %d pre keys, want 100", len(pb.PreKeys))
				}
				if ik, err := be.BundleIdentityKey(*pb); err != nil || ik != pyIK {
					t.Fatalf("identity key of the Python bundle = %x, %v; want %x", ik, err, pyIK)
				}

				g := &goEnd{ns: namespace, self: goAddr, peer: pyAddr, be: be, peerIK: pyIK, peerBundle: *pb}
				py := &pyEnd{p: peer, ns: namespace, self: pyAddr, peer: goAddr, peerBundle: string(goBundle), peerIK: id.PublicKey()}
				c := &conv{t: t, ns: namespace}
				if goFirst {
					c.run(g, py)
				} else {
					c.run(py, g)
				}

				// The responder deleted the pre key the session was built
				// with and refilled its bundle to 100 pre keys.
				used := g.s.KeyExchange().PreKeyID
				var pks []bundle.PreKey
				if goFirst {
					x, _, err := peer.Bundle(namespace, pyAddr)
					if err != nil {
						t.Fatal(err)
					}
					b, err := bundle.Decode(xml.NewDecoder(strings.NewReader(x)))
					if err != nil {
						t.Fatal(err)
					}
					pks = b.PreKeys
				} else {
					b, err := be.Bundle()
					if err != nil {
						t.Fatal(err)
					}
					pks = b.PreKeys
				}
				for _, pk := range pks {
					if pk.ID == used {
						t.Fatalf("pre key %d still in the responder's bundle", used)
					}
				}
				if goFirst && len(pks) != 100 {
					t.Fatalf("Python bundle has %d pre keys after the key exchange, want 100 (refilled)", len(pks))
				}
			})
		}
	}
}
