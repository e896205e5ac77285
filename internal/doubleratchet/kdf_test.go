package doubleratchet

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
)

// Known answers computed with python-doubleratchet 1.0.3's own KDF classes
// (recommended.kdf_hkdf with SHA-256 and the given info;
// recommended.kdf_separate_hmacs with SHA-256 and the OMEMO constant 02 01)
// by testdata/python_kat.py, run with /usr/bin/python3:
//
//	rk = bytes(range(32)), dh = bytes(range(32, 64)), ck = bytes(range(64, 96))
//	Root.derive(rk, dh, 64) -> newRK || ck
//	Msg.derive(ck, b"\x02\x01", 64) -> nextCK || mk
func seq32(start byte) (k [32]byte) {
	for i := range k {
		k[i] = start + byte(i)
	}
	return k
}

func TestRootKDFKnownAnswer(t *testing.T) {
	for _, tc := range []struct {
		info, rk, ck string
	}{
		{RootInfoOMEMO2,
			"2fbe579f01132bf210d06bff40cb1603f1246281a78907a2dca43f7bf86415eb",
			"098895adc1a352cf2d6db6a44eef9f968b2ed13408ad7f9dfd36a7890f80cac1"},
		{RootInfoLegacy,
			"62ffc77945c7aae74572869ac8a9522d96bc75a79cf3863ae7335004186255b3",
			"2de7be8dc5a58c68bcb5db2e71cb88157ed10ab4f7ea97ba5606e49733da2b94"},
	} {
		rk, ck := RootKDF([]byte(tc.info), seq32(0), seq32(32))
		if rk != unhex32(t, tc.rk) || ck != unhex32(t, tc.ck) {
			t.Errorf("RootKDF(%q) = %x, %x", tc.info, rk, ck)
		}
	}
}

func TestChainKDFKnownAnswer(t *testing.T) {
	mk, next := ChainKDF(seq32(64))
	if want := unhex32(t, "01156abd78ef59f755f1e6945e5d1e2d7ddd1f1e5fe0a164b2f5fa8ad500bfba"); mk != want {
		t.Errorf("mk = %x, want %x", mk, want)
	}
	if want := unhex32(t, "f0bdefbbad3cf097dccb03f2c87159f7608e2480543eef7741c8f2e7f226e78f"); next != want {
		t.Errorf("next ck = %x, want %x", next, want)
	}
}

// The allocation-free HMAC and hand-written HKDF must agree with the
// standard library for arbitrary inputs.
func TestKDFsMatchStdlib(t *testing.T) {
	for i := range 200 {
		ck := randKey(t)
		for _, b := range []byte{0x01, 0x02, byte(i)} {
			m := hmac.New(sha256.New, ck[:])
			m.Write([]byte{b})
			if got := hmacSHA256Byte(&ck, b); !hmac.Equal(got[:], m.Sum(nil)) {
				t.Fatalf("hmacSHA256Byte mismatch for byte %#x", b)
			}
		}
		rk, dh := randKey(t), randKey(t)
		info := make([]byte, i%70)
		for j := range info {
			info[j] = byte(i + j)
		}
		out, err := hkdf.Key(sha256.New, dh[:], rk[:], string(info), 64)
		if err != nil {
			t.Fatal(err)
		}
		nrk, nck := RootKDF(info, rk, dh)
		if [32]byte(out[:32]) != nrk || [32]byte(out[32:]) != nck {
			t.Fatalf("RootKDF disagrees with crypto/hkdf (info len %d)", len(info))
		}
	}
}

func TestChainKDFAllocs(t *testing.T) {
	ck := seq32(1)
	if n := testing.AllocsPerRun(100, func() { _, ck = ChainKDF(ck) }); n != 0 {
		t.Errorf("ChainKDF allocates %v times", n)
	}
}
