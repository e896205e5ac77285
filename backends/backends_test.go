package backends_test

import (
	"bytes"
	"crypto/rand"
	"encoding"
	"errors"
	"fmt"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
)

// kind is one backend under test.
type kind struct {
	name string
	new  func(id *backends.IdentityKeyPair, keys []byte, o *backends.Options) (backends.Backend, error)
}

var kinds = []kind{
	{"twomemo", func(id *backends.IdentityKeyPair, keys []byte, o *backends.Options) (backends.Backend, error) {
		return twomemo.New(id, keys, o)
	}},
	{"oldmemo", func(id *backends.IdentityKeyPair, keys []byte, o *backends.Options) (backends.Backend, error) {
		return oldmemo.New(id, keys, o)
	}},
}

type party struct {
	jid string
	dev uint32
	id  *backends.IdentityKeyPair
	be  backends.Backend
}

func newParty(t testing.TB, k kind, jid string, dev uint32, o *backends.Options) *party {
	t.Helper()
	id, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	be, err := k.new(id, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	return &party{jid: jid, dev: dev, id: id, be: be}
}

// wire is one message as it travels: the <key> for the recipient and the
// payload.
type wire struct {
	key     backends.KeyElement
	content backends.Content
}

// encrypt sends plaintext (nil: empty message) from p over session s.
func encrypt(t testing.TB, p *party, s backends.Session, plaintext []byte) wire {
	t.Helper()
	var c backends.Content
	var km []byte
	var err error
	if plaintext == nil {
		c, km, err = p.be.EncryptEmpty()
	} else {
		c, km, err = p.be.EncryptPlaintext(plaintext)
	}
	if err != nil {
		t.Fatal(err)
	}
	ke, err := p.be.EncryptKeyMaterial(s, km)
	if err != nil {
		t.Fatal(err)
	}
	return wire{ke, c}
}

// receive decrypts w at p, building a passive session when w carries a key
// exchange. It returns the session used and the plaintext (nil if empty).
func receive(p *party, from *party, s backends.Session, w wire) (backends.Session, []byte, error) {
	var km []byte
	var err error
	if w.key.KeyExchange {
		kex, msg, err := p.be.ParseKeyExchange(w.key.Data, from.id.PublicKey()[31]&0x80 != 0)
		if err != nil {
			return s, nil, err
		}
		if kex.IdentityKey != from.id.PublicKey() {
			return s, nil, fmt.Errorf("identity key mismatch")
		}
		if s != nil && s.Initiation() == backends.Passive && s.KeyExchange().BuildsSameSession(kex) {
			km, err = p.be.DecryptKeyMaterial(s, msg)
		} else {
			s, km, err = p.be.BuildSessionPassive(from.jid, from.dev, kex, msg)
		}
		if err != nil {
			return s, nil, err
		}
	} else {
		km, err = p.be.DecryptKeyMaterial(s, w.key.Data)
		if err != nil {
			return s, nil, err
		}
	}
	if w.content.Empty {
		return s, nil, nil
	}
	pt, err := p.be.DecryptPlaintext(w.content, km)
	return s, pt, err
}

func mustReceive(t testing.TB, p, from *party, s backends.Session, w wire, want []byte) backends.Session {
	t.Helper()
	s, pt, err := receive(p, from, s, w)
	if err != nil {
		t.Fatalf("%s receiving %q: %v", p.jid, want, err)
	}
	if !bytes.Equal(pt, want) {
		t.Fatalf("%s got %q, want %q", p.jid, pt, want)
	}
	return s
}

// start builds alice's active session with bob and returns it with the
// first wire message, which carries "hello".
func start(t testing.TB, alice, bob *party) (backends.Session, wire) {
	t.Helper()
	b, err := bob.be.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	c, km, err := alice.be.EncryptPlaintext([]byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	s, ke, err := alice.be.BuildSessionActive(bob.jid, bob.dev, b, km)
	if err != nil {
		t.Fatal(err)
	}
	if !ke.KeyExchange || ke.JID != bob.jid || ke.DeviceID != bob.dev {
		t.Fatalf("first key element = %+v, want a key exchange for bob", ke)
	}
	return s, wire{ke, c}
}

func TestConversation(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			alice := newParty(t, k, "alice@example.org", 1, nil)
			bob := newParty(t, k, "bob@example.org", 2, nil)
			as, first := start(t, alice, bob)

			// The key exchange stays attached until bob answers.
			second := encrypt(t, alice, as, []byte("still there?"))
			if !second.key.KeyExchange {
				t.Fatal("key exchange not attached to the second message of an unconfirmed session")
			}
			bs := mustReceive(t, bob, alice, nil, first, []byte("hello"))
			if bob.be.DeletePreKey(bs) != true {
				t.Fatal("used pre key not found for deletion")
			}
			// The repeated key exchange reuses the passive session.
			bs2 := mustReceive(t, bob, alice, bs, second, []byte("still there?"))
			if bs2 != bs {
				t.Fatal("repeated key exchange built a new session")
			}

			// Bob answers (ratchet step), alice's session becomes confirmed.
			r1 := encrypt(t, bob, bs, []byte("hi alice"))
			if r1.key.KeyExchange {
				t.Fatal("passive session sent a key exchange")
			}
			mustReceive(t, alice, bob, as, r1, []byte("hi alice"))
			if !as.Confirmed() {
				t.Fatal("session not confirmed after the answer")
			}
			// Out of order: a3 arrives before a1 and a2.
			a1 := encrypt(t, alice, as, []byte("one"))
			if a1.key.KeyExchange {
				t.Fatal("confirmed session still sends the key exchange")
			}
			a2 := encrypt(t, alice, as, nil)
			a3 := encrypt(t, alice, as, []byte("three"))
			mustReceive(t, bob, alice, bs, a3, []byte("three"))
			mustReceive(t, bob, alice, bs, a1, []byte("one"))
			mustReceive(t, bob, alice, bs, a2, nil)
			// Replays fail.
			if _, _, err := receive(bob, alice, bs, a1); !errors.Is(err, backends.ErrDuplicateMessage) {
				t.Fatalf("replay: err = %v, want ErrDuplicateMessage", err)
			}
			// More direction changes, through a marshal round trip.
			for i := range 4 {
				from, to, fs, ts := bob, alice, bs, as
				if i%2 == 1 {
					from, to, fs, ts = alice, bob, as, bs
				}
				msg := []byte(fmt.Sprintf("turn %d", i))
				w := encrypt(t, from, fs, msg)
				data, err := ts.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				// AppendBinary appends exactly MarshalBinary's bytes.
				prefix := []byte("prefix")
				appended, err := ts.(encoding.BinaryAppender).AppendBinary(prefix)
				if err != nil || !bytes.Equal(appended, append([]byte("prefix"), data...)) {
					t.Fatalf("AppendBinary = %x, %v; want prefix || %x", appended, err, data)
				}
				restored, err := to.be.UnmarshalSession(data)
				if err != nil {
					t.Fatal(err)
				}
				mustReceive(t, to, from, restored, w, msg)
				if to == alice {
					as = restored
				} else {
					bs = restored
				}
			}
			if n := as.SendingChainLength(); n != 1 {
				t.Fatalf("alice sending chain length = %d, want 1", n)
			}
			if n, ok := as.ReceivingChainLength(); !ok || n != 1 {
				t.Fatalf("alice receiving chain length = %d, %v; want 1", n, ok)
			}
		})
	}
}

func TestKeysPersist(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			bob := newParty(t, k, "bob@example.org", 2, nil)
			if n := bob.be.NumVisiblePreKeys(); n != 100 {
				t.Fatalf("fresh backend has %d pre keys, want 100", n)
			}
			if err := bob.be.RotateSignedPreKey(); err != nil {
				t.Fatal(err)
			}
			data, err := bob.be.MarshalKeys()
			if err != nil {
				t.Fatal(err)
			}
			again, err := k.new(bob.id, data, nil)
			if err != nil {
				t.Fatal(err)
			}
			b1, _ := bob.be.Bundle()
			b2, _ := again.Bundle()
			if fmt.Sprint(b1) != fmt.Sprint(b2) {
				t.Fatal("bundle changed across a marshal round trip")
			}
			other, _ := backends.GenerateIdentityKeyPair(rand.Reader)
			if _, err := k.new(other, data, nil); err == nil {
				t.Fatal("keys of another identity were accepted")
			}
			bob.be.Purge()
			if _, err := bob.be.Bundle(); !errors.Is(err, backends.ErrPurged) {
				t.Fatalf("Bundle after Purge: %v, want ErrPurged", err)
			}
		})
	}
}
