package doubleratchet

import (
	"bytes"
	"errors"
	"testing"
)

// midConversation returns states with skipped keys in two chains, previous
// peer keys and non-trivial counters.
func midConversation(t testing.TB) (alice, bob *State, pending []message) {
	alice, bob = pair(t, testConfig())
	a := []message{send(alice), send(alice), send(alice), send(alice)}
	recv(t, bob, a[3])
	recv(t, bob, a[0])
	b := []message{send(bob), send(bob)}
	recv(t, alice, b[1])
	a2 := []message{send(alice), send(alice), send(alice)}
	recv(t, bob, a2[2])
	// Pending for bob: a[1], a[2] (old chain), a2[0], a2[1]; for alice: b[0].
	return alice, bob, []message{a[1], a[2], a2[0], a2[1], b[0]}
}

func TestMarshalRoundTrip(t *testing.T) {
	alice, bob, pending := midConversation(t)
	for _, s := range []*State{alice, bob} {
		data := snapshot(t, s)
		if data[0] != stateVersion {
			t.Fatalf("version byte = %d", data[0])
		}
		r, err := UnmarshalState(testConfig(), data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(snapshot(t, r), data) {
			t.Fatal("re-marshal differs")
		}
		if r.NumSkippedKeys() != s.NumSkippedKeys() || r.SendingChainLength() != s.SendingChainLength() ||
			r.OwnRatchetKey() != s.OwnRatchetKey() {
			t.Fatal("restored state differs")
		}
	}
	if bob.NumSkippedKeys() != 4 {
		t.Fatalf("bob skipped = %d", bob.NumSkippedKeys())
	}

	// The restored states continue the conversation exactly like the
	// originals (same random keys in both runs).
	run := func(alice, bob *State) [][32]byte {
		var out [][32]byte
		ar := &keyReader{keys: [][32]byte{fill(0x41), fill(0x42), fill(0x43)}}
		br := &keyReader{keys: [][32]byte{fill(0x51), fill(0x52), fill(0x53)}}
		for _, m := range pending[:4] {
			if err := bob.Decrypt(m.h, br, m.open); err != nil {
				t.Fatal(err)
			}
		}
		if err := alice.Decrypt(pending[4].h, ar, pending[4].open); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			m := send(bob)
			out = append(out, m.mk, m.h.RatchetKey)
			if err := alice.Decrypt(m.h, ar, m.open); err != nil {
				t.Fatal(err)
			}
			m = send(alice)
			out = append(out, m.mk, m.h.RatchetKey)
			if err := bob.Decrypt(m.h, br, m.open); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	ra, err := UnmarshalState(testConfig(), snapshot(t, alice))
	if err != nil {
		t.Fatal(err)
	}
	rb, err := UnmarshalState(testConfig(), snapshot(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	want := run(alice.Clone(), bob.Clone())
	got := run(ra, rb)
	for i := range want {
		if want[i] != got[i] {
			t.Fatalf("diverged at %d", i)
		}
	}
}

func TestMarshalFreshStates(t *testing.T) {
	alice, bob := pair(t, testConfig())
	for _, s := range []*State{alice, bob} {
		data := snapshot(t, s)
		r, err := UnmarshalState(testConfig(), data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(snapshot(t, r), data) || r.CanEncrypt() != s.CanEncrypt() {
			t.Fatal("round trip differs")
		}
	}
	// The restored passive state accepts the first message.
	r, _ := UnmarshalState(testConfig(), snapshot(t, bob))
	recv(t, r, send(alice))
}

// A smaller session cap on load drops the oldest keys.
func TestUnmarshalEvicts(t *testing.T) {
	_, bob, pending := midConversation(t)
	cfg := testConfig()
	cfg.MaxSkippedPerMessage, cfg.MaxSkippedPerSession = 2, 2
	r, err := UnmarshalState(cfg, snapshot(t, bob))
	if err != nil {
		t.Fatal(err)
	}
	if r.NumSkippedKeys() != 2 {
		t.Fatalf("skipped = %d", r.NumSkippedKeys())
	}
	expectFail(t, r, pending[0], nil, ErrDuplicate)
	expectFail(t, r, pending[1], nil, ErrDuplicate)
	recv(t, r, pending[2])
	recv(t, r, pending[3])
}

func TestUnmarshalCorrupt(t *testing.T) {
	_, bob, _ := midConversation(t)
	good := snapshot(t, bob)
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	const prevOff = fixedLen - 5 // offset of nPrev
	for name, data := range map[string][]byte{
		"empty":         nil,
		"version":       mut(func(b []byte) []byte { b[0] = 1; return b }),
		"flags":         mut(func(b []byte) []byte { b[1] |= 0x80; return b }),
		"recv only":     mut(func(b []byte) []byte { b[1] = flagRecv | flagPeer; return b }),
		"truncated":     good[:len(good)-1],
		"trailing":      append(bytes.Clone(good), 0),
		"count too big": mut(func(b []byte) []byte { b[len(b)-4*skippedLen-1]++; return b }),
		"count huge": mut(func(b []byte) []byte {
			off := prevOff + 1 + 32*int(b[prevOff])
			copy(b[off:], []byte{0xff, 0xff, 0xff, 0xff})
			return b
		}),
		"too many prev":  mut(func(b []byte) []byte { b[prevOff] = 9; return b }),
		"duplicate skip": mut(func(b []byte) []byte { n := len(b); copy(b[n-skippedLen:], b[n-2*skippedLen:n-skippedLen]); return b }),
		"only header":    good[:fixedLen-5],
	} {
		if _, err := UnmarshalState(testConfig(), data); !errors.Is(err, ErrCorruptState) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if _, err := UnmarshalState(&Config{}, good); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("invalid config: err = %v", err)
	}
	// Non-zero fields of an absent chain are rejected.
	_, fresh := pair(t, testConfig())
	b := snapshot(t, fresh)
	b[1+1+32+32+32] = 1 // peerPub[0] without the peer flag
	if _, err := UnmarshalState(testConfig(), b); !errors.Is(err, ErrCorruptState) {
		t.Errorf("non-canonical: err = %v", err)
	}
}

func FuzzUnmarshalState(f *testing.F) {
	alice, bob, _ := midConversation(f)
	a2, b2 := pair(f, testConfig())
	for _, s := range []*State{alice, bob, a2, b2} {
		f.Add(snapshot(f, s))
	}
	f.Add([]byte{})
	f.Add([]byte{stateVersion})
	cfg := testConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := UnmarshalState(cfg, data)
		if err != nil {
			if !errors.Is(err, ErrCorruptState) {
				t.Fatalf("error does not wrap ErrCorruptState: %v", err)
			}
			return
		}
		// Accepted input is canonical (fuzz inputs are far below the
		// session cap, so nothing is evicted).
		out, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, data) {
			t.Fatalf("accepted input re-marshals differently")
		}
		// Using a decoded state never panics either.
		_, _, _ = s.TryEncrypt()
		_ = s.Decrypt(Header{N: 3, PN: 2}, &keyReader{keys: [][32]byte{fill(7)}}, func(*[32]byte) error { return nil })
	})
}
