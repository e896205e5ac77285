// Package backends defines the interface between the OMEMO core and one OMEMO
// wire format, and the types they exchange.
//
// Two backends implement it: package twomemo (urn:xmpp:omemo:2, OMEMO 2) and
// package oldmemo (eu.siacs.conversations.axolotl, legacy OMEMO). A backend
// holds the account's own key material for its namespace (signed pre keys and
// pre keys, sharing one identity key with the other backends) and performs
// every cryptographic operation of its wire format. It stores nothing itself:
// the caller persists the own key material (MarshalKeys) and every session
// (Session.MarshalBinary) and decides when changes are committed.
//
// A Backend's own-key methods are safe for concurrent use. A Session is not:
// the caller serialises all work on one peer device, so that a ratchet can
// never fork.
package backends

import (
	"errors"
	"time"

	"mellium.im/omemo/bundle"
)

// Backend is one OMEMO wire format: the counterpart of python-omemo's Backend.
type Backend interface {
	// Namespace is the XML namespace of the wire format, ns.OMEMO2 or ns.Legacy.
	Namespace() string

	// Bundle returns the own public bundle, in wire form, without hidden pre
	// keys. It does not recompute the public keys; see KeyVerifier.
	Bundle() (bundle.Bundle, error)
	// NumVisiblePreKeys is the number of pre keys in Bundle.
	NumVisiblePreKeys() int
	// GeneratePreKeys adds n fresh pre keys. Pre key ids are never reused.
	GeneratePreKeys(n int) error
	// HidePreKey hides the pre key a passive session was built with: it leaves
	// the bundle but still completes key exchanges (history synchronisation).
	// It reports false if the key is missing or already hidden.
	HidePreKey(s Session) bool
	// DeletePreKey deletes the pre key a passive session was built with,
	// visible or hidden. It reports false if the key is missing.
	DeletePreKey(s Session) bool
	// DeleteHiddenPreKeys deletes all hidden pre keys and returns how many.
	DeleteHiddenPreKeys() int
	// DeletePreKeyID deletes a visible or hidden pre key by id; it reports
	// false if there is none.
	DeletePreKeyID(id uint32) bool
	// HiddenPreKeys returns the ids of the hidden pre keys.
	HiddenPreKeys() []uint32
	// SignedPreKeyAge is the time since the signed pre key was last rotated.
	SignedPreKeyAge() time.Duration
	// RotateSignedPreKey replaces the signed pre key; the previous one is kept
	// for one more period so that late key exchanges still complete.
	RotateSignedPreKey() error
	// MarshalKeys serialises the own key material (secret: store it safely).
	MarshalKeys() ([]byte, error)
	// Purge destroys the own key material of this backend. Every later call
	// that needs it fails with ErrPurged.
	Purge()

	// BundleIdentityKey returns the Ed25519 identity key of a peer bundle.
	BundleIdentityKey(b bundle.Bundle) ([32]byte, error)
	// BuildSessionActive starts a session with a peer device from its bundle
	// and encrypts the first key material. The key exchange stays attached to
	// every message until the peer answers (Session.Confirmed).
	BuildSessionActive(jid string, deviceID uint32, b bundle.Bundle, keyMaterial []byte) (Session, KeyElement, error)
	// ParseKeyExchange splits a key element marked as a key exchange into the
	// key exchange and the message it carries. signBit is the sign bit of the
	// sender's Ed25519 identity key, which the legacy wire format does not
	// transmit; OMEMO 2 ignores it.
	ParseKeyExchange(data []byte, signBit bool) (KeyExchange, []byte, error)
	// BuildSessionPassive completes a key exchange started by a peer and
	// decrypts the key material it carried. Nothing is changed on failure;
	// deleting or hiding the used pre key is the caller's decision.
	BuildSessionPassive(jid string, deviceID uint32, kex KeyExchange, message []byte) (Session, []byte, error)
	// EncryptKeyMaterial encrypts key material for the session's device and
	// advances its sending chain.
	EncryptKeyMaterial(s Session, keyMaterial []byte) (KeyElement, error)
	// DecryptKeyMaterial authenticates and decrypts a message (not a key
	// exchange). The session changes only if it succeeds.
	DecryptKeyMaterial(s Session, message []byte) ([]byte, error)
	// UnmarshalSession restores a session stored with Session.MarshalBinary.
	UnmarshalSession(data []byte) (Session, error)

	// EncryptPlaintext encrypts a payload under a fresh key. The key material
	// is then encrypted for each recipient device.
	EncryptPlaintext(plaintext []byte) (Content, []byte, error)
	// EncryptEmpty returns the content and key material of an empty
	// (key-transport) message, used to complete sessions and as heartbeat.
	EncryptEmpty() (Content, []byte, error)
	// DecryptPlaintext authenticates and decrypts a payload.
	DecryptPlaintext(c Content, keyMaterial []byte) ([]byte, error)
}

// KeyVerifier is implemented by backends that can check their own key
// material; both twomemo and oldmemo do.
//
// Loading stored key material performs no scalar multiplication: public keys
// are stored next to their private keys, and a checksum over the record
// catches corruption of the stored bytes at load. Bundle therefore returns
// the stored public keys without recomputing them, which keeps it cheap
// enough to compare the local bundle with the published one at every start.
// A key exchange checks the keys it uses. VerifyKeys is the complete check,
// meant to run before a bundle is uploaded.
type KeyVerifier interface {
	// VerifyKeys recomputes every own public key from its private key and
	// verifies the signed pre key signature: one scalar multiplication per
	// key, about 100 in all. It returns nil if the bundle is usable and an
	// error wrapping ErrCorruptKeys otherwise.
	VerifyKeys() error
}

// Initiation says which side of the key exchange built a session.
type Initiation uint8

const (
	// Active sessions were built by us from the peer's bundle.
	Active Initiation = iota + 1
	// Passive sessions were built from a key exchange the peer sent.
	Passive
)

func (i Initiation) String() string {
	switch i {
	case Active:
		return "active"
	case Passive:
		return "passive"
	}
	return "unknown"
}

// Session is a Double Ratchet session with one peer device in one namespace.
// It is not safe for concurrent use.
type Session interface {
	Namespace() string
	JID() string
	DeviceID() uint32
	Initiation() Initiation
	// Confirmed reports whether the peer has answered: until then an active
	// session attaches its key exchange to every message.
	Confirmed() bool
	// KeyExchange is the key exchange that built the session.
	KeyExchange() KeyExchange
	// SendingChainLength is the number of messages sent since the last DH
	// ratchet step.
	SendingChainLength() uint32
	// ReceivingChainLength is the number of messages received since the last
	// DH ratchet step; ok is false before the first message was received.
	ReceivingChainLength() (n uint32, ok bool)
	// MarshalBinary serialises the session (secret: store it safely).
	MarshalBinary() ([]byte, error)
}

// KeyExchange is the public part of an X3DH key exchange as sent on the wire.
type KeyExchange struct {
	PreKeyID       uint32
	SignedPreKeyID uint32
	IdentityKey    [32]byte // the initiator's Ed25519 identity key
	EphemeralKey   [32]byte // X25519
}

// BuildsSameSession reports whether two key exchanges build the same session,
// which is how a repeated key exchange (sent until the session is confirmed)
// is told apart from a new one.
func (k KeyExchange) BuildsSameSession(o KeyExchange) bool {
	return k == o
}

// KeyElement is the key material encrypted for one recipient device: the
// content of one <key> element.
type KeyElement struct {
	JID         string // bare JID of the recipient
	DeviceID    uint32 // the recipient device
	KeyExchange bool   // Data is a key exchange rather than a plain message
	Data        []byte
}

// Content is an encrypted payload.
type Content struct {
	Ciphertext []byte // nil for empty messages
	IV         []byte // legacy only
	Empty      bool
}

// MaxKeyElementSize bounds the size of one <key> element's content. Honest
// key elements are under 300 bytes; anything far larger is refused before
// any parsing or cryptography.
const MaxKeyElementSize = 4096

// Errors shared by the backends. Each is wrapped with context; use errors.Is.
var (
	// ErrPurged means the backend's own key material was purged.
	ErrPurged = errors.New("omemo: backend purged")
	// ErrWrongSession means a session of another backend was passed in.
	ErrWrongSession = errors.New("omemo: session belongs to another backend")
	// ErrMalformed means a message, key exchange or bundle could not be parsed.
	ErrMalformed = errors.New("omemo: malformed message")
	// ErrVersion means a legacy message carried an unsupported version byte.
	ErrVersion = errors.New("omemo: unsupported message version")
	// ErrAuthentication means a MAC or authentication tag did not verify.
	ErrAuthentication = errors.New("omemo: authentication failed")
	// ErrDecryption means authenticated data did not decrypt (bad padding).
	ErrDecryption = errors.New("omemo: decryption failed")
	// ErrKeyExchange means a key exchange failed (bad signature, no pre key,
	// unknown signed pre key or pre key, invalid key).
	ErrKeyExchange = errors.New("omemo: key exchange failed")
	// ErrInvalidKeyMaterial means key material of the wrong length.
	ErrInvalidKeyMaterial = errors.New("omemo: invalid key material")

	// The causes of ErrKeyExchange; errors.Is sees both.

	// ErrNoPreKey means a bundle without pre keys, or a key exchange that
	// does not use one (every OMEMO key exchange must).
	ErrNoPreKey = errors.New("omemo: no pre key")
	// ErrBadSignature means the signed pre key signature did not verify.
	ErrBadSignature = errors.New("omemo: bad signed pre key signature")
	// ErrUnknownSignedPreKey means a key exchange used a signed pre key we
	// do not have (any more).
	ErrUnknownSignedPreKey = errors.New("omemo: unknown signed pre key")
	// ErrUnknownPreKey means a key exchange used a pre key we do not have
	// (any more), for example a replayed key exchange.
	ErrUnknownPreKey = errors.New("omemo: unknown pre key")
	// ErrInvalidKey means a public key that is not a valid curve point, has
	// small order or gives an all-zero shared secret.
	ErrInvalidKey = errors.New("omemo: invalid public key")
	// ErrCorruptKeys means that the own key material is inconsistent: a
	// stored public key does not belong to its private key (or the signed
	// pre key signature does not verify). A key exchange that uses such a
	// key fails with it, and KeyVerifier.VerifyKeys reports it; the error
	// names the key by kind and id. The key cannot work: delete it (or
	// replace the key material) and publish a new bundle.
	ErrCorruptKeys = errors.New("omemo: own key material is inconsistent")

	// ErrDuplicateMessage means the message was already decrypted: its
	// message key is gone (replay or duplicate delivery).
	ErrDuplicateMessage = errors.New("omemo: duplicate message")
	// ErrTooManySkipped means a message would skip more message keys than
	// the per-message limit allows (a counter jump).
	ErrTooManySkipped = errors.New("omemo: too many skipped messages")
)

// Factory creates a backend of one namespace for an identity, from stored
// own key material (empty for fresh keys). The SessionManager takes a list
// of factories in priority order, because the identity is only known once
// the state was loaded.
type Factory struct {
	Namespace string
	New       func(id *IdentityKeyPair, keys []byte, opts *Options) (Backend, error)
}
