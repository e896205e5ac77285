package backends

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"mellium.im/omemo/internal/xeddsa"
)

// IdentityKeyPair is the long-term identity of this device, shared by all
// backends. New identities are kept as a 32-byte seed (as python-omemo does);
// identities migrated from older software may exist only as a private scalar.
//
// The private part is secret: it is never printed, and MarshalBinary output
// must be stored as carefully as the rest of the OMEMO state.
type IdentityKeyPair struct {
	seed    [32]byte
	hasSeed bool
	priv    [32]byte // clamped Curve25519/Ed25519 scalar
	pub     [32]byte // Ed25519 public key
}

// ErrInvalidIdentity reports a malformed serialised identity key pair.
var ErrInvalidIdentity = errors.New("omemo: invalid identity key pair")

// GenerateIdentityKeyPair draws fresh seeds from rand until the Ed25519
// public key's sign bit is 0.
//
// Why: libsignal-style implementations (converse.js's libomemo.js, and the
// XEdDSA code paths of Signal-derived clients) verify signed pre key
// signatures with the Montgomery (Curve25519) form of the identity key,
// whose Ed25519 form they take with sign bit 0. For an identity whose real
// Ed25519 key has sign bit 1 they reject every signature ("Invalid
// signature") and cannot start a session with the device. Half of all
// seeds qualify, so two draws are needed on average. The sign bit is a
// public bit of the public key: conditioning on it halves the key space
// from 2^252 to 2^251 candidate keys, which costs an attacker nothing
// worth naming. Identities that exist keep their key: only new ones are
// drawn this way, and keys of others are accepted with either sign.
func GenerateIdentityKeyPair(rand io.Reader) (*IdentityKeyPair, error) {
	for range maxSeedDraws {
		var seed [32]byte
		if _, err := io.ReadFull(rand, seed[:]); err != nil {
			return nil, fmt.Errorf("omemo: generating identity key: %w", err)
		}
		if id := IdentityKeyPairFromSeed(seed); id.pub[31]&0x80 == 0 {
			return id, nil
		}
	}
	return nil, fmt.Errorf("omemo: generating identity key: %d seeds all gave sign bit 1; the randomness source is broken", maxSeedDraws)
}

// maxSeedDraws bounds the seeds GenerateIdentityKeyPair draws: with a
// working randomness source, 128 draws all failing has probability 2^-128.
const maxSeedDraws = 128

// IdentityKeyPairFromSeed derives the key pair from a 32-byte seed: the
// private scalar is clamp(SHA-512(seed)[:32]) and the public key is the
// RFC 8032 Ed25519 public key of the seed.
func IdentityKeyPairFromSeed(seed [32]byte) *IdentityKeyPair {
	return &IdentityKeyPair{
		seed:    seed,
		hasSeed: true,
		priv:    xeddsa.PrivFromSeed(seed),
		pub:     xeddsa.Ed25519PubFromSeed(seed),
	}
}

// IdentityKeyPairFromPrivate builds a key pair from a private scalar (legacy
// migrations). The public key keeps the sign of priv·B.
func IdentityKeyPairFromPrivate(priv [32]byte) *IdentityKeyPair {
	return &IdentityKeyPair{priv: priv, pub: xeddsa.Ed25519PubFromPriv(priv)}
}

// PublicKey is the Ed25519 identity key, the one trust decisions refer to.
func (k *IdentityKeyPair) PublicKey() [32]byte { return k.pub }

// PrivateScalar is the secret scalar used for X3DH and XEdDSA signatures.
func (k *IdentityKeyPair) PrivateScalar() [32]byte { return k.priv }

// Sign signs msg with XEdDSA and a fresh 64-byte nonce from rand; the
// signature verifies as plain Ed25519 under PublicKey.
func (k *IdentityKeyPair) Sign(msg []byte, rand io.Reader) ([64]byte, error) {
	return xeddsa.SignRandom(k.priv, msg, rand)
}

// Equal reports whether two key pairs hold the same private key.
func (k *IdentityKeyPair) Equal(o *IdentityKeyPair) bool {
	return subtle.ConstantTimeCompare(k.priv[:], o.priv[:]) == 1 && k.pub == o.pub
}

// String never shows the private key.
func (k *IdentityKeyPair) String() string {
	return "IdentityKeyPair(" + hex.EncodeToString(k.pub[:]) + ")"
}

const identityVersion = 1

// MarshalBinary encodes the key pair: version, kind (1 seed, 2 scalar), 32 bytes.
func (k *IdentityKeyPair) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, 34)
	out = append(out, identityVersion)
	if k.hasSeed {
		out = append(out, 1)
		return append(out, k.seed[:]...), nil
	}
	out = append(out, 2)
	return append(out, k.priv[:]...), nil
}

// UnmarshalBinary decodes what MarshalBinary produced.
func (k *IdentityKeyPair) UnmarshalBinary(data []byte) error {
	if len(data) != 34 || data[0] != identityVersion {
		return ErrInvalidIdentity
	}
	var b [32]byte
	copy(b[:], data[2:])
	switch data[1] {
	case 1:
		*k = *IdentityKeyPairFromSeed(b)
	case 2:
		*k = *IdentityKeyPairFromPrivate(b)
	default:
		return ErrInvalidIdentity
	}
	return nil
}

// Fingerprint formats an Ed25519 identity key the way OMEMO clients show it:
// the Curve25519 form in lowercase hex, in 8 groups of 8 digits.
func Fingerprint(identityKey [32]byte) (string, error) {
	curve, err := xeddsa.Ed25519ToCurve25519(identityKey)
	if err != nil {
		return "", fmt.Errorf("omemo: fingerprint: %w", err)
	}
	h := hex.EncodeToString(curve[:])
	var b strings.Builder
	for i := 0; i < len(h); i += 8 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(h[i : i+8])
	}
	return b.String(), nil
}
