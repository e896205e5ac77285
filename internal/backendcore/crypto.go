// Package backendcore holds what the twomemo and oldmemo backends share: own
// key management, the session type and symmetric primitives.
package backendcore

import (
	"crypto/aes"
	"crypto/subtle"
	"fmt"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/kdf"
)

// DeriveAEADKeys expands a message or payload key into an AES-256 key, an
// HMAC-SHA-256 key and a 16-byte IV: HKDF-SHA-256(ikm, salt = 32 zero
// bytes, info, 80) split 32/32/16, as both OMEMO versions do.
func DeriveAEADKeys(ikm []byte, info string) (encKey, authKey [32]byte, iv [16]byte) {
	var out [80]byte
	var infoBuf [32]byte
	kdf.Key(out[:], ikm, nil, append(infoBuf[:0], info...))
	copy(encKey[:], out[0:32])
	copy(authKey[:], out[32:64])
	copy(iv[:], out[64:80])
	clear(out[:])
	return encKey, authKey, iv
}

// CBCEncrypt encrypts with AES-256-CBC and PKCS#7 padding, appending to dst.
func CBCEncrypt(dst []byte, key [32]byte, iv [16]byte, plaintext []byte) []byte {
	block, _ := aes.NewCipher(key[:]) // a 32-byte key cannot fail
	pad := aes.BlockSize - len(plaintext)%aes.BlockSize
	start := len(dst)
	dst = append(dst, plaintext...)
	for range pad {
		dst = append(dst, byte(pad))
	}
	// CBC written out over the block cipher: it saves the allocation of a
	// cipher.BlockMode for the few blocks of key material.
	prev := iv[:]
	for i := start; i < len(dst); i += aes.BlockSize {
		b := dst[i : i+aes.BlockSize]
		subtle.XORBytes(b, b, prev)
		block.Encrypt(b, b)
		prev = b
	}
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
	prev := iv[:]
	for i := 0; i < len(ciphertext); i += aes.BlockSize {
		c := ciphertext[i : i+aes.BlockSize]
		block.Decrypt(out[i:i+aes.BlockSize], c)
		subtle.XORBytes(out[i:i+aes.BlockSize], out[i:i+aes.BlockSize], prev)
		prev = c
	}
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
	sum := kdf.HMAC(key[:], parts...)
	return append(dst, sum[:n]...)
}

// VerifyMAC checks a truncated HMAC in constant time.
func VerifyMAC(key [32]byte, tag []byte, parts ...[]byte) bool {
	sum := kdf.HMAC(key[:], parts...)
	return len(tag) > 0 && len(tag) <= len(sum) && subtle.ConstantTimeCompare(sum[:len(tag)], tag) == 1
}
