// Package doubleratchet implements the Double Ratchet (without header
// encryption) exactly as python-doubleratchet 1.0.3 does it for OMEMO 2 and
// legacy OMEMO.
//
// The package derives message keys only; authenticated encryption and the
// wire format belong to the OMEMO backends. Encrypt hands out the next
// sending message key with its header. Decrypt derives the key for a
// received header under a tentative state, lets the caller authenticate and
// decrypt with it, and commits the new state only if that succeeds, so a
// forged or corrupt message never changes a session.
//
// Security properties: message keys are single-use (a key is deleted once a
// message decrypted with it, and reuse is reported as ErrDuplicate); chain
// keys are ratcheted with HMAC so old message keys cannot be recomputed from
// the current state (forward secrecy); every change of direction performs an
// X25519 ratchet step with a fresh key (post-compromise security). The work
// and memory an attacker can force through skipped messages is bounded by
// Config.
//
// A State is not safe for concurrent use; callers serialise access.
package doubleratchet

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"mellium.im/omemo/internal/xeddsa"
)

// maxPrevPeerKeys is the number of superseded peer ratchet keys remembered
// to report stale messages as ErrDuplicate instead of attempting a
// (necessarily failing) ratchet step with an old key. Honest peers never
// reuse a ratchet key.
const maxPrevPeerKeys = 8

// Header is the Double Ratchet message header.
type Header struct {
	// RatchetKey is the sender's current ratchet public key (X25519).
	RatchetKey [32]byte
	// N is the message number in the sending chain.
	N uint32
	// PN is the length of the sender's previous sending chain.
	PN uint32
}

// ratchet holds the fixed-size part of the state. It is a plain value so a
// tentative copy for Decrypt costs a few hundred bytes of copying and no
// allocation.
type ratchet struct {
	rootKey [32]byte
	ownPriv [32]byte
	ownPub  [32]byte // X25519(ownPriv, 9), cached
	peerPub [32]byte

	sendCK [32]byte
	recvCK [32]byte
	sendN  uint32
	pn     uint32 // previous sending chain length, 0 if none
	recvN  uint32

	hasPeer bool
	hasSend bool
	hasRecv bool
}

var errNilOpen = errors.New("doubleratchet: nil open function")

// State is the state of one Double Ratchet session. The zero value is not
// usable; create states with NewActive, NewPassive or UnmarshalState.
type State struct {
	cfg       config
	r         ratchet
	prevPeers [][32]byte // superseded peer ratchet keys, oldest first
	skipped   skippedStore

	mk [32]byte // scratch for the key passed to Decrypt's open; zero otherwise
}

// x25519 computes X25519(priv, pub) and rejects an all-zero result.
func x25519(priv, pub *[32]byte) ([32]byte, error) {
	out, err := xeddsa.X25519(*priv, *pub)
	if err != nil {
		return out, ErrInvalidKey
	}
	return out, nil
}

// publicKey returns X25519(priv, 9).
func publicKey(priv *[32]byte) ([32]byte, error) {
	return xeddsa.Curve25519PubFromPriv(*priv), nil
}

// newRatchetKey reads a fresh 32-byte X25519 private key from r.
func newRatchetKey(r io.Reader) (priv, pub [32]byte, err error) {
	if r == nil {
		r = rand.Reader
	}
	if _, err = io.ReadFull(r, priv[:]); err != nil {
		return priv, pub, fmt.Errorf("doubleratchet: reading random ratchet key: %w", err)
	}
	pub, err = publicKey(&priv)
	return priv, pub, err
}

// NewActive creates the state of the session initiator. sharedSecret is the
// X3DH output SK (the initial root key) and peerRatchetKey the responder's
// signed pre key public key. A ratchet key pair is generated from rand
// (crypto/rand if nil) and the sending chain is derived immediately, so the
// state can Encrypt at once; the first message has N = 0, PN = 0.
func NewActive(cfg *Config, sharedSecret [32]byte, peerRatchetKey [32]byte, rand io.Reader) (*State, error) {
	c, err := newConfig(cfg)
	if err != nil {
		return nil, err
	}
	priv, pub, err := newRatchetKey(rand)
	if err != nil {
		return nil, err
	}
	dh, err := x25519(&priv, &peerRatchetKey)
	if err != nil {
		return nil, err
	}
	s := &State{cfg: c}
	s.r.ownPriv, s.r.ownPub = priv, pub
	s.r.peerPub, s.r.hasPeer = peerRatchetKey, true
	s.r.rootKey, s.r.sendCK = RootKDF(c.rootInfo, sharedSecret, dh)
	s.r.hasSend = true
	clear(dh[:])
	return s, nil
}

// NewPassive creates the state of the session responder. sharedSecret is the
// X3DH output SK and ownRatchetPriv the private signed pre key the initiator
// used. The state has no chains yet: the first successful Decrypt derives
// the receiving chain from the header's ratchet key, generates a new own
// ratchet key and derives the sending chain. Until then Encrypt is not
// possible (see CanEncrypt).
func NewPassive(cfg *Config, sharedSecret [32]byte, ownRatchetPriv [32]byte) (*State, error) {
	c, err := newConfig(cfg)
	if err != nil {
		return nil, err
	}
	pub, err := publicKey(&ownRatchetPriv)
	if err != nil {
		return nil, err
	}
	s := &State{cfg: c}
	s.r.rootKey = sharedSecret
	s.r.ownPriv, s.r.ownPub = ownRatchetPriv, pub
	return s, nil
}

// CanEncrypt reports whether the state has a sending chain. It is false only
// for a passive state before its first successful Decrypt.
func (s *State) CanEncrypt() bool { return s.r.hasSend }

// Encrypt advances the sending chain and returns the header and the message
// key for the next outgoing message. It does not allocate.
//
// Encrypt panics if the state has no sending chain (a passive state before
// its first successful Decrypt) or the chain counter is exhausted after
// 2^32-1 messages; use TryEncrypt to get an error instead.
func (s *State) Encrypt() (Header, [32]byte) {
	h, mk, err := s.TryEncrypt()
	if err != nil {
		panic(err)
	}
	return h, mk
}

// TryEncrypt is Encrypt returning ErrNoSendingChain or ErrChainExhausted
// instead of panicking. On error the state is unchanged.
func (s *State) TryEncrypt() (Header, [32]byte, error) {
	if !s.r.hasSend {
		return Header{}, [32]byte{}, ErrNoSendingChain
	}
	if s.r.sendN == math.MaxUint32 {
		return Header{}, [32]byte{}, ErrChainExhausted
	}
	h := Header{RatchetKey: s.r.ownPub, N: s.r.sendN, PN: s.r.pn}
	mk, next := ChainKDF(s.r.sendCK)
	s.r.sendCK = next
	s.r.sendN++
	return h, mk, nil
}

// Decrypt derives the message key for header h and calls open with it.
// open must authenticate and decrypt the message; the state is updated only
// if open returns nil. On any error (including open's, which is returned
// wrapped so errors.Is sees it) the state is exactly unchanged.
//
// Decrypt first looks for a stored skipped key for (h.RatchetKey, h.N). If
// h.RatchetKey is a new peer key, it performs a DH ratchet step, storing the
// skipped keys of the old receiving chain up to h.PN (or none if more than
// MaxSkippedPerMessage would be needed, as python-doubleratchet does), and
// reads 32 bytes from rand (crypto/rand if nil) for the new own ratchet key.
// It then derives skipped keys in the receiving chain up to h.N, failing with
// ErrTooManySkipped if more than MaxSkippedPerMessage are needed, or with
// ErrDuplicate if h.N was already used. After commit the oldest skipped keys
// are evicted down to MaxSkippedPerSession.
//
// The key passed to open is only valid during the call and must not be
// retained; it is wiped when Decrypt returns.
func (s *State) Decrypt(h Header, rand io.Reader, open func(mk *[32]byte) error) error {
	if open == nil {
		return errNilOpen
	}
	// The key handed to open lives in the State so that passing its address
	// to an unknown function does not move it to the heap.
	mk := &s.mk
	defer clear(mk[:])

	id := skippedID{pub: h.RatchetKey, n: h.N}
	if s.skipped.get(id, mk) {
		if err := open(mk); err != nil {
			return fmt.Errorf("doubleratchet: open: %w", err)
		}
		s.skipped.remove(id)
		return nil
	}

	t := s.r // tentative state
	var newSkipped []skippedEntry
	// fail wipes the tentative secrets (best effort) and returns err.
	fail := func(err error) error {
		clear(t.rootKey[:])
		clear(t.ownPriv[:])
		clear(t.sendCK[:])
		clear(t.recvCK[:])
		for i := range newSkipped {
			clear(newSkipped[i].mk[:])
		}
		return err
	}

	stepped := false
	if !t.hasPeer || h.RatchetKey != t.peerPub {
		if err := s.ratchetStep(&t, h, rand, &newSkipped); err != nil {
			return fail(err)
		}
		stepped = true
	}

	switch {
	case !t.hasRecv:
		return fail(ErrNoReceivingChain)
	case h.N < t.recvN:
		return fail(ErrDuplicate)
	case h.N-t.recvN > s.cfg.maxMsg:
		return fail(ErrTooManySkipped)
	case h.N == math.MaxUint32:
		return fail(ErrChainExhausted)
	}
	if h.N > t.recvN {
		if newSkipped == nil {
			newSkipped = make([]skippedEntry, 0, h.N-t.recvN)
		}
		for t.recvN < h.N {
			e := skippedEntry{id: skippedID{pub: t.peerPub, n: t.recvN}}
			e.mk, t.recvCK = ChainKDF(t.recvCK)
			newSkipped = append(newSkipped, e)
			t.recvN++
		}
	}
	*mk, t.recvCK = ChainKDF(t.recvCK)
	t.recvN++

	if err := open(mk); err != nil {
		return fail(fmt.Errorf("doubleratchet: open: %w", err))
	}

	// Commit.
	if stepped && s.r.hasPeer {
		s.prevPeers = append(s.prevPeers, s.r.peerPub)
		if len(s.prevPeers) > maxPrevPeerKeys {
			s.prevPeers = append(s.prevPeers[:0], s.prevPeers[len(s.prevPeers)-maxPrevPeerKeys:]...)
		}
	}
	s.r = t
	for _, e := range newSkipped {
		s.skipped.put(e.id, e.mk)
	}
	if len(newSkipped) > 0 {
		s.skipped.evict(s.cfg.maxSession)
	}
	return nil
}

// ratchetStep performs a DH ratchet step on the tentative state t for a
// header carrying a new peer ratchet key.
func (s *State) ratchetStep(t *ratchet, h Header, rand io.Reader, newSkipped *[]skippedEntry) error {
	if t.hasPeer {
		for i := range s.prevPeers {
			if s.prevPeers[i] == h.RatchetKey {
				return ErrDuplicate
			}
		}
	}
	// The new receiving chain starts at 0: check its limit before any
	// expensive work.
	if h.N > s.cfg.maxMsg {
		return ErrTooManySkipped
	}
	// Skipped keys of the old receiving chain. Over the limit they are not
	// computed at all (python-doubleratchet only warns) and the step
	// proceeds, so heavy message loss cannot block the session.
	if t.hasRecv && h.PN > t.recvN && h.PN-t.recvN <= s.cfg.maxMsg {
		sk := make([]skippedEntry, 0, h.PN-t.recvN)
		for t.recvN < h.PN {
			e := skippedEntry{id: skippedID{pub: t.peerPub, n: t.recvN}}
			e.mk, t.recvCK = ChainKDF(t.recvCK)
			sk = append(sk, e)
			t.recvN++
		}
		*newSkipped = sk
	}

	dhRecv, err := x25519(&t.ownPriv, &h.RatchetKey)
	if err != nil {
		return err
	}
	priv, pub, err := newRatchetKey(rand)
	if err != nil {
		return err
	}
	dhSend, err := x25519(&priv, &h.RatchetKey)
	if err != nil {
		return err
	}

	t.peerPub, t.hasPeer = h.RatchetKey, true
	t.rootKey, t.recvCK = RootKDF(s.cfg.rootInfo, t.rootKey, dhRecv)
	t.recvN, t.hasRecv = 0, true

	t.ownPriv, t.ownPub = priv, pub
	if t.hasSend {
		t.pn = t.sendN
	} else {
		t.pn = 0
	}
	t.rootKey, t.sendCK = RootKDF(s.cfg.rootInfo, t.rootKey, dhSend)
	t.sendN, t.hasSend = 0, true

	clear(dhRecv[:])
	clear(dhSend[:])
	clear(priv[:])
	return nil
}

// SendingChainLength returns the number of messages sent in the current
// sending chain (0 if there is none yet).
func (s *State) SendingChainLength() uint32 { return s.r.sendN }

// ReceivingChainLength returns the number of message keys derived in the
// current receiving chain; ok is false if there is no receiving chain yet.
func (s *State) ReceivingChainLength() (n uint32, ok bool) { return s.r.recvN, s.r.hasRecv }

// PreviousSendingChainLength returns the PN value sent in headers.
func (s *State) PreviousSendingChainLength() uint32 { return s.r.pn }

// OwnRatchetKey returns the current own ratchet public key.
func (s *State) OwnRatchetKey() [32]byte { return s.r.ownPub }

// PeerRatchetKey returns the current peer ratchet public key; ok is false
// for a passive state before its first successful Decrypt.
func (s *State) PeerRatchetKey() (key [32]byte, ok bool) { return s.r.peerPub, s.r.hasPeer }

// NumSkippedKeys returns the number of stored skipped message keys.
func (s *State) NumSkippedKeys() int { return s.skipped.len() }

// Clone returns an independent deep copy of s.
func (s *State) Clone() *State {
	c := &State{cfg: s.cfg, r: s.r, skipped: s.skipped.clone()}
	if len(s.prevPeers) > 0 {
		c.prevPeers = append([][32]byte(nil), s.prevPeers...)
	}
	return c
}
