package backends_test

import (
	"crypto/rand"
	"testing"

	"mellium.im/omemo/backends"
)

// New identities have an Ed25519 sign bit of 0, which libsignal-style
// clients (converse.js) need to verify our signed pre key signatures.
func TestNewIdentitySignBitZero(t *testing.T) {
	for i := range 1000 {
		id, err := backends.GenerateIdentityKeyPair(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if pub := id.PublicKey(); pub[31]&0x80 != 0 {
			t.Fatalf("identity %d has sign bit 1", i)
		}
	}
	// A randomness source that only ever yields sign-bit-1 seeds fails
	// instead of looping for ever.
	if _, err := backends.GenerateIdentityKeyPair(signBitOneSeeds{}); err == nil {
		t.Fatal("no error from a source without a usable seed")
	}
}

// signBitOneSeeds repeats a seed whose Ed25519 key has sign bit 1.
type signBitOneSeeds struct{}

func (signBitOneSeeds) Read(p []byte) (int, error) {
	for seed := byte(0); ; seed++ {
		var s [32]byte
		s[0] = seed
		if pub := backends.IdentityKeyPairFromSeed(s).PublicKey(); pub[31]&0x80 != 0 {
			for i := range p {
				p[i] = s[i%32]
			}
			return len(p), nil
		}
	}
}
