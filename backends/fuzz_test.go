package backends_test

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"strings"
	"sync"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
)

// fuzzEnv is an established conversation per backend, shared by the fuzz
// iterations: bob receives the fuzzed input.
type fuzzEnv struct {
	alice, bob *party
	bs         backends.Session
	sessionRaw []byte
	keysRaw    []byte
	seeds      [][]byte
}

var (
	fuzzOnce sync.Once
	fuzzEnvs map[string]*fuzzEnv
)

func fuzzSetup(t testing.TB) map[string]*fuzzEnv {
	fuzzOnce.Do(func() {
		fuzzEnvs = map[string]*fuzzEnv{}
		for _, k := range kinds {
			e := &fuzzEnv{}
			var as backends.Session
			var first wire
			e.alice = newParty(t, k, "alice@example.org", 1, nil)
			e.bob = newParty(t, k, "bob@example.org", 2, nil)
			as, first = start(t, e.alice, e.bob)
			e.bs = mustReceive(t, e.bob, e.alice, nil, first, []byte("hello"))
			mustReceive(t, e.alice, e.bob, as, encrypt(t, e.bob, e.bs, []byte("hi")), []byte("hi"))
			e.sessionRaw, _ = e.bs.MarshalBinary()
			e.keysRaw, _ = e.bob.be.MarshalKeys()
			_, kex := start(t, e.alice, e.bob)
			e.seeds = [][]byte{first.key.Data, kex.key.Data, encrypt(t, e.alice, as, []byte("x")).key.Data}
			fuzzEnvs[k.name] = e
		}
	})
	return fuzzEnvs
}

// FuzzKeyElement feeds arbitrary <key> contents to both backends, as a key
// exchange and as a plain message: no panic, and a rejected input leaves
// the session and the keys unchanged.
func FuzzKeyElement(f *testing.F) {
	envs := fuzzSetup(f)
	for i, k := range kinds {
		for _, s := range envs[k.name].seeds {
			f.Add(uint8(i), s)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		k := kinds[int(which)%len(kinds)]
		e := envs[k.name]
		s, err := e.bob.be.UnmarshalSession(e.sessionRaw)
		if err != nil {
			t.Fatal(err)
		}
		if kex, msg, err := e.bob.be.ParseKeyExchange(data, true); err == nil {
			_, _, _ = e.bob.be.BuildSessionPassive("x@example.org", 9, kex, msg)
		}
		if _, err := e.bob.be.DecryptKeyMaterial(s, data); err != nil {
			after, _ := s.MarshalBinary()
			if !bytes.Equal(after, e.sessionRaw) {
				t.Fatalf("rejected input changed the session: %v", err)
			}
		}
		if keys, _ := e.bob.be.MarshalKeys(); !bytes.Equal(keys, e.keysRaw) {
			t.Fatal("key state changed")
		}
	})
}

// FuzzBundle parses arbitrary bundle XML and builds sessions from whatever
// parses: no panic, only typed errors.
func FuzzBundle(f *testing.F) {
	envs := fuzzSetup(f)
	for _, k := range kinds {
		b, _ := envs[k.name].bob.be.Bundle()
		raw, err := xml.Marshal(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := bundle.Decode(xml.NewDecoder(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		for _, k := range kinds {
			e := envs[k.name]
			if !strings.EqualFold(b.Namespace, e.bob.be.Namespace()) {
				continue
			}
			_, _ = e.alice.be.BundleIdentityKey(*b)
			km := make([]byte, 48)
			rand.Read(km)
			_, _, _ = e.alice.be.BuildSessionActive("bob@example.org", 2, *b, km)
		}
	})
}

// FuzzSession restores arbitrary session bytes: no panic.
func FuzzSession(f *testing.F) {
	envs := fuzzSetup(f)
	for i, k := range kinds {
		f.Add(uint8(i), envs[k.name].sessionRaw)
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		k := kinds[int(which)%len(kinds)]
		e := envs[k.name]
		s, err := e.bob.be.UnmarshalSession(data)
		if err != nil {
			return
		}
		_, _ = e.bob.be.EncryptKeyMaterial(s, make([]byte, 32))
		_, _ = e.bob.be.DecryptKeyMaterial(s, e.seeds[2])
	})
}
