package twomemopb

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	mrand "math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Known answers produced by python-twomemo's generated module
// (twomemo.twomemo_pb2, /usr/bin/python3):
//
//	dh = bytes(range(32)); ct = b"\xaa"*16; mac = b"\xbb"*16
//	m0 = OMEMOMessage(n=0, pn=0, dh_pub=dh).SerializeToString()
//	m1 = OMEMOMessage(n=1, pn=300, dh_pub=dh, ciphertext=ct).SerializeToString()
//	am = OMEMOAuthenticatedMessage(mac=mac, message=m1)
//	kx = OMEMOKeyExchange(pk_id=4294967295, spk_id=0, ik=b"\x11"*32, ek=b"\x22"*32, message=am)
const (
	pyMsg0 = "080010001a20000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	pyMsg1 = "080110ac021a20000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	pyAuth = "0a10bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1239" + pyMsg1
	pyKex  = "08ffffffff0f10001a20" + "1111111111111111111111111111111111111111111111111111111111111111" +
		"2220" + "2222222222222222222222222222222222222222222222222222222222222222" + "2a4d" + pyAuth
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestPythonKnownAnswers(t *testing.T) {
	dh, ct, mac := seq(32), bytes.Repeat([]byte{0xaa}, 16), bytes.Repeat([]byte{0xbb}, 16)
	ik, ek := bytes.Repeat([]byte{0x11}, 32), bytes.Repeat([]byte{0x22}, 32)
	m1 := AppendOMEMOMessage(nil, 1, 300, dh, ct)
	for _, tc := range []struct {
		name string
		fast []byte
		gen  proto.Message
		want string
	}{
		{"msg0", AppendOMEMOMessage(nil, 0, 0, dh, nil),
			&OMEMOMessage{N: proto.Uint32(0), Pn: proto.Uint32(0), DhPub: dh}, pyMsg0},
		{"msg1", m1,
			&OMEMOMessage{N: proto.Uint32(1), Pn: proto.Uint32(300), DhPub: dh, Ciphertext: ct}, pyMsg1},
		{"auth", AppendOMEMOAuthenticatedMessage(nil, mac, m1),
			&OMEMOAuthenticatedMessage{Mac: mac, Message: m1}, pyAuth},
		{"kex", AppendOMEMOKeyExchange(nil, math.MaxUint32, 0, ik, ek, mac, m1),
			&OMEMOKeyExchange{PkId: proto.Uint32(math.MaxUint32), SpkId: proto.Uint32(0), Ik: ik, Ek: ek,
				Message: &OMEMOAuthenticatedMessage{Mac: mac, Message: m1}}, pyKex},
	} {
		want := unhex(t, tc.want)
		if !bytes.Equal(tc.fast, want) {
			t.Errorf("%s: fast encoder\n got %x\nwant %x", tc.name, tc.fast, want)
		}
		gen, err := proto.Marshal(tc.gen)
		if err != nil || !bytes.Equal(gen, want) {
			t.Errorf("%s: proto.Marshal = %x, %v", tc.name, gen, err)
		}
	}

	n, pn, gotDH, gotCT, err := ParseOMEMOMessage(unhex(t, pyMsg1))
	if err != nil || n != 1 || pn != 300 || !bytes.Equal(gotDH, dh) || !bytes.Equal(gotCT, ct) {
		t.Errorf("ParseOMEMOMessage = %d %d %x %x %v", n, pn, gotDH, gotCT, err)
	}
	if _, _, _, gotCT, err = ParseOMEMOMessage(unhex(t, pyMsg0)); err != nil || gotCT != nil {
		t.Errorf("absent ciphertext: %x %v", gotCT, err)
	}
	pk, spk, gotIK, gotEK, gotMAC, gotMsg, err := ParseOMEMOKeyExchange(unhex(t, pyKex))
	if err != nil || pk != math.MaxUint32 || spk != 0 || !bytes.Equal(gotIK, ik) || !bytes.Equal(gotEK, ek) ||
		!bytes.Equal(gotMAC, mac) || !bytes.Equal(gotMsg, m1) {
		t.Errorf("ParseOMEMOKeyExchange = %d %d %x %x %x %x %v", pk, spk, gotIK, gotEK, gotMAC, gotMsg, err)
	}
}

func randBytes(r *mrand.Rand, allowNil bool) []byte {
	switch r.IntN(8) {
	case 0:
		if allowNil {
			return nil
		}
		return []byte{}
	case 1:
		return []byte{}
	}
	b := make([]byte, r.IntN(300))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randU32(r *mrand.Rand) uint32 {
	switch r.IntN(4) {
	case 0:
		return 0
	case 1:
		return math.MaxUint32
	case 2:
		return uint32(r.IntN(300))
	}
	return r.Uint32()
}

func TestEncodersMatchProtoMarshal(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for range 2000 {
		n, pn, pk, spk := randU32(r), randU32(r), randU32(r), randU32(r)
		dh, ct := randBytes(r, false), randBytes(r, true)
		mac, msg, ik, ek := randBytes(r, false), randBytes(r, false), randBytes(r, false), randBytes(r, false)
		prefix := randBytes(r, true)

		check := func(name string, fast []byte, size int, m proto.Message) {
			t.Helper()
			want, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(fast, prefix) || !bytes.Equal(fast[len(prefix):], want) {
				t.Fatalf("%s: fast %x != proto %x", name, fast, want)
			}
			if size != len(want) {
				t.Fatalf("%s: size %d != %d", name, size, len(want))
			}
		}
		check("message", AppendOMEMOMessage(bytes.Clone(prefix), n, pn, dh, ct), SizeOMEMOMessage(n, pn, dh, ct),
			&OMEMOMessage{N: &n, Pn: &pn, DhPub: dh, Ciphertext: ct})
		check("auth", AppendOMEMOAuthenticatedMessage(bytes.Clone(prefix), mac, msg), SizeOMEMOAuthenticatedMessage(mac, msg),
			&OMEMOAuthenticatedMessage{Mac: mac, Message: msg})
		check("kex", AppendOMEMOKeyExchange(bytes.Clone(prefix), pk, spk, ik, ek, mac, msg), SizeOMEMOKeyExchange(pk, spk, ik, ek, mac, msg),
			&OMEMOKeyExchange{PkId: &pk, SpkId: &spk, Ik: ik, Ek: ek, Message: &OMEMOAuthenticatedMessage{Mac: mac, Message: msg}})
	}
}

// shuffleFields re-orders the top-level fields of a valid serialization and
// optionally inserts unknown fields: still valid protobuf.
func shuffleFields(r *mrand.Rand, b []byte, unknown bool) []byte {
	var fields [][]byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		fields = append(fields, b[:n+m])
		b = b[n+m:]
	}
	if unknown {
		fields = append(fields, protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), []byte("x")))
		fields = append(fields, protowire.AppendVarint(protowire.AppendTag(nil, 1000, protowire.VarintType), 1<<40))
		fields = append(fields, protowire.AppendFixed32(protowire.AppendTag(nil, 99, protowire.Fixed32Type), 7))
	}
	r.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
	return bytes.Join(fields, nil)
}

func TestParsersAgreeWithUnmarshal(t *testing.T) {
	r := mrand.New(mrand.NewPCG(3, 4))
	for i := range 2000 {
		n, pn, pk, spk := randU32(r), randU32(r), randU32(r), randU32(r)
		m := &OMEMOMessage{N: &n, Pn: &pn, DhPub: randBytes(r, false), Ciphertext: randBytes(r, true)}
		a := &OMEMOAuthenticatedMessage{Mac: randBytes(r, false), Message: randBytes(r, false)}
		k := &OMEMOKeyExchange{PkId: &pk, SpkId: &spk, Ik: randBytes(r, false), Ek: randBytes(r, false), Message: a}
		for _, msg := range []proto.Message{m, a, k} {
			b, err := proto.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 1 {
				b = shuffleFields(r, b, i%4 == 1)
			}
			checkAgrees(t, b)
		}
	}
}

// checkAgrees asserts that whatever the fast parsers accept, proto.Unmarshal
// accepts with the same values, and that re-encoding the parsed values gives
// exactly proto.Marshal of the decoded message without unknown fields (so
// canonical input re-encodes byte-identically).
func checkAgrees(t *testing.T, b []byte) {
	t.Helper()
	checkMessage(t, b)
	checkAuth(t, b)
	checkKex(t, b)
}

func canon(t *testing.T, m proto.Message) []byte {
	t.Helper()
	m.ProtoReflect().SetUnknown(nil)
	out, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkMessage(t *testing.T, b []byte) {
	t.Helper()
	if n, pn, dh, ct, err := ParseOMEMOMessage(b); err == nil {
		var m OMEMOMessage
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatalf("fast accepted OMEMOMessage %x, proto: %v", b, err)
		}
		if m.GetN() != n || m.GetPn() != pn || !bytes.Equal(m.DhPub, dh) || dh == nil ||
			(m.Ciphertext == nil) != (ct == nil) || !bytes.Equal(m.Ciphertext, ct) {
			t.Fatalf("OMEMOMessage %x: fast and proto disagree", b)
		}
		if re := AppendOMEMOMessage(nil, n, pn, dh, ct); !bytes.Equal(re, canon(t, &m)) {
			t.Fatalf("OMEMOMessage %x re-encodes as %x", b, re)
		}
	} else if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error does not wrap ErrMalformed: %v", err)
	}
}

func checkAuth(t *testing.T, b []byte) {
	t.Helper()
	if mac, msg, err := ParseOMEMOAuthenticatedMessage(b); err == nil {
		var m OMEMOAuthenticatedMessage
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatalf("fast accepted OMEMOAuthenticatedMessage %x, proto: %v", b, err)
		}
		if !bytes.Equal(m.Mac, mac) || !bytes.Equal(m.Message, msg) || mac == nil || msg == nil {
			t.Fatalf("OMEMOAuthenticatedMessage %x: fast and proto disagree", b)
		}
		if re := AppendOMEMOAuthenticatedMessage(nil, mac, msg); !bytes.Equal(re, canon(t, &m)) {
			t.Fatalf("OMEMOAuthenticatedMessage %x re-encodes as %x", b, re)
		}
	} else if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error does not wrap ErrMalformed: %v", err)
	}
}

func checkKex(t *testing.T, b []byte) {
	t.Helper()
	if pk, spk, ik, ek, mac, msg, err := ParseOMEMOKeyExchange(b); err == nil {
		var m OMEMOKeyExchange
		if err := proto.Unmarshal(b, &m); err != nil {
			t.Fatalf("fast accepted OMEMOKeyExchange %x, proto: %v", b, err)
		}
		if m.GetPkId() != pk || m.GetSpkId() != spk || !bytes.Equal(m.Ik, ik) || !bytes.Equal(m.Ek, ek) ||
			!bytes.Equal(m.Message.Mac, mac) || !bytes.Equal(m.Message.Message, msg) {
			t.Fatalf("OMEMOKeyExchange %x: fast and proto disagree", b)
		}
		m.Message.ProtoReflect().SetUnknown(nil)
		if re := AppendOMEMOKeyExchange(nil, pk, spk, ik, ek, mac, msg); !bytes.Equal(re, canon(t, &m)) {
			t.Fatalf("OMEMOKeyExchange %x re-encodes as %x", b, re)
		}
	} else if !errors.Is(err, ErrMalformed) {
		t.Fatalf("error does not wrap ErrMalformed: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	dh := seq(32)
	good := AppendOMEMOMessage(nil, 5, 7, dh, []byte("ct"))
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	u := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(tag(num, protowire.VarintType), v)
	}
	by := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(tag(num, protowire.BytesType), v)
	}
	for name, b := range map[string][]byte{
		"empty":              nil,
		"missing n":          cat(u(2, 7), by(3, dh)),
		"missing pn":         cat(u(1, 5), by(3, dh)),
		"missing dh_pub":     cat(u(1, 5), u(2, 7)),
		"truncated":          good[:len(good)-1],
		"truncated tag":      cat(good, []byte{0x80}),
		"trailing zero":      cat(good, []byte{0}),
		"trailing 0xff":      cat(good, []byte{0xff}),
		"duplicate n":        cat(good, u(1, 5)),
		"duplicate ct":       cat(good, by(4, nil)),
		"n wrong type":       cat(by(1, []byte{5}), u(2, 7), by(3, dh)),
		"dh wrong type":      cat(u(1, 5), u(2, 7), u(3, 1)),
		"n over 32 bits":     cat(u(1, 1<<32), u(2, 7), by(3, dh)),
		"overlong varint":    cat([]byte{0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, u(2, 7), by(3, dh)),
		"length past end":    cat(u(1, 5), u(2, 7), tag(3, protowire.BytesType), []byte{33}, dh),
		"field number 0":     cat(good, u(0, 1)),
		"bad unknown group":  cat(good, tag(20, protowire.StartGroupType)),
		"end group":          cat(good, tag(20, protowire.EndGroupType)),
		"field number > max": cat(good, protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber+1)<<3)),
	} {
		if _, _, _, _, err := ParseOMEMOMessage(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	// Non-minimal varints and unknown fields are valid protobuf.
	for name, b := range map[string][]byte{
		"non-minimal n": cat([]byte{0x08, 0x85, 0x00}, u(2, 7), by(3, dh)),
		"unknown":       cat(good, u(9, 1), by(10, []byte("z"))),
		"unknown group": cat(good, tag(20, protowire.StartGroupType), u(1, 3), tag(20, protowire.EndGroupType)),
		"reordered":     cat(by(3, dh), u(2, 7), u(1, 5), by(4, []byte("ct"))),
	} {
		if n, pn, gotDH, ct, err := ParseOMEMOMessage(b); err != nil || n != 5 || pn != 7 || !bytes.Equal(gotDH, dh) ||
			(name != "non-minimal n" && string(ct) != "ct") {
			t.Errorf("%s: %d %d %x %q %v", name, n, pn, gotDH, ct, err)
		}
		checkAgrees(t, b)
	}

	mac := []byte("0123456789abcdef")
	auth := AppendOMEMOAuthenticatedMessage(nil, mac, good)
	for name, b := range map[string][]byte{
		"missing mac":     by(2, good),
		"missing message": by(1, mac),
		"duplicate mac":   cat(auth, by(1, mac)),
		"truncated":       auth[:len(auth)-1],
	} {
		if _, _, err := ParseOMEMOAuthenticatedMessage(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("auth %s: err = %v", name, err)
		}
	}

	kexHead := cat(u(1, 1), u(2, 2), by(3, dh), by(4, dh))
	for name, b := range map[string][]byte{
		"missing message":   kexHead,
		"bad nested":        cat(kexHead, by(5, by(1, mac))),
		"nested truncated":  cat(kexHead, by(5, auth[:len(auth)-1])),
		"duplicate message": cat(kexHead, by(5, auth), by(5, auth)),
		"missing ek":        cat(u(1, 1), u(2, 2), by(3, dh), by(5, auth)),
	} {
		if _, _, _, _, _, _, err := ParseOMEMOKeyExchange(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("kex %s: err = %v", name, err)
		}
	}
}

func TestAllocs(t *testing.T) {
	dh, ct, mac := seq(32), seq(48), seq(16)
	buf := make([]byte, 0, 512)
	msg := AppendOMEMOMessage(nil, 3, 4, dh, ct)
	kex := AppendOMEMOKeyExchange(nil, 1, 2, dh, dh, mac, msg)
	if n := testing.AllocsPerRun(100, func() {
		b := AppendOMEMOMessage(buf[:0], 3, 4, dh, ct)
		b = AppendOMEMOAuthenticatedMessage(b, mac, msg)
		_ = AppendOMEMOKeyExchange(b, 1, 2, dh, dh, mac, msg)
	}); n != 0 {
		t.Errorf("encoders allocate %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		_, _, _, _, _ = ParseOMEMOMessage(msg)
		_, _, _, _, _, _, _ = ParseOMEMOKeyExchange(kex)
	}); n != 0 {
		t.Errorf("parsers allocate %v times", n)
	}
}

func fuzzSeeds(f *testing.F) {
	for _, s := range []string{pyMsg0, pyMsg1, pyAuth, pyKex, ""} {
		f.Add(unhex(f, s))
	}
}

func FuzzParseOMEMOMessage(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) { checkMessage(t, b) })
}

func FuzzParseOMEMOAuthenticatedMessage(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) { checkAuth(t, b) })
}

func FuzzParseOMEMOKeyExchange(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) { checkKex(t, b) })
}

func BenchmarkAppendOMEMOMessage(b *testing.B) {
	dh, ct, mac := seq(32), seq(48), seq(16)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		m := AppendOMEMOMessage(buf[:0], 3, 4, dh, ct)
		_ = AppendOMEMOAuthenticatedMessage(m[len(m):], mac, m)
	}
}

func BenchmarkProtoMarshalOMEMOMessage(b *testing.B) {
	dh, ct, mac := seq(32), seq(48), seq(16)
	b.ReportAllocs()
	for b.Loop() {
		m, _ := proto.Marshal(&OMEMOMessage{N: proto.Uint32(3), Pn: proto.Uint32(4), DhPub: dh, Ciphertext: ct})
		_, _ = proto.Marshal(&OMEMOAuthenticatedMessage{Mac: mac, Message: m})
	}
}

func BenchmarkParseOMEMOKeyExchange(b *testing.B) {
	dh, ct, mac := seq(32), seq(48), seq(16)
	kex := AppendOMEMOKeyExchange(nil, 1, 2, dh, dh, mac, AppendOMEMOMessage(nil, 3, 4, dh, ct))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, _, _, _, err := ParseOMEMOKeyExchange(kex); err != nil {
			b.Fatal(err)
		}
	}
}
