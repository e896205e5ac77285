package xeddsa

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"
)

// The ladder and the fixed-base public key agree with crypto/ecdh on random
// inputs (the Wycheproof vectors cover the edge cases).
func TestLadderMatchesStdlib(t *testing.T) {
	for range 200 {
		var priv, peer [32]byte
		rand.Read(priv[:])
		rand.Read(peer[:])
		k, _ := ecdh.X25519().NewPrivateKey(priv[:])
		if got := Curve25519PubFromPriv(priv); string(got[:]) != string(k.PublicKey().Bytes()) {
			t.Fatalf("public key of %x: got %x, want %x", priv, got, k.PublicKey().Bytes())
		}
		p, _ := ecdh.X25519().NewPublicKey(peer[:])
		want, err := k.ECDH(p)
		got, err2 := X25519(priv, peer)
		if (err == nil) != (err2 == nil) || (err == nil && string(got[:]) != string(want)) {
			t.Fatalf("X25519(%x, %x) = %x, %v; want %x, %v", priv, peer, got, err2, want, err)
		}
	}
}

func BenchmarkX25519(b *testing.B) {
	var priv, peer [32]byte
	rand.Read(priv[:])
	peer = Curve25519PubFromPriv(peer)
	for b.Loop() {
		X25519(priv, peer)
	}
}

func BenchmarkCurve25519PubFromPriv(b *testing.B) {
	var priv [32]byte
	rand.Read(priv[:])
	for b.Loop() {
		Curve25519PubFromPriv(priv)
	}
}

func TestEd25519ToCurve25519Trusted(t *testing.T) {
	for range 100 {
		var seed [32]byte
		rand.Read(seed[:])
		ed := Ed25519PubFromSeed(seed)
		want, err := Ed25519ToCurve25519(ed)
		if err != nil {
			t.Fatal(err)
		}
		if got := Ed25519ToCurve25519Trusted(ed); got != want {
			t.Fatalf("trusted conversion of %x = %x, want %x", ed, got, want)
		}
	}
	// Garbage in: no panic.
	Ed25519ToCurve25519Trusted([32]byte{0xff, 0xff})
	Ed25519ToCurve25519Trusted([32]byte{1})
}
