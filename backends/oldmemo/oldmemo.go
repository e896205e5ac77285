// Package oldmemo implements legacy OMEMO (eu.siacs.conversations.axolotl,
// XEP-0384 0.3), the libsignal wire format that Conversations, Gajim, Dino,
// Monal and most deployed clients speak.
//
// It was written from XEP-0384 0.3.0 and the libsignal protocol description.
// Public keys travel as 0x05 ‖ Curve25519 key; messages start with the
// version byte 0x33 and end with an 8-byte HMAC-SHA-256 tag over the
// associated data (sender identity first, then recipient) and the message.
// Payloads are AES-128-GCM; the GCM tag travels with the key in 32 bytes of
// key material, so only holders of the key material can authenticate the
// payload.
package oldmemo

import (
	"crypto/aes"
	"crypto/cipher"
	"fmt"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/backendcore"
	"mellium.im/omemo/internal/doubleratchet"
	"mellium.im/omemo/internal/pb/oldmemopb"
	"mellium.im/omemo/internal/x3dh"
	"mellium.im/omemo/internal/xeddsa"
	"mellium.im/omemo/ns"
)

// Namespace is the XML namespace of legacy OMEMO.
const Namespace = ns.Legacy

const (
	x3dhInfo        = "WhisperText"
	rootInfo        = "WhisperRatchet"
	messageKeysInfo = "WhisperMessageKeys"
	macLength       = 8
	version         = 0x33
	keyPrefix       = 0x05
	gcmKeyLen       = 16
	gcmTagLen       = 16
	ivLen           = 12
)

// encodeKey is libsignal's public key encoding: 0x05 ‖ Curve25519 key.
func encodeKey(k [32]byte) []byte {
	out := make([]byte, 33)
	out[0] = keyPrefix
	copy(out[1:], k[:])
	return out
}

// decodeKey parses a 0x05-prefixed 33-byte key.
func decodeKey(b []byte) ([32]byte, error) {
	var k [32]byte
	if len(b) != 33 || b[0] != keyPrefix {
		return k, fmt.Errorf("%w: public key must be 33 bytes starting with 0x05", backends.ErrMalformed)
	}
	copy(k[:], b[1:])
	return k, nil
}

// encodeIdentity encodes an Ed25519 identity key in its Curve25519 form.
// X3DH only encodes keys it validated (the peer's) or derived (our own).
func encodeIdentity(ed [32]byte) []byte {
	return encodeKey(xeddsa.Ed25519ToCurve25519Trusted(ed))
}

// X3DHConfig is the X3DH profile of legacy OMEMO.
var X3DHConfig = &x3dh.Config{
	Info:              []byte(x3dhInfo),
	EncodePublicKey:   encodeKey,
	EncodeIdentityKey: encodeIdentity,
}

// Backend is the legacy OMEMO backend.
type Backend struct {
	*backendcore.Base
}

var _ backends.Backend = (*Backend)(nil)

// New returns the backend for identity id. keys is the stored own key
// material (MarshalKeys) or empty to create fresh keys with 100 pre keys.
func New(id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (*Backend, error) {
	b, err := backendcore.NewBase(Namespace, X3DHConfig, rootInfo, id, keys, opts)
	if err != nil {
		return nil, err
	}
	return &Backend{b}, nil
}

// Bundle implements backends.Backend. The identity key is published in its
// Curve25519 form; the sign bit of its Ed25519 form rides in bit 7 of byte
// 63 of the signature, which a valid signature never uses (libsignal's
// convention).
func (b *Backend) Bundle() (bundle.Bundle, error) {
	var out bundle.Bundle
	err := b.Read(func(st *x3dh.State) error {
		xb := st.Bundle()
		// The own identity key: derived from its private key, and compared
		// with it when the key state was loaded, so no subgroup check (a
		// scalar multiplication at every start of every account).
		ik := xeddsa.Ed25519ToCurve25519Trusted(xb.IdentityKey)
		sig := xb.SignedPreKeySignature
		sig[63] |= xb.IdentityKey[31] & 0x80
		out = bundle.Bundle{
			Namespace:             Namespace,
			IdentityKey:           ik,
			SignedPreKeyID:        xb.SignedPreKeyID,
			SignedPreKey:          xb.SignedPreKey,
			SignedPreKeySignature: sig,
		}
		out.PreKeys = make([]bundle.PreKey, len(xb.PreKeys))
		for i, pk := range xb.PreKeys {
			out.PreKeys[i] = bundle.PreKey{ID: pk.ID, Key: pk.Pub}
		}
		return nil
	})
	return out, err
}

// BundleIdentityKey implements backends.Backend: the Ed25519 form is rebuilt
// from the Curve25519 key and the sign bit carried in the signature.
func (b *Backend) BundleIdentityKey(bb bundle.Bundle) ([32]byte, error) {
	if bb.Namespace != Namespace {
		return [32]byte{}, fmt.Errorf("%w: bundle of namespace %q", backends.ErrMalformed, bb.Namespace)
	}
	ed, err := xeddsa.Curve25519ToEd25519(bb.IdentityKey, bb.SignedPreKeySignature[63]&0x80 != 0)
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: %w: identity key: %w", backends.ErrKeyExchange, backends.ErrInvalidKey, err)
	}
	return ed, nil
}

// BuildSessionActive implements backends.Backend.
func (b *Backend) BuildSessionActive(jid string, deviceID uint32, bb bundle.Bundle, keyMaterial []byte) (backends.Session, backends.KeyElement, error) {
	ik, err := b.BundleIdentityKey(bb)
	if err != nil {
		return nil, backends.KeyElement{}, err
	}
	xb := &x3dh.Bundle{
		IdentityKey:           ik,
		SignedPreKeyID:        bb.SignedPreKeyID,
		SignedPreKey:          bb.SignedPreKey,
		SignedPreKeySignature: bb.SignedPreKeySignature,
		PreKeys:               make([]x3dh.PublicPreKey, len(bb.PreKeys)),
		// BundleIdentityKey validated the published Curve25519 form.
		IdentityKeyCurve: &bb.IdentityKey,
	}
	xb.SignedPreKeySignature[63] &^= 0x80
	for i, pk := range bb.PreKeys {
		xb.PreKeys[i] = x3dh.PublicPreKey{ID: pk.ID, Pub: pk.Key}
	}
	s, err := backendcore.BuildActive(b.Keys, Namespace, &b.DR, xb, jid, deviceID)
	if err != nil {
		return nil, backends.KeyElement{}, err
	}
	ke, err := b.EncryptKeyMaterial(s, keyMaterial)
	if err != nil {
		return nil, backends.KeyElement{}, err
	}
	return s, ke, nil
}

// ParseKeyExchange implements backends.Backend. The legacy format sends the
// identity key in Curve25519 form only; signBit restores its Ed25519 form.
func (b *Backend) ParseKeyExchange(data []byte, signBit bool) (backends.KeyExchange, []byte, error) {
	if len(data) > backends.MaxKeyElementSize {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange of %d bytes", backends.ErrMalformed, len(data))
	}
	if len(data) == 0 {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: empty key exchange", backends.ErrMalformed)
	}
	if data[0] != version {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange version byte 0x%02x", backends.ErrVersion, data[0])
	}
	pk, spk, ik, ek, msg, err := oldmemopb.ParseOMEMOKeyExchange(data[1:])
	if err != nil {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange: %w", backends.ErrMalformed, err)
	}
	ikc, err := decodeKey(ik)
	if err != nil {
		return backends.KeyExchange{}, nil, err
	}
	ekc, err := decodeKey(ek)
	if err != nil {
		return backends.KeyExchange{}, nil, err
	}
	ed, err := xeddsa.Curve25519ToEd25519(ikc, signBit)
	if err != nil {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: %w: identity key: %w", backends.ErrKeyExchange, backends.ErrInvalidKey, err)
	}
	return backends.KeyExchange{PreKeyID: pk, SignedPreKeyID: spk, IdentityKey: ed, EphemeralKey: ekc}, msg, nil
}

// BuildSessionPassive implements backends.Backend.
func (b *Backend) BuildSessionPassive(jid string, deviceID uint32, kex backends.KeyExchange, message []byte) (backends.Session, []byte, error) {
	return b.Base.BuildSessionPassive(jid, deviceID, kex, message, b.DecryptKeyMaterial)
}

func (b *Backend) session(s backends.Session) (*backendcore.Session, error) {
	return b.Session(s, 66)
}

// macAD returns the associated data in libsignal's order, sender first. The
// session keeps X3DH's order (initiator first).
func macAD(cs *backendcore.Session, sending bool) [2][]byte {
	initiatorSends := (cs.Init == backends.Active) == sending
	if initiatorSends {
		return [2][]byte{cs.AD[:33], cs.AD[33:]}
	}
	return [2][]byte{cs.AD[33:], cs.AD[:33]}
}

// EncryptKeyMaterial implements backends.Backend.
func (b *Backend) EncryptKeyMaterial(s backends.Session, keyMaterial []byte) (backends.KeyElement, error) {
	cs, err := b.session(s)
	if err != nil {
		return backends.KeyElement{}, err
	}
	h, mk, err := cs.DR.TryEncrypt()
	if err != nil {
		return backends.KeyElement{}, fmt.Errorf("%w: %w", backends.ErrWrongSession, err)
	}
	enc, auth, iv := backendcore.DeriveAEADKeys(mk[:], messageKeysInfo)
	clear(mk[:])
	ct := backendcore.CBCEncrypt(make([]byte, 0, len(keyMaterial)+16), enc, iv, keyMaterial)
	var dh [33]byte
	dh[0] = keyPrefix
	copy(dh[1:], h.RatchetKey[:])
	msg := make([]byte, 1, 64+len(ct))
	msg[0] = version
	msg = oldmemopb.AppendOMEMOMessage(msg, h.N, h.PN, dh[:], ct)
	ad := macAD(cs, true)
	data := backendcore.MAC(msg, auth, macLength, ad[0], ad[1], msg)
	ke := backends.KeyElement{JID: cs.PeerJID, DeviceID: cs.Device, Data: data}
	if cs.Init == backends.Active && !cs.IsConfirmed {
		k := cs.Kex
		ik := xeddsa.Ed25519ToCurve25519Trusted(k.IdentityKey) // our own key
		kex := make([]byte, 1, len(data)+96)
		kex[0] = version
		ke.KeyExchange = true
		ke.Data = oldmemopb.AppendOMEMOKeyExchange(kex, k.PreKeyID, k.SignedPreKeyID, encodeKey(ik), encodeKey(k.EphemeralKey), data)
	}
	return ke, nil
}

// DecryptKeyMaterial implements backends.Backend.
func (b *Backend) DecryptKeyMaterial(s backends.Session, message []byte) ([]byte, error) {
	cs, err := b.session(s)
	if err != nil {
		return nil, err
	}
	if len(message) > backends.MaxKeyElementSize {
		return nil, fmt.Errorf("%w: message of %d bytes", backends.ErrMalformed, len(message))
	}
	if len(message) < 1+macLength {
		return nil, fmt.Errorf("%w: message too short", backends.ErrMalformed)
	}
	if message[0] != version {
		return nil, fmt.Errorf("%w: version byte 0x%02x", backends.ErrVersion, message[0])
	}
	msg, mac := message[:len(message)-macLength], message[len(message)-macLength:]
	n, pn, dhPub, ct, err := oldmemopb.ParseOMEMOMessage(msg[1:])
	if err != nil {
		return nil, fmt.Errorf("%w: %w", backends.ErrMalformed, err)
	}
	dh, err := decodeKey(dhPub)
	if err != nil {
		return nil, err
	}
	ad := macAD(cs, false)
	var pt []byte
	err = cs.DR.Decrypt(doubleratchet.Header{RatchetKey: dh, N: n, PN: pn}, b.Opts.Rand, func(mk *[32]byte) error {
		enc, auth, iv := backendcore.DeriveAEADKeys(mk[:], messageKeysInfo)
		if !backendcore.VerifyMAC(auth, mac, ad[0], ad[1], msg) {
			return backends.ErrAuthentication
		}
		var err error
		pt, err = backendcore.CBCDecrypt(enc, iv, ct)
		return err
	})
	if err != nil {
		return nil, backendcore.WrapRatchetError(err)
	}
	cs.IsConfirmed = true
	return pt, nil
}

// EncryptPlaintext implements backends.Backend: AES-128-GCM under a fresh
// key and 12-byte IV; the payload is the ciphertext without the tag, and the
// key material is key ‖ tag (32 bytes).
func (b *Backend) EncryptPlaintext(plaintext []byte) (backends.Content, []byte, error) {
	var rnd [gcmKeyLen + ivLen]byte
	if err := backendcore.ReadRand(b.Opts.Rand, rnd[:]); err != nil {
		return backends.Content{}, nil, err
	}
	block, _ := aes.NewCipher(rnd[:gcmKeyLen])
	gcm, _ := cipher.NewGCM(block)
	iv := append([]byte(nil), rnd[gcmKeyLen:]...)
	sealed := gcm.Seal(nil, iv, plaintext, nil)
	ct, tag := sealed[:len(plaintext)], sealed[len(plaintext):]
	km := make([]byte, 0, gcmKeyLen+gcmTagLen)
	km = append(append(km, rnd[:gcmKeyLen]...), tag...)
	clear(rnd[:])
	return backends.Content{Ciphertext: ct, IV: iv}, km, nil
}

// EncryptEmpty implements backends.Backend: a key-transport message with a
// fresh 16-byte key and 12-byte IV and no payload.
func (b *Backend) EncryptEmpty() (backends.Content, []byte, error) {
	var rnd [gcmKeyLen + ivLen]byte
	if err := backendcore.ReadRand(b.Opts.Rand, rnd[:]); err != nil {
		return backends.Content{}, nil, err
	}
	// The IV is drawn before the key, in python-oldmemo's order, so that
	// known-answer tests can replay its randomness.
	iv := append([]byte(nil), rnd[:ivLen]...)
	km := append([]byte(nil), rnd[ivLen:]...)
	return backends.Content{IV: iv, Empty: true}, km, nil
}

// DecryptPlaintext implements backends.Backend. It accepts 12- and 16-byte
// IVs, and besides key ‖ tag key material also the older layout of 16 bytes
// of key with the tag appended to the payload.
func (b *Backend) DecryptPlaintext(c backends.Content, keyMaterial []byte) ([]byte, error) {
	if c.Empty || c.Ciphertext == nil {
		return nil, fmt.Errorf("%w: no payload", backends.ErrMalformed)
	}
	if len(c.IV) != 12 && len(c.IV) != 16 {
		return nil, fmt.Errorf("%w: IV length %d", backends.ErrMalformed, len(c.IV))
	}
	var sealed []byte
	switch {
	case len(keyMaterial) == gcmKeyLen+gcmTagLen:
		sealed = make([]byte, 0, len(c.Ciphertext)+gcmTagLen)
		sealed = append(append(sealed, c.Ciphertext...), keyMaterial[gcmKeyLen:]...)
	case len(keyMaterial) == gcmKeyLen && len(c.Ciphertext) >= gcmTagLen:
		sealed = c.Ciphertext
	default:
		return nil, fmt.Errorf("%w: %d bytes", backends.ErrInvalidKeyMaterial, len(keyMaterial))
	}
	block, _ := aes.NewCipher(keyMaterial[:gcmKeyLen])
	gcm, err := cipher.NewGCMWithNonceSize(block, len(c.IV))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", backends.ErrDecryption, err)
	}
	pt, err := gcm.Open(nil, c.IV, sealed, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: payload tag", backends.ErrAuthentication)
	}
	return pt, nil
}

// Factory creates legacy OMEMO backends for the session manager.
var Factory = backends.Factory{
	Namespace: Namespace,
	New: func(id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (backends.Backend, error) {
		return New(id, keys, opts)
	},
}
