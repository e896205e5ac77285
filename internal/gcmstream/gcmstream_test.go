package gcmstream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// reference seals with crypto/cipher's GCM.
func reference(t testing.TB, key, iv, aad, msg []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	var aead cipher.AEAD
	if len(iv) == 12 {
		aead, err = cipher.NewGCM(block)
	} else {
		aead, err = cipher.NewGCMWithNonceSize(block, len(iv))
	}
	if err != nil {
		t.Fatal(err)
	}
	return aead.Seal(nil, iv, msg, aad)
}

// splitWriter feeds p to w in pieces of random sizes (0 to max bytes).
func splitWrite(t testing.TB, rng *rand.Rand, w io.Writer, p []byte, max int) {
	t.Helper()
	for len(p) > 0 {
		k := min(rng.IntN(max+1), len(p))
		n, err := w.Write(p[:k])
		if err != nil || n != k {
			t.Fatalf("Write(%d) = %d, %v", k, n, err)
		}
		p = p[k:]
	}
}

// chunkReader returns at most max bytes per Read, sometimes 0.
type chunkReader struct {
	r   io.Reader
	rng *rand.Rand
	max int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	k := min(c.rng.IntN(c.max+1), len(p))
	return c.r.Read(p[:k])
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func lengths() []int {
	ls := []int{}
	for n := 0; n <= 130; n++ {
		ls = append(ls, n)
	}
	return append(ls, 255, 256, 257, 1000, 4095, 4096, 4097, 32<<10-1, 32<<10, 32<<10+1, 100_003, 1<<20+5)
}

func TestCompareWithCryptoCipher(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, keySize := range []int{16, 24, 32} {
		for _, ivSize := range []int{12, 16, 1, 8, 13, 32, 60} {
			for _, n := range lengths() {
				if keySize != 32 && n > 4097 {
					continue
				}
				for _, aadLen := range []int{0, 1, 16, 33} {
					if aadLen != 0 && (ivSize != 12 && ivSize != 16 || n > 300) {
						continue
					}
					key, iv := randBytes(rng, keySize), randBytes(rng, ivSize)
					aad, msg := randBytes(rng, aadLen), randBytes(rng, n)
					want := reference(t, key, iv, aad, msg)
					name := fmt.Sprintf("k%d/iv%d/aad%d/n%d", keySize, ivSize, aadLen, n)
					checkOne(t, rng, name, key, iv, aad, msg, want)
				}
			}
		}
	}
}

func checkOne(t *testing.T, rng *rand.Rand, name string, key, iv, aad, msg, want []byte) {
	t.Helper()
	// Whole-buffer Encrypt.
	c, err := New(key, iv, aad)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	got := make([]byte, len(msg))
	if err := c.Encrypt(got, msg); err != nil {
		t.Fatal(err)
	}
	tag := c.Tag()
	got = append(got, tag[:]...)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: Encrypt differs from crypto/cipher", name)
	}

	// Sealer, random read sizes.
	c, _ = New(key, iv, aad)
	sealed, err := io.ReadAll(NewSealer(c, &chunkReader{bytes.NewReader(msg), rng, 1 + rng.IntN(70)}))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sealed, want) {
		t.Fatalf("%s: Sealer differs from crypto/cipher", name)
	}

	// Opener, random write sizes.
	c, _ = New(key, iv, aad)
	var plain bytes.Buffer
	o := NewOpener(c, &plain)
	splitWrite(t, rng, o, want, 1+rng.IntN(70))
	if err := o.Close(); err != nil {
		t.Fatalf("%s: Opener.Close: %v", name, err)
	}
	if !bytes.Equal(plain.Bytes(), msg) {
		t.Fatalf("%s: Opener plaintext differs", name)
	}

	// In-place Decrypt in one call plus Verify.
	c, _ = New(key, iv, aad)
	ct := bytes.Clone(want[:len(msg)])
	if err := c.Decrypt(ct, ct); err != nil {
		t.Fatal(err)
	}
	if !c.Verify(want[len(msg):]) || !bytes.Equal(ct, msg) {
		t.Fatalf("%s: Decrypt/Verify failed", name)
	}
}

// TestCounterWrap checks inc32 against a reference key stream across the
// point where the low 32 bits of the counter wrap around (crypto/cipher's
// CTR would carry into the upper 96 bits).
func TestCounterWrap(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	block, _ := aes.NewCipher(key)
	for _, start := range []uint32{0xffffffff, 0xfffffffe, 0xfffffff0, 0} {
		c, err := New(key, make([]byte, 12), nil)
		if err != nil {
			t.Fatal(err)
		}
		var cb [16]byte
		copy(cb[:], "0123456789ab")
		binary.BigEndian.PutUint32(cb[12:], start)
		c.cb = cb
		c.segLeft = (1<<32 - uint64(start)) * 16
		c.ctr = cipher.NewCTR(block, cb[:])

		const blocks = 40
		want := make([]byte, blocks*16)
		ref := cb
		for i := 0; i < blocks; i++ {
			block.Encrypt(want[i*16:], ref[:])
			binary.BigEndian.PutUint32(ref[12:], binary.BigEndian.Uint32(ref[12:])+1)
		}
		got := make([]byte, len(want))
		// Odd piece sizes so that the wrap falls inside a piece.
		for off := 0; off < len(got); {
			k := min(7, len(got)-off)
			c.xor(got[off:off+k], got[off:off+k])
			off += k
		}
		if !bytes.Equal(got, want) {
			t.Errorf("start %#x: key stream differs across the 32-bit wrap", start)
		}
	}
}

type wycheproof struct {
	TestGroups []struct {
		KeySize int `json:"keySize"`
		IVSize  int `json:"ivSize"`
		TagSize int `json:"tagSize"`
		Tests   []struct {
			TcID    int      `json:"tcId"`
			Comment string   `json:"comment"`
			Flags   []string `json:"flags"`
			Key     string   `json:"key"`
			IV      string   `json:"iv"`
			AAD     string   `json:"aad"`
			Msg     string   `json:"msg"`
			CT      string   `json:"ct"`
			Tag     string   `json:"tag"`
			Result  string   `json:"result"`
		} `json:"tests"`
	} `json:"testGroups"`
}

func TestWycheproof(t *testing.T) {
	data, err := os.ReadFile("testdata/aes_gcm_test.json")
	if err != nil {
		t.Fatal(err)
	}
	var f wycheproof
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	counts := map[string]int{}
	for _, g := range f.TestGroups {
		if g.TagSize != 128 {
			t.Fatalf("unexpected tag size %d", g.TagSize)
		}
		for _, tc := range g.Tests {
			key, iv, aad := unhex(tc.Key), unhex(tc.IV), unhex(tc.AAD)
			msg, ct, tag := unhex(tc.Msg), unhex(tc.CT), unhex(tc.Tag)
			name := fmt.Sprintf("tc %d (%d-bit key, %d-bit IV, %v, %s)", tc.TcID, g.KeySize, g.IVSize, tc.Flags, tc.Comment)
			c, err := New(key, iv, aad)
			if len(iv) == 0 {
				if err == nil || tc.Result == "valid" {
					t.Errorf("%s: empty IV: err %v, result %s", name, err, tc.Result)
				}
				counts["refused empty IV"]++
				continue
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			// Decrypt through an Opener, in two pieces.
			var plain bytes.Buffer
			o := NewOpener(c, &plain)
			in := append(bytes.Clone(ct), tag...)
			half := len(in) / 2
			if _, err := o.Write(in[:half]); err != nil {
				t.Fatal(err)
			}
			if _, err := o.Write(in[half:]); err != nil {
				t.Fatal(err)
			}
			err = o.Close()
			switch tc.Result {
			case "valid":
				if err != nil || !bytes.Equal(plain.Bytes(), msg) {
					t.Errorf("%s: valid vector: %v", name, err)
				}
				// And encryption gives the vector's ciphertext and tag.
				c, _ := New(key, iv, aad)
				sealed, _ := io.ReadAll(NewSealer(c, bytes.NewReader(msg)))
				if !bytes.Equal(sealed, in) {
					t.Errorf("%s: encryption differs", name)
				}
				counts["valid"]++
			case "invalid":
				if !errors.Is(err, ErrAuth) {
					t.Errorf("%s: invalid vector accepted (%v)", name, err)
				}
				counts["invalid"]++
			default:
				t.Errorf("%s: result %q", name, tc.Result)
			}
			if g.KeySize == 256 && (g.IVSize == 96 || g.IVSize == 128) {
				counts[fmt.Sprintf("256-bit key, %d-bit IV", g.IVSize)]++
			}
			for _, fl := range tc.Flags {
				counts["flag "+fl]++
			}
		}
	}
	t.Logf("%v", counts)
	if counts["flag CounterWrap"] == 0 || counts["256-bit key, 96-bit IV"] == 0 || counts["256-bit key, 128-bit IV"] == 0 {
		t.Fatal("vector file lacks the groups this test relies on")
	}
}

func TestOpenerRejects(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	key, iv := randBytes(rng, 32), randBytes(rng, 12)
	msg := randBytes(rng, 100)
	sealed := reference(t, key, iv, nil, msg)
	open := func(in []byte) error {
		c, _ := New(key, iv, nil)
		o := NewOpener(c, io.Discard)
		if _, err := o.Write(in); err != nil {
			return err
		}
		return o.Close()
	}
	if err := open(sealed); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(sealed)*8; i++ {
		bad := bytes.Clone(sealed)
		bad[i/8] ^= 1 << (i % 8)
		if err := open(bad); !errors.Is(err, ErrAuth) {
			t.Fatalf("bit %d flipped: %v", i, err)
		}
	}
	for _, n := range []int{0, 1, 15, 16, len(sealed) - 1} {
		if err := open(sealed[:n]); !errors.Is(err, ErrAuth) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
	if err := open(append(bytes.Clone(sealed), 0)); !errors.Is(err, ErrAuth) {
		t.Fatalf("extra byte: %v", err)
	}
	// Wrong key, wrong IV.
	c, _ := New(randBytes(rng, 32), iv, nil)
	o := NewOpener(c, io.Discard)
	_, _ = o.Write(sealed)
	if err := o.Close(); !errors.Is(err, ErrAuth) {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestMisuse(t *testing.T) {
	c, err := New(make([]byte, 32), make([]byte, 12), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Encrypt(make([]byte, 3), make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	if err := c.Decrypt(make([]byte, 3), make([]byte, 3)); !errors.Is(err, ErrFinished) {
		t.Fatalf("mixed directions: %v", err)
	}
	t1 := c.Tag()
	if err := c.Encrypt(make([]byte, 3), make([]byte, 3)); !errors.Is(err, ErrFinished) {
		t.Fatalf("after Tag: %v", err)
	}
	if t2 := c.Tag(); t1 != t2 {
		t.Fatal("Tag not stable")
	}
	if _, err := New(make([]byte, 31), make([]byte, 12), nil); err == nil {
		t.Fatal("31-byte key accepted")
	}
	if _, err := New(make([]byte, 32), nil, nil); !errors.Is(err, ErrIV) {
		t.Fatalf("empty IV: %v", err)
	}
	c, _ = New(make([]byte, 32), make([]byte, 12), nil)
	c.n = MaxSize - 10
	if err := c.Encrypt(make([]byte, 11), make([]byte, 11)); !errors.Is(err, ErrTooLong) {
		t.Fatalf("over MaxSize: %v", err)
	}
	if err := c.Encrypt(make([]byte, 10), make([]byte, 10)); err != nil {
		t.Fatalf("up to MaxSize: %v", err)
	}
	c.Wipe()
	if c.g.h != [4]keyPower{} || c.tagMask != [16]byte{} {
		t.Fatal("Wipe left key material")
	}
}

func FuzzCompare(f *testing.F) {
	f.Add(make([]byte, 32), make([]byte, 12), []byte{}, []byte("hello"), uint8(3))
	f.Add(make([]byte, 32), make([]byte, 16), []byte{1}, bytes.Repeat([]byte{1}, 70), uint8(16))
	f.Fuzz(func(t *testing.T, key, iv, aad, msg []byte, piece uint8) {
		if len(key) != 32 || len(iv) == 0 || len(iv) > 64 {
			return
		}
		want := reference(t, key, iv, aad, msg)
		c, err := New(key, iv, aad)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		p := max(int(piece), 1)
		for rest := msg; len(rest) > 0; {
			k := min(p, len(rest))
			out := make([]byte, k)
			if err := c.Encrypt(out, rest[:k]); err != nil {
				t.Fatal(err)
			}
			got.Write(out)
			rest = rest[k:]
		}
		tag := c.Tag()
		got.Write(tag[:])
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatal("differs from crypto/cipher")
		}
		c, _ = New(key, iv, aad)
		var plain bytes.Buffer
		o := NewOpener(c, &plain)
		for rest := want; len(rest) > 0; {
			k := min(p, len(rest))
			_, _ = o.Write(rest[:k])
			rest = rest[k:]
		}
		if err := o.Close(); err != nil || !bytes.Equal(plain.Bytes(), msg) {
			t.Fatalf("open: %v", err)
		}
	})
}

const benchSize = 64 << 20

// BenchmarkGHASH hashes 64 MiB of random bytes (the ciphertext GCM hashes
// looks random).
func BenchmarkGHASH(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	g := newGHASH((*[16]byte)(randBytes(rng, 16)))
	buf := randBytes(rng, benchSize)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g.write(buf)
	}
}

// BenchmarkCTROnly is crypto/cipher's AES-256-CTR alone, in place.
func BenchmarkCTROnly(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	buf := make([]byte, benchSize)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cipher.NewCTR(block, make([]byte, 16)).XORKeyStream(buf, buf)
	}
}

// zeroReader is an endless source of zero bytes.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkSealer measures the streaming pipeline as media uses it: a
// plaintext reader through a Sealer, copied with a 32 KiB buffer.
func BenchmarkSealer(b *testing.B) {
	buf := make([]byte, chunk)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _ := New(make([]byte, 32), make([]byte, 12), nil)
		s := NewSealer(c, io.LimitReader(zeroReader{}, benchSize))
		if n, err := io.CopyBuffer(io.Discard, s, buf); err != nil || n != benchSize+TagSize {
			b.Fatal(n, err)
		}
	}
}

// BenchmarkOpener decrypts 64 MiB written in 32 KiB pieces.
func BenchmarkOpener(b *testing.B) {
	key, iv := make([]byte, 32), make([]byte, 12)
	c, _ := New(key, iv, nil)
	sealed, _ := io.ReadAll(NewSealer(c, bytes.NewReader(make([]byte, benchSize))))
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, _ := New(key, iv, nil)
		o := NewOpener(c, io.Discard)
		for off := 0; off < len(sealed); off += chunk {
			_, _ = o.Write(sealed[off:min(off+chunk, len(sealed))])
		}
		if err := o.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCryptoCipherSeal is the baseline: crypto/cipher's GCM (AES-NI
// and PCLMULQDQ assembly) sealing the same 64 MiB in memory, in one call.
func BenchmarkCryptoCipherSeal(b *testing.B) {
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	buf := make([]byte, benchSize, benchSize+16)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		aead.Seal(buf[:0], make([]byte, 12), buf, nil)
	}
}
