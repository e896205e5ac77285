package oldmemopb

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

// Known answers produced with python-oldmemo's generated protobuf module
// (oldmemo.oldmemo_pb2, used as a black box, /usr/bin/python3):
//
//	odh = b"\x05" + bytes(range(32)); ct = b"\xaa"*16
//	om0 = OMEMOMessage(n=0, pn=0, dh_pub=odh).SerializeToString()
//	om1 = OMEMOMessage(n=5, pn=128, dh_pub=odh, ciphertext=ct).SerializeToString()
//	okx = OMEMOKeyExchange(pk_id=1, spk_id=70000, ik=b"\x05"+b"\x11"*32,
//	        ek=b"\x05"+b"\x22"*32, message=b"\x33"+om1+bytes(8)).SerializeToString()
const (
	pyMsg0 = "0a2105000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f10001800"
	pyMsg1 = "0a2105000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f10051880012210aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	pyKex  = "080112210522222222222222222222222222222222222222222222222222222222222222221a2105" +
		"1111111111111111111111111111111111111111111111111111111111111111" + "2243" + "33" + pyMsg1 +
		"0000000000000000" + "30f0a204"
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
	dh := append([]byte{5}, seq(32)...)
	ct := bytes.Repeat([]byte{0xaa}, 16)
	ik := append([]byte{5}, bytes.Repeat([]byte{0x11}, 32)...)
	ek := append([]byte{5}, bytes.Repeat([]byte{0x22}, 32)...)
	m1 := AppendOMEMOMessage(nil, 5, 128, dh, ct)
	wire := append(append([]byte{0x33}, m1...), make([]byte, 8)...)
	for _, tc := range []struct {
		name string
		fast []byte
		gen  proto.Message
		want string
	}{
		{"msg0", AppendOMEMOMessage(nil, 0, 0, dh, nil),
			&OMEMOMessage{N: proto.Uint32(0), Pn: proto.Uint32(0), DhPub: dh}, pyMsg0},
		{"msg1", m1, &OMEMOMessage{N: proto.Uint32(5), Pn: proto.Uint32(128), DhPub: dh, Ciphertext: ct}, pyMsg1},
		{"kex", AppendOMEMOKeyExchange(nil, 1, 70000, ik, ek, wire),
			&OMEMOKeyExchange{PkId: proto.Uint32(1), SpkId: proto.Uint32(70000), Ik: ik, Ek: ek, Message: wire}, pyKex},
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
	if err != nil || n != 5 || pn != 128 || !bytes.Equal(gotDH, dh) || !bytes.Equal(gotCT, ct) {
		t.Errorf("ParseOMEMOMessage = %d %d %x %x %v", n, pn, gotDH, gotCT, err)
	}
	pk, spk, gotIK, gotEK, gotMsg, err := ParseOMEMOKeyExchange(unhex(t, pyKex))
	if err != nil || pk != 1 || spk != 70000 || !bytes.Equal(gotIK, ik) || !bytes.Equal(gotEK, ek) || !bytes.Equal(gotMsg, wire) {
		t.Errorf("ParseOMEMOKeyExchange = %d %d %x %x %x %v", pk, spk, gotIK, gotEK, gotMsg, err)
	}
}

// A PreKeyWhisperMessage as libsignal clients send it, with registrationId
// (field 5) set, is accepted; the field is ignored.
func TestRegistrationIDAccepted(t *testing.T) {
	ik, ek, msg := seq(33), seq(33), seq(50)
	b, err := proto.Marshal(&OMEMOKeyExchange{PkId: proto.Uint32(9), SpkId: proto.Uint32(3), Ik: ik, Ek: ek,
		Message: msg, Unused: proto.Uint32(12345)})
	if err != nil {
		t.Fatal(err)
	}
	pk, spk, gotIK, gotEK, gotMsg, err := ParseOMEMOKeyExchange(b)
	if err != nil || pk != 9 || spk != 3 || !bytes.Equal(gotIK, ik) || !bytes.Equal(gotEK, ek) || !bytes.Equal(gotMsg, msg) {
		t.Fatalf("= %d %d %x %x %x %v", pk, spk, gotIK, gotEK, gotMsg, err)
	}
	checkKex(t, b)
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
	r := mrand.New(mrand.NewPCG(5, 6))
	for range 2000 {
		n, pn, pk, spk := randU32(r), randU32(r), randU32(r), randU32(r)
		dh, ct := randBytes(r, false), randBytes(r, true)
		msg, ik, ek := randBytes(r, false), randBytes(r, false), randBytes(r, false)
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
		check("kex", AppendOMEMOKeyExchange(bytes.Clone(prefix), pk, spk, ik, ek, msg), SizeOMEMOKeyExchange(pk, spk, ik, ek, msg),
			&OMEMOKeyExchange{PkId: &pk, SpkId: &spk, Ik: ik, Ek: ek, Message: msg})
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
	}
	r.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
	return bytes.Join(fields, nil)
}

func TestParsersAgreeWithUnmarshal(t *testing.T) {
	r := mrand.New(mrand.NewPCG(7, 8))
	for i := range 2000 {
		n, pn, pk, spk, reg := randU32(r), randU32(r), randU32(r), randU32(r), randU32(r)
		m := &OMEMOMessage{N: &n, Pn: &pn, DhPub: randBytes(r, false), Ciphertext: randBytes(r, true)}
		k := &OMEMOKeyExchange{PkId: &pk, SpkId: &spk, Ik: randBytes(r, false), Ek: randBytes(r, false), Message: randBytes(r, false)}
		if i%3 == 0 {
			k.Unused = &reg
		}
		for _, msg := range []proto.Message{m, k} {
			b, err := proto.Marshal(msg)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 1 {
				b = shuffleFields(r, b, i%4 == 1)
			}
			checkMessage(t, b)
			checkKex(t, b)
		}
	}
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

// checkMessage asserts that if ParseOMEMOMessage accepts b, proto.Unmarshal
// accepts it with the same values, and re-encoding gives exactly
// proto.Marshal of the decoded message without unknown fields (so canonical
// input re-encodes byte-identically).
func checkMessage(t *testing.T, b []byte) {
	t.Helper()
	n, pn, dh, ct, err := ParseOMEMOMessage(b)
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		return
	}
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
}

// checkKex is checkMessage for OMEMOKeyExchange; the ignored field 5 is
// cleared before comparing the re-encoding.
func checkKex(t *testing.T, b []byte) {
	t.Helper()
	pk, spk, ik, ek, msg, err := ParseOMEMOKeyExchange(b)
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		return
	}
	var m OMEMOKeyExchange
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatalf("fast accepted OMEMOKeyExchange %x, proto: %v", b, err)
	}
	if m.GetPkId() != pk || m.GetSpkId() != spk || !bytes.Equal(m.Ik, ik) || !bytes.Equal(m.Ek, ek) ||
		!bytes.Equal(m.Message, msg) || ik == nil || ek == nil || msg == nil {
		t.Fatalf("OMEMOKeyExchange %x: fast and proto disagree", b)
	}
	m.Unused = nil
	if re := AppendOMEMOKeyExchange(nil, pk, spk, ik, ek, msg); !bytes.Equal(re, canon(t, &m)) {
		t.Fatalf("OMEMOKeyExchange %x re-encodes as %x", b, re)
	}
}

func TestParseRejects(t *testing.T) {
	dh := seq(33)
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
		"empty":           nil,
		"missing dh_pub":  cat(u(2, 5), u(3, 7)),
		"missing n":       cat(by(1, dh), u(3, 7)),
		"missing pn":      cat(by(1, dh), u(2, 5)),
		"truncated":       good[:len(good)-1],
		"trailing zero":   cat(good, []byte{0}),
		"trailing 0xff":   cat(good, []byte{0xff}),
		"duplicate dh":    cat(good, by(1, dh)),
		"duplicate pn":    cat(good, u(3, 7)),
		"n wrong type":    cat(by(1, dh), by(2, nil), u(3, 7)),
		"pn over 32 bits": cat(by(1, dh), u(2, 5), u(3, 1<<33)),
		"version byte":    cat([]byte{0x33}, good), // the caller must strip it
	} {
		if _, _, _, _, err := ParseOMEMOMessage(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	if n, pn, gotDH, ct, err := ParseOMEMOMessage(cat(u(3, 7), by(4, []byte("ct")), u(2, 5), by(1, dh))); err != nil ||
		n != 5 || pn != 7 || !bytes.Equal(gotDH, dh) || string(ct) != "ct" {
		t.Errorf("reordered: %d %d %x %q %v", n, pn, gotDH, ct, err)
	}

	kex := AppendOMEMOKeyExchange(nil, 1, 2, dh, dh, good)
	for name, b := range map[string][]byte{
		"missing spk_id":   cat(u(1, 1), by(2, dh), by(3, dh), by(4, good)),
		"missing pk_id":    cat(by(2, dh), by(3, dh), by(4, good), u(6, 2)),
		"missing message":  cat(u(1, 1), by(2, dh), by(3, dh), u(6, 2)),
		"unused bytes":     cat(kex, by(5, []byte{1})),
		"duplicate unused": cat(kex, u(5, 1), u(5, 1)),
		"duplicate spk":    cat(kex, u(6, 2)),
		"truncated":        kex[:len(kex)-1],
	} {
		if _, _, _, _, _, err := ParseOMEMOKeyExchange(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("kex %s: err = %v", name, err)
		}
	}
}

func TestAllocs(t *testing.T) {
	dh, ct := seq(33), seq(48)
	buf := make([]byte, 0, 512)
	msg := AppendOMEMOMessage(nil, 3, 4, dh, ct)
	kex := AppendOMEMOKeyExchange(nil, 1, 2, dh, dh, msg)
	if n := testing.AllocsPerRun(100, func() {
		b := AppendOMEMOMessage(buf[:0], 3, 4, dh, ct)
		_ = AppendOMEMOKeyExchange(b, 1, 2, dh, dh, msg)
	}); n != 0 {
		t.Errorf("encoders allocate %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		_, _, _, _, _ = ParseOMEMOMessage(msg)
		_, _, _, _, _, _ = ParseOMEMOKeyExchange(kex)
	}); n != 0 {
		t.Errorf("parsers allocate %v times", n)
	}
}

func fuzzSeeds(f *testing.F) {
	for _, s := range []string{pyMsg0, pyMsg1, pyKex, ""} {
		f.Add(unhex(f, s))
	}
}

func FuzzParseOMEMOMessage(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) { checkMessage(t, b) })
}

func FuzzParseOMEMOKeyExchange(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) { checkKex(t, b) })
}
