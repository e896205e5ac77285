package x3dh

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// marshalV1 is the encoder of the version-1 format as earlier releases had
// it (no public keys, no checksum), kept to produce old records.
func marshalV1(t testing.TB, s *State) []byte {
	t.Helper()
	ids, err := s.validate()
	if err != nil {
		t.Fatal(err)
	}
	spk := func(b []byte, spk *SignedPreKey) []byte {
		b = binary.BigEndian.AppendUint32(b, spk.ID)
		b = append(b, spk.Priv[:]...)
		b = append(b, spk.Signature[:]...)
		return binary.BigEndian.AppendUint64(b, uint64(spk.Created))
	}
	b := []byte{v1Version}
	b = append(b, s.IdentityPriv[:]...)
	b = binary.BigEndian.AppendUint32(b, s.NextSignedPreKeyID)
	b = binary.BigEndian.AppendUint32(b, s.NextPreKeyID)
	b = spk(b, &s.SignedPreKey)
	if s.OldSignedPreKey != nil {
		b = append(b, 1)
		b = spk(b, s.OldSignedPreKey)
	} else {
		b = append(b, 0)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(ids)))
	for _, id := range ids {
		pk := s.PreKeys[id]
		var flags byte
		if pk.Hidden {
			flags = flagHidden
		}
		b = binary.BigEndian.AppendUint32(b, id)
		b = append(b, flags)
		b = append(b, pk.Priv[:]...)
	}
	return b
}

// reseal replaces the checksum of a version-2 encoding by the correct one,
// as a writer that computes the checksum over whatever it writes would.
func reseal(b []byte) []byte {
	if len(b) < checksumLen {
		return b
	}
	body := b[:len(b)-checksumLen]
	sum := sha256.Sum256(body)
	return append(bytes.Clone(body), sum[:]...)
}

// offsets of the fields of a version-2 encoding of a State with an old
// signed pre key.
const (
	offIdentityPub = 1 + 32
	offSPK         = headerLen
	offOldSPK      = headerLen + spkLen + 1
	offPreKeys     = offOldSPK + spkLen + 4
	spkPubOff      = 4 + 32 // within a signed pre key
	preKeyPrivOff  = 4 + 1  // within a pre key entry
	preKeyPubOff   = 4 + 1 + 32
)

// fixtures are version-1 records written by the release before public keys
// were stored (NewState with 100 pre keys, a rotation, two pre keys hidden
// and two deleted, two more generated, for the identity of seed
// SHA-256("x3dh state version 1 fixture identity")), with a digest of the
// bundle that release published for them.
var fixtures = []struct {
	file, bundleDigest string
	cfg                *Config
}{
	{"testdata/state-v1-omemo2.hex", "51cae64299c322feba3cd9e2c074efb152917ca68a68588ebd0d3a80d3832572", omemo2Config()},
	{"testdata/state-v1-legacy.hex", "cebd3cfdf4345129142dd472cacd98d4224de0908e62c2d24b210afcc430a855", legacyConfig()},
}

func readFixture(t testing.TB, file string) []byte {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return unhex(t, strings.TrimSpace(string(raw)))
}

func bundleDigest(b Bundle) string {
	h := sha256.New()
	h.Write(b.IdentityKey[:])
	h.Write(b.SignedPreKey[:])
	h.Write(b.SignedPreKeySignature[:])
	for _, pk := range b.PreKeys {
		fmt.Fprintf(h, "%d", pk.ID)
		h.Write(pk.Pub[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestVersion1Fixtures loads records written by the previous release: they
// decode to consistent states that publish the same bundle as before, and
// are written back in version 2, which decodes to the same state.
func TestVersion1Fixtures(t *testing.T) {
	for _, fx := range fixtures {
		t.Run(fx.file, func(t *testing.T) {
			v1 := readFixture(t, fx.file)
			if v1[0] != 1 {
				t.Fatalf("fixture has version %d", v1[0])
			}
			var s State
			if err := s.UnmarshalBinary(v1); err != nil {
				t.Fatal(err)
			}
			if got := bundleDigest(s.Bundle()); got != fx.bundleDigest {
				t.Errorf("bundle digest %s, want %s", got, fx.bundleDigest)
			}
			if err := s.VerifyKeys(fx.cfg); err != nil {
				t.Errorf("VerifyKeys: %v", err)
			}
			if s.OldSignedPreKey == nil || len(s.PreKeys) != 100 || s.NumVisiblePreKeys() != 98 {
				t.Fatalf("unexpected fixture content: old spk %v, %d pre keys, %d visible", s.OldSignedPreKey != nil, len(s.PreKeys), s.NumVisiblePreKeys())
			}
			if !bytes.Equal(marshalV1(t, &s), v1) {
				t.Error("the version-1 test encoder does not reproduce the fixture")
			}
			v2, err := s.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if v2[0] != stateVersion {
				t.Fatalf("written with version %d", v2[0])
			}
			var s2 State
			if err := s2.UnmarshalBinary(v2); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(&s, &s2) {
				t.Fatal("version 2 decodes to a different state than version 1")
			}
			again, _ := s2.MarshalBinary()
			if !bytes.Equal(again, v2) {
				t.Fatal("version 2 does not re-encode identically")
			}
		})
	}
}

// TestVersionsDecodeAlike checks on random states that the version-1 and
// version-2 encodings decode to the same state, the one that was encoded.
func TestVersionsDecodeAlike(t *testing.T) {
	for _, c := range configs {
		s := newState(t, c.cfg, 30)
		for i := range 3 {
			if err := s.RotateSignedPreKey(c.cfg, testNow.Add(time.Duration(i)*time.Hour), nil); err != nil {
				t.Fatal(err)
			}
			s.HidePreKey(uint32(3 + i))
			s.DeletePreKey(uint32(10 + i))
			if err := s.GeneratePreKeys(2, nil); err != nil {
				t.Fatal(err)
			}
			v2, err := s.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var a, b State
			if err := a.UnmarshalBinary(marshalV1(t, s)); err != nil {
				t.Fatal(err)
			}
			if err := b.UnmarshalBinary(v2); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s, &a) || !reflect.DeepEqual(s, &b) {
				t.Fatalf("%s round %d: decoded states differ from the original", c.name, i)
			}
		}
	}
}

// tamperedState returns a state with an old signed pre key, a hidden pre key
// (id 2) and its version-2 encoding.
func tamperedState(t *testing.T, cfg *Config) (*State, []byte) {
	t.Helper()
	s := newState(t, cfg, 4)
	if err := s.RotateSignedPreKey(cfg, testNow, nil); err != nil {
		t.Fatal(err)
	}
	s.HidePreKey(2)
	data, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return s, data
}

// TestTamperedPublicKey changes one stored key of each kind. A change alone
// is caught by the checksum at load: no State, hence no bundle, exists. A
// change whose checksum was recomputed loads (load does no scalar
// multiplication), is reported by VerifyKeys, and fails every key exchange
// that uses the key with ErrKeyMismatch instead of a silently wrong secret.
func TestTamperedPublicKey(t *testing.T) {
	cfg := omemo2Config()
	preKey := func(id uint32, field int) int { return offPreKeys + int(id-1)*preKeyLen + field }
	cases := []struct {
		name   string
		off    int
		used   func(h *Header) // makes h use the tampered key; nil if none
		verify string          // what VerifyKeys names
	}{
		{"identity public key", offIdentityPub, nil, "identity key"},
		{"signed pre key public key", offSPK + spkPubOff, func(h *Header) { h.SignedPreKeyID = 2 }, "signed pre key 2"},
		{"old signed pre key public key", offOldSPK + spkPubOff, func(h *Header) { h.SignedPreKeyID = 1 }, "old signed pre key 1"},
		{"visible pre key public key", preKey(3, preKeyPubOff), func(h *Header) { h.PreKeyID = 3 }, "pre key 3"},
		{"hidden pre key public key", preKey(2, preKeyPubOff), func(h *Header) { h.PreKeyID = 2 }, "pre key 2"},
		{"visible pre key private key", preKey(4, preKeyPrivOff), func(h *Header) { h.PreKeyID = 4 }, "pre key 4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			orig, data := tamperedState(t, cfg)
			bad := bytes.Clone(data)
			bad[c.off] ^= 0x40

			// Detected at load.
			var s State
			if err := s.UnmarshalBinary(bad); !errors.Is(err, ErrCorruptState) {
				t.Fatalf("tampered record loaded: err = %v", err)
			}

			// With a recomputed checksum it loads; VerifyKeys names the key.
			if err := s.UnmarshalBinary(reseal(bad)); err != nil {
				t.Fatalf("re-sealed record: %v", err)
			}
			err := s.VerifyKeys(cfg)
			if !errors.Is(err, ErrKeyMismatch) || !strings.HasSuffix(err.Error(), ": "+c.verify) {
				t.Fatalf("VerifyKeys: err = %v, want ErrKeyMismatch naming %s", err, c.verify)
			}
			for _, k := range [][32]byte{orig.IdentityPriv, orig.IdentityPub, orig.SignedPreKey.Priv, orig.SignedPreKey.Pub} {
				if strings.Contains(err.Error(), hex.EncodeToString(k[:4])) {
					t.Fatal("error shows key bytes")
				}
			}
			if c.used == nil {
				return
			}
			// A key exchange that uses the key fails with ErrKeyMismatch,
			// and one built from the published bundle never reaches a DH
			// with the bad key.
			alice := newIdentity(t)
			b := orig.Bundle()
			_, h, err := ActiveWith(cfg, alice, &b, random32(t), 0)
			if err != nil {
				t.Fatal(err)
			}
			// A header that avoids the tampered key still works.
			h.PreKeyID, h.SignedPreKeyID = 1, 2
			if c.verify == "signed pre key 2" {
				h.SignedPreKeyID = 1
			}
			if _, _, err := s.Passive(cfg, &h); err != nil {
				t.Fatalf("Passive with untouched keys: %v", err)
			}
			c.used(&h)
			if _, spk, err := s.Passive(cfg, &h); !errors.Is(err, ErrKeyMismatch) || spk != nil {
				t.Fatalf("Passive with the tampered key: err = %v, want ErrKeyMismatch", err)
			}
		})
	}
}

// TestPassiveDetectsMismatchInMemory covers a State whose keys were set by
// hand: Passive refuses the inconsistent pair before computing any DH.
func TestPassiveDetectsMismatchInMemory(t *testing.T) {
	cfg := legacyConfig()
	bob := newState(t, cfg, 2)
	b := bob.Bundle()
	_, h, err := ActiveWith(cfg, newIdentity(t), &b, random32(t), 0)
	if err != nil {
		t.Fatal(err)
	}
	want, _, err := bob.Passive(cfg, &h)
	if err != nil {
		t.Fatal(err)
	}
	bob.PreKeys[h.PreKeyID].Pub[0] ^= 1
	if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("err = %v, want ErrKeyMismatch", err)
	}
	bob.PreKeys[h.PreKeyID].Pub[0] ^= 1
	bob.SignedPreKey.Priv[5] ^= 1
	if _, _, err := bob.Passive(cfg, &h); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("err = %v, want ErrKeyMismatch", err)
	}
	bob.SignedPreKey.Priv[5] ^= 1
	if got, _, err := bob.Passive(cfg, &h); err != nil || got.SharedSecret != want.SharedSecret {
		t.Fatalf("restored state: %v", err)
	}
}

func TestVerifyKeys(t *testing.T) {
	for _, c := range configs {
		s, _ := tamperedState(t, c.cfg)
		if err := s.VerifyKeys(c.cfg); err != nil {
			t.Fatalf("%s: fresh state: %v", c.name, err)
		}
		if err := s.VerifyKeys(nil); !errors.Is(err, ErrInvalidArgument) {
			t.Fatalf("nil config: %v", err)
		}
		// A signature made for the other flavour's key encoding.
		other := omemo2Config()
		if c.name == "omemo2" {
			other = legacyConfig()
		}
		if err := s.VerifyKeys(other); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("%s: wrong config: err = %v, want ErrKeyMismatch", c.name, err)
		}
		s.SignedPreKey.Signature[1] ^= 1
		if err := s.VerifyKeys(c.cfg); !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), "signature") {
			t.Fatalf("%s: bad signature: err = %v", c.name, err)
		}
	}
}

// TestCanonicalEncoding checks that decoding a version-2 encoding and
// encoding it again gives the same bytes, with and without the optional
// parts.
func TestCanonicalEncoding(t *testing.T) {
	cfg := omemo2Config()
	for _, s := range []*State{newState(t, cfg, 0), newState(t, cfg, 1), func() *State { s, _ := tamperedState(t, cfg); return s }()} {
		data, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var d State
		if err := d.UnmarshalBinary(data); err != nil {
			t.Fatal(err)
		}
		again, err := d.MarshalBinary()
		if err != nil || !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	}
}

// benchState is a state as a backend keeps it: 100 pre keys and an old
// signed pre key.
func benchState(b *testing.B) *State {
	cfg := omemo2Config()
	s := newState(b, cfg, 100)
	if err := s.RotateSignedPreKey(cfg, testNow, nil); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkUnmarshalState is the cost of loading a state with 100 pre keys:
// "v1" is the format without public keys (one scalar multiplication per
// key, as every load cost before version 2), "v2" the current one.
func BenchmarkUnmarshalState(b *testing.B) {
	s := benchState(b)
	v2, err := s.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{{"v1", marshalV1(b, s)}, {"v2", v2}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.data)))
			for b.Loop() {
				var t State
				if err := t.UnmarshalBinary(c.data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMarshalState(b *testing.B) {
	s := benchState(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyKeys is the cost of checking a state with 100 pre keys
// before publishing its bundle.
func BenchmarkVerifyKeys(b *testing.B) {
	s := benchState(b)
	cfg := omemo2Config()
	for b.Loop() {
		if err := s.VerifyKeys(cfg); err != nil {
			b.Fatal(err)
		}
	}
}
