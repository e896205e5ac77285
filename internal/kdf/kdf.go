// Package kdf implements HMAC-SHA-256 and HKDF-SHA-256 (RFC 2104, RFC 5869)
// without heap allocations for the short inputs of the OMEMO hot path.
//
// crypto/hmac and crypto/hkdf allocate several hash states per call; on the
// per-device path of an OMEMO message (a chain step, an 80-byte HKDF and a
// MAC) those allocations cost as much as the hashing. Here HMAC is written
// out as H((K^opad) ‖ H((K^ipad) ‖ m)) over stack buffers, with the
// standard library as the fallback for inputs that do not fit. Results are
// identical; the tests check them against crypto/hmac and crypto/hkdf.
package kdf

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
)

// maxFast is the largest message HMAC hashes from its stack buffer.
const maxFast = 448

// HMAC returns HMAC-SHA-256(key, parts[0] ‖ parts[1] ‖ …).
func HMAC(key []byte, parts ...[]byte) [32]byte {
	total := 0
	for _, p := range parts {
		total += len(p)
	}
	var out [32]byte
	if len(key) > sha256.BlockSize || total > maxFast {
		// Copies keep the arguments from escaping through the hash
		// interface, so that the fast path stays allocation-free.
		msg := make([]byte, 0, total)
		for _, p := range parts {
			msg = append(msg, p...)
		}
		return slowHMAC(bytes.Clone(key), msg)
	}
	var inner [sha256.BlockSize + maxFast]byte
	for i := range sha256.BlockSize {
		inner[i] = 0x36
	}
	for i, b := range key {
		inner[i] ^= b
	}
	n := sha256.BlockSize
	for _, p := range parts {
		n += copy(inner[n:], p)
	}
	ih := sha256.Sum256(inner[:n])

	var outer [sha256.BlockSize + sha256.Size]byte
	for i := range sha256.BlockSize {
		outer[i] = 0x5c
	}
	for i, b := range key {
		outer[i] ^= b
	}
	copy(outer[sha256.BlockSize:], ih[:])
	out = sha256.Sum256(outer[:])
	clear(inner[:n])
	clear(outer[:])
	return out
}

func slowHMAC(key, msg []byte) [32]byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	var out [32]byte
	m.Sum(out[:0])
	return out
}

var zeroSalt [32]byte

// Extract is HKDF-Extract: PRK = HMAC(salt, ikm). A nil salt means 32 zero
// bytes, as RFC 5869 specifies.
func Extract(salt, ikm []byte) [32]byte {
	if salt == nil {
		return HMAC(zeroSalt[:], ikm)
	}
	return HMAC(salt, ikm)
}

// Expand is HKDF-Expand: it fills out (at most 255·32 bytes) from prk and
// info.
func Expand(out []byte, prk *[32]byte, info []byte) {
	var t [32]byte
	var counter [1]byte
	prevLen := 0
	for len(out) > 0 {
		counter[0]++
		t = HMAC(prk[:], t[:prevLen], info, counter[:])
		prevLen = len(t)
		out = out[copy(out, t[:]):]
	}
	clear(t[:])
}

// Key is HKDF-SHA-256(ikm, salt, info) of len(out) bytes, written to out.
func Key(out, ikm, salt, info []byte) {
	prk := Extract(salt, ikm)
	Expand(out, &prk, info)
	clear(prk[:])
}
