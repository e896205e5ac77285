package x3dh

import (
	cryptorand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"time"

	"mellium.im/omemo/internal/xeddsa"
)

// State is the responder-side X3DH state of one device: the identity key, the
// current and previous signed pre key and the one-time pre keys. It holds
// private keys; persist it only in protected storage. A State is not safe for
// concurrent use.
//
// Every public key in a State belongs to its private key: the functions of
// this package derive it once, when the key is created, and keep it from
// then on, in memory and in the encoding, so that loading a State performs
// no scalar multiplication. Code that fills in the fields by hand must keep
// this invariant; Passive and VerifyKeys detect a violation (ErrKeyMismatch).
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

// DeletePreKey deletes a visible or hidden pre key and overwrites its private
// key. It reports false if the pre key does not exist.
func (s *State) DeletePreKey(id uint32) bool {
	pk, ok := s.PreKeys[id]
	if !ok {
		return false
	}
	wipe(pk)
	delete(s.PreKeys, id)
	return true
}

// DeleteHiddenPreKeys deletes all hidden pre keys, overwriting their private
// keys, and returns how many were deleted.
func (s *State) DeleteHiddenPreKeys() int {
	n := 0
	for id, pk := range s.PreKeys {
		if pk == nil || pk.Hidden {
			wipe(pk)
			delete(s.PreKeys, id)
			n++
		}
	}
	return n
}

// wipe overwrites the private key of a deleted pre key, which forward
// secrecy requires to be gone. UnmarshalBinary allocates all pre keys of a
// State together, so a deleted one stays in memory as long as any pre key
// loaded with it is in use.
func wipe(pk *PreKey) {
	if pk != nil {
		clear(pk.Priv[:])
	}
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
// pre key nor hidden pre keys are published. It returns the stored public
// keys and recomputes nothing; VerifyKeys checks them.
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

// Binary state encoding. All integers are big-endian; the first byte is the
// version, so the versions are told apart without ambiguity.
//
// Version 2 (written by MarshalBinary) stores every public key next to its
// private key and ends with a checksum:
//
//	u8  version (= 2)
//	32  identity private key (clamped)
//	32  identity public key (Ed25519)
//	u32 next signed pre key id
//	u32 next pre key id
//	spk current signed pre key
//	u8  1 if an old signed pre key follows, else 0
//	spk old signed pre key (only if the flag is 1)
//	u32 number of pre keys n
//	n × (u32 id, u8 flags (bit 0 = hidden), 32 private key, 32 public key),
//	    strictly ascending ids
//	32  SHA-256 of all the preceding bytes
//
// where spk = u32 id, 32 private key, 32 public key, 64 signature, i64
// created (unix seconds). The encoding is canonical: a State has exactly one
// version-2 encoding, and decoding accepts nothing else.
//
// Version 1 (written before public keys were stored, still read) is the same
// without the identity public key, without the public keys in spk and in the
// pre key entries, and without the checksum; its pre key entries are in
// ascending order but decoding accepts any order. Its public keys are
// recomputed on decoding, one scalar multiplication per key.
const (
	stateVersion = 2

	headerLen     = 1 + 32 + 32 + 4 + 4
	spkLen        = 4 + 32 + 32 + 64 + 8
	preKeyLen     = 4 + 1 + 32 + 32
	checksumLen   = sha256.Size
	minEncodedLen = headerLen + spkLen + 1 + 4 + checksumLen

	v1Version       = 1
	v1HeaderLen     = 1 + 32 + 4 + 4
	v1SPKLen        = 4 + 32 + 64 + 8
	v1PreKeyLen     = 4 + 1 + 32
	v1MinEncodedLen = v1HeaderLen + v1SPKLen + 1 + 4

	flagHidden = 1
)

// Integrity of the stored public keys.
//
// The public keys are derived from the private keys exactly once, when a key
// is generated (NewState, GeneratePreKeys, RotateSignedPreKey) or when a
// version-1 encoding is decoded, and from then on they travel with their
// private keys: in the same struct in memory and in the same record in
// storage. Decoding version 2 performs no scalar multiplication. A stored
// public key that does not belong to its private key would be published in
// the bundle, and every key exchange built on it would fail, so it is
// guarded as follows.
//
//   - Load (UnmarshalBinary): the SHA-256 checksum over the whole record
//     catches every change to the stored bytes, whether corruption of the
//     medium, a torn write or a tool that edited the record, before the
//     State exists; no bundle is ever built from such a record. It costs a
//     hash over a few kilobytes (microseconds) instead of a scalar
//     multiplication per key (milliseconds). Since the only writer of the
//     format is MarshalBinary, which encodes what the functions of this
//     package derived, a record whose checksum matches holds consistent key
//     pairs.
//   - Use (Passive): the pre key and the signed pre key that a key exchange
//     names are checked against their private keys, two fixed-base scalar
//     multiplications next to the four X25519 operations of the exchange. A
//     mismatch that got past the checksum (a State filled in by hand, memory
//     corruption, a writer that computed the checksum over keys it never
//     derived) fails that exchange with ErrKeyMismatch instead of producing
//     a secret that silently disagrees with the peer's.
//   - Publishing (VerifyKeys): a caller about to upload a bundle can check
//     every key pair and the signed pre key signature, one scalar
//     multiplication per key. Bundle itself does not, because it is also
//     called just to compare the local bundle with the published one, which
//     happens at every start.
//
// The checksum is not a MAC: whoever can write the store can also replace
// the private keys, and no check of the State's own content protects
// against that.

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptState}, args...)...)
}

// idIssued reports whether id could have been handed out given next.
func idIssued(id, next uint32) bool {
	return id != 0 && (next == 0 || id < next)
}

// validateSignedPreKeys checks the identity key and the signed pre key ids.
func (s *State) validateSignedPreKeys() error {
	if xeddsa.Clamp(s.IdentityPriv) != s.IdentityPriv {
		return corrupt("identity private key not clamped")
	}
	if !idIssued(s.SignedPreKey.ID, s.NextSignedPreKeyID) {
		return corrupt("signed pre key id %d not below next id %d", s.SignedPreKey.ID, s.NextSignedPreKeyID)
	}
	if o := s.OldSignedPreKey; o != nil {
		if !idIssued(o.ID, s.NextSignedPreKeyID) || o.ID == s.SignedPreKey.ID {
			return corrupt("bad old signed pre key id %d", o.ID)
		}
	}
	return nil
}

// validate checks the invariants that MarshalBinary and UnmarshalBinary
// guarantee, except the consistency of the key pairs (see VerifyKeys), and
// returns the pre key ids in ascending order.
func (s *State) validate() ([]uint32, error) {
	if err := s.validateSignedPreKeys(); err != nil {
		return nil, err
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
	b = append(b, spk.Pub[:]...)
	b = append(b, spk.Signature[:]...)
	return binary.BigEndian.AppendUint64(b, uint64(spk.Created))
}

// MarshalBinary encodes the State, including hidden pre keys and the old
// signed pre key, in the version-2 format: private keys with their public
// keys, and a checksum. The output contains private keys. It fails with
// ErrCorruptState if the State violates its invariants (unclamped identity
// key, inconsistent or unissued ids). It does not check that the public keys
// belong to the private keys: the functions of this package only create
// consistent key pairs, and VerifyKeys checks them.
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
	b = append(b, s.IdentityPub[:]...)
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
		b = append(b, pk.Pub[:]...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...), nil
}

// decoder reads fields from a byte slice. Reads past the end yield zeros
// and set short, so that a length error can never become a panic.
type decoder struct {
	b     []byte
	short bool
	pubs  bool // the encoding stores public keys (version 2)
}

var zeros [64]byte

func (d *decoder) take(n int) []byte {
	if len(d.b) < n {
		d.short, d.b = true, nil
		return zeros[:n]
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u8() byte          { return d.take(1)[0] }
func (d *decoder) u32() uint32       { return binary.BigEndian.Uint32(d.take(4)) }
func (d *decoder) key(dst *[32]byte) { copy(dst[:], d.take(32)) }
func (d *decoder) pub(dst *[32]byte) {
	if d.pubs {
		d.key(dst)
	}
}

func (d *decoder) spk() SignedPreKey {
	var spk SignedPreKey
	spk.ID = d.u32()
	d.key(&spk.Priv)
	d.pub(&spk.Pub)
	copy(spk.Signature[:], d.take(64))
	spk.Created = int64(binary.BigEndian.Uint64(d.take(8)))
	return spk
}

// UnmarshalBinary decodes a State produced by MarshalBinary, in the current
// version-2 format or in the version-1 format of earlier releases. It never
// panics; on malformed data it returns an error wrapping ErrCorruptState and
// leaves s unchanged.
//
// Version 2 is decoded without any scalar multiplication: the public keys
// are taken from the record, whose checksum must match (see the integrity
// notes above the format constants). Version 1 has no public keys; they are
// recomputed from the private keys, one scalar multiplication per key.
func (s *State) UnmarshalBinary(data []byte) error {
	if len(data) == 0 {
		return corrupt("empty")
	}
	var d decoder
	keyLen := preKeyLen
	switch data[0] {
	case stateVersion:
		if len(data) < minEncodedLen {
			return corrupt("truncated (%d bytes)", len(data))
		}
		body, sum := data[:len(data)-checksumLen], data[len(data)-checksumLen:]
		if want := sha256.Sum256(body); [checksumLen]byte(sum) != want {
			return corrupt("checksum mismatch")
		}
		d = decoder{b: body[1:], pubs: true}
	case v1Version:
		if len(data) < v1MinEncodedLen {
			return corrupt("truncated (%d bytes)", len(data))
		}
		d = decoder{b: data[1:]}
		keyLen = v1PreKeyLen
	default:
		return corrupt("unsupported version %d", data[0])
	}

	var ns State
	d.key(&ns.IdentityPriv)
	d.pub(&ns.IdentityPub)
	ns.NextSignedPreKeyID = d.u32()
	ns.NextPreKeyID = d.u32()
	ns.SignedPreKey = d.spk()
	switch d.u8() {
	case 0:
	case 1:
		old := d.spk()
		ns.OldSignedPreKey = &old
	default:
		return corrupt("bad old signed pre key flag")
	}
	count := d.u32()
	if d.short {
		return corrupt("truncated")
	}
	if uint64(len(d.b)) != uint64(count)*uint64(keyLen) {
		return corrupt("%d pre keys do not match %d remaining bytes", count, len(d.b))
	}
	if err := ns.validateSignedPreKeys(); err != nil {
		return err
	}
	// count is bounded by the length of data here. One allocation holds all
	// pre keys.
	keys := make([]PreKey, count)
	ns.PreKeys = make(map[uint32]*PreKey, count)
	var prev uint32
	for i := range keys {
		pk := &keys[i]
		pk.ID = d.u32()
		flags := d.u8()
		if flags&^flagHidden != 0 {
			return corrupt("bad pre key flags %#x", flags)
		}
		pk.Hidden = flags&flagHidden != 0
		if !idIssued(pk.ID, ns.NextPreKeyID) {
			return corrupt("bad pre key entry %d", pk.ID)
		}
		if d.pubs {
			// Version 2 is canonical: strictly ascending ids, hence no
			// duplicates.
			if i > 0 && pk.ID <= prev {
				return corrupt("pre key id %d not above %d", pk.ID, prev)
			}
			prev = pk.ID
		} else if _, dup := ns.PreKeys[pk.ID]; dup {
			return corrupt("duplicate pre key id %d", pk.ID)
		}
		d.key(&pk.Priv)
		d.pub(&pk.Pub)
		ns.PreKeys[pk.ID] = pk
	}
	if !d.pubs {
		ns.IdentityPub = xeddsa.Ed25519PubFromPriv(ns.IdentityPriv)
		ns.SignedPreKey.Pub = xeddsa.Curve25519PubFromPriv(ns.SignedPreKey.Priv)
		if o := ns.OldSignedPreKey; o != nil {
			o.Pub = xeddsa.Curve25519PubFromPriv(o.Priv)
		}
		for i := range keys {
			keys[i].Pub = xeddsa.Curve25519PubFromPriv(keys[i].Priv)
		}
	}
	*s = ns
	return nil
}

// keyMismatch reports a key pair of the given kind and id that failed a
// check. It names the key, never its bytes.
func keyMismatch(kind string, id uint32) error {
	return fmt.Errorf("%w: %s %d", ErrKeyMismatch, kind, id)
}

// checkPair checks that pub is the X25519 public key of priv: one fixed-base
// scalar multiplication.
func checkPair(kind string, id uint32, priv, pub *[32]byte) error {
	if xeddsa.Curve25519PubFromPriv(*priv) != *pub {
		return keyMismatch(kind, id)
	}
	return nil
}

// VerifyKeys checks every key pair of s by recomputing its public key from
// its private key: the identity key, the current and old signed pre key and
// all pre keys, visible and hidden. It also verifies the current signed pre
// key's signature under the identity key, as a peer will. So a State that
// passes publishes a usable bundle. The cost is one scalar multiplication
// per key (about 100 for a typical State) and one signature verification:
// call it before publishing, not on every load. The error wraps
// ErrKeyMismatch and names the first bad key by kind and id (pre keys in
// ascending order); cfg must be the Config the State was created with.
func (s *State) VerifyKeys(cfg *Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	if xeddsa.Ed25519PubFromPriv(s.IdentityPriv) != s.IdentityPub {
		return fmt.Errorf("%w: identity key", ErrKeyMismatch)
	}
	spk := &s.SignedPreKey
	if err := checkPair("signed pre key", spk.ID, &spk.Priv, &spk.Pub); err != nil {
		return err
	}
	if !xeddsa.Verify(s.IdentityPub, cfg.EncodePublicKey(spk.Pub), spk.Signature) {
		return fmt.Errorf("%w: signature of signed pre key %d", ErrKeyMismatch, spk.ID)
	}
	if o := s.OldSignedPreKey; o != nil {
		if err := checkPair("old signed pre key", o.ID, &o.Priv, &o.Pub); err != nil {
			return err
		}
	}
	for _, id := range slices.Sorted(maps.Keys(s.PreKeys)) {
		if pk := s.PreKeys[id]; pk != nil {
			if err := checkPair("pre key", id, &pk.Priv, &pk.Pub); err != nil {
				return err
			}
		}
	}
	return nil
}
