package backends_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/x3dh"
)

// The version-1 key states written by the release before public keys were
// stored; see internal/x3dh/testdata.
var v1Fixtures = map[string]string{
	"twomemo": "../internal/x3dh/testdata/state-v1-omemo2.hex",
	"oldmemo": "../internal/x3dh/testdata/state-v1-legacy.hex",
}

func fixtureIdentity() *backends.IdentityKeyPair {
	return backends.IdentityKeyPairFromSeed(sha256.Sum256([]byte("x3dh state version 1 fixture identity")))
}

func readHex(t *testing.T, file string) []byte {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func verifyKeys(t *testing.T, be backends.Backend) error {
	t.Helper()
	v, ok := be.(backends.KeyVerifier)
	if !ok {
		t.Fatalf("%T does not implement backends.KeyVerifier", be)
	}
	return v.VerifyKeys()
}

// TestLoadVersion1Keys loads key material stored by the previous release:
// it works, is written back in the new format, publishes the same bundle
// after the migration, and completes key exchanges.
func TestLoadVersion1Keys(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			id := fixtureIdentity()
			old, err := k.new(id, readHex(t, v1Fixtures[k.name]), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := verifyKeys(t, old); err != nil {
				t.Fatal(err)
			}
			want, err := old.Bundle()
			if err != nil {
				t.Fatal(err)
			}
			raw, err := old.MarshalKeys()
			if err != nil {
				t.Fatal(err)
			}
			if raw[0] != 2 {
				t.Fatalf("key material written with version %d", raw[0])
			}
			be, err := k.new(id, raw, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := be.Bundle(); !reflect.DeepEqual(got, want) {
				t.Fatal("the migrated key material publishes another bundle")
			}
			bob := &party{jid: "bob@example.org", dev: 2, id: id, be: be}
			alice := newParty(t, k, "alice@example.org", 1, nil)
			_, first := start(t, alice, bob)
			mustReceive(t, bob, alice, nil, first, []byte("hello"))

			other, _ := backends.GenerateIdentityKeyPair(rand.Reader)
			if _, err := k.new(other, raw, nil); !errors.Is(err, backends.ErrInvalidIdentity) {
				t.Fatalf("loaded with another identity: %v", err)
			}
		})
	}
}

// reseal recomputes the trailing SHA-256 checksum of version-2 key
// material, as a writer that checksums whatever it writes would.
func reseal(raw []byte) []byte {
	body := raw[:len(raw)-sha256.Size]
	sum := sha256.Sum256(body)
	return append(bytes.Clone(body), sum[:]...)
}

// onlyPreKey returns b restricted to the pre key id, so that a key exchange
// built from it must use that pre key.
func onlyPreKey(t *testing.T, b bundle.Bundle, id uint32) (bundle.Bundle, [32]byte) {
	t.Helper()
	for _, pk := range b.PreKeys {
		if pk.ID == id {
			b.PreKeys = []bundle.PreKey{pk}
			return b, pk.Key
		}
	}
	t.Fatalf("no pre key %d in the bundle", id)
	return b, [32]byte{}
}

// sendWith builds alice's session from b and returns the first message.
func sendWith(t *testing.T, alice, bob *party, b bundle.Bundle) wire {
	t.Helper()
	c, km, err := alice.be.EncryptPlaintext([]byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	_, ke, err := alice.be.BuildSessionActive(bob.jid, bob.dev, b, km)
	if err != nil {
		t.Fatal(err)
	}
	return wire{ke, c}
}

// TestTamperedKeys changes a stored pre key of the own key material.
// Changed bytes are caught by the checksum when the backend is created: no
// backend, hence no bundle. If the checksum was recomputed too, the backend
// loads (loading recomputes nothing), VerifyKeys reports the key before a
// bundle would be uploaded, and a key exchange that uses it fails with
// ErrCorruptKeys, never with a silent authentication failure.
func TestTamperedKeys(t *testing.T) {
	const target = 5
	for _, k := range kinds {
		for _, half := range []string{"public", "private"} {
			t.Run(k.name+"/"+half, func(t *testing.T) {
				bob := newParty(t, k, "bob@example.org", 2, nil)
				alice := newParty(t, k, "alice@example.org", 1, nil)
				published, err := bob.be.Bundle()
				if err != nil {
					t.Fatal(err)
				}
				raw, err := bob.be.MarshalKeys()
				if err != nil {
					t.Fatal(err)
				}
				single, pub := onlyPreKey(t, published, target)
				off := bytes.Index(raw, pub[:])
				if off < 32 {
					t.Fatal("pre key not found in the key material")
				}
				if half == "private" {
					off -= 32
				}
				bad := bytes.Clone(raw)
				bad[off+1] ^= 0x10

				if _, err := k.new(bob.id, bad, nil); !errors.Is(err, x3dh.ErrCorruptState) {
					t.Fatalf("tampered key material loaded: %v", err)
				}

				be, err := k.new(bob.id, reseal(bad), nil)
				if err != nil {
					t.Fatalf("re-sealed key material: %v", err)
				}
				bob.be = be
				// A failed check is not remembered as a pass (only a
				// passed check is).
				for range 2 {
					if err := verifyKeys(t, be); !errors.Is(err, backends.ErrCorruptKeys) || !strings.HasSuffix(err.Error(), "pre key 5") {
						t.Fatalf("VerifyKeys: err = %v, want ErrCorruptKeys naming pre key 5", err)
					}
				}
				before, _ := be.MarshalKeys()
				// alice uses the bundle as it was published, with the
				// good public key, or as the tampered state would publish
				// it: either way bob cannot agree, and says why.
				current, _ := be.Bundle()
				current, _ = onlyPreKey(t, current, target)
				for _, b := range []bundle.Bundle{single, current} {
					_, _, err = receive(bob, alice, nil, sendWith(t, alice, bob, b))
					if !errors.Is(err, backends.ErrKeyExchange) || !errors.Is(err, backends.ErrCorruptKeys) || errors.Is(err, backends.ErrAuthentication) {
						t.Fatalf("key exchange with the tampered pre key: err = %v, want ErrKeyExchange and ErrCorruptKeys", err)
					}
				}
				if after, _ := be.MarshalKeys(); !bytes.Equal(after, before) {
					t.Fatal("the failed key exchange changed the key material")
				}
				// The other pre keys still work.
				other, _ := onlyPreKey(t, published, target+1)
				if _, _, err := receive(bob, alice, nil, sendWith(t, alice, bob, other)); err != nil {
					t.Fatalf("key exchange with an untouched pre key: %v", err)
				}
			})
		}
	}
}

// TestTamperedIdentity changes the identity key stored in the key material
// and recomputes the checksum: loading compares it with the identity key
// pair, both halves, at no cost, and refuses it.
func TestTamperedIdentity(t *testing.T) {
	for _, k := range kinds {
		p := newParty(t, k, "bob@example.org", 2, nil)
		raw, err := p.be.MarshalKeys()
		if err != nil {
			t.Fatal(err)
		}
		for name, off := range map[string]int{"private": 1 + 1, "public": 1 + 32 + 1} {
			bad := bytes.Clone(raw)
			bad[off] ^= 0x10 // leaves the private key clamped
			if _, err := k.new(p.id, reseal(bad), nil); !errors.Is(err, backends.ErrInvalidIdentity) {
				t.Errorf("%s: tampered identity %s key loaded: %v", k.name, name, err)
			}
		}
	}
}
