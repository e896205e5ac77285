package gcmstream

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

// refMul is multiplication in GF(2^128) bit by bit, as NIST SP 800-38D
// defines it (section 6.3, algorithm 1), on blocks: bit 0 is the most
// significant bit of byte 0.
func refMul(x, y [16]byte) [16]byte {
	var z [16]byte
	v := y
	for i := 0; i < 128; i++ {
		// If x_i = 1, Z = Z XOR V.
		if x[i/8]>>(7-i%8)&1 == 1 {
			for k := range z {
				z[k] ^= v[k]
			}
		}
		// V = V >> 1, XOR R = 11100001 || 0^120 if the bit shifted out
		// (V_127) was 1.
		lsb := v[15] & 1
		for k := 15; k > 0; k-- {
			v[k] = v[k]>>1 | v[k-1]<<7
		}
		v[0] >>= 1
		if lsb == 1 {
			v[0] ^= 0xe1
		}
	}
	return z
}

// refGHASH is GHASH_H (algorithm 2) over data padded with zeros to a
// multiple of 16 bytes, with refMul.
func refGHASH(h [16]byte, data []byte) [16]byte {
	var y [16]byte
	for len(data) > 0 {
		var blk [16]byte
		n := copy(blk[:], data)
		data = data[n:]
		for k := range y {
			y[k] ^= blk[k]
		}
		y = refMul(y, h)
	}
	return y
}

// TestRefMul checks refMul itself on test case 2 of the GCM specification
// (McGrew and Viega): AES-128, zero key, zero IV, one zero block of
// plaintext.
func TestRefMul(t *testing.T) {
	b := func(s string) [16]byte {
		var out [16]byte
		if n, err := hex.Decode(out[:], []byte(s)); err != nil || n != 16 {
			t.Fatal(s, err)
		}
		return out
	}
	h := b("66e94bd4ef8a2c3b884cfa59ca342b2e")
	c := b("0388dace60b6a392f328c2b971b2fe78")
	x1 := refMul(c, h)
	if x1 != b("5e2ec746917062882c85b0685353deb7") {
		t.Fatalf("X1 = %x", x1)
	}
	lens := b("00000000000000000000000000000080")
	for i := range x1 {
		x1[i] ^= lens[i]
	}
	if x2 := refMul(x1, h); x2 != b("f38cbb1ad69223dcc3457ae5b6b0f885") {
		t.Fatalf("GHASH = %x", x2)
	}
}

func toElement(b [16]byte) fieldElement {
	return fieldElement{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func fromElement(e fieldElement) [16]byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], e.hi)
	binary.BigEndian.PutUint64(b[8:], e.lo)
	return b
}

// checkMul compares mul with refMul for x·h, with h as the key side and
// then x (the implementation treats its two operands differently).
func checkMul(t *testing.T, x, h [16]byte) {
	t.Helper()
	want := refMul(x, h)
	k := newKeyPower(toElement(h))
	if got := fromElement(mul(toElement(x), &k)); got != want {
		t.Fatalf("%x · %x (key side): got %x, want %x", x, h, got, want)
	}
	k = newKeyPower(toElement(x))
	if got := fromElement(mul(toElement(h), &k)); got != want {
		t.Fatalf("%x · %x (key side swapped): got %x, want %x", x, h, got, want)
	}
}

func TestGHASHMul(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var ones, zero, one [16]byte
	for i := range ones {
		ones[i] = 0xff
	}
	one[0] = 0x80 // x^0
	special := [][16]byte{zero, one, ones}
	// Dense words reach the largest sums of terms in the integer products.
	for _, v := range []uint64{0, 1, 1 << 63, 0xf << 60, ^uint64(0) >> 4, ^uint64(0)} {
		for _, w := range []uint64{0, ^uint64(0)} {
			special = append(special, fromElement(fieldElement{v, w}), fromElement(fieldElement{w, v}))
		}
	}
	for _, x := range special {
		for _, h := range special {
			checkMul(t, x, h)
		}
	}
	// All products of two monomials x^i·x^j.
	for i := 0; i < 128; i++ {
		for j := 0; j < 128; j++ {
			var x, h [16]byte
			x[i/8] = 0x80 >> (i % 8)
			h[j/8] = 0x80 >> (j % 8)
			checkMul(t, x, h)
		}
	}
	for n := 0; n < 20000; n++ {
		var x, h [16]byte
		binary.BigEndian.PutUint64(x[:8], rng.Uint64())
		binary.BigEndian.PutUint64(x[8:], rng.Uint64())
		binary.BigEndian.PutUint64(h[:8], rng.Uint64())
		binary.BigEndian.PutUint64(h[8:], rng.Uint64())
		checkMul(t, x, h)
	}
}

// TestGHASHReference checks the powers of H and the streaming GHASH
// (including the four-block path) against refGHASH.
func TestGHASHReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for n := 0; n < 200; n++ {
		var h [16]byte
		copy(h[:], randBytes(rng, 16))
		g := newGHASH(&h)
		p := h
		for i := range g.h {
			if g.h[i] != newKeyPower(toElement(p)) {
				t.Fatalf("H^%d differs", i+1)
			}
			p = refMul(p, h)
		}
		data := randBytes(rng, rng.IntN(300))
		for rest := data; len(rest) > 0; {
			k := min(1+rng.IntN(80), len(rest))
			g.write(rest[:k])
			rest = rest[k:]
		}
		g.pad()
		if got, want := g.sum(), refGHASH(h, data); got != want {
			t.Fatalf("GHASH of %d bytes: got %x, want %x", len(data), got, want)
		}
	}
}

func FuzzGHASHMul(f *testing.F) {
	f.Add([]byte{0x80}, []byte{0x80})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("0123456789abcdef"), []byte("fedcba9876543210"))
	f.Fuzz(func(t *testing.T, xb, hb []byte) {
		var x, h [16]byte
		copy(x[:], xb)
		copy(h[:], hb)
		checkMul(t, x, h)
	})
}

func FuzzGHASH(f *testing.F) {
	f.Add([]byte("0123456789abcdef"), []byte("hello"), uint8(3))
	f.Add([]byte{1}, make([]byte, 100), uint8(64))
	f.Fuzz(func(t *testing.T, hb, data []byte, piece uint8) {
		var h [16]byte
		copy(h[:], hb)
		g := newGHASH(&h)
		p := max(int(piece), 1)
		for rest := data; len(rest) > 0; {
			k := min(p, len(rest))
			g.write(rest[:k])
			rest = rest[k:]
		}
		g.pad()
		if got, want := g.sum(), refGHASH(h, data); got != want {
			t.Fatalf("got %x, want %x", got, want)
		}
	})
}
