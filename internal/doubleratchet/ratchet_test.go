package doubleratchet

import (
	"bytes"
	"errors"
	"io"
	"math"
	mrand "math/rand/v2"
	"testing"
)

// TestPythonConversation replays a conversation produced by
// testdata/python_kat.py with python-doubleratchet 1.0.3 (/usr/bin/python3):
// the recommended Curve25519 ratchet with "OMEMO Root Chain" HKDF and the
// 02 01 separate-HMACs chain, 1000/1000 limits, ratchet private keys fixed
// by overriding _generate_priv, and an "AEAD" whose ciphertext is the message
// key itself. SK = bytes(range(32)), Bob's SPK private key = 0x11*32.
func TestPythonConversation(t *testing.T) {
	type want struct {
		pub, mk string
		pn, n   uint32
	}
	var (
		a0 = want{"7d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44", "29b4783121c1f4e66e02abac6c6f563ccb8056d2a4f9e83f96afe3ac3bd9e628", 0, 0}
		a1 = want{"7d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44", "df8e4914c37fcb407e9ff27b0e9ed44950a75c6deaed074aeb876bd0dee64c20", 0, 1}
		a2 = want{"7d34a4815fa6b982535e60af3bd9b49556816080f1641ff81d2b7c8ae8268a44", "42e30b9385e81fd6755bb10adec9e9d860e7f0e8963ef2ea7d736052da39f8a3", 0, 2}
		b0 = want{"04f5f29162c31a8defa18e6e742224ee806fc1718a278be859ba5620402b8f3a", "5f6218de7ceacd964b1f08e689117e3a187e36cf1466549e37d19bf356052630", 0, 0}
		b1 = want{"04f5f29162c31a8defa18e6e742224ee806fc1718a278be859ba5620402b8f3a", "c2f7fca6612a223d7773a6217f7fbe241c4eca3c7db485f15ef3268d70b91fdb", 0, 1}
		a3 = want{"0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20", "1772b1920c75349c724bb80ac338f7c006b0df893661623d57c33f08d14eafb3", 3, 0}
		b2 = want{"59d9225473451efffe6b36dbcaefdbf7b1895de62084509a7f5b58bf01d06418", "258bf9f49ebe54966cde6ffb53d1a27fd588c61f5b586f3701bacca578bff90d", 2, 0}
	)
	check := func(name string, m message, w want) {
		t.Helper()
		if m.h.RatchetKey != unhex32(t, w.pub) || m.h.PN != w.pn || m.h.N != w.n || m.mk != unhex32(t, w.mk) {
			t.Fatalf("%s = {%x pn=%d n=%d mk=%x}, want %+v", name, m.h.RatchetKey, m.h.PN, m.h.N, m.mk, w)
		}
	}

	cfg := testConfig()
	sk := seq32(0)
	spkPriv := fill(0x11)
	spkPub, _ := publicKey(&spkPriv)
	if spkPub != unhex32(t, "7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13") {
		t.Fatalf("spk pub = %x", spkPub)
	}
	alice, err := NewActive(cfg, sk, spkPub, &keyReader{keys: [][32]byte{fill(0x21)}})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := NewPassive(cfg, sk, spkPriv)
	if err != nil {
		t.Fatal(err)
	}
	ma0, ma1, ma2 := send(alice), send(alice), send(alice)
	check("A0", ma0, a0)
	check("A1", ma1, a1)
	check("A2", ma2, a2)

	bobRand := &keyReader{keys: [][32]byte{fill(0x31), fill(0x32)}}
	aliceRand := &keyReader{keys: [][32]byte{fill(0x22)}}
	for _, m := range []message{ma0, ma2, ma1} {
		if err := bob.Decrypt(m.h, bobRand, m.open); err != nil {
			t.Fatal(err)
		}
	}
	mb0, mb1 := send(bob), send(bob)
	check("B0", mb0, b0)
	check("B1", mb1, b1)
	for _, m := range []message{mb1, mb0} {
		if err := alice.Decrypt(m.h, aliceRand, m.open); err != nil {
			t.Fatal(err)
		}
	}
	ma3 := send(alice)
	check("A3", ma3, a3)
	if err := bob.Decrypt(ma3.h, bobRand, ma3.open); err != nil {
		t.Fatal(err)
	}
	check("B2", send(bob), b2)
	if len(aliceRand.keys)+len(bobRand.keys) != 0 {
		t.Error("not all ratchet keys consumed")
	}
}

func TestConversation(t *testing.T) {
	alice, bob := pair(t, testConfig())
	if bob.CanEncrypt() {
		t.Fatal("fresh passive state can encrypt")
	}
	if _, ok := bob.ReceivingChainLength(); ok {
		t.Fatal("fresh passive state has a receiving chain")
	}
	// Direction changes with bursts of varying length; Alice sends the even
	// bursts, Bob the odd ones.
	bursts := []int{1, 3, 2, 1, 5, 1, 1, 4, 2, 3}
	from, to := alice, bob
	seen := map[[32]byte]bool{}
	seenRatchet := map[[32]byte]bool{}
	for i, k := range bursts {
		for j := range k {
			m := send(from)
			if seen[m.mk] {
				t.Fatal("message key repeated")
			}
			seen[m.mk] = true
			var wantPN uint32
			if i >= 2 {
				wantPN = uint32(bursts[i-2])
			}
			if m.h.N != uint32(j) || m.h.PN != wantPN {
				t.Fatalf("burst %d msg %d: header n=%d pn=%d, want n=%d pn=%d", i, j, m.h.N, m.h.PN, j, wantPN)
			}
			if j == 0 {
				if seenRatchet[m.h.RatchetKey] {
					t.Fatal("ratchet key reused across chains")
				}
				seenRatchet[m.h.RatchetKey] = true
			}
			if m.h.RatchetKey != from.OwnRatchetKey() {
				t.Fatal("header ratchet key is not the sender's")
			}
			recv(t, to, m)
			if n, ok := to.ReceivingChainLength(); !ok || n != uint32(j+1) {
				t.Fatalf("receiving chain length = %d, %v", n, ok)
			}
			if from.SendingChainLength() != uint32(j+1) {
				t.Fatalf("sending chain length = %d", from.SendingChainLength())
			}
			if pk, ok := to.PeerRatchetKey(); !ok || pk != m.h.RatchetKey {
				t.Fatal("receiver's peer key not updated")
			}
		}
		from, to = to, from
	}
	if alice.NumSkippedKeys() != 0 || bob.NumSkippedKeys() != 0 {
		t.Fatal("in-order delivery left skipped keys")
	}
}

func TestOutOfOrder(t *testing.T) {
	alice, bob := pair(t, testConfig())
	r := mrand.New(mrand.NewPCG(1, 2))
	for round := range 6 {
		from, to := alice, bob
		if round%2 == 1 {
			from, to = bob, alice
		}
		msgs := make([]message, 12)
		for i := range msgs {
			msgs[i] = send(from)
		}
		r.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
		for _, m := range msgs {
			recv(t, to, m)
		}
		if to.NumSkippedKeys() != 0 {
			t.Fatalf("round %d: %d skipped keys left", round, to.NumSkippedKeys())
		}
		for _, m := range msgs {
			expectFail(t, to, m, nil, ErrDuplicate)
		}
	}
}

// Messages of an old chain arrive after the peer has ratcheted: their keys
// come from the keys stored for the previous chain (up to PN).
func TestSkippedAcrossRatchetStep(t *testing.T) {
	alice, bob := pair(t, testConfig())
	a := []message{send(alice), send(alice), send(alice), send(alice)}
	recv(t, bob, a[0])
	recv(t, alice, send(bob))
	a2 := send(alice) // new chain, pn = 4
	if a2.h.PN != 4 || a2.h.N != 0 {
		t.Fatalf("header = %+v", a2.h)
	}
	recv(t, bob, a2)
	if got := bob.NumSkippedKeys(); got != 3 {
		t.Fatalf("skipped keys = %d, want 3", got)
	}
	recv(t, bob, a[3])
	recv(t, bob, a[1])
	expectFail(t, bob, a[1], nil, ErrDuplicate)
	recv(t, bob, a[2])
	if bob.NumSkippedKeys() != 0 {
		t.Fatal("keys left")
	}
	// An old-chain message whose key is gone is a duplicate, and no ratchet
	// step is attempted for the superseded key.
	expectFail(t, bob, a[0], nil, ErrDuplicate)
	forged := a[0]
	forged.h.N = 9
	expectFail(t, bob, forged, nil, ErrDuplicate)
}

func TestDuplicate(t *testing.T) {
	alice, bob := pair(t, testConfig())
	m0, m1, m2 := send(alice), send(alice), send(alice)
	recv(t, bob, m0)
	expectFail(t, bob, m0, nil, ErrDuplicate)
	recv(t, bob, m2)
	expectFail(t, bob, m2, nil, ErrDuplicate)
	recv(t, bob, m1) // from the skipped store
	expectFail(t, bob, m1, nil, ErrDuplicate)
}

func TestPerMessageLimit(t *testing.T) {
	cfg := DefaultConfig([]byte(RootInfoOMEMO2))
	cfg.MaxSkippedPerMessage = 5
	cfg.MaxSkippedPerSession = 10

	t.Run("current chain", func(t *testing.T) {
		alice, bob := pair(t, cfg)
		recv(t, bob, send(alice))
		msgs := make([]message, 13)
		for i := range msgs {
			msgs[i] = send(alice) // n = 1..13
		}
		expectFail(t, bob, msgs[6], nil, ErrTooManySkipped) // n=7 skips 6
		recv(t, bob, msgs[5])                               // n=6 skips exactly 5
		if bob.NumSkippedKeys() != 5 {
			t.Fatalf("skipped = %d", bob.NumSkippedKeys())
		}
		expectFail(t, bob, msgs[12], nil, ErrTooManySkipped) // n=13 skips 6 (7..12)
		recv(t, bob, msgs[11])                               // n=12 skips 5
		if bob.NumSkippedKeys() != 10 {
			t.Fatalf("skipped = %d", bob.NumSkippedKeys())
		}
	})
	t.Run("new chain", func(t *testing.T) {
		alice, bob := pair(t, cfg)
		msgs := make([]message, 7)
		for i := range msgs {
			msgs[i] = send(alice)
		}
		expectFail(t, bob, msgs[6], nil, ErrTooManySkipped)
		recv(t, bob, msgs[5])
		if bob.NumSkippedKeys() != 5 {
			t.Fatalf("skipped = %d", bob.NumSkippedKeys())
		}
		for _, m := range msgs[:5] {
			recv(t, bob, m)
		}
	})
	t.Run("huge counter", func(t *testing.T) {
		alice, bob := pair(t, testConfig())
		m := send(alice)
		m.h.N = math.MaxUint32
		expectFail(t, bob, m, nil, ErrTooManySkipped)
		recv(t, bob, send(alice))
		m.h.N = math.MaxUint32 - 1
		expectFail(t, bob, m, nil, ErrTooManySkipped)
	})
	t.Run("disabled", func(t *testing.T) {
		cfg := &Config{RootInfo: []byte(RootInfoOMEMO2)}
		alice, bob := pair(t, cfg)
		m0, m1 := send(alice), send(alice)
		expectFail(t, bob, m1, nil, ErrTooManySkipped)
		recv(t, bob, m0)
		recv(t, bob, m1)
	})
}

// If the previous chain would skip more than the per-message limit, the
// keys are not computed (python-doubleratchet only warns) and the ratchet
// step proceeds.
func TestPreviousChainOverLimit(t *testing.T) {
	cfg := DefaultConfig([]byte(RootInfoOMEMO2))
	cfg.MaxSkippedPerMessage = 5
	cfg.MaxSkippedPerSession = 10
	alice, bob := pair(t, cfg)
	first := send(alice)
	lost := make([]message, 6) // n = 1..6; bob's chain is at 1, pn will be 7
	for i := range lost {
		lost[i] = send(alice)
	}
	recv(t, bob, first)
	recv(t, alice, send(bob))
	next := send(alice)
	if next.h.PN != 7 {
		t.Fatalf("pn = %d", next.h.PN)
	}
	recv(t, bob, next)
	if bob.NumSkippedKeys() != 0 {
		t.Fatalf("skipped = %d, want 0 (over the limit, not computed)", bob.NumSkippedKeys())
	}
	for _, m := range lost {
		expectFail(t, bob, m, nil, ErrDuplicate)
	}

	// Exactly at the limit the keys are computed.
	lost = lost[:0]
	for range 5 {
		lost = append(lost, send(alice)) // n = 1..5
	}
	recv(t, alice, send(bob))
	next = send(alice)
	if next.h.PN != 6 {
		t.Fatalf("pn = %d", next.h.PN)
	}
	recv(t, bob, next)
	if bob.NumSkippedKeys() != 5 {
		t.Fatalf("skipped = %d, want 5", bob.NumSkippedKeys())
	}
	for _, m := range lost {
		recv(t, bob, m)
	}

	// A huge PN (which the backends authenticate; here it is forged) does
	// not loop or store anything: the step proceeds without the keys.
	recv(t, bob, send(alice))
	recv(t, alice, send(bob))
	forged := send(alice)
	forged.h.PN = math.MaxUint32
	recv(t, bob, forged)
	if bob.NumSkippedKeys() != 0 {
		t.Fatalf("skipped = %d", bob.NumSkippedKeys())
	}
}

func TestFIFOEviction(t *testing.T) {
	cfg := DefaultConfig([]byte(RootInfoOMEMO2))
	cfg.MaxSkippedPerMessage = 5
	cfg.MaxSkippedPerSession = 8
	alice, bob := pair(t, cfg)
	msgs := make([]message, 12)
	for i := range msgs {
		msgs[i] = send(alice)
	}
	recv(t, bob, msgs[5]) // skips 0..4
	if bob.NumSkippedKeys() != 5 {
		t.Fatal(bob.NumSkippedKeys())
	}
	recv(t, bob, msgs[11]) // skips 6..10: 10 keys, evict 0 and 1
	if bob.NumSkippedKeys() != 8 {
		t.Fatalf("skipped = %d, want 8", bob.NumSkippedKeys())
	}
	expectFail(t, bob, msgs[0], nil, ErrDuplicate)
	expectFail(t, bob, msgs[1], nil, ErrDuplicate)
	for _, i := range []int{2, 3, 4, 6, 7, 8, 9, 10} {
		recv(t, bob, msgs[i])
	}
	if bob.NumSkippedKeys() != 0 {
		t.Fatal("keys left")
	}
}

// Eviction order is insertion order, also across chains and after keys
// were used from the middle.
func TestFIFOEvictionAcrossChains(t *testing.T) {
	cfg := DefaultConfig([]byte(RootInfoOMEMO2))
	cfg.MaxSkippedPerMessage = 3
	cfg.MaxSkippedPerSession = 4
	alice, bob := pair(t, cfg)
	c1 := []message{send(alice), send(alice), send(alice), send(alice)}
	recv(t, bob, c1[3]) // stores c1[0..2]
	recv(t, bob, c1[1]) // used from the middle
	recv(t, alice, send(bob))
	c2 := []message{send(alice), send(alice), send(alice)}
	recv(t, bob, c2[2]) // stores c2[0], c2[1]; total 4, no eviction
	if bob.NumSkippedKeys() != 4 {
		t.Fatal(bob.NumSkippedKeys())
	}
	c2 = append(c2, send(alice), send(alice))
	recv(t, bob, c2[4]) // stores c2[3]; evicts c1[0]
	if bob.NumSkippedKeys() != 4 {
		t.Fatal(bob.NumSkippedKeys())
	}
	expectFail(t, bob, c1[0], nil, ErrDuplicate)
	for _, m := range []message{c1[2], c2[0], c2[1], c2[3]} {
		recv(t, bob, m)
	}
}

func TestStateUnchangedOnFailure(t *testing.T) {
	alice, bob := pair(t, testConfig())
	a := []message{send(alice), send(alice), send(alice)}

	// Passive state before the first message (ratchet step path): open
	// fails, or the random source fails.
	bad := a[0]
	bad.mk[0] ^= 1
	expectFail(t, bob, bad, nil, errAuth)
	expectFail(t, bob, a[0], &keyReader{}, io.ErrUnexpectedEOF)
	recv(t, bob, a[2])

	// Key from the skipped store (bob holds a[0] and a[1]).
	bad = a[1]
	bad.mk[0] ^= 1
	expectFail(t, bob, bad, nil, errAuth)
	b0 := send(bob)
	recv(t, alice, b0)
	a3 := send(alice)
	bad = a3
	bad.mk[0] ^= 1
	expectFail(t, bob, bad, nil, errAuth) // ratchet step path with old-chain skipping
	recv(t, bob, a[1])
	recv(t, bob, a3)
	a4, a5 := send(alice), send(alice)
	bad = a5
	bad.mk[0] ^= 1
	expectFail(t, bob, bad, nil, errAuth) // in-chain skipping
	recv(t, bob, a4)
	recv(t, bob, a5)
	a6 := send(alice)
	bad = a6
	bad.mk[0] ^= 1
	expectFail(t, bob, bad, nil, errAuth) // in-order
	recv(t, bob, a6)

	// Duplicate, too many skipped, low-order keys.
	expectFail(t, bob, a4, nil, ErrDuplicate)
	far := send(alice)
	far.h.N += 1001
	expectFail(t, bob, far, nil, ErrTooManySkipped)
	low := send(alice)
	low.h.RatchetKey = [32]byte{} // small-order point: all-zero DH output
	expectFail(t, bob, low, nil, ErrInvalidKey)
	low.h.RatchetKey = [32]byte{1} // order 1 (u = 1)
	expectFail(t, bob, low, nil, ErrInvalidKey)

	open := errors.New("custom")
	m := send(alice)
	before := snapshot(t, bob)
	err := bob.Decrypt(m.h, nil, func(*[32]byte) error { return open })
	if !errors.Is(err, open) {
		t.Fatalf("err = %v, want wrapping %v", err, open)
	}
	if !bytes.Equal(before, snapshot(t, bob)) {
		t.Fatal("state changed")
	}
	recv(t, bob, m)
}

func TestNoReceivingChain(t *testing.T) {
	cfg := testConfig()
	spkPriv := randKey(t)
	spkPub, _ := publicKey(&spkPriv)
	alice, err := NewActive(cfg, randKey(t), spkPub, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A header carrying the responder's signed pre key as ratchet key maps
	// to the initial peer key for which no receiving chain exists.
	expectFail(t, alice, message{h: Header{RatchetKey: spkPub}}, nil, ErrNoReceivingChain)
}

func TestPassiveEncrypt(t *testing.T) {
	_, bob := pair(t, testConfig())
	before := snapshot(t, bob)
	if _, _, err := bob.TryEncrypt(); !errors.Is(err, ErrNoSendingChain) {
		t.Fatalf("TryEncrypt err = %v", err)
	}
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Error("Encrypt without sending chain did not panic")
			}
		}()
		bob.Encrypt()
	}()
	if !bytes.Equal(before, snapshot(t, bob)) {
		t.Fatal("state changed")
	}
}

func TestActiveInit(t *testing.T) {
	cfg := testConfig()
	sk := randKey(t)
	spkPriv := randKey(t)
	spkPub, _ := publicKey(&spkPriv)
	own := randKey(t)
	alice, err := NewActive(cfg, sk, spkPub, &keyReader{keys: [][32]byte{own}})
	if err != nil {
		t.Fatal(err)
	}
	ownPub, _ := publicKey(&own)
	dh, _ := x25519(&own, &spkPub)
	_, ck := RootKDF([]byte(RootInfoOMEMO2), sk, dh)
	wantMK, _ := ChainKDF(ck)
	h, mk := alice.Encrypt()
	if h != (Header{RatchetKey: ownPub}) || mk != wantMK {
		t.Fatalf("first message = %+v %x", h, mk)
	}
	if _, err := NewActive(cfg, sk, [32]byte{}, nil); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("low-order peer key: err = %v", err)
	}
	if _, err := NewActive(cfg, sk, spkPub, &keyReader{}); err == nil {
		t.Fatal("failing rand accepted")
	}
	if _, err := NewActive(&Config{}, sk, spkPub, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Fatal("invalid config accepted")
	}
	if _, err := NewPassive(&Config{MaxSkippedPerSession: -1}, sk, spkPriv); !errors.Is(err, ErrInvalidConfig) {
		t.Fatal("invalid config accepted")
	}
}

func TestLegacyRootInfoDiffers(t *testing.T) {
	sk := seq32(0)
	spkPriv := fill(0x11)
	spkPub, _ := publicKey(&spkPriv)
	a, _ := NewActive(DefaultConfig([]byte(RootInfoOMEMO2)), sk, spkPub, &keyReader{keys: [][32]byte{fill(0x21)}})
	b, _ := NewActive(DefaultConfig([]byte(RootInfoLegacy)), sk, spkPub, &keyReader{keys: [][32]byte{fill(0x21)}})
	_, mka := a.Encrypt()
	_, mkb := b.Encrypt()
	if mka == mkb {
		t.Fatal("root info not used")
	}
}

func TestValidate(t *testing.T) {
	info := []byte(RootInfoOMEMO2)
	for _, tc := range []struct {
		msg, session int
		info         []byte
		ok           bool
	}{
		{1000, 1000, info, true},
		{5, 10, info, true}, // rejected by python-omemo's precedence bug
		{1, 1, info, true},
		{1, 10, info, true},
		{0, 0, info, true},
		{10, 10, info, true},
		{11, 10, info, false},
		{0, 10, info, false},
		{-1, 10, info, false},
		{1, 0, info, false},
		{0, -1, info, false},
		{-1, -1, info, false},
		{5, 10, nil, false},
		{5, 10, []byte{}, false},
	} {
		c := &Config{RootInfo: tc.info, MaxSkippedPerMessage: tc.msg, MaxSkippedPerSession: tc.session}
		err := c.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
			t.Errorf("Validate(%d, %d, %q) = %v, want ok=%v", tc.msg, tc.session, tc.info, err, tc.ok)
		}
	}
	var nilCfg *Config
	if !errors.Is(nilCfg.Validate(), ErrInvalidConfig) {
		t.Error("nil config valid")
	}
}

func TestClone(t *testing.T) {
	alice, bob := pair(t, testConfig())
	m0, m1, m2 := send(alice), send(alice), send(alice)
	recv(t, bob, m2)
	c := bob.Clone()
	if !bytes.Equal(snapshot(t, c), snapshot(t, bob)) {
		t.Fatal("clone differs")
	}
	recv(t, c, m0)
	recv(t, c, m1)
	if bob.NumSkippedKeys() != 2 || c.NumSkippedKeys() != 0 {
		t.Fatal("clone shares the skipped store")
	}
	recv(t, bob, m0)
	recv(t, bob, m1)
}

func TestEncryptAllocs(t *testing.T) {
	alice, _ := pair(t, testConfig())
	if n := testing.AllocsPerRun(100, func() { alice.Encrypt() }); n != 0 {
		t.Errorf("Encrypt allocates %v times", n)
	}
}

func TestDecryptInOrderAllocs(t *testing.T) {
	alice, bob := pair(t, testConfig())
	recv(t, bob, send(alice))
	const runs = 100
	msgs := make([]message, runs+1)
	for i := range msgs {
		msgs[i] = send(alice)
	}
	i := 0
	var want [32]byte
	open := func(mk *[32]byte) error {
		if *mk != want {
			return errAuth
		}
		return nil
	}
	n := testing.AllocsPerRun(runs, func() {
		want = msgs[i].mk
		if err := bob.Decrypt(msgs[i].h, nil, open); err != nil {
			panic(err)
		}
		i++
	})
	if n != 0 {
		t.Errorf("in-order Decrypt allocates %v times", n)
	}
}

// FuzzDecrypt feeds arbitrary headers to an established session with
// skipped keys: Decrypt never panics, and a failing open never changes the
// state.
func FuzzDecrypt(f *testing.F) {
	f.Add(make([]byte, 32), uint32(0), uint32(0), true)
	f.Add(make([]byte, 32), uint32(math.MaxUint32), uint32(math.MaxUint32), false)
	f.Fuzz(func(t *testing.T, key []byte, n, pn uint32, useCurrent bool) {
		alice, bob := pair(t, testConfig())
		a := []message{send(alice), send(alice), send(alice)}
		recv(t, bob, a[2])
		var h Header
		copy(h.RatchetKey[:], key)
		if useCurrent {
			h.RatchetKey = a[0].h.RatchetKey
		}
		h.N, h.PN = n, pn
		before := snapshot(t, bob)
		err := bob.Decrypt(h, nil, func(*[32]byte) error { return errAuth })
		if err == nil {
			t.Fatal("failing open reported success")
		}
		if !bytes.Equal(before, snapshot(t, bob)) {
			t.Fatal("state changed")
		}
		// With an accepting open the state stays usable.
		if err := bob.Decrypt(h, nil, func(*[32]byte) error { return nil }); err == nil {
			if _, _, err := bob.TryEncrypt(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
