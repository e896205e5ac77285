package doubleratchet

import "mellium.im/omemo/internal/kdf"

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
	var out [64]byte
	kdf.Key(out[:], dhOut[:], rk[:], info)
	copy(newRK[:], out[:32])
	copy(ck[:], out[32:])
	clear(out[:])
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

func hmacSHA256Byte(key *[32]byte, b byte) [32]byte {
	return kdf.HMAC(key[:], []byte{b})
}
