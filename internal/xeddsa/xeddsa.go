// Package xeddsa implements the Curve25519/Ed25519 key handling and the
// XEdDSA-style signatures used by OMEMO, matching python-xeddsa 1.0.2
// (libxeddsa 2, libsodium based), which python-omemo, python-x3dh and
// python-doubleratchet build on.
//
// A single 32-byte private scalar serves both as an X25519 key and as an
// Ed25519 signing key. Identity keys are derived from a 32-byte seed exactly
// like libsodium's crypto_sign_ed25519_sk_to_curve25519, so that the Ed25519
// public key of the seed, the Curve25519 public key of the scalar and the
// birational conversions between them all agree.
//
// Field and group arithmetic is done with filippo.io/edwards25519 and
// X25519 as a Montgomery ladder over its field arithmetic; the field and
// group arithmetic itself is never hand-rolled.
package xeddsa

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// Sizes of the byte strings handled by this package.
const (
	SeedSize      = 32
	PrivSize      = 32
	PubSize       = 32
	SignatureSize = 64
	NonceSize     = 64
)

var (
	// ErrInvalidKey is returned for byte strings that do not encode a usable
	// public key: not a point on the curve, or a point with a small-order
	// component.
	ErrInvalidKey = errors.New("xeddsa: invalid public key")

	// ErrSmallOrder is returned for public keys of small order (order 1, 2, 4
	// or 8). Such keys make every Diffie-Hellman output predictable and admit
	// signatures that verify for any message. Errors that match ErrSmallOrder
	// also match ErrInvalidKey.
	ErrSmallOrder = errors.New("xeddsa: public key of small order")

	// ErrZeroSharedSecret is returned by X25519 when the shared secret is all
	// zeros, which happens exactly when the peer's public key is of small
	// order (or a non-canonical encoding of such a point), i.e. when the
	// output would be independent of our private key.
	ErrZeroSharedSecret = errors.New("xeddsa: X25519 shared secret is all zeros")
)

// errSmallOrder wraps both ErrSmallOrder and ErrInvalidKey.
var errSmallOrder = fmt.Errorf("%w: %w", ErrInvalidKey, ErrSmallOrder)

// clamp applies the X25519/Ed25519 clamping to a 32-byte scalar in place.
func clamp(k *[32]byte) {
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
}

// Clamp returns priv with the RFC 7748 clamping applied (low three bits
// cleared, bit 255 cleared, bit 254 set). Clamping is idempotent; every
// private key returned by PrivFromSeed is already clamped.
func Clamp(priv [32]byte) [32]byte {
	clamp(&priv)
	return priv
}

// PrivFromSeed derives the private scalar of a seed: the clamped first half of
// SHA-512(seed). This equals libsodium's crypto_sign_ed25519_sk_to_curve25519
// and python-xeddsa's seed_to_priv, and it is the scalar that RFC 8032 Ed25519
// uses for the same seed, so Ed25519PubFromPriv(PrivFromSeed(s)) equals
// Ed25519PubFromSeed(s).
func PrivFromSeed(seed [32]byte) [32]byte {
	h := sha512.Sum512(seed[:])
	var priv [32]byte
	copy(priv[:], h[:32])
	clamp(&priv)
	clear(h[:])
	return priv
}

// Ed25519PubFromSeed returns the RFC 8032 Ed25519 public key of seed (the
// same bytes as crypto/ed25519.NewKeyFromSeed(seed).Public()).
func Ed25519PubFromSeed(seed [32]byte) [32]byte {
	priv := PrivFromSeed(seed)
	return Ed25519PubFromPriv(priv)
}

// scalarFromPriv interprets the 32 bytes of priv as a little-endian 256-bit
// integer and reduces it modulo the group order. Since the base point has
// prime order, priv·B equals (priv mod q)·B.
func scalarFromPriv(priv *[32]byte) *edwards25519.Scalar {
	var wide [64]byte
	copy(wide[:], priv[:])
	s, err := edwards25519.NewScalar().SetUniformBytes(wide[:])
	clear(wide[:])
	if err != nil {
		// Unreachable: the input is always 64 bytes long.
		panic("xeddsa: " + err.Error())
	}
	return s
}

// Ed25519PubFromPriv returns the Ed25519 public key priv·B, with no clamping
// and no sign forcing, i.e. the key under which Sign(priv, ...) verifies.
//
// For clamped private keys (everything PrivFromSeed returns) this is byte for
// byte python-xeddsa's priv_to_ed25519_pub. Note that libxeddsa's
// priv_to_ed25519_pub clamps its input first, so for non-clamped scalars the
// two differ (and libxeddsa's own signatures then do not verify under its
// own public key); this function deliberately follows the signing scalar.
func Ed25519PubFromPriv(priv [32]byte) [32]byte {
	a := scalarFromPriv(&priv)
	var out [32]byte
	copy(out[:], new(edwards25519.Point).ScalarBaseMult(a).Bytes())
	return out
}

// Curve25519PubFromPriv returns the X25519 public key of priv, X25519(priv, 9)
// (priv is clamped by X25519 as usual). It uses the fixed-base Edwards
// multiplication and the birational map, which is several times faster than
// a Montgomery ladder on the base point and gives the same u-coordinate.
func Curve25519PubFromPriv(priv [32]byte) [32]byte {
	s, err := edwards25519.NewScalar().SetBytesWithClamping(priv[:])
	if err != nil {
		// Unreachable: the input is always 32 bytes long.
		panic("xeddsa: " + err.Error())
	}
	var out [32]byte
	copy(out[:], new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery())
	return out
}

var (
	identity = edwards25519.NewIdentityPoint()
	// minusOne is q-1, so that [q-1]P + P = [q]P.
	minusOne = edwards25519.NewScalar().Negate(scalarOne())
)

func scalarOne() *edwards25519.Scalar {
	var one [32]byte
	one[0] = 1
	s, err := edwards25519.NewScalar().SetCanonicalBytes(one[:])
	if err != nil {
		panic("xeddsa: " + err.Error())
	}
	return s
}

// isSmallOrder reports whether [8]p is the identity.
func isSmallOrder(p *edwards25519.Point) bool {
	return new(edwards25519.Point).MultByCofactor(p).Equal(identity) == 1
}

// checkPoint rejects points of small order (ErrSmallOrder) and points with a
// small-order component (ErrInvalidKey), i.e. it accepts exactly the points of
// the prime-order subgroup other than the identity. This mirrors libsodium's
// ge25519_has_small_order and ge25519_is_on_main_subgroup checks.
func checkPoint(p *edwards25519.Point) error {
	if isSmallOrder(p) {
		return errSmallOrder
	}
	// Public input, so variable time is fine: [q-1]p + [0]B, then add p.
	qp := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(minusOne, p, edwards25519.NewScalar())
	qp.Add(qp, p)
	if qp.Equal(identity) != 1 {
		return fmt.Errorf("%w: point not in the prime-order subgroup", ErrInvalidKey)
	}
	return nil
}

// Ed25519ToCurve25519 converts an Ed25519 public key into the Curve25519
// (Montgomery u) public key of the same private scalar, u = (1+y)/(1-y).
//
// Like python-xeddsa's ed25519_pub_to_curve25519_pub (libsodium's
// crypto_sign_ed25519_pk_to_curve25519) it rejects encodings that are not
// points (ErrInvalidKey), small-order points (ErrSmallOrder) and points with a
// small-order component (ErrInvalidKey). Non-canonical encodings only exist
// for small-order or mixed-order points and are therefore rejected as well.
func Ed25519ToCurve25519(ed [32]byte) ([32]byte, error) {
	var out [32]byte
	p, err := new(edwards25519.Point).SetBytes(ed[:])
	if err != nil {
		return out, fmt.Errorf("%w: not a point on the curve", ErrInvalidKey)
	}
	if err := checkPoint(p); err != nil {
		return out, err
	}
	copy(out[:], p.BytesMontgomery())
	return out, nil
}

// Ed25519ToCurve25519Trusted converts an Ed25519 public key that was
// already validated by Ed25519ToCurve25519 (or derived from a private key)
// into its Curve25519 form, skipping the costly subgroup check. On a key
// that was never validated the result is meaningless but harmless: it never
// fails and never panics.
func Ed25519ToCurve25519Trusted(ed [32]byte) [32]byte {
	var out [32]byte
	ed[31] &= 0x7f
	var y, one, num, den field.Element
	if _, err := y.SetBytes(ed[:]); err != nil {
		return out
	}
	one.One()
	num.Add(&one, &y)
	den.Subtract(&one, &y)
	den.Invert(&den)
	num.Multiply(&num, &den)
	copy(out[:], num.Bytes())
	return out
}

// Curve25519ToEd25519 converts a Curve25519 public key u into an Ed25519
// public key, y = (u-1)/(u+1), with the sign bit (bit 255) set to signBit.
// The most significant bit of u is ignored and non-canonical u are reduced,
// as RFC 7748 and libxeddsa do.
//
// python-xeddsa's curve25519_pub_to_ed25519_pub never fails; this function is
// stricter: it rejects u = -1 (no corresponding point, libxeddsa outputs
// y = 0), u whose y is not on the Edwards curve (u on the twist), and u that
// give a small-order point (ErrSmallOrder) or a point with a small-order
// component (ErrInvalidKey). As a consequence, every output is accepted by
// Ed25519ToCurve25519, which maps it back to u (for canonical u).
func Curve25519ToEd25519(u [32]byte, signBit bool) ([32]byte, error) {
	var out [32]byte
	ue, err := new(field.Element).SetBytes(u[:])
	if err != nil {
		return out, fmt.Errorf("%w: bad encoding", ErrInvalidKey)
	}
	one := new(field.Element).One()
	den := new(field.Element).Add(ue, one)
	if den.Equal(new(field.Element).Zero()) == 1 {
		return out, fmt.Errorf("%w: u = -1 has no Edwards equivalent", ErrInvalidKey)
	}
	num := new(field.Element).Subtract(ue, one)
	y := new(field.Element).Multiply(num, den.Invert(den))
	copy(out[:], y.Bytes())
	if signBit {
		out[31] |= 0x80
	}
	p, err := new(edwards25519.Point).SetBytes(out[:])
	if err != nil {
		return [32]byte{}, fmt.Errorf("%w: u is not on the curve", ErrInvalidKey)
	}
	if err := checkPoint(p); err != nil {
		return [32]byte{}, err
	}
	return out, nil
}

// signPrefix is the XEdDSA hash_1 domain separator: 0xFE followed by 31 0xFF.
var signPrefix = func() [32]byte {
	var b [32]byte
	b[0] = 0xFE
	for i := 1; i < len(b); i++ {
		b[i] = 0xFF
	}
	return b
}()

// Sign produces an Ed25519-compatible signature of msg with the private
// scalar priv, exactly like python-xeddsa's ed25519_priv_sign:
//
//	A = priv·B                                  (no clamping, no sign forcing)
//	r = SHA-512(0xFE ‖ 0xFF×31 ‖ priv ‖ msg ‖ nonce) mod q
//	R = r·B
//	h = SHA-512(R ‖ A ‖ msg) mod q
//	s = r + h·priv mod q
//	signature = R ‖ s
//
// The signature verifies with plain Ed25519 (Verify, crypto/ed25519) under
// Ed25519PubFromPriv(priv). The nonce must be 64 bytes of fresh secret
// randomness: reusing a nonce with the same key and message is harmless, but
// a predictable nonce leaks priv.
//
// The output equals libxeddsa's for every priv below 2^255 (in particular
// every clamped key); libxeddsa's ref10 base multiplication is not defined for
// scalars with bit 255 set, while this function treats priv as an integer.
func Sign(priv [32]byte, msg []byte, nonce [64]byte) [64]byte {
	a := scalarFromPriv(&priv)
	A := new(edwards25519.Point).ScalarBaseMult(a).Bytes()

	h := sha512.New()
	h.Write(signPrefix[:])
	h.Write(priv[:])
	h.Write(msg)
	h.Write(nonce[:])
	var digest [64]byte
	h.Sum(digest[:0])
	r, err := edwards25519.NewScalar().SetUniformBytes(digest[:])
	if err != nil {
		panic("xeddsa: " + err.Error())
	}
	R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()

	h.Reset()
	h.Write(R)
	h.Write(A)
	h.Write(msg)
	h.Sum(digest[:0])
	k, err := edwards25519.NewScalar().SetUniformBytes(digest[:])
	if err != nil {
		panic("xeddsa: " + err.Error())
	}
	s := edwards25519.NewScalar().MultiplyAdd(k, a, r)

	var sig [64]byte
	copy(sig[:32], R)
	copy(sig[32:], s.Bytes())
	clear(digest[:])
	return sig
}

// SignRandom is Sign with the 64-byte nonce read from rand (which must be a
// cryptographically secure source such as crypto/rand.Reader).
func SignRandom(priv [32]byte, msg []byte, rand io.Reader) ([64]byte, error) {
	var nonce [64]byte
	if _, err := io.ReadFull(rand, nonce[:]); err != nil {
		return [64]byte{}, fmt.Errorf("xeddsa: reading signature nonce: %w", err)
	}
	sig := Sign(priv, msg, nonce)
	clear(nonce[:])
	return sig, nil
}

// Verify reports whether sig is a valid Ed25519 signature of msg by edPub.
//
// It is crypto/ed25519.Verify (RFC 8032, cofactorless, canonical s) plus the
// extra rejections of libsodium's crypto_sign_verify_detached, which
// python-xeddsa's ed25519_verify uses: a small-order or non-canonically
// encoded public key, and a small-order R, are rejected. With these checks
// Verify agrees with python-xeddsa on every C2SP CCTV and Wycheproof Ed25519
// vector. Keys with a small-order component are not rejected here (libsodium
// does not either); Ed25519ToCurve25519 rejects them.
func Verify(edPub [32]byte, msg []byte, sig [64]byte) bool {
	A, err := new(edwards25519.Point).SetBytes(edPub[:])
	if err != nil || !bytes.Equal(A.Bytes(), edPub[:]) || isSmallOrder(A) {
		return false
	}
	if R, err := new(edwards25519.Point).SetBytes(sig[:32]); err == nil && isSmallOrder(R) {
		return false
	}
	return ed25519.Verify(edPub[:], msg, sig[:])
}

// X25519 computes the X25519 function of priv and the peer public key pub.
// It returns ErrZeroSharedSecret if the result is all zeros (the peer key is
// of small order), matching python-xeddsa's x25519, which raises in exactly
// those cases.
func X25519(priv, pub [32]byte) ([32]byte, error) {
	var out [32]byte
	x25519Ladder(&out, &priv, &pub)
	var acc byte
	for _, b := range out {
		acc |= b
	}
	if acc == 0 {
		return out, ErrZeroSharedSecret
	}
	return out, nil
}
