// Package gcmstream implements AES-GCM (NIST SP 800-38D) over streams:
// the ciphertext of a message of any size (up to GCM's limit of 2^36-32
// bytes) is produced and consumed in pieces, in constant memory, with the
// 16-byte tag computed at the end. crypto/cipher's GCM needs the whole
// message in memory; the output of this package is bit for bit the same
// (the tests compare the two, and check the Wycheproof AES-GCM vectors).
//
// Encryption is AES in counter mode, from crypto/aes and crypto/cipher's CTR
// (hardware accelerated where Go has assembly for it), started at inc32(J0)
// where J0 is IV || 0^31 || 1 for a 96-bit IV and GHASH_H(IV || padding ||
// [len(IV)]_64) for any other length. Only the low 32 bits of the counter
// are incremented, as GCM requires: the stream is restarted at the point
// where they wrap around, which matters for IVs other than 96 bits.
// The tag is GHASH_H(A || C || lengths) XOR E_K(J0), computed by a
// constant-time GHASH written in Go: carry-less multiplication done with
// integer multiplications on operands with holes between their bits (the
// "ctmul64" technique of BearSSL), four blocks at a time with precomputed
// powers of H, and a reduction made of shifts and XORs.
//
// Decryption through an Opener hands out plaintext before the tag has been
// checked: the caller must treat everything it wrote as unauthenticated
// until Close returned nil, and throw it away otherwise.
//
// Side channels: GHASH is constant time. It looks nothing up in tables and
// takes no branch that depends on the hash key H or on the data hashed, so
// its memory accesses and running time depend only on the lengths of the
// inputs, which are public. This assumes, like BearSSL, that the processor
// multiplies 64-bit integers in constant time, as current amd64 and arm64
// processors do. AES itself comes from crypto/aes, which is constant time
// where Go uses the processor's AES instructions (AES-NI on amd64, the
// ARMv8 cryptography extensions on arm64, ...); its pure-Go fallback is
// not. GHASH in Go is several times slower than crypto/cipher's carry-less
// multiplication instructions: crypto/cipher's GCM remains the choice for
// messages that fit in memory.
package gcmstream // import "mellium.im/omemo/internal/gcmstream"

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"io"
)

// TagSize is the size of the authentication tag in bytes.
const TagSize = 16

// MaxSize is the largest plaintext GCM allows, in bytes (2^39-256 bits).
const MaxSize = 1<<36 - 32

// Errors.
var (
	// ErrAuth means that the tag did not match: the ciphertext, the tag,
	// the key, the IV or the additional data were changed.
	ErrAuth = errors.New("gcmstream: message authentication failed")
	// ErrTooLong means that the message would exceed MaxSize.
	ErrTooLong = errors.New("gcmstream: message too long for GCM")
	// ErrIV means an IV of length 0.
	ErrIV = errors.New("gcmstream: empty IV")
	// ErrFinished means an Encrypt or Decrypt after Tag, or mixing the two.
	ErrFinished = errors.New("gcmstream: cipher used after Tag or in both directions")
)

const (
	dirNone = iota
	dirEncrypt
	dirDecrypt
	dirDone
)

// Cipher is the state of one GCM encryption or decryption.
// A Cipher is not safe for concurrent use.
type Cipher struct {
	block   cipher.Block
	g       *ghash
	tagMask [16]byte // E_K(J0)
	ctr     cipher.Stream
	cb      [16]byte // counter block at the start of the current CTR segment
	segLeft uint64   // bytes left before the low 32 bits of the counter wrap
	n       uint64   // message bytes processed
	aadLen  uint64
	dir     int
	tag     [16]byte
}

// New returns a Cipher for the AES key (16, 24 or 32 bytes), the IV (any
// non-zero length; 12 bytes is what GCM is designed for) and the additional
// authenticated data aad (may be nil), which is hashed right away.
func New(key, iv, aad []byte) (*Cipher, error) {
	if len(iv) == 0 {
		return nil, ErrIV
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	c := &Cipher{block: block}
	var h [16]byte
	block.Encrypt(h[:], h[:])
	c.g = newGHASH(&h)
	clear(h[:])

	var j0 [16]byte
	if len(iv) == 12 {
		copy(j0[:], iv)
		j0[15] = 1
	} else {
		c.g.write(iv)
		c.g.lengths(0, uint64(len(iv))*8)
		j0 = c.g.sum()
		c.g.reset()
	}
	block.Encrypt(c.tagMask[:], j0[:])

	c.cb = j0
	ctr := binary.BigEndian.Uint32(c.cb[12:]) + 1 // inc32
	binary.BigEndian.PutUint32(c.cb[12:], ctr)
	c.segLeft = (1<<32 - uint64(ctr)) * 16
	c.ctr = cipher.NewCTR(block, c.cb[:])
	clear(j0[:])

	c.g.write(aad)
	c.g.pad()
	c.aadLen = uint64(len(aad))
	return c, nil
}

// xor applies the key stream, restarting the CTR stream with the low 32
// bits of the counter at 0 where they wrap around (inc32).
func (c *Cipher) xor(dst, src []byte) {
	for len(src) > 0 {
		if c.segLeft == 0 {
			binary.BigEndian.PutUint32(c.cb[12:], 0)
			c.ctr = cipher.NewCTR(c.block, c.cb[:])
			c.segLeft = 1 << 36
		}
		k := len(src)
		if uint64(k) > c.segLeft {
			k = int(c.segLeft)
		}
		c.ctr.XORKeyStream(dst[:k], src[:k])
		c.segLeft -= uint64(k)
		dst, src = dst[k:], src[k:]
	}
}

func (c *Cipher) start(dir, n int) error {
	if c.dir != dirNone && c.dir != dir {
		return ErrFinished
	}
	if uint64(n) > MaxSize-c.n {
		return ErrTooLong
	}
	c.dir = dir
	c.n += uint64(n)
	return nil
}

// Encrypt encrypts src into dst, continuing the message. dst must be at
// least as long as src; they may overlap entirely or not at all.
func (c *Cipher) Encrypt(dst, src []byte) error {
	if err := c.start(dirEncrypt, len(src)); err != nil {
		return err
	}
	dst = dst[:len(src)]
	c.xor(dst, src)
	c.g.write(dst)
	return nil
}

// Decrypt decrypts src into dst, continuing the message (without the tag).
// dst must be at least as long as src; they may overlap entirely or not at
// all. The plaintext is not authenticated before Verify returned true.
func (c *Cipher) Decrypt(dst, src []byte) error {
	if err := c.start(dirDecrypt, len(src)); err != nil {
		return err
	}
	c.g.write(src)
	c.xor(dst[:len(src)], src)
	return nil
}

// Tag ends the message and returns its tag; further calls return the same
// tag, and Encrypt and Decrypt fail.
func (c *Cipher) Tag() [TagSize]byte {
	if c.dir != dirDone {
		c.dir = dirDone
		c.g.lengths(c.aadLen*8, c.n*8)
		s := c.g.sum()
		subtle.XORBytes(c.tag[:], s[:], c.tagMask[:])
	}
	return c.tag
}

// Verify ends the message and reports, in constant time, whether tag is
// its tag.
func (c *Cipher) Verify(tag []byte) bool {
	t := c.Tag()
	return subtle.ConstantTimeCompare(t[:], tag) == 1
}

// Size returns the number of message bytes processed so far.
func (c *Cipher) Size() uint64 { return c.n }

// Wipe zeroes the state derived from the key that the Cipher holds (the
// powers of the GHASH key H, E_K(J0), the counter); the AES key schedule
// inside crypto/aes cannot be reached and is left to the garbage collector.
// The Cipher is unusable afterwards.
func (c *Cipher) Wipe() {
	if c.g != nil {
		c.g.wipe()
	}
	clear(c.tagMask[:])
	clear(c.cb[:])
	clear(c.tag[:])
	c.ctr = nil
	c.dir = dirDone
}

// Sealer is an io.Reader of the ciphertext of what it reads from a
// plaintext reader, followed by the tag.
type Sealer struct {
	c      *Cipher
	r      io.Reader
	tag    [TagSize]byte
	tagOff int
	eof    bool
	err    error
}

// NewSealer returns a Sealer that encrypts what it reads from r with c,
// which must be new.
func NewSealer(c *Cipher, r io.Reader) *Sealer {
	return &Sealer{c: c, r: r}
}

// Read implements io.Reader; it encrypts in p.
func (s *Sealer) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !s.eof {
		n, err := s.r.Read(p)
		if n > 0 {
			if e := s.c.Encrypt(p[:n], p[:n]); e != nil {
				s.err = e
				return 0, e
			}
		}
		switch {
		case err == io.EOF:
			s.eof = true
			s.tag = s.c.Tag()
			if n > 0 {
				return n, nil
			}
		case err != nil:
			s.err = err
			return n, err
		default:
			return n, nil
		}
	}
	if s.tagOff == TagSize {
		return 0, io.EOF
	}
	n := copy(p, s.tag[s.tagOff:])
	s.tagOff += n
	return n, nil
}

// Opener is an io.WriteCloser that decrypts ciphertext followed by a tag:
// it holds back the last TagSize bytes written (the tag, once the stream
// ends), writes the plaintext of the others to the underlying writer as
// they come, and verifies the tag in Close.
// What it wrote is unauthenticated until Close returned nil.
type Opener struct {
	c      *Cipher
	w      io.Writer
	held   [TagSize]byte
	nheld  int
	buf    []byte
	err    error
	closed bool
}

// NewOpener returns an Opener that decrypts with c, which must be new, into
// w.
func NewOpener(c *Cipher, w io.Writer) *Opener {
	return &Opener{c: c, w: w}
}

// Write implements io.Writer; p is not modified.
func (o *Opener) Write(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	if o.closed {
		return 0, ErrFinished
	}
	if o.nheld+len(p) <= TagSize {
		o.nheld += copy(o.held[o.nheld:], p)
		return len(p), nil
	}
	release := o.nheld + len(p) - TagSize
	if fromHeld := min(release, o.nheld); fromHeld > 0 {
		var tmp [TagSize]byte
		copy(tmp[:], o.held[:fromHeld])
		o.nheld = copy(o.held[:], o.held[fromHeld:o.nheld])
		if err := o.out(tmp[:fromHeld]); err != nil {
			return 0, err
		}
		release -= fromHeld
	}
	if err := o.out(p[:release]); err != nil {
		return 0, err
	}
	o.nheld += copy(o.held[o.nheld:], p[release:])
	return len(p), nil
}

const chunk = 32 << 10

func (o *Opener) out(ct []byte) error {
	for len(ct) > 0 {
		if o.buf == nil {
			o.buf = make([]byte, chunk)
		}
		k := min(len(ct), len(o.buf))
		if err := o.c.Decrypt(o.buf[:k], ct[:k]); err != nil {
			o.err = err
			return err
		}
		if _, err := o.w.Write(o.buf[:k]); err != nil {
			o.err = err
			return err
		}
		ct = ct[k:]
	}
	return nil
}

// Close verifies the tag (the last TagSize bytes written): it returns
// ErrAuth if they are not the tag of what came before, or if fewer than
// TagSize bytes were written. It does not close the underlying writer.
func (o *Opener) Close() error {
	if o.closed {
		return o.err
	}
	o.closed = true
	if o.err != nil {
		return o.err
	}
	if o.nheld < TagSize || !o.c.Verify(o.held[:]) {
		o.err = ErrAuth
	}
	return o.err
}
