package gcmstream

import "encoding/binary"

// fieldElement is an element of GF(2^128) in GCM's bit order: hi holds
// bytes 0..7 of the block big-endian, lo bytes 8..15; the most significant
// bit of byte 0 is the coefficient of x^0 and the least significant bit of
// byte 15 the coefficient of x^127 (NIST SP 800-38D, section 6.3).
type fieldElement struct {
	hi, lo uint64
}

// mulX multiplies v by x: a right shift in GCM's bit order, reduced modulo
// x^128 + x^7 + x^2 + x + 1 (R = 0xe1 || 0^120).
func mulX(v fieldElement) fieldElement {
	carry := v.lo & 1
	v.lo = v.lo>>1 | v.hi<<63
	v.hi >>= 1
	v.hi ^= (0xe1 << 56) & -carry
	return v
}

// ghash is GHASH_H (NIST SP 800-38D, algorithm 2) with 8-bit tables built
// per key: table[i][b] is the product of H and the element whose byte i is
// b and whose other bytes are 0. Multiplying Y by H is then the XOR of 16
// table entries, one per byte of Y, with no reduction step at run time.
// The tables take 64 KiB.
//
// The lookups depend on secret data (H and the running hash), so the
// running time is not independent of the data with respect to cache
// timing; see the package documentation.
type ghash struct {
	table [16][256]fieldElement
	y     fieldElement
	buf   [16]byte // a partial block
	nbuf  int
}

func newGHASH(h *[16]byte) *ghash {
	g := new(ghash)
	g.init(h)
	return g
}

func (g *ghash) init(h *[16]byte) {
	v := fieldElement{binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])}
	for i := range g.table {
		t := &g.table[i]
		// Byte value 0x80 is x^(8i), 0x40 is x^(8i+1), ..., 0x01 is
		// x^(8i+7).
		for bit := 0x80; bit > 0; bit >>= 1 {
			t[bit] = v
			v = mulX(v)
		}
		// Every other entry is the XOR of the entries of its bits.
		for j := 2; j < 256; j <<= 1 {
			for k := 1; k < j; k++ {
				t[j+k] = fieldElement{t[j].hi ^ t[k].hi, t[j].lo ^ t[k].lo}
			}
		}
	}
}

// mul returns y·H for y = (hi, lo).
// The running value stays in registers: storing it in the ghash struct,
// 64 KiB away from table entries at the same offsets modulo 4 KiB, makes
// the CPU stall on false store-to-load dependencies (4K aliasing).
func (g *ghash) mul(hi, lo uint64) (uint64, uint64) {
	t := &g.table
	z0 := &t[0][byte(hi>>56)]
	z1 := &t[1][byte(hi>>48)]
	z2 := &t[2][byte(hi>>40)]
	z3 := &t[3][byte(hi>>32)]
	z4 := &t[4][byte(hi>>24)]
	z5 := &t[5][byte(hi>>16)]
	z6 := &t[6][byte(hi>>8)]
	z7 := &t[7][byte(hi)]
	z8 := &t[8][byte(lo>>56)]
	z9 := &t[9][byte(lo>>48)]
	z10 := &t[10][byte(lo>>40)]
	z11 := &t[11][byte(lo>>32)]
	z12 := &t[12][byte(lo>>24)]
	z13 := &t[13][byte(lo>>16)]
	z14 := &t[14][byte(lo>>8)]
	z15 := &t[15][byte(lo)]
	return z0.hi ^ z1.hi ^ z2.hi ^ z3.hi ^ z4.hi ^ z5.hi ^ z6.hi ^ z7.hi ^
			z8.hi ^ z9.hi ^ z10.hi ^ z11.hi ^ z12.hi ^ z13.hi ^ z14.hi ^ z15.hi,
		z0.lo ^ z1.lo ^ z2.lo ^ z3.lo ^ z4.lo ^ z5.lo ^ z6.lo ^ z7.lo ^
			z8.lo ^ z9.lo ^ z10.lo ^ z11.lo ^ z12.lo ^ z13.lo ^ z14.lo ^ z15.lo
}

// blocks hashes whole 16-byte blocks; len(p) must be a multiple of 16.
func (g *ghash) blocks(p []byte) {
	hi, lo := g.y.hi, g.y.lo
	for len(p) >= 16 {
		hi, lo = g.mul(hi^binary.BigEndian.Uint64(p[:8]), lo^binary.BigEndian.Uint64(p[8:16]))
		p = p[16:]
	}
	g.y.hi, g.y.lo = hi, lo
}

// write hashes p as a continuation of the data written so far.
func (g *ghash) write(p []byte) {
	if g.nbuf > 0 {
		n := copy(g.buf[g.nbuf:], p)
		g.nbuf += n
		p = p[n:]
		if g.nbuf < 16 {
			return
		}
		g.blocks(g.buf[:])
		g.nbuf = 0
	}
	full := len(p) &^ 15
	g.blocks(p[:full])
	if rest := p[full:]; len(rest) > 0 {
		g.nbuf = copy(g.buf[:], rest)
	}
}

// pad completes a partial block with zero bytes, which ends a GHASH input
// segment (the additional data, the ciphertext, a long IV).
func (g *ghash) pad() {
	if g.nbuf > 0 {
		clear(g.buf[g.nbuf:])
		g.blocks(g.buf[:])
		g.nbuf = 0
	}
}

// lengths pads the current segment and hashes the final block
// [a]_64 || [b]_64 (both in bits).
func (g *ghash) lengths(a, b uint64) {
	g.pad()
	var blk [16]byte
	binary.BigEndian.PutUint64(blk[:8], a)
	binary.BigEndian.PutUint64(blk[8:], b)
	g.blocks(blk[:])
}

// sum returns the hash value.
func (g *ghash) sum() [16]byte {
	var out [16]byte
	binary.BigEndian.PutUint64(out[:8], g.y.hi)
	binary.BigEndian.PutUint64(out[8:], g.y.lo)
	return out
}

// reset starts a new hash with the same key.
func (g *ghash) reset() {
	g.y = fieldElement{}
	clear(g.buf[:])
	g.nbuf = 0
}

// wipe zeroes the tables (derived from the key) and the state.
func (g *ghash) wipe() {
	clear(g.table[:])
	g.reset()
}
