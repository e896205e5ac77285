package kdf

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

func TestHMACMatchesStdlib(t *testing.T) {
	for _, keyLen := range []int{0, 1, 32, 64, 65, 100} {
		for _, msgLen := range []int{0, 1, 63, 64, 65, 200, maxFast - 1, maxFast, maxFast + 1, 2000} {
			key := make([]byte, keyLen)
			msg := make([]byte, msgLen)
			rand.Read(key)
			rand.Read(msg)
			m := hmac.New(sha256.New, key)
			m.Write(msg)
			want := m.Sum(nil)
			split := msgLen / 3
			got := HMAC(key, msg[:split], msg[split:2*split], msg[2*split:])
			if !bytes.Equal(got[:], want) {
				t.Fatalf("key %d msg %d: got %x want %x", keyLen, msgLen, got, want)
			}
		}
	}
}

func TestHKDFMatchesStdlib(t *testing.T) {
	for _, n := range []int{1, 32, 33, 64, 80, 255 * 32} {
		ikm := make([]byte, 32)
		rand.Read(ikm)
		for _, salt := range [][]byte{nil, make([]byte, 32), ikm[:7]} {
			want, err := hkdf.Key(sha256.New, ikm, salt, "OMEMO Payload", n)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, n)
			Key(got, ikm, salt, []byte("OMEMO Payload"))
			if !bytes.Equal(got, want) {
				t.Fatalf("L=%d salt %x: mismatch", n, salt)
			}
		}
	}
}

// RFC 5869 test case 1.
func TestHKDFRFC5869(t *testing.T) {
	ikm := bytes.Repeat([]byte{0x0b}, 22)
	salt := []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	info := []byte{0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9}
	out := make([]byte, 42)
	Key(out, ikm, salt, info)
	want := "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
	if got := bytesHex(out); got != want {
		t.Fatalf("got %s want %s", got, want)
	}
}

func bytesHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func TestNoAllocations(t *testing.T) {
	key := make([]byte, 32)
	msg := make([]byte, 170)
	out := make([]byte, 80)
	if n := testing.AllocsPerRun(100, func() { HMAC(key, msg, msg[:10]) }); n != 0 {
		t.Errorf("HMAC allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { Key(out, key, nil, []byte("OMEMO Message Key Material")) }); n != 0 {
		t.Errorf("HKDF allocates %v times", n)
	}
}
