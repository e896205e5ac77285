package gcmstream

import (
	"encoding/binary"
	"math/bits"
)

// This file implements GHASH (NIST SP 800-38D, section 6.4) in constant
// time: no memory access and no branch depends on the hash key H or on the
// data being hashed. Multiplication in GF(2^128) is done with ordinary
// integer multiplications on "holey" integers, the technique of BearSSL's
// ghash_ctmul64 described by Thomas Pornin
// (https://www.bearssl.org/constanttime.html#ghash-for-gcm), followed by a
// reduction made of shifts and XORs.
//
// Carry-less multiplication with integer multiplications. A carry-less
// product (a polynomial product over GF(2)) differs from the integer
// product only by the carries. Keep only one bit out of every four of each
// operand: the bits at positions r, r+4, r+8, ... of one and s, s+4, ...
// of the other. Every term of their integer product lands on a position
// r+s+4m, and the number c_m of terms landing on r+s+4m is at most the
// number of bits kept in the sparser operand. If that is below 16, the
// product is the sum of the c_m·2^(r+s+4m) with every c_m < 16, a number
// written in base 16 without any carry from one position to the next:
// bit r+s+4m of the product is c_m mod 2, the XOR of the terms, which is
// the bit of the carry-less product. The three bits above it hold the rest
// of c_m, garbage that is masked off. Products of different pairs (r, s)
// with the same r+s mod 4 can be XORed before masking, as their garbage
// never reaches a position that is kept.
//
// A 64-bit operand has 16 bits in each class of positions modulo 4, one
// too many: the data side of each 64×64 product is therefore cut into its
// low 60 bits (15 per class, 4×4 = 16 multiplications whose products are
// sorted into the four classes of positions and masked) and its top four
// bits t (bits 60 to 63). t times one class of the other operand has no
// carries at all: its four bits shift that class onto four different
// classes, so no two terms ever land on the same position; that is four
// more multiplications, which need no masking.
//
// Why this is constant time: nothing is looked up in a table, and no
// branch depends on H or on the data. The multiplications are bits.Mul64,
// one MUL instruction on amd64 and MUL/UMULH on arm64, whose timing does
// not depend on the operands on current processors (elsewhere bits.Mul64
// is made of smaller multiplications without branches; a few old 32-bit
// cores, some ARM among them, end multiplications early for small
// operands, which this code cannot help). Everything else is AND, OR, XOR
// and shifts by constant amounts, so the generated code is straight-line
// (clmul64 and reduce contain no jumps at all). The powers of H are read
// at fixed offsets of the ghash struct, and the only branches are the loops
// over the input, which depend on its length alone, which is public.
//
// A 128×128-bit product takes three 64×64-bit products (Karatsuba), that is
// 60 multiplications, and the 256-bit result is reduced modulo
// x^128 + x^7 + x^2 + x + 1. Four blocks are hashed at a time with the
// precomputed powers H, H^2, H^3 and H^4 (Y_{i+4} = (Y_i XOR X_1)·H^4 XOR
// X_2·H^3 XOR X_3·H^2 XOR X_4·H): the four products are independent of
// each other, which lets the processor overlap them, and they share one
// reduction.

// fieldElement is an element of GF(2^128) in GCM's bit order: hi holds
// bytes 0..7 of the block big-endian, lo bytes 8..15; the most significant
// bit of byte 0 is the coefficient of x^0 and the least significant bit of
// byte 15 the coefficient of x^127 (NIST SP 800-38D, section 6.3). Read as
// the 128-bit integer hi·2^64 + lo, bit 127-i is the coefficient of x^i.
type fieldElement struct {
	hi, lo uint64
}

// Masks of the bit positions congruent to 0, 1, 2 and 3 modulo 4.
const (
	mask0 = 0x1111111111111111
	mask1 = 0x2222222222222222
	mask2 = 0x4444444444444444
	mask3 = 0x8888888888888888
)

// The same restricted to the low 60 bits (15 bits each), and the top four
// bits.
const (
	low0 = mask0 >> 4
	low1 = mask1 >> 4
	low2 = mask2 >> 4
	low3 = mask3 >> 4
	top4 = 0xf << 60
)

// split is a 64-bit word of the key side cut into its four classes of bit
// positions modulo 4 (16 bits each).
type split [4]uint64

func splitWord(w uint64) split {
	return split{w & mask0, w & mask1, w & mask2, w & mask3}
}

// clmul64 returns the carry-less (GF(2)[x]) product of x and the word y was
// split from, as a 128-bit integer hi·2^64 + lo.
func clmul64(x uint64, y *split) (hi, lo uint64) {
	// x's low 60 bits, at most 15 bits per class, so that no sum of terms
	// reaches 16 (see the top of the file).
	x0, x1, x2, x3 := x&low0, x&low1, x&low2, x&low3

	// Class 0 of the product (positions 0 mod 4): the products of classes
	// r and s with r+s = 0 mod 4. The classes of the high word are those of
	// the low word, 64 being a multiple of 4.
	h, l := bits.Mul64(x0, y[0])
	h, l = mulXor(h, l, x1, y[3])
	h, l = mulXor(h, l, x2, y[2])
	h, l = mulXor(h, l, x3, y[1])
	hi, lo = h&mask0, l&mask0

	// Class 1.
	h, l = bits.Mul64(x0, y[1])
	h, l = mulXor(h, l, x1, y[0])
	h, l = mulXor(h, l, x2, y[3])
	h, l = mulXor(h, l, x3, y[2])
	hi, lo = hi|h&mask1, lo|l&mask1

	// Class 2.
	h, l = bits.Mul64(x0, y[2])
	h, l = mulXor(h, l, x1, y[1])
	h, l = mulXor(h, l, x2, y[0])
	h, l = mulXor(h, l, x3, y[3])
	hi, lo = hi|h&mask2, lo|l&mask2

	// Class 3.
	h, l = bits.Mul64(x0, y[3])
	h, l = mulXor(h, l, x1, y[2])
	h, l = mulXor(h, l, x2, y[1])
	h, l = mulXor(h, l, x3, y[0])
	hi, lo = hi|h&mask3, lo|l&mask3

	// The top four bits of x: carry-free products, one per class of y.
	t := x & top4
	hi, lo = mulXor(hi, lo, t, y[0])
	hi, lo = mulXor(hi, lo, t, y[1])
	hi, lo = mulXor(hi, lo, t, y[2])
	hi, lo = mulXor(hi, lo, t, y[3])
	return hi, lo
}

// mulXor returns (h, l) XOR the 128-bit product of a and b.
func mulXor(h, l, a, b uint64) (uint64, uint64) {
	ph, pl := bits.Mul64(a, b)
	return h ^ ph, l ^ pl
}

// keyPower is a power of H prepared for multiplication: its two words and
// their XOR (for Karatsuba), each split into classes.
type keyPower struct {
	hi, lo, mid split
}

func newKeyPower(v fieldElement) keyPower {
	return keyPower{splitWord(v.hi), splitWord(v.lo), splitWord(v.hi ^ v.lo)}
}

// wide is a 256-bit carry-less product, z3 the most significant word.
type wide struct {
	z3, z2, z1, z0 uint64
}

// mulWide returns the 255-bit carry-less product of the 128-bit integers
// (xhi, xlo) and k, with Karatsuba's three 64×64-bit products.
func mulWide(xhi, xlo uint64, k *keyPower) wide {
	hh, hl := clmul64(xhi, &k.hi)
	lh, ll := clmul64(xlo, &k.lo)
	mh, ml := clmul64(xhi^xlo, &k.mid)
	mh ^= hh ^ lh
	ml ^= hl ^ ll
	return wide{hh, hl ^ mh, lh ^ ml, ll}
}

func (w *wide) xor(v wide) {
	w.z3 ^= v.z3
	w.z2 ^= v.z2
	w.z1 ^= v.z1
	w.z0 ^= v.z0
}

// reduce returns the field element of a product from mulWide.
//
// In the integer product, bit 254-i is the coefficient of x^i (bit 127-i
// in each operand): shifted left by one, bit 255-i is the coefficient of
// x^i, so z3, z2 hold x^0..x^127 in the layout of a fieldElement and z1,
// z0 hold x^128..x^255. Each term x^(128+j) of those is replaced by
// x^j·(x^7 + x^2 + x + 1); multiplying by x is a right shift in this bit
// order. The terms of z0 land in z2 and z1; those that land in z1 are
// folded in turn with those of z1, which land in z3 and z2.
func reduce(w wide) fieldElement {
	z3 := w.z3<<1 | w.z2>>63
	z2 := w.z2<<1 | w.z1>>63
	z1 := w.z1<<1 | w.z0>>63
	z0 := w.z0 << 1

	z2 ^= z0 ^ z0>>1 ^ z0>>2 ^ z0>>7
	z1 ^= z0<<63 ^ z0<<62 ^ z0<<57
	z3 ^= z1 ^ z1>>1 ^ z1>>2 ^ z1>>7
	z2 ^= z1<<63 ^ z1<<62 ^ z1<<57
	return fieldElement{z3, z2}
}

// mul returns x·k.
func mul(x fieldElement, k *keyPower) fieldElement {
	return reduce(mulWide(x.hi, x.lo, k))
}

// ghash is GHASH_H (NIST SP 800-38D, algorithm 2), computed in constant
// time (see the top of the file).
type ghash struct {
	h    [4]keyPower // H, H^2, H^3, H^4
	y    fieldElement
	buf  [16]byte // a partial block
	nbuf int
}

func newGHASH(h *[16]byte) *ghash {
	g := new(ghash)
	g.init(h)
	return g
}

func (g *ghash) init(h *[16]byte) {
	v := fieldElement{binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])}
	g.h[0] = newKeyPower(v)
	p := v
	for i := 1; i < len(g.h); i++ {
		p = mul(p, &g.h[0])
		g.h[i] = newKeyPower(p)
	}
}

// blocks hashes whole 16-byte blocks; len(p) must be a multiple of 16.
func (g *ghash) blocks(p []byte) {
	y := g.y
	for len(p) >= 64 {
		acc := mulWide(y.hi^binary.BigEndian.Uint64(p[0:8]), y.lo^binary.BigEndian.Uint64(p[8:16]), &g.h[3])
		acc.xor(mulWide(binary.BigEndian.Uint64(p[16:24]), binary.BigEndian.Uint64(p[24:32]), &g.h[2]))
		acc.xor(mulWide(binary.BigEndian.Uint64(p[32:40]), binary.BigEndian.Uint64(p[40:48]), &g.h[1]))
		acc.xor(mulWide(binary.BigEndian.Uint64(p[48:56]), binary.BigEndian.Uint64(p[56:64]), &g.h[0]))
		y = reduce(acc)
		p = p[64:]
	}
	for len(p) >= 16 {
		y = mul(fieldElement{y.hi ^ binary.BigEndian.Uint64(p[:8]), y.lo ^ binary.BigEndian.Uint64(p[8:16])}, &g.h[0])
		p = p[16:]
	}
	g.y = y
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

// wipe zeroes the powers of H (derived from the key) and the state.
func (g *ghash) wipe() {
	clear(g.h[:])
	g.reset()
}
