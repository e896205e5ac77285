package x3dh

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"reflect"
	"testing"
	"time"

	"filippo.io/edwards25519"

	"mellium.im/omemo/internal/xeddsa"
)

// omemo2Config is the twomemo (urn:xmpp:omemo:2) configuration.
func omemo2Config() *Config {
	return &Config{
		Info:              []byte("OMEMO X3DH"),
		EncodePublicKey:   func(c [32]byte) []byte { return bytes.Clone(c[:]) },
		EncodeIdentityKey: func(ed [32]byte) []byte { return bytes.Clone(ed[:]) },
	}
}

// legacyConfig is the legacy (eu.siacs.conversations.axolotl) configuration.
func legacyConfig() *Config {
	return &Config{
		Info:            []byte("WhisperText"),
		EncodePublicKey: func(c [32]byte) []byte { return append([]byte{0x05}, c[:]...) },
		EncodeIdentityKey: func(ed [32]byte) []byte {
			c, err := xeddsa.Ed25519ToCurve25519(ed)
			if err != nil {
				return nil
			}
			return append([]byte{0x05}, c[:]...)
		},
	}
}

var configs = []struct {
	name string
	cfg  *Config
}{
	{"omemo2", omemo2Config()},
	{"legacy", legacyConfig()},
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func random32(t testing.TB) [32]byte {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return b
}

var testNow = time.Unix(1700000000, 0)

func newIdentity(t testing.TB) [32]byte {
	t.Helper()
	return xeddsa.PrivFromSeed(random32(t))
}

func newState(t testing.TB, cfg *Config, n int) *State {
	t.Helper()
	s, err := NewState(cfg, newIdentity(t), n, testNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

type kat struct {
	name                                        string
	cfg                                         *Config
	seedA, seedB, spkPriv, spkNonce, ek         string
	pk                                          [3]string
	ikB, spkPub, spkSig, ikA, ekPub, pkPub1, sk string
	ad                                          string
}

// The vectors below were produced once by running /usr/bin/python3 against
// python-x3dh 1.0.3 / python-xeddsa 1.0.2 (identity key format ED_25519,
// HashFunction.SHA_256). Inputs are SHA-256 of labels ("<tag> seed A",
// "<tag> seed B", "<tag> spk B", "<tag> pk B <i>", "<tag> ephemeral A") and
// the SPK signature nonce is SHA-512("<tag> spk nonce"), tag "twomemo" or
// "legacy". Bob's state was built with BaseState.from_model (seed identity,
// SPK signed with xeddsa.ed25519_priv_sign(priv, Enc(spk_pub), nonce), the
// three pre keys); Alice called get_shared_secret_active(bob.bundle) with
// secrets.token_bytes patched to return the ephemeral key and
// secrets.choice patched to pick pre key 1, and Bob's
// get_shared_secret_passive(header) returned the same secret and AD. The
// BaseState subclasses used _encode_public_key = identity (twomemo) and
// 0x05 ‖ pub, converting Ed25519 to Curve25519 first for ED_25519 (legacy).
var kats = []kat{{
	name:     "omemo2",
	cfg:      omemo2Config(),
	seedA:    "5e93cd07ce7a76c0338cc05f47795b91fdd11d1210a0ed5c8d76c1d8e1b28511",
	seedB:    "56bedfb38f045a331831279ebc67132c44022b5e956c6d42ab0cda59eb4037e9",
	spkPriv:  "deba1edbf53f3f47f0a3944e40a54438933a9c1f8c16448c27b3f3e642ad178a",
	spkNonce: "47d780a3f86e2cbd01650fbe143c7f94aa100ff3e259c8fd5b3e268332c1160ea687102bddb764abe78f5ffcc797143216bce7fb19211f536614615f31dd3af7",
	pk: [3]string{
		"32d612228bbba2ad1043ac5531caefc554922ba1976799e3eed2b83593f9b923",
		"dd7fb7b1f0622ee5c6f455c22a8e89bc8624224b2885e521b6f79025d57e1c23",
		"0b8fb36737483c7e71120ace7454deb6a97cd4f7fec19bf20d8110ecd669cc12",
	},
	ek:     "43d97f45ec48af0b6202d57dae12cce6ad4505e3f2e140c13fc03061c836614c",
	ikB:    "69af9cc3e92e5939a708dada7f6ad9543db320a0a8870b9dfb538a7606d4c8df",
	spkPub: "74f6e2a75f629696211ce1700c1c6dd0f823c19e6f852e6a2e43ad9a2863957c",
	spkSig: "b2b62f1a904234ccb2812b2f392cd54ed09cf56aade1b137001a2603c2824794e19c313745e9b2a1081cad08b7ec1cebceaa3e039ccda64728dd633fd84d6d0f",
	ikA:    "31dc1bc3f9117eaadd0cb39da7d91906349e8f05be55c4b2c01529d324f25a4c",
	ekPub:  "d1a1d14c9cc19e77ce144c2411485c7352828468bbaf0bde326fee7002ee5116",
	pkPub1: "1513995b13f7d73554130fc313c25442b2809c44dc8c9260cff2816f56f9866e",
	sk:     "1385a0a91bb38d715cc3dc0850bce66c3f1899f61d4115fd77b43a2a15f3ffa8",
	ad:     "31dc1bc3f9117eaadd0cb39da7d91906349e8f05be55c4b2c01529d324f25a4c69af9cc3e92e5939a708dada7f6ad9543db320a0a8870b9dfb538a7606d4c8df",
}, {
	name:     "legacy",
	cfg:      legacyConfig(),
	seedA:    "30f4e2644dc447bd19154d01f8ec26f217314f79fedcaf14374b39465cc78cd9",
	seedB:    "1b58d964b43bc095dbba5425dac0422096aaa50b7dab27a01f8e5863d993f69c",
	spkPriv:  "3d8c45c418ccd7f9ca88e6a6d629488dfe99c1927f93623d6691d5ce74efb74f",
	spkNonce: "72b7121bc22fa7eb913ae89c92360807a31bda69a34013b6ab7690133c6b6be8297d2648e4fccf81a00c04bb4f9d4e5c9e35a9cbb7ec6e0e167c962aec0bf409",
	pk: [3]string{
		"7ff39a0b4120de6e4f037ff9522682d7093aa4915c421fee8c6596c282c7f084",
		"441578ca0192f12bbba00f74a2b24caaf3013a8f989422666469c237fee29393",
		"664e0d8059abcab7f363f33fcdafc988723d0d7e1320275d7874f07eb82663c8",
	},
	ek:     "488e710ba7bfaa2fac630246743a49eed1fefaba5c2cb70279c15d1294bbd643",
	ikB:    "f6d8f174866bcbc27315f8aff4edb6b1d7f818c1b33f51293c09d428a95d84c4",
	spkPub: "ab44cd1de8f24cf8e3854ffbff914d097ee686a1646714fc1f3ca9e119500a53",
	spkSig: "2347b130ec3697bd2604052e71fb6e1f14e56e5c5be0a648235d8b93c4563160cba254d509d037fa267d3941d333d37f085d08b860e6db16a9de7a97ea5fe201",
	ikA:    "339ebc0655caa8b6d174f43232aad4695ac477d36edd994f84d91dba50cd1c11",
	ekPub:  "4ba48d2e59492882c6620b384335b6e72454dab805df7f445451ce08a2a30c27",
	pkPub1: "f447b7644a4c1f683eb623b86880ffdeb61f383bf107b171ae6f0c819129ca39",
	sk:     "09c76d0b7446685184a97afca915850ff7f36ae2176c326b070ff7baf9cbbf24",
	ad:     "05ae1e8b84202023a7ed21c45c4600c6c8028615c8f291c6c59538438948e302260590c09e4d99ad90230acbecabe3f25c00875028b1fc83295e6e8cb7ef6eb22965",
}}

func TestKnownAnswersPython(t *testing.T) {
	for _, v := range kats {
		t.Run(v.name, func(t *testing.T) {
			// Bob: NewState reads SPK priv, signature nonce, then the pre keys.
			var rnd bytes.Buffer
			rnd.Write(unhex(t, v.spkPriv))
			rnd.Write(unhex(t, v.spkNonce))
			for _, pk := range v.pk {
				rnd.Write(unhex(t, pk))
			}
			bob, err := NewState(v.cfg, xeddsa.PrivFromSeed([32]byte(unhex(t, v.seedB))), 3, testNow, &rnd)
			if err != nil {
				t.Fatal(err)
			}
			if rnd.Len() != 0 {
				t.Fatalf("NewState left %d random bytes unread", rnd.Len())
			}
			b := bob.Bundle()
			if !bytes.Equal(b.IdentityKey[:], unhex(t, v.ikB)) {
				t.Errorf("identity key %x, want %s", b.IdentityKey, v.ikB)
			}
			if !bytes.Equal(b.SignedPreKey[:], unhex(t, v.spkPub)) {
				t.Errorf("signed pre key %x, want %s", b.SignedPreKey, v.spkPub)
			}
			if !bytes.Equal(b.SignedPreKeySignature[:], unhex(t, v.spkSig)) {
				t.Errorf("signature %x, want %s", b.SignedPreKeySignature, v.spkSig)
			}
			if len(b.PreKeys) != 3 || b.PreKeys[1].ID != 2 || !bytes.Equal(b.PreKeys[1].Pub[:], unhex(t, v.pkPub1)) {
				t.Fatalf("pre keys %+v, want id 2 = %s at index 1", b.PreKeys, v.pkPub1)
			}

			alice := xeddsa.PrivFromSeed([32]byte(unhex(t, v.seedA)))
			ek := [32]byte(unhex(t, v.ek))
			res, h, err := ActiveWith(v.cfg, alice, &b, ek, 1)
			if err != nil {
				t.Fatal(err)
			}
			check := func(which string, res Result) {
				t.Helper()
				if !bytes.Equal(res.SharedSecret[:], unhex(t, v.sk)) {
					t.Errorf("%s: shared secret %x, want %s", which, res.SharedSecret, v.sk)
				}
				if !bytes.Equal(res.AssociatedData, unhex(t, v.ad)) {
					t.Errorf("%s: AD %x, want %s", which, res.AssociatedData, v.ad)
				}
			}
			check("ActiveWith", res)
			want := Header{
				IdentityKey:    [32]byte(unhex(t, v.ikA)),
				EphemeralKey:   [32]byte(unhex(t, v.ekPub)),
				SignedPreKeyID: 1,
				PreKeyID:       2,
			}
			if h != want {
				t.Errorf("header %+v, want %+v", h, want)
			}

			// Active reads the ephemeral key, then 4 bytes for the index.
			var ar bytes.Buffer
			ar.Write(ek[:])
			ar.Write([]byte{0, 0, 0, 1})
			res2, h2, err := Active(v.cfg, alice, &b, &ar)
			if err != nil {
				t.Fatal(err)
			}
			check("Active", res2)
			if h2 != want {
				t.Errorf("Active header %+v, want %+v", h2, want)
			}

			res3, spk, err := bob.Passive(v.cfg, &h)
			if err != nil {
				t.Fatal(err)
			}
			check("Passive", res3)
			if !bytes.Equal(spk.Priv[:], unhex(t, v.spkPriv)) || spk.ID != 1 {
				t.Errorf("Passive returned SPK %d %x", spk.ID, spk.Priv)
			}
		})
	}
}

func TestActivePassiveAgreement(t *testing.T) {
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			bob := newState(t, c.cfg, 10)
			alice := newIdentity(t)
			seen := map[uint32]bool{}
			for range 40 {
				b := bob.Bundle()
				before, err := bob.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				ra, h, err := Active(c.cfg, alice, &b, nil)
				if err != nil {
					t.Fatal(err)
				}
				seen[h.PreKeyID] = true
				if h.IdentityKey != xeddsa.Ed25519PubFromPriv(alice) {
					t.Fatal("header identity key is not the initiator's Ed25519 key")
				}
				rb, spk, err := bob.Passive(c.cfg, &h)
				if err != nil {
					t.Fatal(err)
				}
				if ra.SharedSecret != rb.SharedSecret || !bytes.Equal(ra.AssociatedData, rb.AssociatedData) {
					t.Fatal("Active and Passive disagree")
				}
				wantAD := append(c.cfg.EncodeIdentityKey(h.IdentityKey), c.cfg.EncodeIdentityKey(bob.IdentityPub)...)
				if !bytes.Equal(ra.AssociatedData, wantAD) {
					t.Fatalf("AD %x, want initiator ‖ responder %x", ra.AssociatedData, wantAD)
				}
				if *spk != bob.SignedPreKey {
					t.Fatal("Passive returned a different signed pre key")
				}
				// Passive must not mutate the state, and the returned SPK is a copy.
				spk.Priv[0] ^= 1
				after, err := bob.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(before, after) || bob.NumVisiblePreKeys() != 10 {
					t.Fatal("Passive modified the state")
				}
			}
			if len(seen) < 5 {
				t.Errorf("only %d of 10 pre keys chosen in 40 runs", len(seen))
			}
		})
	}
}

func TestDifferentInputsDifferentSecrets(t *testing.T) {
	cfg := omemo2Config()
	bob := newState(t, cfg, 2)
	alice := newIdentity(t)
	b := bob.Bundle()
	ek := random32(t)
	r0, _, err := ActiveWith(cfg, alice, &b, ek, 0)
	if err != nil {
		t.Fatal(err)
	}
	r1, _, err := ActiveWith(cfg, alice, &b, ek, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ActiveWith(legacyConfig(), alice, &b, ek, 0); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("legacy config accepted an omemo:2 signature: %v", err)
	}
	if r0.SharedSecret == r1.SharedSecret {
		t.Error("different pre keys gave the same secret")
	}
	again, _, _ := ActiveWith(cfg, alice, &b, ek, 0)
	if again.SharedSecret != r0.SharedSecret {
		t.Error("ActiveWith not deterministic")
	}
}

func TestRotateSignedPreKey(t *testing.T) {
	cfg := omemo2Config()
	bob := newState(t, cfg, 5)
	alice := newIdentity(t)

	b1 := bob.Bundle()
	_, h1, err := Active(cfg, alice, &b1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := bob.SignedPreKeyAge(testNow.Add(90*time.Second + 500*time.Millisecond)); got != 90*time.Second {
		t.Errorf("age = %v, want 90s", got)
	}

	if err := bob.RotateSignedPreKey(cfg, testNow.Add(time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	if bob.SignedPreKey.ID != 2 || bob.OldSignedPreKey == nil || bob.OldSignedPreKey.ID != 1 {
		t.Fatalf("after one rotation: current %d, old %v", bob.SignedPreKey.ID, bob.OldSignedPreKey)
	}
	if got := bob.SignedPreKeyAge(testNow.Add(time.Hour + time.Minute)); got != time.Minute {
		t.Errorf("age after rotation = %v, want 1m", got)
	}
	b2 := bob.Bundle()
	if b2.SignedPreKeyID != 2 || b2.SignedPreKey == b1.SignedPreKey {
		t.Fatal("bundle still publishes the old signed pre key")
	}
	if !xeddsa.Verify(b2.IdentityKey, cfg.EncodePublicKey(b2.SignedPreKey), b2.SignedPreKeySignature) {
		t.Fatal("rotated signed pre key signature does not verify")
	}
	// The old SPK is still usable.
	if _, spk, err := bob.Passive(cfg, &h1); err != nil || spk.ID != 1 {
		t.Fatalf("Passive with old SPK: %v", err)
	}

	if err := bob.RotateSignedPreKey(cfg, testNow.Add(2*time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	if bob.SignedPreKey.ID != 3 || bob.OldSignedPreKey.ID != 2 {
		t.Fatalf("after two rotations: current %d, old %d", bob.SignedPreKey.ID, bob.OldSignedPreKey.ID)
	}
	if _, _, err := bob.Passive(cfg, &h1); !errors.Is(err, ErrUnknownSignedPreKey) {
		t.Fatalf("Passive with SPK two rotations ago: err = %v, want ErrUnknownSignedPreKey", err)
	}
	_, h2, err := Active(cfg, alice, &b2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, spk, err := bob.Passive(cfg, &h2); err != nil || spk.ID != 2 {
		t.Fatalf("Passive with the (now old) SPK 2: %v", err)
	}

	// A failed rotation leaves the state untouched.
	before, _ := bob.MarshalBinary()
	if err := bob.RotateSignedPreKey(cfg, testNow, bytes.NewReader(make([]byte, 40))); err == nil {
		t.Fatal("rotation with short randomness succeeded")
	}
	after, _ := bob.MarshalBinary()
	if !bytes.Equal(before, after) {
		t.Fatal("failed rotation modified the state")
	}
}

func TestHiddenPreKeys(t *testing.T) {
	cfg := legacyConfig()
	bob := newState(t, cfg, 3)
	alice := newIdentity(t)
	b := bob.Bundle()
	_, h, err := ActiveWith(cfg, alice, &b, random32(t), 1) // pre key id 2
	if err != nil {
		t.Fatal(err)
	}
	if h.PreKeyID != 2 {
		t.Fatalf("pre key id %d", h.PreKeyID)
	}
	if !bob.HidePreKey(2) {
		t.Fatal("HidePreKey(2) = false")
	}
	if bob.HidePreKey(2) {
		t.Fatal("hiding twice reported true")
	}
	if bob.HidePreKey(99) {
		t.Fatal("hiding a missing key reported true")
	}
	if n := bob.NumVisiblePreKeys(); n != 2 {
		t.Fatalf("visible = %d, want 2", n)
	}
	for _, pk := range bob.Bundle().PreKeys {
		if pk.ID == 2 {
			t.Fatal("hidden pre key published")
		}
	}
	if _, _, err := bob.Passive(cfg, &h); err != nil {
		t.Fatalf("Passive with hidden pre key: %v", err)
	}
	if n := bob.DeleteHiddenPreKeys(); n != 1 {
		t.Fatalf("DeleteHiddenPreKeys = %d, want 1", n)
	}
	if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, ErrUnknownPreKey) {
		t.Fatalf("err = %v, want ErrUnknownPreKey", err)
	}
	if bob.DeletePreKey(2) {
		t.Fatal("deleting a deleted key reported true")
	}
	bob.HidePreKey(3)
	if !bob.DeletePreKey(3) || !bob.DeletePreKey(1) {
		t.Fatal("DeletePreKey of hidden/visible key failed")
	}
	if len(bob.PreKeys) != 0 || bob.NumVisiblePreKeys() != 0 {
		t.Fatal("pre keys remain")
	}
	b = bob.Bundle()
	if _, _, err := Active(cfg, alice, &b, nil); !errors.Is(err, ErrNoPreKey) {
		t.Fatalf("err = %v, want ErrNoPreKey", err)
	}
}

func TestIDsNeverReused(t *testing.T) {
	cfg := omemo2Config()
	s := newState(t, cfg, 5)
	used := map[uint32]bool{}
	for id := range s.PreKeys {
		used[id] = true
	}
	for round := range 5 {
		for id := range s.PreKeys {
			if round%2 == 0 {
				s.DeletePreKey(id)
			} else {
				s.HidePreKey(id)
			}
		}
		s.DeleteHiddenPreKeys()
		// A marshal round trip must not reset the counters.
		data, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		s = new(State)
		if err := s.UnmarshalBinary(data); err != nil {
			t.Fatal(err)
		}
		if err := s.GeneratePreKeys(5, nil); err != nil {
			t.Fatal(err)
		}
		for id := range s.PreKeys {
			if used[id] {
				t.Fatalf("pre key id %d reused", id)
			}
			used[id] = true
		}
		if err := s.RotateSignedPreKey(cfg, testNow, nil); err != nil {
			t.Fatal(err)
		}
		if s.SignedPreKey.ID != uint32(round+2) {
			t.Fatalf("signed pre key id %d, want %d", s.SignedPreKey.ID, round+2)
		}
	}
	if len(used) != 30 || s.NextPreKeyID != 31 {
		t.Fatalf("used %d ids, next %d", len(used), s.NextPreKeyID)
	}
}

func TestIDsExhausted(t *testing.T) {
	cfg := omemo2Config()
	s := newState(t, cfg, 0)
	s.NextPreKeyID = math.MaxUint32
	if err := s.GeneratePreKeys(2, nil); !errors.Is(err, ErrIDsExhausted) {
		t.Fatalf("err = %v, want ErrIDsExhausted", err)
	}
	if _, ok := s.PreKeys[math.MaxUint32]; !ok || len(s.PreKeys) != 1 || s.NextPreKeyID != 0 {
		t.Fatalf("last id not issued exactly once: %d keys, next %d", len(s.PreKeys), s.NextPreKeyID)
	}
	s.NextSignedPreKeyID = math.MaxUint32
	if err := s.RotateSignedPreKey(cfg, testNow, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.RotateSignedPreKey(cfg, testNow, nil); !errors.Is(err, ErrIDsExhausted) {
		t.Fatalf("err = %v, want ErrIDsExhausted", err)
	}
	// An exhausted state still round-trips.
	data, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var s2 State
	if err := s2.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, &s2) {
		t.Fatal("round trip changed the exhausted state")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	cfg := legacyConfig()
	s := newState(t, cfg, 20)
	if err := s.RotateSignedPreKey(cfg, testNow.Add(time.Hour), nil); err != nil {
		t.Fatal(err)
	}
	s.HidePreKey(3)
	s.HidePreKey(7)
	s.DeletePreKey(5)
	data, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != stateVersion {
		t.Fatalf("version byte %d", data[0])
	}
	if want := minEncodedLen + spkLen + 19*preKeyLen; len(data) != want {
		t.Fatalf("encoding is %d bytes, want %d", len(data), want)
	}
	var s2 State
	if err := s2.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, &s2) {
		t.Fatalf("round trip mismatch:\n%+v\n%+v", s, &s2)
	}
	data2, err := s2.MarshalBinary()
	if err != nil || !bytes.Equal(data, data2) {
		t.Fatal("re-encoding differs")
	}
	// Without an old SPK.
	s3 := newState(t, omemo2Config(), 1)
	data, err = s3.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var s4 State
	if err := s4.UnmarshalBinary(data); err != nil || !reflect.DeepEqual(s3, &s4) {
		t.Fatalf("round trip without old SPK: %v", err)
	}
}

func TestMarshalInvalidState(t *testing.T) {
	cfg := omemo2Config()
	for name, mutate := range map[string]func(s *State){
		"unclamped identity": func(s *State) { s.IdentityPriv[0] |= 1 },
		"key/id mismatch":    func(s *State) { s.PreKeys[1].ID = 2 },
		"nil pre key":        func(s *State) { s.PreKeys[1] = nil },
		"unissued pre key":   func(s *State) { s.NextPreKeyID = 2 },
		"zero spk id":        func(s *State) { s.SignedPreKey.ID = 0 },
		"old == current":     func(s *State) { s.OldSignedPreKey = &SignedPreKey{ID: s.SignedPreKey.ID} },
	} {
		s := newState(t, cfg, 2)
		mutate(s)
		if _, err := s.MarshalBinary(); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: err = %v, want ErrCorruptState", name, err)
		}
	}
}

func TestUnmarshalErrors(t *testing.T) {
	cfg := omemo2Config()
	s := newState(t, cfg, 3)
	if err := s.RotateSignedPreKey(cfg, testNow, nil); err != nil {
		t.Fatal(err)
	}
	// Each format: its encoding of s, its layout, and how to re-seal a
	// modified encoding, so that the structural checks are reached rather
	// than the checksum.
	type format struct {
		name                 string
		valid                []byte
		header, spk, preKey  int
		nextSPK              int // offset of the next signed pre key id
		seal                 func([]byte) []byte
		versionOK, versionNo byte
	}
	v2, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	formats := []format{
		{"v2", v2, headerLen, spkLen, preKeyLen, 1 + 32 + 32, reseal, 2, 3},
		{"v1", marshalV1(t, s), v1HeaderLen, v1SPKLen, v1PreKeyLen, 1 + 32, func(b []byte) []byte { return b }, 1, 0},
	}
	for _, f := range formats {
		valid := f.valid
		oldFlag := f.header + f.spk
		count := oldFlag + 1 + f.spk
		first := count + 4
		mod := func(m func(b []byte) []byte) []byte { return f.seal(m(bytes.Clone(valid))) }
		cases := map[string][]byte{
			"empty":           nil,
			"truncated":       valid[:len(valid)-1],
			"trailing":        append(bytes.Clone(valid), 0),
			"only version":    valid[:1],
			"version 0":       mod(func(b []byte) []byte { b[0] = 0; return b }),
			"bad version":     mod(func(b []byte) []byte { b[0] = f.versionNo; return b }),
			"unclamped":       mod(func(b []byte) []byte { b[1] |= 1; return b }),
			"old flag 2":      mod(func(b []byte) []byte { b[oldFlag] = 2; return b }),
			"old flag 0":      mod(func(b []byte) []byte { b[oldFlag] = 0; return b }),
			"count too big":   mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[count:], math.MaxUint32); return b }),
			"pre key flags":   mod(func(b []byte) []byte { b[first+4] = 2; return b }),
			"duplicate id":    mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[first+f.preKey:], 1); return b }),
			"zero pre key id": mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[first:], 0); return b }),
			"pre key id ≥ next": mod(func(b []byte) []byte {
				binary.BigEndian.PutUint32(b[first:], 4)
				return b
			}),
			"spk id ≥ next": mod(func(b []byte) []byte {
				binary.BigEndian.PutUint32(b[f.nextSPK:], 2)
				return b
			}),
			"old id == current": mod(func(b []byte) []byte {
				copy(b[oldFlag+1:oldFlag+5], b[f.header:f.header+4])
				return b
			}),
		}
		if f.name == "v2" {
			cases["checksum"] = mod(func(b []byte) []byte { return b })
			cases["checksum"][len(valid)-1] ^= 1
			cases["truncated, resealed"] = reseal(valid[:len(valid)-checksumLen-1])
			cases["trailing, resealed"] = reseal(append(bytes.Clone(valid[:len(valid)-checksumLen]), 0))
			cases["descending ids"] = mod(func(b []byte) []byte {
				e := bytes.Clone(b[first : first+preKeyLen])
				copy(b[first:], b[first+preKeyLen:first+2*preKeyLen])
				copy(b[first+preKeyLen:], e)
				return b
			})
		}
		if b := mod(func(b []byte) []byte { b[0] = f.versionOK; return b }); !bytes.Equal(b, valid) {
			t.Fatalf("%s: re-sealing changed a valid encoding", f.name)
		}
		for name, data := range cases {
			target := newState(t, cfg, 1)
			before, _ := target.MarshalBinary()
			err := target.UnmarshalBinary(data)
			if !errors.Is(err, ErrCorruptState) {
				t.Errorf("%s: %s: err = %v, want ErrCorruptState", f.name, name, err)
			}
			after, _ := target.MarshalBinary()
			if !bytes.Equal(before, after) {
				t.Errorf("%s: %s: failed UnmarshalBinary modified the state", f.name, name)
			}
		}
	}
}

func TestActiveErrors(t *testing.T) {
	cfg := omemo2Config()
	bob := newState(t, cfg, 3)
	alice := newIdentity(t)
	good := bob.Bundle()

	lowOrder := [32]byte{} // u = 0, small order
	signed := func(b Bundle) Bundle {
		b.SignedPreKeySignature = xeddsa.Sign(bob.IdentityPriv, cfg.EncodePublicKey(b.SignedPreKey), [64]byte{})
		return b
	}
	cases := []struct {
		name string
		cfg  *Config
		b    *Bundle
		want []error
	}{
		{"nil config", nil, &good, []error{ErrInvalidArgument}},
		{"incomplete config", &Config{Info: []byte("x")}, &good, []error{ErrInvalidArgument}},
		{"nil bundle", cfg, nil, []error{ErrInvalidArgument}},
		{"no pre keys", cfg, func() *Bundle { b := good; b.PreKeys = nil; return &b }(), []error{ErrNoPreKey}},
		{"tampered signature", cfg, func() *Bundle { b := good; b.SignedPreKeySignature[5] ^= 1; return &b }(), []error{ErrBadSignature}},
		{"wrong encoding", legacyConfig(), &good, []error{ErrBadSignature}},
		{"wrong identity", cfg, func() *Bundle { b := good; b.IdentityKey = xeddsa.Ed25519PubFromPriv(alice); return &b }(), []error{ErrBadSignature}},
		{"swapped spk", cfg, func() *Bundle { b := good; b.SignedPreKey = b.PreKeys[0].Pub; return &b }(), []error{ErrBadSignature}},
		{"bad sig before low-order spk", cfg, func() *Bundle { b := good; b.SignedPreKey = lowOrder; return &b }(), []error{ErrBadSignature}},
		{"small-order identity", cfg, func() *Bundle {
			b := good
			b.IdentityKey = [32]byte{1} // identity point: rejected before the signature check
			return &b
		}(), []error{ErrInvalidKey, xeddsa.ErrSmallOrder}},
		{"low-order spk", cfg, func() *Bundle { b := good; b.SignedPreKey = lowOrder; b = signed(b); return &b }(), []error{xeddsa.ErrZeroSharedSecret}},
		{"low-order pre key", cfg, func() *Bundle {
			b := good
			b.PreKeys = []PublicPreKey{{ID: 1, Pub: lowOrder}}
			return &b
		}(), []error{xeddsa.ErrZeroSharedSecret}},
	}
	for _, c := range cases {
		cr := &countingReader{r: rand.Reader}
		_, _, err := Active(c.cfg, alice, c.b, cr)
		for _, w := range c.want {
			if !errors.Is(err, w) {
				t.Errorf("%s: err = %v, want %v", c.name, err, w)
			}
		}
		if c.want[0] != xeddsa.ErrZeroSharedSecret && cr.n != 0 {
			t.Errorf("%s: Active read %d random bytes before failing its checks", c.name, cr.n)
		}
		if c.b != nil && len(c.b.PreKeys) > 0 {
			_, _, err2 := ActiveWith(c.cfg, alice, c.b, random32(t), 0)
			if !errors.Is(err2, c.want[0]) {
				t.Errorf("%s: ActiveWith err = %v, want %v", c.name, err2, c.want[0])
			}
		}
	}

	if _, _, err := ActiveWith(cfg, alice, &good, random32(t), 3); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("index out of range: err = %v", err)
	}
	if _, _, err := ActiveWith(cfg, alice, &good, random32(t), -1); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative index: err = %v", err)
	}
	if _, _, err := Active(cfg, alice, &good, bytes.NewReader(make([]byte, 35))); err == nil {
		t.Error("Active succeeded with too little randomness")
	}
}

// TestInvalidIdentityKeys checks that identity keys that are not points,
// small-order points or points with a small-order component are rejected,
// even when the signed pre key signature verifies under them.
func TestInvalidIdentityKeys(t *testing.T) {
	cfg := omemo2Config()
	bob := newState(t, cfg, 1)
	alice := newIdentity(t)

	order8 := [32]byte(unhex(t, "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
	for _, ik := range [][32]byte{order8, {2}, {1}} {
		b := bob.Bundle()
		b.IdentityKey = ik
		_, _, err := ActiveWith(cfg, alice, &b, random32(t), 0)
		if !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrInvalidKey) {
			t.Errorf("identity %x: err = %v", ik, err)
		}
		h := Header{IdentityKey: ik, EphemeralKey: xeddsa.Curve25519PubFromPriv(random32(t)), SignedPreKeyID: 1, PreKeyID: 1}
		if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Passive identity %x: err = %v, want ErrInvalidKey", ik, err)
		}
	}
	h := Header{IdentityKey: order8, EphemeralKey: xeddsa.Curve25519PubFromPriv(random32(t)), SignedPreKeyID: 1, PreKeyID: 1}
	if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, xeddsa.ErrSmallOrder) {
		t.Errorf("err = %v, want xeddsa.ErrSmallOrder", err)
	}

	// A mixed-order identity key A' = A + T (T of order 8) with a signature
	// that crypto/ed25519 accepts: s = r + k·a verifies under A' whenever
	// k ≡ 0 (mod 8), which takes about 8 attempts.
	P, err := new(edwards25519.Point).SetBytes(bob.IdentityPub[:])
	if err != nil {
		t.Fatal(err)
	}
	T, err := new(edwards25519.Point).SetBytes(order8[:])
	if err != nil {
		t.Fatal(err)
	}
	mixed := [32]byte(new(edwards25519.Point).Add(P, T).Bytes())
	var wide [64]byte
	copy(wide[:], bob.IdentityPriv[:])
	a, _ := edwards25519.NewScalar().SetUniformBytes(wide[:])
	b := bob.Bundle()
	msg := cfg.EncodePublicKey(b.SignedPreKey)
	found := false
	for range 400 {
		var rb [64]byte
		rand.Read(rb[:])
		r, _ := edwards25519.NewScalar().SetUniformBytes(rb[:])
		R := new(edwards25519.Point).ScalarBaseMult(r).Bytes()
		hh := sha512.New()
		hh.Write(R)
		hh.Write(mixed[:])
		hh.Write(msg)
		k, _ := edwards25519.NewScalar().SetUniformBytes(hh.Sum(nil))
		s := edwards25519.NewScalar().MultiplyAdd(k, a, r)
		var sig [64]byte
		copy(sig[:32], R)
		copy(sig[32:], s.Bytes())
		if xeddsa.Verify(mixed, msg, sig) {
			b.IdentityKey = mixed
			b.SignedPreKeySignature = sig
			found = true
			break
		}
	}
	if !found {
		t.Fatal("could not forge a signature under the mixed-order key")
	}
	_, _, err = ActiveWith(cfg, alice, &b, random32(t), 0)
	if !errors.Is(err, ErrInvalidKey) || errors.Is(err, xeddsa.ErrSmallOrder) {
		t.Errorf("mixed-order identity with valid signature: err = %v, want ErrInvalidKey", err)
	}
	h = Header{IdentityKey: mixed, EphemeralKey: xeddsa.Curve25519PubFromPriv(random32(t)), SignedPreKeyID: 1, PreKeyID: 1}
	if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Passive mixed-order identity: err = %v, want ErrInvalidKey", err)
	}
}

func TestPassiveErrors(t *testing.T) {
	cfg := omemo2Config()
	bob := newState(t, cfg, 2)
	alice := newIdentity(t)
	b := bob.Bundle()
	_, h, err := Active(cfg, alice, &b, nil)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(h *Header)) *Header { c := h; f(&c); return &c }
	cases := []struct {
		name string
		cfg  *Config
		h    *Header
		want error
	}{
		{"nil config", nil, &h, ErrInvalidArgument},
		{"nil header", cfg, nil, ErrInvalidArgument},
		{"unknown spk", cfg, mod(func(h *Header) { h.SignedPreKeyID = 7 }), ErrUnknownSignedPreKey},
		{"unknown pre key", cfg, mod(func(h *Header) { h.PreKeyID = 7 }), ErrUnknownPreKey},
		{"invalid identity", cfg, mod(func(h *Header) { h.IdentityKey = [32]byte{2} }), ErrInvalidKey},
		{"low-order ephemeral", cfg, mod(func(h *Header) { h.EphemeralKey = [32]byte{1} }), xeddsa.ErrZeroSharedSecret},
	}
	for _, c := range cases {
		before, _ := bob.MarshalBinary()
		if _, spk, err := bob.Passive(c.cfg, c.h); !errors.Is(err, c.want) || spk != nil {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
		after, _ := bob.MarshalBinary()
		if !bytes.Equal(before, after) {
			t.Errorf("%s: Passive modified the state", c.name)
		}
	}
	// A different responder identity gives a different secret (no error: the
	// header does not name the responder).
	other := newState(t, cfg, 2)
	if r, _, err := other.Passive(cfg, &h); err == nil {
		ra, _, _ := bob.Passive(cfg, &h)
		if r.SharedSecret == ra.SharedSecret {
			t.Error("wrong responder derived the same secret")
		}
	}
}

func TestStateArgumentErrors(t *testing.T) {
	cfg := omemo2Config()
	if _, err := NewState(nil, newIdentity(t), 1, testNow, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nil config: %v", err)
	}
	if _, err := NewState(cfg, newIdentity(t), -1, testNow, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative count: %v", err)
	}
	if _, err := NewState(cfg, newIdentity(t), 1, testNow, bytes.NewReader(make([]byte, 95))); err == nil {
		t.Error("NewState with short randomness succeeded")
	}
	s := newState(t, cfg, 0)
	if err := s.GeneratePreKeys(-1, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative GeneratePreKeys: %v", err)
	}
	if err := s.RotateSignedPreKey(nil, testNow, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("rotate with nil config: %v", err)
	}
	// Unclamped identity keys are clamped, so signatures verify under IdentityPub.
	raw := random32(t)
	raw[0] |= 7
	s, err := NewState(cfg, raw, 1, testNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.IdentityPriv != xeddsa.Clamp(raw) || s.IdentityPub != xeddsa.Ed25519PubFromPriv(xeddsa.Clamp(raw)) {
		t.Error("identity key not clamped")
	}
	b := s.Bundle()
	if !xeddsa.Verify(b.IdentityKey, b.SignedPreKey[:], b.SignedPreKeySignature) {
		t.Error("signature does not verify")
	}
	// A zero-value State can generate pre keys.
	var z State
	z.NextPreKeyID = 1
	if err := z.GeneratePreKeys(2, nil); err != nil || len(z.PreKeys) != 2 {
		t.Errorf("zero State: %v", err)
	}
}

func TestUniformIndex(t *testing.T) {
	// 0xFFFFFFFF is rejected for n = 3 (limit 2^32 - 1), then 5 % 3 = 2.
	r := bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 5})
	idx, err := uniformIndex(r, 3)
	if err != nil || idx != 2 || r.Len() != 0 {
		t.Fatalf("idx = %d, err = %v, left %d", idx, err, r.Len())
	}
	// For n = 1 every value is accepted.
	idx, err = uniformIndex(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}), 1)
	if err != nil || idx != 0 {
		t.Fatalf("n=1: idx = %d, err = %v", idx, err)
	}
	if _, err := uniformIndex(bytes.NewReader(nil), 2); err == nil {
		t.Fatal("no error on empty reader")
	}
	if _, err := uniformIndex(rand.Reader, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatal("n=0 accepted")
	}
	counts := make([]int, 7)
	for range 7000 {
		i, err := uniformIndex(rand.Reader, 7)
		if err != nil {
			t.Fatal(err)
		}
		counts[i]++
	}
	for i, c := range counts {
		if c < 800 || c > 1200 {
			t.Errorf("index %d chosen %d/7000 times", i, c)
		}
	}
}

// FuzzStateUnmarshal decodes arbitrary bytes: no panic, only
// ErrCorruptState, and every decoded state re-encodes (in version 2) to
// bytes that decode to the same state. A version-2 input that decodes is
// canonical: it re-encodes to itself. Inputs starting with version 2 are
// also decoded with their checksum recomputed, so that mutations reach the
// structural checks behind the checksum.
func FuzzStateUnmarshal(f *testing.F) {
	cfg := omemo2Config()
	s, err := NewState(cfg, xeddsa.PrivFromSeed([32]byte{1}), 3, testNow, nil)
	if err != nil {
		f.Fatal(err)
	}
	data, _ := s.MarshalBinary()
	f.Add(data)
	f.Add(marshalV1(f, s))
	s.HidePreKey(2)
	_ = s.RotateSignedPreKey(cfg, testNow, nil)
	data, _ = s.MarshalBinary()
	f.Add(data)
	f.Add(marshalV1(f, s))
	empty, _ := NewState(cfg, xeddsa.PrivFromSeed([32]byte{2}), 0, testNow, nil)
	data, _ = empty.MarshalBinary()
	f.Add(data)
	f.Add(marshalV1(f, empty))
	for _, fx := range fixtures {
		f.Add(readFixture(f, fx.file))
	}
	f.Add([]byte{1})
	f.Add([]byte{2})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(data []byte) {
			var s State
			if err := s.UnmarshalBinary(data); err != nil {
				if !errors.Is(err, ErrCorruptState) {
					t.Fatalf("untyped error: %v", err)
				}
				return
			}
			out, err := s.MarshalBinary()
			if err != nil {
				t.Fatalf("decoded state does not re-encode: %v", err)
			}
			if data[0] == stateVersion && !bytes.Equal(out, data) {
				t.Fatal("version-2 encoding is not canonical")
			}
			var s2 State
			if err := s2.UnmarshalBinary(out); err != nil || !reflect.DeepEqual(&s, &s2) {
				t.Fatalf("re-encoded state does not round trip: %v", err)
			}
		}
		check(data)
		if len(data) > 0 && data[0] == stateVersion {
			check(reseal(data))
		}
	})
}

func BenchmarkActive(b *testing.B) {
	cfg := omemo2Config()
	bob := newState(b, cfg, 100)
	alice := newIdentity(b)
	bundle := bob.Bundle()
	for b.Loop() {
		if _, _, err := Active(cfg, alice, &bundle, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPassive(b *testing.B) {
	cfg := omemo2Config()
	bob := newState(b, cfg, 100)
	alice := newIdentity(b)
	bundle := bob.Bundle()
	_, h, err := Active(cfg, alice, &bundle, nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, _, err := bob.Passive(cfg, &h); err != nil {
			b.Fatal(err)
		}
	}
}

// A responder that numbers its signed pre key and pre keys from 0
// (libsignal-style clients such as converse.js): the initiator uses id 0
// like any other, the header names it, and the responder finds the keys.
func TestKeyIDZero(t *testing.T) {
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			bob := newState(t, c.cfg, 1)
			bob.SignedPreKey.ID = 0
			for id, pk := range bob.PreKeys {
				delete(bob.PreKeys, id)
				pk.ID = 0
				bob.PreKeys[0] = pk
			}
			b := bob.Bundle()
			if b.SignedPreKeyID != 0 || len(b.PreKeys) != 1 || b.PreKeys[0].ID != 0 {
				t.Fatalf("bundle %+v", b)
			}
			ra, h, err := Active(c.cfg, newIdentity(t), &b, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.SignedPreKeyID != 0 || h.PreKeyID != 0 {
				t.Fatalf("header names %d/%d", h.SignedPreKeyID, h.PreKeyID)
			}
			rb, _, err := bob.Passive(c.cfg, &h)
			if err != nil {
				t.Fatal(err)
			}
			if ra.SharedSecret != rb.SharedSecret {
				t.Fatal("Active and Passive disagree")
			}
		})
	}
}

// TestPreKeyZeroAvoided: converse.js publishes pre keys numbered from 0, and
// its libomemo.js processes a key exchange naming pre key 0 without it ("Bad
// MAC"). The initiator leaves id 0 out of the choice unless it is the only
// pre key, and chooses uniformly among the others.
func TestPreKeyZeroAvoided(t *testing.T) {
	pks := []PublicPreKey{{ID: 5}, {ID: 0}, {ID: 7}, {ID: 9}}
	// Every value of the first draw: v mod 3 picks among 5, 7 and 9.
	for v := range 6 {
		idx, err := choosePreKey(bytes.NewReader([]byte{0, 0, 0, byte(v)}), pks)
		if err != nil {
			t.Fatal(err)
		}
		if want := []uint32{5, 7, 9}[v%3]; pks[idx].ID != want {
			t.Errorf("draw %d: pre key %d, want %d", v, pks[idx].ID, want)
		}
	}
	counts := map[uint32]int{}
	for range 3000 {
		idx, err := choosePreKey(rand.Reader, pks)
		if err != nil {
			t.Fatal(err)
		}
		counts[pks[idx].ID]++
	}
	if counts[0] != 0 {
		t.Errorf("pre key 0 chosen %d/3000 times", counts[0])
	}
	for _, id := range []uint32{5, 7, 9} {
		if c := counts[id]; c < 850 || c > 1150 {
			t.Errorf("pre key %d chosen %d/3000 times", id, c)
		}
	}
	// Every copy of id 0 is left out (a received bundle may repeat it).
	twice := []PublicPreKey{{ID: 0}, {ID: 3}, {ID: 0}, {ID: 4}}
	for v := range 4 {
		idx, err := choosePreKey(bytes.NewReader([]byte{0, 0, 0, byte(v)}), twice)
		if err != nil {
			t.Fatal(err)
		}
		if want := []uint32{3, 4}[v%2]; twice[idx].ID != want {
			t.Errorf("id 0 twice, draw %d: pre key %d, want %d", v, twice[idx].ID, want)
		}
	}
	// The only pre key is used even if its id is 0 (TestKeyIDZero runs the
	// whole exchange).
	if idx, err := choosePreKey(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}), []PublicPreKey{{ID: 0}}); err != nil || idx != 0 {
		t.Errorf("single pre key 0: idx %d, err %v", idx, err)
	}

	// Through Active: a bundle whose pre keys are 0..3 never yields 0.
	c := configs[0]
	bob := newState(t, c.cfg, 4)
	renumbered := map[uint32]*PreKey{}
	for _, pk := range bob.PreKeys {
		pk.ID = uint32(len(renumbered))
		renumbered[pk.ID] = pk
	}
	bob.PreKeys = renumbered
	b := bob.Bundle()
	for range 40 {
		ra, h, err := Active(c.cfg, newIdentity(t), &b, nil)
		if err != nil {
			t.Fatal(err)
		}
		if h.PreKeyID == 0 {
			t.Fatal("Active chose pre key 0 among four")
		}
		rb, _, err := bob.Passive(c.cfg, &h)
		if err != nil || ra.SharedSecret != rb.SharedSecret {
			t.Fatalf("Passive: %v (agree %v)", err, ra.SharedSecret == rb.SharedSecret)
		}
	}
}
