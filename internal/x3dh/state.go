package x3dh

import (
	cryptorand "crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"mellium.im/omemo/internal/xeddsa"
)

// State is the responder-side X3DH state of one device: the identity key, the
// current and previous signed pre key and the one-time pre keys. It holds
// private keys; persist it only in protected storage. A State is not safe for
// concurrent use.
type State struct {
	IdentityPriv    [32]byte // clamped scalar (xeddsa.PrivFromSeed(seed))
	IdentityPub     [32]byte // Ed25519 public key (xeddsa.Ed25519PubFromPriv)
	SignedPreKey    SignedPreKey
	OldSignedPreKey *SignedPreKey // the previous one, kept for one more period; nil if none
	PreKeys         map[uint32]*PreKey
	// NextSignedPreKeyID and NextPreKeyID are the next ids to hand out. Ids
	// start at 1 and are never reused; 0 means the id space is exhausted.
	NextSignedPreKeyID uint32
	NextPreKeyID       uint32
}

func randOrDefault(r io.Reader) io.Reader {
	if r == nil {
		return cryptorand.Reader
	}
	return r
}

// NewState creates a State for the given identity private key (clamped first;
// a no-op for xeddsa.PrivFromSeed output), with a signed pre key (id 1) created
// at now and numPreKeys pre keys (ids 1..numPreKeys). Randomness is read from
// rand (crypto/rand if nil) in this order: signed pre key private key (32
// bytes), signature nonce (64 bytes), then 32 bytes per pre key.
func NewState(cfg *Config, identityPriv [32]byte, numPreKeys int, now time.Time, rand io.Reader) (*State, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if numPreKeys < 0 {
		return nil, fmt.Errorf("%w: negative pre key count %d", ErrInvalidArgument, numPreKeys)
	}
	priv := xeddsa.Clamp(identityPriv)
	s := &State{
		IdentityPriv:       priv,
		IdentityPub:        xeddsa.Ed25519PubFromPriv(priv),
		PreKeys:            make(map[uint32]*PreKey, numPreKeys),
		NextSignedPreKeyID: 1,
		NextPreKeyID:       1,
	}
	rand = randOrDefault(rand)
	spk, err := s.newSignedPreKey(cfg, now, rand)
	if err != nil {
		return nil, err
	}
	s.SignedPreKey = spk
	if err := s.GeneratePreKeys(numPreKeys, rand); err != nil {
		return nil, err
	}
	return s, nil
}

// newSignedPreKey creates (but does not install) the next signed pre key and
// advances NextSignedPreKeyID only on success.
func (s *State) newSignedPreKey(cfg *Config, now time.Time, rand io.Reader) (SignedPreKey, error) {
	id := s.NextSignedPreKeyID
	if id == 0 {
		return SignedPreKey{}, fmt.Errorf("%w: signed pre keys", ErrIDsExhausted)
	}
	spk := SignedPreKey{ID: id, Created: now.Unix()}
	if _, err := io.ReadFull(rand, spk.Priv[:]); err != nil {
		return SignedPreKey{}, fmt.Errorf("x3dh: reading signed pre key: %w", err)
	}
	spk.Pub = xeddsa.Curve25519PubFromPriv(spk.Priv)
	sig, err := xeddsa.SignRandom(s.IdentityPriv, cfg.EncodePublicKey(spk.Pub), rand)
	if err != nil {
		return SignedPreKey{}, fmt.Errorf("x3dh: signing signed pre key: %w", err)
	}
	spk.Signature = sig
	s.NextSignedPreKeyID = nextID(id)
	return spk, nil
}

// nextID returns id+1, or 0 (exhausted) after math.MaxUint32.
func nextID(id uint32) uint32 {
	if id == math.MaxUint32 {
		return 0
	}
	return id + 1
}

// GeneratePreKeys adds n visible pre keys with fresh ids, each with 32 bytes
// from rand (crypto/rand if nil) as X25519 private key. On error, the pre
// keys generated so far are kept.
func (s *State) GeneratePreKeys(n int, rand io.Reader) error {
	if n < 0 {
		return fmt.Errorf("%w: negative pre key count %d", ErrInvalidArgument, n)
	}
	rand = randOrDefault(rand)
	if s.PreKeys == nil {
		s.PreKeys = make(map[uint32]*PreKey, n)
	}
	for range n {
		id := s.NextPreKeyID
		if id == 0 {
			return fmt.Errorf("%w: pre keys", ErrIDsExhausted)
		}
		pk := &PreKey{ID: id}
		if _, err := io.ReadFull(rand, pk.Priv[:]); err != nil {
			return fmt.Errorf("x3dh: reading pre key: %w", err)
		}
		pk.Pub = xeddsa.Curve25519PubFromPriv(pk.Priv)
		s.PreKeys[id] = pk
		s.NextPreKeyID = nextID(id)
	}
	return nil
}

// RotateSignedPreKey replaces the signed pre key by a new one created at now
// (32 bytes of private key, then a 64-byte signature nonce, from rand, or
// crypto/rand if nil). The current one becomes the old one and the previous
// old one is dropped, so exactly one old signed pre key stays usable for
// sessions initiated against the previously published bundle. On error the
// State is unchanged.
func (s *State) RotateSignedPreKey(cfg *Config, now time.Time, rand io.Reader) error {
	if err := cfg.check(); err != nil {
		return err
	}
	spk, err := s.newSignedPreKey(cfg, now, randOrDefault(rand))
	if err != nil {
		return err
	}
	old := s.SignedPreKey
	s.OldSignedPreKey = &old
	s.SignedPreKey = spk
	return nil
}

// SignedPreKeyAge returns the time since the current signed pre key was
// created, in whole seconds (like python-x3dh's signed_pre_key_age).
func (s *State) SignedPreKeyAge(now time.Time) time.Duration {
	return time.Unix(now.Unix(), 0).Sub(time.Unix(s.SignedPreKey.Created, 0))
}

// HidePreKey removes the pre key from the bundle while keeping it usable by
// Passive. It reports false if the pre key does not exist or is already
// hidden.
func (s *State) HidePreKey(id uint32) bool {
	pk, ok := s.PreKeys[id]
	if !ok || pk == nil || pk.Hidden {
		return false
	}
	pk.Hidden = true
	return true
}

// DeletePreKey deletes a visible or hidden pre key. It reports false if the
// pre key does not exist.
func (s *State) DeletePreKey(id uint32) bool {
	if _, ok := s.PreKeys[id]; !ok {
		return false
	}
	delete(s.PreKeys, id)
	return true
}

// DeleteHiddenPreKeys deletes all hidden pre keys and returns how many were
// deleted.
func (s *State) DeleteHiddenPreKeys() int {
	n := 0
	for id, pk := range s.PreKeys {
		if pk == nil || pk.Hidden {
			delete(s.PreKeys, id)
			n++
		}
	}
	return n
}

// NumVisiblePreKeys returns the number of pre keys that Bundle publishes.
func (s *State) NumVisiblePreKeys() int {
	n := 0
	for _, pk := range s.PreKeys {
		if pk != nil && !pk.Hidden {
			n++
		}
	}
	return n
}

// Bundle returns the public bundle: identity key, current signed pre key with
// its signature and the visible pre keys sorted by id. Neither the old signed
// pre key nor hidden pre keys are published.
func (s *State) Bundle() Bundle {
	b := Bundle{
		IdentityKey:           s.IdentityPub,
		SignedPreKeyID:        s.SignedPreKey.ID,
		SignedPreKey:          s.SignedPreKey.Pub,
		SignedPreKeySignature: s.SignedPreKey.Signature,
		PreKeys:               make([]PublicPreKey, 0, len(s.PreKeys)),
	}
	for _, pk := range s.PreKeys {
		if pk != nil && !pk.Hidden {
			b.PreKeys = append(b.PreKeys, PublicPreKey{ID: pk.ID, Pub: pk.Pub})
		}
	}
	slices.SortFunc(b.PreKeys, func(x, y PublicPreKey) int {
		switch {
		case x.ID < y.ID:
			return -1
		case x.ID > y.ID:
			return 1
		}
		return 0
	})
	return b
}

// Binary state encoding, version 1 (all integers big-endian):
//
//	u8  version (= 1)
//	32  identity private key (clamped)
//	u32 next signed pre key id
//	u32 next pre key id
//	spk current signed pre key
//	u8  1 if an old signed pre key follows, else 0
//	spk old signed pre key (only if the flag is 1)
//	u32 number of pre keys n
//	n × (u32 id, u8 flags (bit 0 = hidden), 32 private key), ascending ids
//
// where spk = u32 id, 32 private key, 64 signature, i64 created (unix
// seconds). Public keys are not stored; they are recomputed from the private
// keys, so a decoded State is always internally consistent.
const (
	stateVersion  = 1
	headerLen     = 1 + 32 + 4 + 4
	spkLen        = 4 + 32 + 64 + 8
	preKeyLen     = 4 + 1 + 32
	flagHidden    = 1
	minEncodedLen = headerLen + spkLen + 1 + 4
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptState}, args...)...)
}

// idIssued reports whether id could have been handed out given next.
func idIssued(id, next uint32) bool {
	return id != 0 && (next == 0 || id < next)
}

// validate checks the invariants that MarshalBinary and UnmarshalBinary
// guarantee, and returns the pre key ids in ascending order.
func (s *State) validate() ([]uint32, error) {
	if xeddsa.Clamp(s.IdentityPriv) != s.IdentityPriv {
		return nil, corrupt("identity private key not clamped")
	}
	if !idIssued(s.SignedPreKey.ID, s.NextSignedPreKeyID) {
		return nil, corrupt("signed pre key id %d not below next id %d", s.SignedPreKey.ID, s.NextSignedPreKeyID)
	}
	if o := s.OldSignedPreKey; o != nil {
		if !idIssued(o.ID, s.NextSignedPreKeyID) || o.ID == s.SignedPreKey.ID {
			return nil, corrupt("bad old signed pre key id %d", o.ID)
		}
	}
	ids := make([]uint32, 0, len(s.PreKeys))
	for id, pk := range s.PreKeys {
		if pk == nil || pk.ID != id || !idIssued(id, s.NextPreKeyID) {
			return nil, corrupt("bad pre key entry %d", id)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

func appendSPK(b []byte, spk *SignedPreKey) []byte {
	b = binary.BigEndian.AppendUint32(b, spk.ID)
	b = append(b, spk.Priv[:]...)
	b = append(b, spk.Signature[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(spk.Created))
}

// MarshalBinary encodes the State, including hidden pre keys and the old
// signed pre key, in a compact versioned binary format. The output contains
// private keys. It fails with ErrCorruptState if the State violates its
// invariants (unclamped identity key, inconsistent or unissued ids).
func (s *State) MarshalBinary() ([]byte, error) {
	ids, err := s.validate()
	if err != nil {
		return nil, err
	}
	if uint64(len(ids)) > math.MaxUint32 {
		return nil, corrupt("too many pre keys")
	}
	n := minEncodedLen + len(ids)*preKeyLen
	if s.OldSignedPreKey != nil {
		n += spkLen
	}
	b := make([]byte, 0, n)
	b = append(b, stateVersion)
	b = append(b, s.IdentityPriv[:]...)
	b = binary.BigEndian.AppendUint32(b, s.NextSignedPreKeyID)
	b = binary.BigEndian.AppendUint32(b, s.NextPreKeyID)
	b = appendSPK(b, &s.SignedPreKey)
	if s.OldSignedPreKey != nil {
		b = append(b, 1)
		b = appendSPK(b, s.OldSignedPreKey)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for _, id := range ids {
		pk := s.PreKeys[id]
		var flags byte
		if pk.Hidden {
			flags |= flagHidden
		}
		b = binary.BigEndian.AppendUint32(b, id)
		b = append(b, flags)
		b = append(b, pk.Priv[:]...)
	}
	return b, nil
}

type decoder struct {
	b []byte
}

func (d *decoder) take(n int) []byte {
	if len(d.b) < n {
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) spk() SignedPreKey {
	var spk SignedPreKey
	spk.ID = binary.BigEndian.Uint32(d.take(4))
	copy(spk.Priv[:], d.take(32))
	copy(spk.Signature[:], d.take(64))
	spk.Created = int64(binary.BigEndian.Uint64(d.take(8)))
	spk.Pub = xeddsa.Curve25519PubFromPriv(spk.Priv)
	return spk
}

// UnmarshalBinary decodes a State produced by MarshalBinary. It never panics;
// on malformed data it returns an error wrapping ErrCorruptState and leaves s
// unchanged. Public keys are recomputed from the private keys.
func (s *State) UnmarshalBinary(data []byte) error {
	if len(data) < minEncodedLen {
		return corrupt("truncated (%d bytes)", len(data))
	}
	if data[0] != stateVersion {
		return corrupt("unsupported version %d", data[0])
	}
	d := decoder{b: data[1:]}
	var ns State
	copy(ns.IdentityPriv[:], d.take(32))
	ns.NextSignedPreKeyID = binary.BigEndian.Uint32(d.take(4))
	ns.NextPreKeyID = binary.BigEndian.Uint32(d.take(4))
	ns.SignedPreKey = d.spk()
	switch d.take(1)[0] {
	case 0:
	case 1:
		if len(d.b) < spkLen+4 {
			return corrupt("truncated old signed pre key")
		}
		old := d.spk()
		ns.OldSignedPreKey = &old
	default:
		return corrupt("bad old signed pre key flag")
	}
	if len(d.b) < 4 {
		return corrupt("truncated pre key count")
	}
	count := binary.BigEndian.Uint32(d.take(4))
	if uint64(len(d.b)) != uint64(count)*preKeyLen {
		return corrupt("%d pre keys do not match %d remaining bytes", count, len(d.b))
	}
	ns.PreKeys = make(map[uint32]*PreKey, count)
	for range count {
		pk := &PreKey{ID: binary.BigEndian.Uint32(d.take(4))}
		flags := d.take(1)[0]
		if flags&^flagHidden != 0 {
			return corrupt("bad pre key flags %#x", flags)
		}
		pk.Hidden = flags&flagHidden != 0
		if _, dup := ns.PreKeys[pk.ID]; dup {
			return corrupt("duplicate pre key id %d", pk.ID)
		}
		copy(pk.Priv[:], d.take(32))
		ns.PreKeys[pk.ID] = pk
	}
	if _, err := ns.validate(); err != nil {
		return err
	}
	for _, pk := range ns.PreKeys {
		pk.Pub = xeddsa.Curve25519PubFromPriv(pk.Priv)
	}
	ns.IdentityPub = xeddsa.Ed25519PubFromPriv(ns.IdentityPriv)
	*s = ns
	return nil
}
