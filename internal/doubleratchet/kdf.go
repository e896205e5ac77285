package doubleratchet

import (
	"crypto/hmac"
	"crypto/sha256"
)

// Root chain HKDF info strings used by the OMEMO backends.
const (
	// RootInfoOMEMO2 is the root chain HKDF info of OMEMO 2 (urn:xmpp:omemo:2).
	RootInfoOMEMO2 = "OMEMO Root Chain"
	// RootInfoLegacy is the root chain HKDF info of legacy OMEMO
	// (eu.siacs.conversations.axolotl, libsignal's "WhisperRatchet").
	RootInfoLegacy = "WhisperRatchet"
)

// RootKDF performs one step of the root KDF chain:
//
//	out = HKDF-SHA-256(salt = rk, ikm = dhOut, info = info, L = 64)
//	newRK = out[0:32], ck = out[32:64]
//
// ck is the initial key of a new sending or receiving chain. The output is
// indistinguishable from random as long as either rk or dhOut is secret.
func RootKDF(info []byte, rk, dhOut [32]byte) (newRK, ck [32]byte) {
	// HKDF-Extract: PRK = HMAC(salt, IKM).
	m := hmac.New(sha256.New, rk[:])
	m.Write(dhOut[:])
	var prk [32]byte
	m.Sum(prk[:0])

	// HKDF-Expand with two output blocks:
	// T1 = HMAC(PRK, info || 0x01), T2 = HMAC(PRK, T1 || info || 0x02).
	m = hmac.New(sha256.New, prk[:])
	m.Write(info)
	m.Write([]byte{1})
	m.Sum(newRK[:0])
	m.Reset()
	m.Write(newRK[:])
	m.Write(info)
	m.Write([]byte{2})
	m.Sum(ck[:0])
	clear(prk[:])
	return newRK, ck
}

// ChainKDF performs one step of a sending or receiving chain, as
// python-doubleratchet's separate-HMACs KDF with the OMEMO constant 0x02 0x01:
//
//	mk = HMAC-SHA-256(ck, 0x01), nextCK = HMAC-SHA-256(ck, 0x02)
//
// Knowing mk or nextCK reveals nothing about ck (forward secrecy of the
// chain). ChainKDF does not allocate.
func ChainKDF(ck [32]byte) (mk, nextCK [32]byte) {
	return hmacSHA256Byte(&ck, 0x01), hmacSHA256Byte(&ck, 0x02)
}

// hmacSHA256Byte computes HMAC-SHA-256(key, []byte{b}) for a 32-byte key
// without heap allocations (crypto/hmac allocates its hash states). It is
// RFC 2104 written out: H((K^opad) || H((K^ipad) || m)).
func hmacSHA256Byte(key *[32]byte, b byte) [32]byte {
	var inner [sha256.BlockSize + 1]byte
	for i := range key {
		inner[i] = key[i] ^ 0x36
	}
	for i := len(key); i < sha256.BlockSize; i++ {
		inner[i] = 0x36
	}
	inner[sha256.BlockSize] = b
	ih := sha256.Sum256(inner[:])

	var outer [sha256.BlockSize + sha256.Size]byte
	for i := range key {
		outer[i] = key[i] ^ 0x5c
	}
	for i := len(key); i < sha256.BlockSize; i++ {
		outer[i] = 0x5c
	}
	copy(outer[sha256.BlockSize:], ih[:])
	out := sha256.Sum256(outer[:])
	clear(inner[:])
	clear(outer[:])
	return out
}
