// Package backendcore holds what the twomemo and oldmemo backends share: own
// key management, the session type and symmetric primitives.
package backendcore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"

	"mellium.im/omemo/backends"
)

var zeroSalt [32]byte

// DeriveAEADKeys expands a message or payload key into an AES-256 key, an
// HMAC-SHA-256 key and a 16-byte IV: HKDF-SHA-256(ikm, salt = 32 zero
// bytes, info, 80) split 32/32/16, as both OMEMO versions do.
func DeriveAEADKeys(ikm []byte, info string) (encKey, authKey [32]byte, iv [16]byte) {
	// hkdf.Key only fails for lengths beyond 255*32.
	out, _ := hkdf.Key(sha256.New, ikm, zeroSalt[:], info, 80)
	copy(encKey[:], out[0:32])
	copy(authKey[:], out[32:64])
	copy(iv[:], out[64:80])
	clear(out)
	return encKey, authKey, iv
}

// CBCEncrypt encrypts with AES-256-CBC and PKCS#7 padding, appending to dst.
func CBCEncrypt(dst []byte, key [32]byte, iv [16]byte, plaintext []byte) []byte {
	block, _ := aes.NewCipher(key[:]) // a 32-byte key cannot fail
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	n := len(plaintext) + pad
	start := len(dst)
	dst = append(dst, plaintext...)
	for range pad {
		dst = append(dst, byte(pad))
	}
	out := dst[start : start+n]
	cipher.NewCBCEncrypter(block, iv[:]).CryptBlocks(out, out)
	return dst
}

// CBCDecrypt decrypts AES-256-CBC and removes PKCS#7 padding. The input was
// authenticated before, so a padding error is not an oracle; it is still
// reported without detail.
func CBCDecrypt(key [32]byte, iv [16]byte, ciphertext []byte) ([]byte, error) {
	if len(ciphertext) == 0 || len(ciphertext)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("%w: ciphertext length %d", backends.ErrDecryption, len(ciphertext))
	}
	block, _ := aes.NewCipher(key[:])
	out := make([]byte, len(ciphertext))
	cipher.NewCBCDecrypter(block, iv[:]).CryptBlocks(out, ciphertext)
	pad := int(out[len(out)-1])
	if pad == 0 || pad > aes.BlockSize {
		return nil, fmt.Errorf("%w: bad padding", backends.ErrDecryption)
	}
	var bad byte
	for _, b := range out[len(out)-pad:] {
		bad |= b ^ byte(pad)
	}
	if bad != 0 {
		return nil, fmt.Errorf("%w: bad padding", backends.ErrDecryption)
	}
	return out[:len(out)-pad], nil
}

// MAC computes HMAC-SHA-256(key, parts...) truncated to n bytes, appended to dst.
func MAC(dst []byte, key [32]byte, n int, parts ...[]byte) []byte {
	m := hmac.New(sha256.New, key[:])
	for _, p := range parts {
		m.Write(p)
	}
	var sum [sha256.Size]byte
	return append(dst, m.Sum(sum[:0])[:n]...)
}

// VerifyMAC checks a truncated HMAC in constant time.
func VerifyMAC(key [32]byte, tag []byte, parts ...[]byte) bool {
	var buf [sha256.Size]byte
	want := MAC(buf[:0], key, len(tag), parts...)
	return len(tag) > 0 && subtle.ConstantTimeCompare(want, tag) == 1
}
