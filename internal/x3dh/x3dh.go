// Package x3dh implements the Extended Triple Diffie-Hellman key agreement as
// python-x3dh 1.0.3 does it for OMEMO: identity key format Ed25519, hash
// SHA-256, a mandatory one-time pre key, and the XEdDSA-style signature on the
// signed pre key produced by package xeddsa.
//
// Both OMEMO versions use this package and differ only in their Config: the
// HKDF info string and the way public keys are encoded for the signature and
// for the associated data.
//
// Security properties: the initiator only performs Diffie-Hellman operations
// after the responder's signed pre key signature has been verified under the
// responder's Ed25519 identity key, so an attacker without the identity key
// cannot substitute a signed pre key. Identity keys that are invalid, of small
// order or have a small-order component are rejected, and every DH output
// that is all zeros aborts the agreement, so no contributory-behaviour attack
// can force a predictable shared secret. The shared secret depends on a fresh
// ephemeral key and on a one-time pre key (forward secrecy once the
// responder deletes that pre key).
package x3dh

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"mellium.im/omemo/internal/xeddsa"
)

// Errors returned by this package. Errors from X25519 additionally wrap
// xeddsa.ErrZeroSharedSecret and errors from identity key conversion wrap
// the xeddsa error (so errors.Is(err, xeddsa.ErrSmallOrder) works).
var (
	// ErrNoPreKey is returned by Active when the bundle has no pre keys.
	ErrNoPreKey = errors.New("x3dh: bundle contains no pre key")
	// ErrBadSignature is returned by Active when the signed pre key signature
	// does not verify under the bundle's identity key.
	ErrBadSignature = errors.New("x3dh: signed pre key signature could not be verified")
	// ErrUnknownSignedPreKey is returned by Passive when the header names a
	// signed pre key that is neither the current nor the old one.
	ErrUnknownSignedPreKey = errors.New("x3dh: unknown signed pre key")
	// ErrUnknownPreKey is returned by Passive when the header names a pre key
	// that is not (or no longer) available.
	ErrUnknownPreKey = errors.New("x3dh: unknown pre key")
	// ErrInvalidKey is returned when a peer's identity key is unusable.
	ErrInvalidKey = errors.New("x3dh: invalid identity key")
	// ErrCorruptState is returned by UnmarshalBinary for malformed input and
	// by MarshalBinary for an internally inconsistent State.
	ErrCorruptState = errors.New("x3dh: corrupt state")
	// ErrInvalidArgument is returned for a nil or incomplete Config, a nil
	// Bundle or Header, a negative count or an out-of-range pre key index.
	ErrInvalidArgument = errors.New("x3dh: invalid argument")
	// ErrIDsExhausted is returned when all 2^32-1 signed pre key or pre key
	// ids have been handed out; ids are never reused.
	ErrIDsExhausted = errors.New("x3dh: key ids exhausted")
	// ErrKeyMismatch means that one of the State's own key pairs is
	// inconsistent: a stored public key does not belong to its private key,
	// or the signed pre key signature does not verify under the identity
	// key. The State is corrupt. Passive returns it for the keys a key
	// exchange uses, VerifyKeys for any key; the error names the key by kind
	// and id, never by its bytes.
	ErrKeyMismatch = errors.New("x3dh: stored public key does not match its private key")
)

// Config selects the OMEMO flavour.
type Config struct {
	// Info is the HKDF info string: "OMEMO X3DH" for urn:xmpp:omemo:2,
	// "WhisperText" for the legacy protocol.
	Info []byte
	// EncodePublicKey encodes a Curve25519 public key for the signed pre key
	// signature: raw 32 bytes for omemo:2, 0x05‖key for legacy.
	EncodePublicKey func(curve [32]byte) []byte
	// EncodeIdentityKey encodes an Ed25519 identity key for the associated
	// data: raw 32 bytes for omemo:2, 0x05‖Ed25519ToCurve25519(ed) for
	// legacy. It is only called with keys that Ed25519ToCurve25519 accepts.
	EncodeIdentityKey func(ed [32]byte) []byte
}

func (c *Config) check() error {
	if c == nil || c.EncodePublicKey == nil || c.EncodeIdentityKey == nil {
		return fmt.Errorf("%w: nil or incomplete Config", ErrInvalidArgument)
	}
	return nil
}

// SignedPreKey is a signed pre key pair with its signature and creation time.
type SignedPreKey struct {
	ID        uint32
	Priv, Pub [32]byte
	Signature [64]byte
	Created   int64 // unix seconds
}

// PreKey is a one-time pre key pair. Hidden pre keys are not published in the
// bundle but are still usable by Passive.
type PreKey struct {
	ID        uint32
	Priv, Pub [32]byte
	Hidden    bool
}

// PublicPreKey is the public half of a pre key as published in a bundle.
type PublicPreKey struct {
	ID  uint32
	Pub [32]byte
}

// Bundle is what a device publishes so that others can initiate sessions.
type Bundle struct {
	IdentityKey           [32]byte // Ed25519
	SignedPreKeyID        uint32
	SignedPreKey          [32]byte // X25519 public
	SignedPreKeySignature [64]byte // by IdentityKey over Config.EncodePublicKey(SignedPreKey)
	PreKeys               []PublicPreKey
	// IdentityKeyCurve optionally carries the Curve25519 form of
	// IdentityKey when the caller already validated and converted it (the
	// legacy wire format publishes that form); it saves a second subgroup
	// check. It must correspond to IdentityKey.
	IdentityKeyCurve *[32]byte
}

// Header is what the initiator transmits so that the responder can complete
// the agreement.
type Header struct {
	IdentityKey              [32]byte // initiator Ed25519 identity key
	EphemeralKey             [32]byte // X25519 public
	SignedPreKeyID, PreKeyID uint32
}

// Result is the outcome of a key agreement.
type Result struct {
	SharedSecret [32]byte
	// AssociatedData is EncodeIdentityKey(IK_initiator) ‖
	// EncodeIdentityKey(IK_responder), on both sides.
	AssociatedData []byte
}

// infoPadding is the 32 0xFF bytes prepended to the DH outputs (X3DH F).
var infoPadding = func() [32]byte {
	var b [32]byte
	for i := range b {
		b[i] = 0xFF
	}
	return b
}()

// deriveResult computes SK = HKDF-SHA-256(0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 ‖ DH4,
// salt = 32 zero bytes, info = cfg.Info, L = 32) and the associated data.
func deriveResult(cfg *Config, dh *[4][32]byte, ikInitiator, ikResponder [32]byte) (Result, error) {
	var ikm [32 * 5]byte
	copy(ikm[:32], infoPadding[:])
	for i := range dh {
		copy(ikm[32*(i+1):], dh[i][:])
	}
	var salt [sha256.Size]byte
	sk, err := hkdf.Key(sha256.New, ikm[:], salt[:], string(cfg.Info), 32)
	clear(ikm[:])
	clear(dh[:])
	if err != nil {
		return Result{}, fmt.Errorf("x3dh: hkdf: %w", err)
	}
	var res Result
	copy(res.SharedSecret[:], sk)
	clear(sk)
	a := cfg.EncodeIdentityKey(ikInitiator)
	b := cfg.EncodeIdentityKey(ikResponder)
	res.AssociatedData = make([]byte, 0, len(a)+len(b))
	res.AssociatedData = append(append(res.AssociatedData, a...), b...)
	return res, nil
}

func dh(label string, priv, pub [32]byte) ([32]byte, error) {
	out, err := xeddsa.X25519(priv, pub)
	if err != nil {
		return out, fmt.Errorf("x3dh: %s: %w", label, err)
	}
	return out, nil
}

// identityCurve converts a peer's Ed25519 identity key for X25519.
func identityCurve(ed [32]byte) ([32]byte, error) {
	c, err := xeddsa.Ed25519ToCurve25519(ed)
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return c, nil
}

// checkBundle performs every check that must pass before any DH: a pre key is
// present, the signed pre key signature verifies, and the identity key is a
// valid prime-order point. It returns the identity key in Curve25519 form.
func checkBundle(cfg *Config, b *Bundle) ([32]byte, error) {
	if err := cfg.check(); err != nil {
		return [32]byte{}, err
	}
	if b == nil {
		return [32]byte{}, fmt.Errorf("%w: nil Bundle", ErrInvalidArgument)
	}
	if len(b.PreKeys) == 0 {
		return [32]byte{}, ErrNoPreKey
	}
	// The identity key is validated (and converted) first, so that an
	// invalid key is reported as such rather than as a bad signature.
	var ik [32]byte
	if b.IdentityKeyCurve != nil {
		ik = *b.IdentityKeyCurve
	} else {
		var err error
		if ik, err = identityCurve(b.IdentityKey); err != nil {
			return [32]byte{}, err
		}
	}
	if !xeddsa.Verify(b.IdentityKey, cfg.EncodePublicKey(b.SignedPreKey), b.SignedPreKeySignature) {
		return [32]byte{}, ErrBadSignature
	}
	return ik, nil
}

// Active performs the initiator side of X3DH against the bundle b. It fails
// with ErrNoPreKey if b has no pre keys and with ErrBadSignature if the signed
// pre key signature does not verify, both before any DH and before reading
// from rand. It then reads the 32-byte ephemeral private key from rand and
// picks one of b.PreKeys uniformly at random: it reads 4-byte big-endian
// values v from rand until v < 2^32 - (2^32 mod n) and uses index v mod n
// (rejection sampling, no modulo bias). A pre key with id 0 is left out of
// the choice (n counts the others) unless it is the only one: some clients
// cannot use it (see choosePreKey). If rand is nil, crypto/rand is used.
//
// identityPriv is the initiator's private identity scalar; it is clamped
// before use (a no-op for xeddsa.PrivFromSeed output).
func Active(cfg *Config, identityPriv [32]byte, b *Bundle, rand io.Reader) (Result, Header, error) {
	ikB, err := checkBundle(cfg, b)
	if err != nil {
		return Result{}, Header{}, err
	}
	rand = randOrDefault(rand)
	var ek [32]byte
	if _, err := io.ReadFull(rand, ek[:]); err != nil {
		return Result{}, Header{}, fmt.Errorf("x3dh: reading ephemeral key: %w", err)
	}
	defer clear(ek[:])
	idx, err := choosePreKey(rand, b.PreKeys)
	if err != nil {
		return Result{}, Header{}, err
	}
	return active(cfg, identityPriv, b, ikB, ek, idx)
}

// choosePreKey returns the index of a pre key of pks chosen uniformly at
// random, leaving out the pre key with id 0 unless it is the only one.
//
// Id 0 is valid, and converse.js publishes pre keys numbered from 0, but
// libsignal-protocol-javascript and converse's libomemo.js (2.0.2) test the
// received id for truth ("preKeyId ? load it : none"): a key exchange that
// uses pre key 0 is processed without it and fails with "Bad MAC", so the
// first message to a converse device would be lost once in a hundred times.
// Avoiding the id costs nothing: the choice stays uniform among the others.
func choosePreKey(rand io.Reader, pks []PublicPreKey) (int, error) {
	// A received bundle may list id 0 more than once: leave out every copy.
	others := len(pks) - countZeroIDs(pks)
	if others == 0 {
		return uniformIndex(rand, len(pks))
	}
	k, err := uniformIndex(rand, others)
	if err != nil {
		return 0, err
	}
	for i, pk := range pks {
		if pk.ID == 0 {
			continue
		}
		if k == 0 {
			return i, nil
		}
		k--
	}
	panic("unreachable")
}

func countZeroIDs(pks []PublicPreKey) int {
	n := 0
	for _, pk := range pks {
		if pk.ID == 0 {
			n++
		}
	}
	return n
}

// ActiveWith is the deterministic core of Active: it performs the same checks
// and uses the given ephemeral private key and b.PreKeys[preKeyIndex]. It
// exists for known-answer tests; protocol code must use Active so that the
// ephemeral key is fresh.
func ActiveWith(cfg *Config, identityPriv [32]byte, b *Bundle, ephemeralPriv [32]byte, preKeyIndex int) (Result, Header, error) {
	ikB, err := checkBundle(cfg, b)
	if err != nil {
		return Result{}, Header{}, err
	}
	if preKeyIndex < 0 || preKeyIndex >= len(b.PreKeys) {
		return Result{}, Header{}, fmt.Errorf("%w: pre key index %d out of range", ErrInvalidArgument, preKeyIndex)
	}
	return active(cfg, identityPriv, b, ikB, ephemeralPriv, preKeyIndex)
}

func active(cfg *Config, identityPriv [32]byte, b *Bundle, ikB [32]byte, ek [32]byte, idx int) (Result, Header, error) {
	ikPriv := xeddsa.Clamp(identityPriv)
	defer clear(ikPriv[:])
	opk := b.PreKeys[idx]

	var dhs [4][32]byte
	var err error
	if dhs[0], err = dh("DH1", ikPriv, b.SignedPreKey); err != nil {
		return Result{}, Header{}, err
	}
	if dhs[1], err = dh("DH2", ek, ikB); err != nil {
		return Result{}, Header{}, err
	}
	if dhs[2], err = dh("DH3", ek, b.SignedPreKey); err != nil {
		return Result{}, Header{}, err
	}
	if dhs[3], err = dh("DH4", ek, opk.Pub); err != nil {
		return Result{}, Header{}, err
	}
	ikA := xeddsa.Ed25519PubFromPriv(ikPriv)
	res, err := deriveResult(cfg, &dhs, ikA, b.IdentityKey)
	if err != nil {
		return Result{}, Header{}, err
	}
	h := Header{
		IdentityKey:    ikA,
		EphemeralKey:   xeddsa.Curve25519PubFromPriv(ek),
		SignedPreKeyID: b.SignedPreKeyID,
		PreKeyID:       opk.ID,
	}
	return res, h, nil
}

// uniformIndex returns a uniformly random integer in [0, n) using rejection
// sampling on 4-byte big-endian values read from rand.
func uniformIndex(rand io.Reader, n int) (int, error) {
	if n <= 0 || uint64(n) > 1<<32 {
		return 0, fmt.Errorf("%w: cannot choose among %d pre keys", ErrInvalidArgument, n)
	}
	const space = uint64(1) << 32
	limit := space - space%uint64(n)
	var buf [4]byte
	for {
		if _, err := io.ReadFull(rand, buf[:]); err != nil {
			return 0, fmt.Errorf("x3dh: choosing pre key: %w", err)
		}
		v := uint64(binary.BigEndian.Uint32(buf[:]))
		if v < limit {
			return int(v % uint64(n)), nil
		}
	}
}

// Passive performs the responder side of X3DH for the header h. The signed
// pre key is looked up by id among the current and the old one
// (ErrUnknownSignedPreKey), the pre key by id among visible and hidden ones
// (ErrUnknownPreKey). It returns a copy of the signed pre key used, whose
// private key becomes the responder's first ratchet key.
//
// Before any DH, Passive checks that the stored public keys of the signed
// pre key and the pre key it uses belong to their private keys (two
// fixed-base scalar multiplications): if the State is corrupt, the peer
// computed its secret with the published public key and the two sides
// cannot agree, so Passive fails with ErrKeyMismatch rather than derive a
// secret that silently disagrees with the peer's.
//
// Passive never modifies s: deleting or hiding the consumed pre key, which is
// required for forward secrecy and to stop replays from building new
// sessions, is the caller's responsibility.
func (s *State) Passive(cfg *Config, h *Header) (Result, *SignedPreKey, error) {
	if err := cfg.check(); err != nil {
		return Result{}, nil, err
	}
	if h == nil {
		return Result{}, nil, fmt.Errorf("%w: nil Header", ErrInvalidArgument)
	}
	var spk *SignedPreKey
	switch {
	case s.SignedPreKey.ID == h.SignedPreKeyID:
		spk = &s.SignedPreKey
	case s.OldSignedPreKey != nil && s.OldSignedPreKey.ID == h.SignedPreKeyID:
		spk = s.OldSignedPreKey
	default:
		return Result{}, nil, fmt.Errorf("%w: id %d", ErrUnknownSignedPreKey, h.SignedPreKeyID)
	}
	pk, ok := s.PreKeys[h.PreKeyID]
	if !ok || pk == nil {
		return Result{}, nil, fmt.Errorf("%w: id %d", ErrUnknownPreKey, h.PreKeyID)
	}
	ikA, err := identityCurve(h.IdentityKey)
	if err != nil {
		return Result{}, nil, err
	}
	if err := checkPair("signed pre key", spk.ID, &spk.Priv, &spk.Pub); err != nil {
		return Result{}, nil, err
	}
	if err := checkPair("pre key", pk.ID, &pk.Priv, &pk.Pub); err != nil {
		return Result{}, nil, err
	}

	var dhs [4][32]byte
	if dhs[0], err = dh("DH1", spk.Priv, ikA); err != nil {
		return Result{}, nil, err
	}
	if dhs[1], err = dh("DH2", s.IdentityPriv, h.EphemeralKey); err != nil {
		return Result{}, nil, err
	}
	if dhs[2], err = dh("DH3", spk.Priv, h.EphemeralKey); err != nil {
		return Result{}, nil, err
	}
	if dhs[3], err = dh("DH4", pk.Priv, h.EphemeralKey); err != nil {
		return Result{}, nil, err
	}
	res, err := deriveResult(cfg, &dhs, h.IdentityKey, s.IdentityPub)
	if err != nil {
		return Result{}, nil, err
	}
	used := *spk
	return res, &used, nil
}
