package doubleratchet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

var errAuth = errors.New("test: authentication failed")

// message stands in for a wire message: the backends' AEAD is replaced by a
// comparison of the message key, so a message "decrypts" iff the receiver
// derives the sender's key.
type message struct {
	h  Header
	mk [32]byte
}

func (m message) open(mk *[32]byte) error {
	if *mk != m.mk {
		return errAuth
	}
	return nil
}

// keyReader yields the given 32-byte keys in order, then fails.
type keyReader struct{ keys [][32]byte }

func (r *keyReader) Read(p []byte) (int, error) {
	if len(r.keys) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) != 32 {
		return 0, errors.New("keyReader: unexpected read size")
	}
	copy(p, r.keys[0][:])
	r.keys = r.keys[1:]
	return 32, nil
}

func fill(b byte) (k [32]byte) {
	for i := range k {
		k[i] = b
	}
	return k
}

func unhex32(t testing.TB, s string) (k [32]byte) {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 32 {
		t.Fatalf("bad hex %q", s)
	}
	copy(k[:], b)
	return k
}

func randKey(t testing.TB) (k [32]byte) {
	t.Helper()
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

func testConfig() *Config { return DefaultConfig([]byte(RootInfoOMEMO2)) }

// pair sets up an active Alice and a passive Bob sharing a secret; Bob's
// signed pre key is the initial ratchet key.
func pair(t testing.TB, cfg *Config) (alice, bob *State) {
	t.Helper()
	sk := randKey(t)
	spkPriv := randKey(t)
	spkPub, err := publicKey(&spkPriv)
	if err != nil {
		t.Fatal(err)
	}
	alice, err = NewActive(cfg, sk, spkPub, nil)
	if err != nil {
		t.Fatal(err)
	}
	bob, err = NewPassive(cfg, sk, spkPriv)
	if err != nil {
		t.Fatal(err)
	}
	return alice, bob
}

func send(s *State) message {
	h, mk := s.Encrypt()
	return message{h: h, mk: mk}
}

func recv(t testing.TB, s *State, m message) {
	t.Helper()
	if err := s.Decrypt(m.h, nil, m.open); err != nil {
		t.Fatalf("decrypt %+v: %v", m.h, err)
	}
}

func snapshot(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectFail asserts that decrypting m fails with target and leaves s
// byte-for-byte unchanged.
func expectFail(t testing.TB, s *State, m message, rnd io.Reader, target error) {
	t.Helper()
	before := snapshot(t, s)
	n := s.NumSkippedKeys()
	err := s.Decrypt(m.h, rnd, m.open)
	if !errors.Is(err, target) {
		t.Fatalf("decrypt %+v: got %v, want %v", m.h, err, target)
	}
	if after := snapshot(t, s); !bytes.Equal(before, after) {
		t.Fatalf("state changed after failed decrypt (%v)", err)
	}
	if s.NumSkippedKeys() != n {
		t.Fatalf("skipped key count changed after failed decrypt")
	}
}
