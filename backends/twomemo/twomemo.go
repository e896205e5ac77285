// Package twomemo implements OMEMO 2 (urn:xmpp:omemo:2, XEP-0384 0.8 and
// later), byte-compatible with python-twomemo.
//
// Message keys are expanded with HKDF-SHA-256 ("OMEMO Message Key Material")
// into AES-256-CBC and HMAC-SHA-256 keys; the MAC, truncated to 16 bytes,
// covers the associated data of the session (both Ed25519 identity keys,
// initiator first) and the serialised OMEMOMessage, so a message is accepted
// only if it was made for exactly this pair of identities. Payloads use a
// fresh 32-byte key per message, expanded with HKDF ("OMEMO Payload"); the
// recipients receive key ‖ 16-byte tag (48 bytes).
package twomemo

import (
	"fmt"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/backendcore"
	"mellium.im/omemo/internal/doubleratchet"
	"mellium.im/omemo/internal/pb/twomemopb"
	"mellium.im/omemo/internal/x3dh"
	"mellium.im/omemo/internal/xeddsa"
	"mellium.im/omemo/ns"
)

// Namespace is the XML namespace of OMEMO 2.
const Namespace = ns.OMEMO2

const (
	x3dhInfo        = "OMEMO X3DH"
	rootInfo        = "OMEMO Root Chain"
	messageKeysInfo = "OMEMO Message Key Material"
	payloadInfo     = "OMEMO Payload"
	macLength       = 16
	payloadKeyLen   = 32
	keyMaterialLen  = payloadKeyLen + macLength
)

func identity(k [32]byte) []byte { return append([]byte(nil), k[:]...) }

// X3DHConfig is the X3DH profile of OMEMO 2: raw 32-byte key encodings and
// the Ed25519 form of identity keys in the associated data.
var X3DHConfig = &x3dh.Config{
	Info:              []byte(x3dhInfo),
	EncodePublicKey:   identity,
	EncodeIdentityKey: identity,
}

// Backend is the OMEMO 2 backend.
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

// Bundle implements backends.Backend.
func (b *Backend) Bundle() (bundle.Bundle, error) {
	var out bundle.Bundle
	err := b.Read(func(st *x3dh.State) error {
		xb := st.Bundle()
		out = bundle.Bundle{
			Namespace:             Namespace,
			IdentityKey:           xb.IdentityKey,
			SignedPreKeyID:        xb.SignedPreKeyID,
			SignedPreKey:          xb.SignedPreKey,
			SignedPreKeySignature: xb.SignedPreKeySignature,
		}
		out.PreKeys = make([]bundle.PreKey, len(xb.PreKeys))
		for i, pk := range xb.PreKeys {
			out.PreKeys[i] = bundle.PreKey{ID: pk.ID, Key: pk.Pub}
		}
		return nil
	})
	return out, err
}

// BundleIdentityKey implements backends.Backend.
func (b *Backend) BundleIdentityKey(bb bundle.Bundle) ([32]byte, error) {
	if bb.Namespace != Namespace {
		return [32]byte{}, fmt.Errorf("%w: bundle of namespace %q", backends.ErrMalformed, bb.Namespace)
	}
	if _, err := xeddsa.Ed25519ToCurve25519(bb.IdentityKey); err != nil {
		return [32]byte{}, fmt.Errorf("%w: %w: identity key: %w", backends.ErrKeyExchange, backends.ErrInvalidKey, err)
	}
	return bb.IdentityKey, nil
}

func toX3DH(bb bundle.Bundle) *x3dh.Bundle {
	xb := &x3dh.Bundle{
		IdentityKey:           bb.IdentityKey,
		SignedPreKeyID:        bb.SignedPreKeyID,
		SignedPreKey:          bb.SignedPreKey,
		SignedPreKeySignature: bb.SignedPreKeySignature,
		PreKeys:               make([]x3dh.PublicPreKey, len(bb.PreKeys)),
	}
	for i, pk := range bb.PreKeys {
		xb.PreKeys[i] = x3dh.PublicPreKey{ID: pk.ID, Pub: pk.Key}
	}
	return xb
}

// BuildSessionActive implements backends.Backend.
func (b *Backend) BuildSessionActive(jid string, deviceID uint32, bb bundle.Bundle, keyMaterial []byte) (backends.Session, backends.KeyElement, error) {
	if bb.Namespace != Namespace {
		return nil, backends.KeyElement{}, fmt.Errorf("%w: bundle of namespace %q", backends.ErrMalformed, bb.Namespace)
	}
	// X3DH validates the identity key while converting it.
	s, err := backendcore.BuildActive(b.Keys, Namespace, &b.DR, toX3DH(bb), jid, deviceID)
	if err != nil {
		return nil, backends.KeyElement{}, err
	}
	ke, err := b.EncryptKeyMaterial(s, keyMaterial)
	if err != nil {
		return nil, backends.KeyElement{}, err
	}
	return s, ke, nil
}

// ParseKeyExchange implements backends.Backend. signBit is not needed: OMEMO 2
// transmits the identity key in Ed25519 form.
func (b *Backend) ParseKeyExchange(data []byte, _ bool) (backends.KeyExchange, []byte, error) {
	if len(data) > backends.MaxKeyElementSize {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange of %d bytes", backends.ErrMalformed, len(data))
	}
	pk, spk, ik, ek, mac, msg, err := twomemopb.ParseOMEMOKeyExchange(data)
	if err != nil {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange: %w", backends.ErrMalformed, err)
	}
	if len(ik) != 32 || len(ek) != 32 {
		return backends.KeyExchange{}, nil, fmt.Errorf("%w: key exchange: key length", backends.ErrMalformed)
	}
	kex := backends.KeyExchange{PreKeyID: pk, SignedPreKeyID: spk}
	copy(kex.IdentityKey[:], ik)
	copy(kex.EphemeralKey[:], ek)
	return kex, twomemopb.AppendOMEMOAuthenticatedMessage(nil, mac, msg), nil
}

// BuildSessionPassive implements backends.Backend.
func (b *Backend) BuildSessionPassive(jid string, deviceID uint32, kex backends.KeyExchange, message []byte) (backends.Session, []byte, error) {
	return b.Base.BuildSessionPassive(jid, deviceID, kex, message, b.DecryptKeyMaterial)
}

func (b *Backend) session(s backends.Session) (*backendcore.Session, error) {
	return b.Session(s, 64)
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
	msg := twomemopb.AppendOMEMOMessage(make([]byte, 0, 48+len(ct)), h.N, h.PN, h.RatchetKey[:], ct)
	var mac [macLength]byte
	backendcore.MAC(mac[:0], auth, macLength, cs.AD, msg)
	ke := backends.KeyElement{JID: cs.PeerJID, DeviceID: cs.Device}
	if cs.Init == backends.Active && !cs.IsConfirmed {
		k := cs.Kex
		ke.KeyExchange = true
		ke.Data = twomemopb.AppendOMEMOKeyExchange(make([]byte, 0, len(msg)+112), k.PreKeyID, k.SignedPreKeyID, k.IdentityKey[:], k.EphemeralKey[:], mac[:], msg)
	} else {
		ke.Data = twomemopb.AppendOMEMOAuthenticatedMessage(make([]byte, 0, len(msg)+24), mac[:], msg)
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
	mac, msg, err := twomemopb.ParseOMEMOAuthenticatedMessage(message)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", backends.ErrMalformed, err)
	}
	n, pn, dhPub, ct, err := twomemopb.ParseOMEMOMessage(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", backends.ErrMalformed, err)
	}
	if len(dhPub) != 32 {
		return nil, fmt.Errorf("%w: ratchet key length %d", backends.ErrMalformed, len(dhPub))
	}
	if len(mac) != macLength {
		return nil, fmt.Errorf("%w: MAC length %d", backends.ErrAuthentication, len(mac))
	}
	h := doubleratchet.Header{N: n, PN: pn}
	copy(h.RatchetKey[:], dhPub)
	var pt []byte
	err = cs.DR.Decrypt(h, b.Opts.Rand, func(mk *[32]byte) error {
		enc, auth, iv := backendcore.DeriveAEADKeys(mk[:], messageKeysInfo)
		if !backendcore.VerifyMAC(auth, mac, cs.AD, msg) {
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

// EncryptPlaintext implements backends.Backend.
func (b *Backend) EncryptPlaintext(plaintext []byte) (backends.Content, []byte, error) {
	km := make([]byte, keyMaterialLen)
	if err := backendcore.ReadRand(b.Opts.Rand, km[:payloadKeyLen]); err != nil {
		return backends.Content{}, nil, err
	}
	enc, auth, iv := backendcore.DeriveAEADKeys(km[:payloadKeyLen], payloadInfo)
	ct := backendcore.CBCEncrypt(make([]byte, 0, len(plaintext)+16), enc, iv, plaintext)
	backendcore.MAC(km[:payloadKeyLen], auth, macLength, ct)
	return backends.Content{Ciphertext: ct}, km, nil
}

// EncryptEmpty implements backends.Backend: no payload, and 32 zero bytes of
// key material.
func (b *Backend) EncryptEmpty() (backends.Content, []byte, error) {
	return backends.Content{Empty: true}, make([]byte, payloadKeyLen), nil
}

// DecryptPlaintext implements backends.Backend.
func (b *Backend) DecryptPlaintext(c backends.Content, keyMaterial []byte) ([]byte, error) {
	if c.Empty || c.Ciphertext == nil {
		return nil, fmt.Errorf("%w: no payload", backends.ErrMalformed)
	}
	if len(keyMaterial) != keyMaterialLen {
		return nil, fmt.Errorf("%w: %d bytes", backends.ErrInvalidKeyMaterial, len(keyMaterial))
	}
	enc, auth, iv := backendcore.DeriveAEADKeys(keyMaterial[:payloadKeyLen], payloadInfo)
	if !backendcore.VerifyMAC(auth, keyMaterial[payloadKeyLen:], c.Ciphertext) {
		return nil, fmt.Errorf("%w: payload tag", backends.ErrAuthentication)
	}
	return backendcore.CBCDecrypt(enc, iv, c.Ciphertext)
}

// Factory creates OMEMO 2 backends for the session manager.
var Factory = backends.Factory{
	Namespace: Namespace,
	New: func(id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (backends.Backend, error) {
		return New(id, keys, opts)
	},
}
