package doubleratchet

import (
	"crypto/rand"
	"testing"
)

func BenchmarkEncrypt(b *testing.B) {
	alice, _ := pair(b, testConfig())
	b.ReportAllocs()
	for b.Loop() {
		alice.Encrypt()
	}
}

func BenchmarkDecryptInOrder(b *testing.B) {
	alice, bob := pair(b, testConfig())
	recv(b, bob, send(alice))
	var want [32]byte
	open := func(mk *[32]byte) error {
		if *mk != want {
			return errAuth
		}
		return nil
	}
	b.ReportAllocs()
	for b.Loop() {
		var h Header
		h, want = alice.Encrypt() // ~half of the measured time
		if err := bob.Decrypt(h, nil, open); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecryptRatchetStep measures a receive that changes direction:
// one X25519 key generation, two X25519 exchanges and two HKDF-64 (plus the
// Encrypt producing the message).
func BenchmarkDecryptRatchetStep(b *testing.B) {
	alice, bob := pair(b, testConfig())
	recv(b, bob, send(alice))
	var want [32]byte
	open := func(mk *[32]byte) error {
		if *mk != want {
			return errAuth
		}
		return nil
	}
	from, to := bob, alice
	b.ReportAllocs()
	for b.Loop() {
		var h Header
		h, want = from.Encrypt()
		if err := to.Decrypt(h, nil, open); err != nil {
			b.Fatal(err)
		}
		from, to = to, from
	}
}

// BenchmarkFloorChainKDF is the raw cost of one chain step: two HMACs.
func BenchmarkFloorChainKDF(b *testing.B) {
	ck := seq32(0)
	b.ReportAllocs()
	for b.Loop() {
		_, ck = ChainKDF(ck)
	}
}

// BenchmarkFloorRatchetStep is the raw cost of the primitives of a DH
// ratchet step on one side: key generation, X25519 and one HKDF-64 (a
// receiving step does two exchanges and two HKDFs).
func BenchmarkFloorRatchetStep(b *testing.B) {
	info := []byte(RootInfoOMEMO2)
	peerPriv := seq32(9)
	peer, _ := publicKey(&peerPriv)
	rk := seq32(0)
	b.ReportAllocs()
	for b.Loop() {
		priv, _, err := newRatchetKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		dh, err := x25519(&priv, &peer)
		if err != nil {
			b.Fatal(err)
		}
		rk, _ = RootKDF(info, rk, dh)
	}
}
