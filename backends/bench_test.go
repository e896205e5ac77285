package backends_test

// Benchmarks of the backends next to the raw primitive floor of the same
// work: the KDF, HMAC, AES and X25519 calls the protocol needs, measured in
// the same run with the same primitives (stdlib HMAC/HKDF/AES, the X25519 of
// internal/xeddsa, stdlib Ed25519 verification). scripts/bench.sh prints
// the ratios.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/xeddsa"
)

var (
	sinkBytes []byte
	sinkKey   [32]byte
)

// established returns alice and bob with confirmed sessions.
func established(b testing.TB, k kind) (alice, bob *party, as, bs backends.Session) {
	alice = newParty(b, k, "alice@example.org", 1, nil)
	bob = newParty(b, k, "bob@example.org", 2, nil)
	as, first := start(b, alice, bob)
	bs = mustReceive(b, bob, alice, nil, first, []byte("hello"))
	mustReceive(b, alice, bob, as, encrypt(b, bob, bs, []byte("hi")), []byte("hi"))
	return alice, bob, as, bs
}

func keyMaterial(k kind) []byte {
	if k.name == "oldmemo" {
		return make([]byte, 32)
	}
	return make([]byte, 48)
}

// BenchmarkEncryptKeyMaterial is the per-device cost of encrypting a message
// on an established session.
func BenchmarkEncryptKeyMaterial(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			alice, _, as, _ := established(b, k)
			km := keyMaterial(k)
			b.ReportAllocs()
			for b.Loop() {
				ke, err := alice.be.EncryptKeyMaterial(as, km)
				if err != nil {
					b.Fatal(err)
				}
				sinkBytes = ke.Data
			}
		})
	}
}

// floorPerDevice is the primitive work of one per-device encryption: the
// chain KDF (2 HMACs), HKDF to 80 bytes, AES-256-CBC of the key material and
// the MAC over associated data and message.
func floorPerDevice(ck *[32]byte, km, ad, msg []byte, info string) {
	m := hmac.New(sha256.New, ck[:])
	m.Write([]byte{1})
	mk := m.Sum(nil)
	m = hmac.New(sha256.New, ck[:])
	m.Write([]byte{2})
	copy(ck[:], m.Sum(nil))
	out, _ := hkdf.Key(sha256.New, mk, make([]byte, 32), info, 80)
	block, _ := aes.NewCipher(out[:32])
	pad := 16 - len(km)%16
	buf := make([]byte, len(km)+pad)
	copy(buf, km)
	cipher.NewCBCEncrypter(block, out[64:80]).CryptBlocks(buf, buf)
	h := hmac.New(sha256.New, out[32:64])
	h.Write(ad)
	h.Write(msg)
	sinkBytes = h.Sum(nil)
}

func BenchmarkFloorPerDevice(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			var ck [32]byte
			km, ad, msg := keyMaterial(k), make([]byte, 64), make([]byte, 100)
			b.ReportAllocs()
			for b.Loop() {
				floorPerDevice(&ck, km, ad, msg, "OMEMO Message Key Material")
			}
		})
	}
}

// BenchmarkDecryptSteady decrypts in-order messages of an established
// session (no DH ratchet step).
func BenchmarkDecryptSteady(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			alice, bob, as, bs := established(b, k)
			km := keyMaterial(k)
			msgs := make([][]byte, 0, 1024)
			b.ReportAllocs()
			for b.Loop() {
				if len(msgs) == 0 {
					b.StopTimer()
					for range 1024 {
						ke, _ := alice.be.EncryptKeyMaterial(as, km)
						msgs = append(msgs, ke.Data)
					}
					b.StartTimer()
				}
				if _, err := bob.be.DecryptKeyMaterial(bs, msgs[0]); err != nil {
					b.Fatal(err)
				}
				msgs = msgs[1:]
			}
		})
	}
}

// floorDecrypt is the primitive work of decrypting one key element: chain
// KDF, HKDF, MAC verification and AES-256-CBC decryption.
func floorDecrypt(ck *[32]byte, ad, msg []byte) {
	m := hmac.New(sha256.New, ck[:])
	m.Write([]byte{1})
	mk := m.Sum(nil)
	m = hmac.New(sha256.New, ck[:])
	m.Write([]byte{2})
	copy(ck[:], m.Sum(nil))
	out, _ := hkdf.Key(sha256.New, mk, make([]byte, 32), "OMEMO Message Key Material", 80)
	h := hmac.New(sha256.New, out[32:64])
	h.Write(ad)
	h.Write(msg)
	sinkBytes = h.Sum(nil)
	block, _ := aes.NewCipher(out[:32])
	buf := make([]byte, 64)
	cipher.NewCBCDecrypter(block, out[64:80]).CryptBlocks(buf, buf)
}

func BenchmarkFloorDecrypt(b *testing.B) {
	var ck [32]byte
	ad, msg := make([]byte, 64), make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		floorDecrypt(&ck, ad, msg)
	}
}

// BenchmarkDecryptRatchetStep decrypts a message that turns the
// conversation around, which costs a DH ratchet step.
func BenchmarkDecryptRatchetStep(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			alice, bob, as, bs := established(b, k)
			km := keyMaterial(k)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				w, _ := bob.be.EncryptKeyMaterial(bs, km)
				b.StartTimer()
				if _, err := alice.be.DecryptKeyMaterial(as, w.Data); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				w, _ = alice.be.EncryptKeyMaterial(as, km)
				if _, err := bob.be.DecryptKeyMaterial(bs, w.Data); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// floorRatchetStep is the primitive work of a receiving DH ratchet step
// followed by one decryption: DH and root KDF for the receiving chain, a
// fresh ratchet key, DH and root KDF for the sending chain.
func floorRatchetStep(rk *[32]byte, peer [32]byte, ad, msg []byte) {
	var priv [32]byte
	rand.Read(priv[:])
	dh1, _ := xeddsa.X25519(priv, peer)
	out, _ := hkdf.Key(sha256.New, dh1[:], rk[:], "OMEMO Root Chain", 64)
	rand.Read(priv[:])
	sinkKey = xeddsa.Curve25519PubFromPriv(priv)
	dh2, _ := xeddsa.X25519(priv, peer)
	out, _ = hkdf.Key(sha256.New, dh2[:], out[:32], "OMEMO Root Chain", 64)
	copy(rk[:], out[:32])
	var ck [32]byte
	copy(ck[:], out[32:])
	floorDecrypt(&ck, ad, msg)
}

func BenchmarkFloorRatchetStep(b *testing.B) {
	var rk, priv [32]byte
	rand.Read(priv[:])
	peer := xeddsa.Curve25519PubFromPriv(priv)
	ad, msg := make([]byte, 64), make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		floorRatchetStep(&rk, peer, ad, msg)
	}
}

// BenchmarkBuildSessionActive builds a session from a bundle and encrypts
// the first key material.
func BenchmarkBuildSessionActive(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			alice := newParty(b, k, "alice@example.org", 1, nil)
			bob := newParty(b, k, "bob@example.org", 2, nil)
			bb, _ := bob.be.Bundle()
			km := keyMaterial(k)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := alice.be.BuildSessionActive(bob.jid, bob.dev, bb, km); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// floorActive is the primitive work of an active session build: verify the
// signed pre key, convert the identity key, a fresh ephemeral key, four DH,
// the X3DH HKDF, a fresh ratchet key, one DH and root KDF, then one
// per-device encryption.
func floorActive(ikPriv [32]byte, ikPub [32]byte, spk [32]byte, opk [32]byte, sig []byte, ad, msg []byte) {
	if !ed25519.Verify(ikPub[:], spk[:], sig) {
		panic("bad signature")
	}
	ikCurve, _ := xeddsa.Ed25519ToCurve25519(ikPub)
	var ek [32]byte
	rand.Read(ek[:])
	sinkKey = xeddsa.Curve25519PubFromPriv(ek)
	ikm := make([]byte, 32, 160)
	for i := range ikm {
		ikm[i] = 0xff
	}
	for _, p := range [][2][32]byte{{ikPriv, spk}, {ek, ikCurve}, {ek, spk}, {ek, opk}} {
		dh, _ := xeddsa.X25519(p[0], p[1])
		ikm = append(ikm, dh[:]...)
	}
	sk, _ := hkdf.Key(sha256.New, ikm, make([]byte, 32), "OMEMO X3DH", 32)
	var rpriv [32]byte
	rand.Read(rpriv[:])
	sinkKey = xeddsa.Curve25519PubFromPriv(rpriv)
	dh, _ := xeddsa.X25519(rpriv, spk)
	out, _ := hkdf.Key(sha256.New, dh[:], sk, "OMEMO Root Chain", 64)
	var ck [32]byte
	copy(ck[:], out[32:])
	floorPerDevice(&ck, make([]byte, 48), ad, msg, "OMEMO Message Key Material")
}

func BenchmarkFloorBuildSessionActive(b *testing.B) {
	id, _ := backends.GenerateIdentityKeyPair(rand.Reader)
	var spkPriv, opkPriv [32]byte
	rand.Read(spkPriv[:])
	rand.Read(opkPriv[:])
	spk, opk := xeddsa.Curve25519PubFromPriv(spkPriv), xeddsa.Curve25519PubFromPriv(opkPriv)
	sig, _ := id.Sign(spk[:], rand.Reader)
	ad, msg := make([]byte, 64), make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		floorActive(id.PrivateScalar(), id.PublicKey(), spk, opk, sig[:], ad, msg)
	}
}

// BenchmarkBuildSessionPassive completes a key exchange and decrypts the
// first message.
func BenchmarkBuildSessionPassive(b *testing.B) {
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			alice := newParty(b, k, "alice@example.org", 1, nil)
			bob := newParty(b, k, "bob@example.org", 2, nil)
			_, w := start(b, alice, bob)
			signBit := alice.id.PublicKey()[31]&0x80 != 0
			b.ReportAllocs()
			for b.Loop() {
				kex, msg, err := bob.be.ParseKeyExchange(w.key.Data, signBit)
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := bob.be.BuildSessionPassive(alice.jid, alice.dev, kex, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// floorPassive is the primitive work of a passive session build: convert
// the peer identity key, four DH, the X3DH HKDF, then the first decryption
// with its DH ratchet step.
func floorPassive(ikPriv, spkPriv, opkPriv [32]byte, peerIK, peerEK [32]byte, ad, msg []byte) {
	ikCurve, _ := xeddsa.Ed25519ToCurve25519(peerIK)
	ikm := make([]byte, 32, 160)
	for i := range ikm {
		ikm[i] = 0xff
	}
	for _, p := range [][2][32]byte{{spkPriv, ikCurve}, {ikPriv, peerEK}, {spkPriv, peerEK}, {opkPriv, peerEK}} {
		dh, _ := xeddsa.X25519(p[0], p[1])
		ikm = append(ikm, dh[:]...)
	}
	sk, _ := hkdf.Key(sha256.New, ikm, make([]byte, 32), "OMEMO X3DH", 32)
	var rk [32]byte
	copy(rk[:], sk)
	floorRatchetStep(&rk, peerEK, ad, msg)
}

func BenchmarkFloorBuildSessionPassive(b *testing.B) {
	id, _ := backends.GenerateIdentityKeyPair(rand.Reader)
	peer, _ := backends.GenerateIdentityKeyPair(rand.Reader)
	var spk, opk, ek [32]byte
	rand.Read(spk[:])
	rand.Read(opk[:])
	rand.Read(ek[:])
	ad, msg := make([]byte, 64), make([]byte, 100)
	b.ReportAllocs()
	for b.Loop() {
		floorPassive(id.PrivateScalar(), spk, opk, peer.PublicKey(), xeddsa.Curve25519PubFromPriv(ek), ad, msg)
	}
}

// BenchmarkEncryptPayload1KiB encrypts a 1 KiB payload.
func BenchmarkEncryptPayload1KiB(b *testing.B) {
	pt := make([]byte, 1024)
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			p := newParty(b, k, "alice@example.org", 1, nil)
			b.SetBytes(int64(len(pt)))
			b.ReportAllocs()
			for b.Loop() {
				c, km, err := p.be.EncryptPlaintext(pt)
				if err != nil {
					b.Fatal(err)
				}
				sinkBytes, _ = c.Ciphertext, km
			}
		})
	}
}

// BenchmarkFloorPayload1KiB is the primitive work of a payload: a fresh
// key, HKDF, AES-256-CBC and HMAC (OMEMO 2), or a fresh key and IV and
// AES-128-GCM (legacy).
func BenchmarkFloorPayload1KiB(b *testing.B) {
	pt := make([]byte, 1024)
	b.Run("twomemo", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		for b.Loop() {
			key := make([]byte, 32)
			rand.Read(key)
			out, _ := hkdf.Key(sha256.New, key, make([]byte, 32), "OMEMO Payload", 80)
			block, _ := aes.NewCipher(out[:32])
			buf := make([]byte, len(pt)+16)
			copy(buf, pt)
			for i := len(pt); i < len(buf); i++ {
				buf[i] = 16
			}
			cipher.NewCBCEncrypter(block, out[64:80]).CryptBlocks(buf, buf)
			h := hmac.New(sha256.New, out[32:64])
			h.Write(buf)
			sinkBytes = h.Sum(nil)
		}
	})
	b.Run("oldmemo", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		for b.Loop() {
			rnd := make([]byte, 28)
			rand.Read(rnd)
			block, _ := aes.NewCipher(rnd[:16])
			gcm, _ := cipher.NewGCM(block)
			sinkBytes = gcm.Seal(nil, rnd[16:], pt, nil)
		}
	})
}

// TestAllocationsPerMessage bounds the allocations of the per-message hot
// paths by a small constant.
func TestAllocationsPerMessage(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			alice, bob, as, bs := established(t, k)
			km := keyMaterial(k)
			enc := testing.AllocsPerRun(200, func() {
				if _, err := alice.be.EncryptKeyMaterial(as, km); err != nil {
					t.Fatal(err)
				}
			})
			msgs := make([][]byte, 0, 300)
			for range cap(msgs) {
				ke, _ := alice.be.EncryptKeyMaterial(as, km)
				msgs = append(msgs, ke.Data)
			}
			dec := testing.AllocsPerRun(200, func() {
				if _, err := bob.be.DecryptKeyMaterial(bs, msgs[0]); err != nil {
					t.Fatal(err)
				}
				msgs = msgs[1:]
			})
			t.Logf("allocations: encrypt %.0f, decrypt %.0f", enc, dec)
			if enc > 12 || dec > 16 {
				t.Fatalf("allocations per message: encrypt %.0f (max 12), decrypt %.0f (max 16)", enc, dec)
			}
		})
	}
}
