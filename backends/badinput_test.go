package backends_test

import (
	"bytes"
	"errors"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/internal/pb/oldmemopb"
	"mellium.im/omemo/internal/pb/twomemopb"
)

// ratchetMsg is a key element's plain message, taken apart.
type ratchetMsg struct {
	mac       []byte
	n, pn     uint32
	dh, ct    []byte
	keyPrefix bool // legacy: dh carries the 0x05 prefix
}

// kexMsg is a key exchange taken apart; inner is the message it carries in
// the form DecryptKeyMaterial takes.
type kexMsg struct {
	pk, spk uint32
	ik, ek  []byte
	inner   []byte
}

// wireCodec takes the wire format of one backend apart and puts it back
// together, so that tests can forge every field.
type wireCodec struct {
	splitMsg func(t *testing.T, data []byte) ratchetMsg
	joinMsg  func(m ratchetMsg) []byte
	splitKex func(t *testing.T, data []byte) kexMsg
	joinKex  func(k kexMsg) []byte
}

var codecs = map[string]wireCodec{
	"twomemo": {
		splitMsg: func(t *testing.T, data []byte) ratchetMsg {
			mac, msg, err := twomemopb.ParseOMEMOAuthenticatedMessage(data)
			if err != nil {
				t.Fatal(err)
			}
			n, pn, dh, ct, err := twomemopb.ParseOMEMOMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			return ratchetMsg{mac: mac, n: n, pn: pn, dh: dh, ct: ct}
		},
		joinMsg: func(m ratchetMsg) []byte {
			msg := twomemopb.AppendOMEMOMessage(nil, m.n, m.pn, m.dh, m.ct)
			return twomemopb.AppendOMEMOAuthenticatedMessage(nil, m.mac, msg)
		},
		splitKex: func(t *testing.T, data []byte) kexMsg {
			pk, spk, ik, ek, mac, msg, err := twomemopb.ParseOMEMOKeyExchange(data)
			if err != nil {
				t.Fatal(err)
			}
			return kexMsg{pk, spk, ik, ek, twomemopb.AppendOMEMOAuthenticatedMessage(nil, mac, msg)}
		},
		joinKex: func(k kexMsg) []byte {
			mac, msg, _ := twomemopb.ParseOMEMOAuthenticatedMessage(k.inner)
			return twomemopb.AppendOMEMOKeyExchange(nil, k.pk, k.spk, k.ik, k.ek, mac, msg)
		},
	},
	"oldmemo": {
		splitMsg: func(t *testing.T, data []byte) ratchetMsg {
			n, pn, dh, ct, err := oldmemopb.ParseOMEMOMessage(data[1 : len(data)-8])
			if err != nil {
				t.Fatal(err)
			}
			return ratchetMsg{mac: data[len(data)-8:], n: n, pn: pn, dh: dh, ct: ct, keyPrefix: true}
		},
		joinMsg: func(m ratchetMsg) []byte {
			out := oldmemopb.AppendOMEMOMessage([]byte{0x33}, m.n, m.pn, m.dh, m.ct)
			return append(out, m.mac...)
		},
		splitKex: func(t *testing.T, data []byte) kexMsg {
			pk, spk, ik, ek, msg, err := oldmemopb.ParseOMEMOKeyExchange(data[1:])
			if err != nil {
				t.Fatal(err)
			}
			return kexMsg{pk, spk, ik, ek, msg}
		},
		joinKex: func(k kexMsg) []byte {
			return oldmemopb.AppendOMEMOKeyExchange([]byte{0x33}, k.pk, k.spk, k.ik, k.ek, k.inner)
		},
	},
}

// leafErrors are the distinct causes a caller can tell apart; every case
// must match exactly one of them.
var leafErrors = []error{
	backends.ErrMalformed, backends.ErrVersion, backends.ErrAuthentication,
	backends.ErrDecryption, backends.ErrInvalidKeyMaterial, backends.ErrNoPreKey,
	backends.ErrBadSignature, backends.ErrUnknownSignedPreKey, backends.ErrUnknownPreKey,
	backends.ErrInvalidKey, backends.ErrDuplicateMessage, backends.ErrTooManySkipped,
	backends.ErrWrongSession,
}

func flip(b []byte, i int) []byte {
	out := bytes.Clone(b)
	if i < 0 {
		i += len(out)
	}
	out[i] ^= 0x01
	return out
}

func zeroKey(prefix bool) []byte {
	if prefix {
		return append([]byte{0x05}, make([]byte, 32)...)
	}
	return make([]byte, 32)
}

// TestBadInput feeds every kind of forged, tampered, truncated or replayed
// input to both backends. Each gives its own typed error, never panics,
// leaves the receiver's session and keys byte-for-byte unchanged, and the
// genuine message still decrypts afterwards.
func TestBadInput(t *testing.T) {
	type env struct {
		k            kind
		c            wireCodec
		alice, bob   *party
		as, bs       backends.Session // established, confirmed sessions
		kex          wire             // a fresh key exchange from carol to bob
		carol        *party
		next         wire // alice's next genuine message to bob
		skippedLimit int
	}
	// message cases forge alice's next message to bob on an established
	// session; kex cases forge carol's key exchange; bundle cases build an
	// active session against a forged bundle of bob.
	cases := []struct {
		name   string
		only   string // run for this backend only
		msg    func(t *testing.T, e *env) []byte
		kex    func(t *testing.T, e *env) []byte
		bundle func(b *bundle.Bundle)
		other  func(t *testing.T, e *env) error
		want   error
	}{
		{name: "tampered MAC", want: backends.ErrAuthentication, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.mac = flip(m.mac, 0)
			return e.c.joinMsg(m)
		}},
		{name: "tampered header counter", want: backends.ErrAuthentication, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.n++
			return e.c.joinMsg(m)
		}},
		{name: "tampered header ratchet key", want: backends.ErrAuthentication, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.dh = flip(m.dh, 5)
			return e.c.joinMsg(m)
		}},
		{name: "small-order ratchet key", want: backends.ErrInvalidKey, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.dh = zeroKey(m.keyPrefix)
			return e.c.joinMsg(m)
		}},
		{name: "wrong-length ratchet key", want: backends.ErrMalformed, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.dh = m.dh[:len(m.dh)-1]
			return e.c.joinMsg(m)
		}},
		{name: "tampered encrypted key material", want: backends.ErrAuthentication, msg: func(t *testing.T, e *env) []byte {
			m := e.c.splitMsg(t, e.next.key.Data)
			m.ct = flip(m.ct, 0)
			return e.c.joinMsg(m)
		}},
		{name: "truncated", want: backends.ErrMalformed, msg: func(t *testing.T, e *env) []byte {
			return e.next.key.Data[:len(e.next.key.Data)/2]
		}},
		{name: "empty", want: backends.ErrMalformed, msg: func(t *testing.T, e *env) []byte { return []byte{} }},
		{name: "oversized", want: backends.ErrMalformed, msg: func(t *testing.T, e *env) []byte {
			return append(bytes.Clone(e.next.key.Data), make([]byte, 1<<20)...)
		}},
		{name: "trailing garbage", want: backends.ErrMalformed, only: "twomemo", msg: func(t *testing.T, e *env) []byte {
			return append(bytes.Clone(e.next.key.Data), 0xff)
		}},
		{name: "wrong version byte", want: backends.ErrVersion, only: "oldmemo", msg: func(t *testing.T, e *env) []byte {
			out := bytes.Clone(e.next.key.Data)
			out[0] = 0x32
			return out
		}},
		{name: "counter jump beyond the per-message limit", want: backends.ErrTooManySkipped, msg: func(t *testing.T, e *env) []byte {
			var w wire
			for range e.skippedLimit + 1 {
				w = encrypt(t, e.alice, e.as, []byte("skipped"))
			}
			return w.key.Data
		}},
		{name: "replay", want: backends.ErrDuplicateMessage, msg: func(t *testing.T, e *env) []byte {
			w := encrypt(t, e.alice, e.as, []byte("once"))
			mustReceive(t, e.bob, e.alice, e.bs, w, []byte("once"))
			return w.key.Data
		}},
		{name: "session of another backend", want: backends.ErrWrongSession, other: func(t *testing.T, e *env) error {
			for _, o := range kinds {
				if o.name == e.k.name {
					continue
				}
				x, y := newParty(t, o, "x@example.org", 7, nil), newParty(t, o, "y@example.org", 8, nil)
				s, _ := start(t, x, y)
				_, err := e.bob.be.DecryptKeyMaterial(s, e.next.key.Data)
				return err
			}
			t.Fatal("no other backend")
			return nil
		}},
		{name: "unknown signed pre key", want: backends.ErrUnknownSignedPreKey, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			k.spk += 1000
			return e.c.joinKex(k)
		}},
		{name: "unknown pre key", want: backends.ErrUnknownPreKey, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			k.pk += 1000
			return e.c.joinKex(k)
		}},
		{name: "key exchange without a pre key", want: backends.ErrUnknownPreKey, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			k.pk = 0
			return e.c.joinKex(k)
		}},
		{name: "key exchange with wrong-length identity key", want: backends.ErrMalformed, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			k.ik = k.ik[:len(k.ik)-1]
			return e.c.joinKex(k)
		}},
		{name: "key exchange with small-order ephemeral key", want: backends.ErrInvalidKey, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			k.ek = zeroKey(len(k.ek) == 33)
			return e.c.joinKex(k)
		}},
		{name: "key exchange with tampered message", want: backends.ErrAuthentication, kex: func(t *testing.T, e *env) []byte {
			k := e.c.splitKex(t, e.kex.key.Data)
			m := e.c.splitMsg(t, k.inner)
			m.mac = flip(m.mac, -1)
			k.inner = e.c.joinMsg(m)
			return e.c.joinKex(k)
		}},
		{name: "key exchange with another identity key", want: backends.ErrAuthentication, kex: func(t *testing.T, e *env) []byte {
			// Carol claims alice's identity: X3DH then derives other keys
			// and the MAC fails.
			k := e.c.splitKex(t, e.kex.key.Data)
			ka := e.c.splitKex(t, encryptFirst(t, e.alice, e.bob).key.Data)
			k.ik = ka.ik
			return e.c.joinKex(k)
		}},
		{name: "truncated key exchange", want: backends.ErrMalformed, kex: func(t *testing.T, e *env) []byte {
			return e.kex.key.Data[:len(e.kex.key.Data)-20]
		}},
		{name: "key exchange with wrong version byte", want: backends.ErrVersion, only: "oldmemo", kex: func(t *testing.T, e *env) []byte {
			out := bytes.Clone(e.kex.key.Data)
			out[0] = 0x23
			return out
		}},
		{name: "bundle without pre keys", want: backends.ErrNoPreKey, bundle: func(b *bundle.Bundle) { b.PreKeys = nil }},
		{name: "bundle with a bad signature", want: backends.ErrBadSignature, bundle: func(b *bundle.Bundle) {
			b.SignedPreKeySignature[0] ^= 1
		}},
		{name: "bundle with a small-order pre key", want: backends.ErrInvalidKey, bundle: func(b *bundle.Bundle) {
			b.PreKeys = []bundle.PreKey{{ID: 1}}
		}},
		{name: "bundle with a small-order identity key", want: backends.ErrInvalidKey, bundle: func(b *bundle.Bundle) {
			b.IdentityKey = [32]byte{1} // the neutral element in both forms
		}},
	}

	for _, k := range kinds {
		for _, tc := range cases {
			if tc.only != "" && tc.only != k.name {
				continue
			}
			t.Run(k.name+"/"+tc.name, func(t *testing.T) {
				opts := &backends.Options{MaxSkippedPerMessage: 5, MaxSkippedPerSession: 10}
				e := &env{k: k, c: codecs[k.name], skippedLimit: 5}
				e.alice = newParty(t, k, "alice@example.org", 1, nil)
				e.bob = newParty(t, k, "bob@example.org", 2, opts)
				e.carol = newParty(t, k, "carol@example.org", 3, nil)
				var first wire
				e.as, first = start(t, e.alice, e.bob)
				e.bs = mustReceive(t, e.bob, e.alice, nil, first, []byte("hello"))
				mustReceive(t, e.alice, e.bob, e.as, encrypt(t, e.bob, e.bs, []byte("hi")), []byte("hi"))
				e.next = encrypt(t, e.alice, e.as, []byte("genuine"))
				_, e.kex = start(t, e.carol, e.bob)

				// Forge first: some cases advance the genuine conversation.
				var forged []byte
				switch {
				case tc.msg != nil:
					forged = tc.msg(t, e)
				case tc.kex != nil:
					forged = tc.kex(t, e)
				}
				sessionBefore, _ := e.bs.MarshalBinary()
				keysBefore, _ := e.bob.be.MarshalKeys()

				var err error
				switch {
				case tc.msg != nil:
					_, err = e.bob.be.DecryptKeyMaterial(e.bs, forged)
				case tc.other != nil:
					err = tc.other(t, e)
				case tc.kex != nil:
					var kex backends.KeyExchange
					var inner []byte
					kex, inner, err = e.bob.be.ParseKeyExchange(forged, e.carol.id.PublicKey()[31]&0x80 != 0)
					if err == nil {
						_, _, err = e.bob.be.BuildSessionPassive(e.carol.jid, e.carol.dev, kex, inner)
					}
				case tc.bundle != nil:
					b, berr := e.bob.be.Bundle()
					if berr != nil {
						t.Fatal(berr)
					}
					tc.bundle(&b)
					_, _, err = e.alice.be.BuildSessionActive(e.bob.jid, e.bob.dev, b, make([]byte, 48))
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("err = %v, want %v", err, tc.want)
				}
				for _, other := range leafErrors {
					if other != tc.want && errors.Is(err, other) {
						t.Errorf("err = %v also matches %v; causes must be distinct", err, other)
					}
				}

				sessionAfter, _ := e.bs.MarshalBinary()
				keysAfter, _ := e.bob.be.MarshalKeys()
				if !bytes.Equal(sessionBefore, sessionAfter) {
					t.Error("session state changed by rejected input")
				}
				if !bytes.Equal(keysBefore, keysAfter) {
					t.Error("key state changed by rejected input")
				}
				// Nothing that could still be decrypted was lost.
				mustReceive(t, e.bob, e.alice, e.bs, e.next, []byte("genuine"))
				mustReceive(t, e.bob, e.carol, nil, e.kex, []byte("hello"))
			})
		}
	}
}

// encryptFirst returns a fresh key exchange from p to q.
func encryptFirst(t *testing.T, p, q *party) wire {
	_, w := start(t, p, q)
	return w
}

// TestBadPayload covers payload and key material tampering, which the
// caller detects after the key element was accepted.
func TestBadPayload(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			p := newParty(t, k, "alice@example.org", 1, nil)
			c, km, err := p.be.EncryptPlaintext([]byte("payload"))
			if err != nil {
				t.Fatal(err)
			}
			bad := c
			bad.Ciphertext = flip(c.Ciphertext, 0)
			if _, err := p.be.DecryptPlaintext(bad, km); !errors.Is(err, backends.ErrAuthentication) {
				t.Errorf("tampered payload: %v", err)
			}
			if _, err := p.be.DecryptPlaintext(c, flip(km, -1)); !errors.Is(err, backends.ErrAuthentication) {
				t.Errorf("tampered key material: %v", err)
			}
			if _, err := p.be.DecryptPlaintext(c, km[:len(km)-3]); !errors.Is(err, backends.ErrInvalidKeyMaterial) {
				t.Errorf("short key material: %v", err)
			}
			if _, err := p.be.DecryptPlaintext(backends.Content{Empty: true, IV: c.IV}, km); !errors.Is(err, backends.ErrMalformed) {
				t.Errorf("no payload: %v", err)
			}
			if pt, err := p.be.DecryptPlaintext(c, km); err != nil || string(pt) != "payload" {
				t.Errorf("genuine payload: %q, %v", pt, err)
			}
			if k.name == "oldmemo" {
				long := c
				long.IV = make([]byte, 16)
				if _, err := p.be.DecryptPlaintext(long, km); !errors.Is(err, backends.ErrAuthentication) {
					t.Errorf("16-byte IV of the wrong value: %v", err)
				}
				odd := c
				odd.IV = make([]byte, 8)
				if _, err := p.be.DecryptPlaintext(odd, km); !errors.Is(err, backends.ErrMalformed) {
					t.Errorf("8-byte IV: %v", err)
				}
			}
		})
	}
}
