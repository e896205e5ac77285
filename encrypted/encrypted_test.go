package encrypted_test

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

var (
	_ xml.Marshaler       = encrypted.Encrypted{}
	_ xml.Unmarshaler     = (*encrypted.Encrypted)(nil)
	_ xmlstream.Marshaler = encrypted.Encrypted{}
	_ xmlstream.WriterTo  = encrypted.Encrypted{}
)

// pyTwomemoMessage was produced once by the Debian python-twomemo 1.0.3
// (b(n, s) is bytes((s+i)%256 for i in range(n)); am(seed) is a serialised
// OMEMOAuthenticatedMessage built with twomemo_pb2 from b() data):
//
//	kex = KeyExchangeImpl(x3dh.Header(b(32,200), b(32,220), b"", b""), 7, 42)
//	keys = frozenset([(ekm("juliet@capulet.lit", 31415, 10), None),
//	                  (ekm("romeo@montague.lit", 12321, 20), kex)])
//	msg = omemo.Message(twomemo.NAMESPACE, "romeo@montague.lit", 27183,
//	                    ContentImpl(b(40, 5)), keys)
//	print(ET.tostring(twomemo.etree.serialize_message(msg), encoding="unicode"))
//
// where ekm(jid, rid, seed) is EncryptedKeyMaterialImpl(jid, rid,
// doubleratchet.EncryptedMessage(doubleratchet.Header(b(32,seed), 0, seed), am(seed))).
const pyTwomemoMessage = `<ns0:encrypted xmlns:ns0="urn:xmpp:omemo:2"><ns0:header sid="27183"><ns0:keys jid="juliet@capulet.lit"><ns0:key rid="31415">` + pyKeyJuliet + `</ns0:key></ns0:keys><ns0:keys jid="romeo@montague.lit"><ns0:key rid="12321" kex="true">` + pyKeyRomeo + `</ns0:key></ns0:keys></ns0:header><ns0:payload>BQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLA==</ns0:payload></ns0:encrypted>`

// pyTwomemoEmpty is the same with ContentImpl.make_empty() and only the
// juliet key: an empty OMEMO message has no <payload>.
const pyTwomemoEmpty = `<ns0:encrypted xmlns:ns0="urn:xmpp:omemo:2"><ns0:header sid="27183"><ns0:keys jid="juliet@capulet.lit"><ns0:key rid="31415">` + pyKeyJuliet + `</ns0:key></ns0:keys></ns0:header></ns0:encrypted>`

const (
	pyKeyJuliet = `ChAMDQ4PEBESExQVFhcYGRobElgIChAAGiAKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSIwCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6`
	pyKeyRomeo  = `CCoQBxogyMnKy8zNzs/Q0dLT1NXW19jZ2tvc3d7f4OHi4+Tl5uciINzd3t/g4eLj5OXm5+jp6uvs7e7v8PHy8/T19vf4+fr7KmwKEBYXGBkaGxwdHh8gISIjJCUSWAgUEAAaIBQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzIjAVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4/QEFCQ0Q=`
)

// pyOldmemoMessage was produced once by the Debian python-oldmemo 1.0.3 with
// ik = xeddsa.seed_to_ed25519_pub(bytes([2])*32),
// ek = xeddsa.priv_to_curve25519_pub(b(32,7)):
//
//	kex = oldmemo.oldmemo.KeyExchangeImpl(x3dh.Header(ik, ek, b"", b""), 7, 42)
//	keys = frozenset([(ekm(31415, 10), None), (ekm(12321, 20), kex)])
//	msg = omemo.Message(oldmemo.NAMESPACE, "romeo@montague.lit", 27183,
//	                    ContentImpl(b(40, 5), b(12, 100)), keys)
//	print(ET.tostring(oldmemo.etree.serialize_message(msg), encoding="unicode"))
//
// where ekm(rid, seed) is EncryptedKeyMaterialImpl("x@y", rid,
// doubleratchet.EncryptedMessage(doubleratchet.Header(rp, 0, seed), wm)) with
// rp = xeddsa.priv_to_curve25519_pub(b(32,seed)) and the WhisperMessage
// wm = b"\x33" + oldmemo_pb2.OMEMOMessage(n=seed, pn=0, dh_pub=b"\x05"+rp,
// ciphertext=b(48,seed)).SerializeToString() + b(8, seed+100).
const pyOldmemoMessage = `<ns0:encrypted xmlns:ns0="eu.siacs.conversations.axolotl"><ns0:header sid="27183"><ns0:key rid="12321" prekey="true">` + pyOldKeyKex + `</ns0:key><ns0:key rid="31415">` + pyOldKey + `</ns0:key><ns0:iv>ZGVmZ2hpamtsbW5v</ns0:iv></ns0:header><ns0:payload>BQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLA==</ns0:payload></ns0:encrypted>`

const (
	pyOldKeyKex = `MwgqEiEFB7jFQkh2hqeDAYVfy20/aoqRHNfxmDqbRNydzSKDnSMaIQVgNG58kRpfa6FUEpF0yv51spSsO71VSWMvSM7GJm+EECJiMwohBaMksNnkN6LAJBGQY1Sur2DWzrq0yL6fr27s6snxwJh/EBQYACIwFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9AQUJDeHl6e3x9fn8wBw==`
	pyOldKey    = `MwohBetGIsnLRjZdQb1wFvUqk7zcZ04vSrBRJESBfK8Kt3IuEAoYACIwCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5bm9wcXJzdHU=`
)

// Examples of XEP-0384 0.9.1 ("Sending a message", "Juliet sends a message
// to a group chat") and 0.3.0 ("Sending a message", "Sending a key"), with
// the &ns; entities expanded.
const (
	xep091Send = `<message to='juliet@capulet.lit' from='romeo@montague.lit' id='send1'>
  <encrypted xmlns='urn:xmpp:omemo:2'>
    <header sid='27183'>
      <keys jid='juliet@capulet.lit'>
        <key rid='31415'>b64/encoded/data</key>
      </keys>
      <keys jid='romeo@montague.lit'>
        <key rid='1337'>b64/encoded/data</key>
        <key kex='true' rid='12321'>b64/encoded/data</key>
        <!-- ... -->
      </keys>
    </header>
    <payload>
      base64/encoded/message/key/encrypted/envelope/element
    </payload>
  </encrypted>
  <store xmlns='urn:xmpp:hints'/>
</message>`
	xep091Group = `<message
    from='juliet@capulet.lit/balcony'
    to='secret-room@conference.capulet.lit'
    type='groupchat'>
  <encrypted xmlns='urn:xmpp:omemo:2'>
    <header sid='27183'>
      <keys jid='juliet@capulet.lit'>
        <key rid='31415'>b64/encoded/data</key>
      </keys>
      <keys jid='romeo@montague.lit'>
        <key kex='true' rid='123'>b64/encoded/data</key>
      </keys>
      <keys jid='mercutio@verona.lit'>
        <key kex='true' rid='456'>b64/encoded/data</key>
      </keys>
    </header>
    <payload>
      base64/encoded/message/key/encrypted/envelope/element
    </payload>
  </encrypted>
  <store xmlns='urn:xmpp:hints'/>
</message>`
	xep030Send = `<message to='juliet@capulet.lit' from='romeo@montague.lit' id='send1'>
  <encrypted xmlns='eu.siacs.conversations.axolotl'>
    <header sid='27183'>
      <key rid='31415'>BASE64ENCODED...</key>
      <key prekey="true" rid='12321'>BASE64ENCODED...</key>
      <!-- ... -->
      <iv>BASE64ENCODED...</iv>
    </header>
    <payload>BASE64ENCODED</payload>
  </encrypted>
  <store xmlns='urn:xmpp:hints'/>
</message>`
	xep030Key = `<encrypted xmlns='eu.siacs.conversations.axolotl'>
  <header sid='27183'>
    <key rid='31415'>BASE64ENCODED...</key>
    <key prekey="true" rid='12321'>BASE64ENCODED...</key>
    <!-- ... -->
    <iv>BASE64ENCODED...</iv>
  </header>
</encrypted>`
	// xepPayload is the 53-character placeholder of the 0.9.1 examples,
	// which is not valid base64 (its length is 1 mod 4).
	xepPayload = `base64/encoded/message/key/encrypted/envelope/element`
)

func seq(n int, start byte) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = start + byte(i)
	}
	return out
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// std decodes with the standard library, as a reference.
func std(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func replaceEach(s, old string, values ...string) string {
	for _, v := range values {
		s = strings.Replace(s, old, v, 1)
	}
	return s
}

func decodeString(s string) (*encrypted.Encrypted, error) {
	return encrypted.Decode(xml.NewDecoder(strings.NewReader(s)))
}

// decodeFirst parses the first <encrypted> element (recognised with Is)
// inside doc and checks that the rest of the document stays readable.
func decodeFirst(doc string) (*encrypted.Encrypted, error) {
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if _, ok := encrypted.Is(start); !ok {
			continue
		}
		e, err := encrypted.Parse(d, start)
		if err != nil {
			return nil, err
		}
		for {
			if _, err := d.Token(); err == io.EOF {
				return e, nil
			} else if err != nil {
				return nil, fmt.Errorf("document after Parse: %w", err)
			}
		}
	}
}

func marshal(t *testing.T, e encrypted.Encrypted) string {
	t.Helper()
	out, err := xml.Marshal(e)
	if err != nil {
		t.Fatalf("xml.Marshal: %v", err)
	}
	return string(out)
}

var (
	sampleOMEMO2 = encrypted.Encrypted{
		Namespace: ns.OMEMO2,
		SID:       27183,
		Keys: []encrypted.Key{
			{JID: "juliet@capulet.lit", RID: 31415, Data: std(pyKeyJuliet)},
			{JID: "romeo@montague.lit", RID: 12321, KeyExchange: true, Data: std(pyKeyRomeo)},
		},
		Payload: seq(40, 5),
	}
	sampleLegacy = encrypted.Encrypted{
		Namespace: ns.Legacy,
		SID:       27183,
		Keys: []encrypted.Key{
			{RID: 12321, KeyExchange: true, Data: std(pyOldKeyKex)},
			{RID: 31415, Data: std(pyOldKey)},
		},
		IV:      seq(12, 100),
		Payload: seq(40, 5),
	}
)

func TestPythonOutput(t *testing.T) {
	empty := sampleOMEMO2
	empty.Keys = empty.Keys[:1]
	empty.Payload = nil
	for i, tc := range []struct {
		xml  string
		want encrypted.Encrypted
	}{
		0: {pyTwomemoMessage, sampleOMEMO2},
		1: {pyTwomemoEmpty, empty},
		2: {pyOldmemoMessage, sampleLegacy},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(tc.xml)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestExactXML(t *testing.T) {
	tests := []struct {
		e   encrypted.Encrypted
		xml string
	}{
		0: {
			e: encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{
				{JID: "a@b", RID: 2, Data: []byte{1}},
				{JID: "c@d", RID: 3, KeyExchange: true, Data: []byte{2}},
				{JID: "a@b", RID: 4, KeyExchange: true, Data: []byte{3}},
				{JID: "a@b", RID: 5, KeyExchange: false, Data: []byte{4}},
			}, Payload: []byte("hello")},
			xml: `<encrypted xmlns="urn:xmpp:omemo:2"><header sid="1">` +
				`<keys jid="a@b"><key rid="2">AQ==</key><key rid="4" kex="true">Aw==</key><key rid="5">BA==</key></keys>` +
				`<keys jid="c@d"><key rid="3" kex="true">Ag==</key></keys>` +
				`</header><payload>aGVsbG8=</payload></encrypted>`,
		},
		1: {
			e: encrypted.Encrypted{Namespace: ns.Legacy, SID: 4294967295, Keys: []encrypted.Key{
				{JID: "dropped@example", RID: 2, Data: []byte{1}},
				{RID: 3, KeyExchange: true, Data: []byte{2}},
				{RID: 4, Data: []byte{3}},
			}, IV: seq(12, 0), Payload: []byte("hello")},
			xml: `<encrypted xmlns="eu.siacs.conversations.axolotl"><header sid="4294967295">` +
				`<key rid="2">AQ==</key><key rid="3" prekey="true">Ag==</key><key rid="4">Aw==</key>` +
				`<iv>AAECAwQFBgcICQoL</iv></header><payload>aGVsbG8=</payload></encrypted>`,
		},
		// Empty message: no payload; key transport in legacy keeps the iv.
		2: {
			e:   encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 9, Keys: []encrypted.Key{{JID: "a@b", RID: 2, Data: []byte{1}}}},
			xml: `<encrypted xmlns="urn:xmpp:omemo:2"><header sid="9"><keys jid="a@b"><key rid="2">AQ==</key></keys></header></encrypted>`,
		},
		3: {
			e:   encrypted.Encrypted{Namespace: ns.Legacy, SID: 9, IV: seq(16, 0)},
			xml: `<encrypted xmlns="eu.siacs.conversations.axolotl"><header sid="9"><iv>AAECAwQFBgcICQoLDA0ODw==</iv></header></encrypted>`,
		},
		// Empty but present payload.
		4: {
			e:   encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 9, Payload: []byte{}},
			xml: `<encrypted xmlns="urn:xmpp:omemo:2"><header sid="9"></header><payload></payload></encrypted>`,
		},
		// The python-generated message re-encoded.
		5: {
			e: sampleOMEMO2,
			xml: `<encrypted xmlns="urn:xmpp:omemo:2"><header sid="27183"><keys jid="juliet@capulet.lit"><key rid="31415">` + pyKeyJuliet +
				`</key></keys><keys jid="romeo@montague.lit"><key rid="12321" kex="true">` + pyKeyRomeo +
				`</key></keys></header><payload>BQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLA==</payload></encrypted>`,
		},
		6: {
			e: sampleLegacy,
			xml: `<encrypted xmlns="eu.siacs.conversations.axolotl"><header sid="27183"><key rid="12321" prekey="true">` + pyOldKeyKex +
				`</key><key rid="31415">` + pyOldKey + `</key><iv>ZGVmZ2hpamtsbW5v</iv></header>` +
				`<payload>BQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLA==</payload></encrypted>`,
		},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if got := marshal(t, tc.e); got != tc.xml {
				t.Errorf("xml.Marshal:\n got %s\nwant %s", got, tc.xml)
			}
			var buf bytes.Buffer
			enc := xml.NewEncoder(&buf)
			n, err := tc.e.WriteXML(enc)
			if err != nil {
				t.Fatalf("WriteXML: %v", err)
			}
			if err := enc.Flush(); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tc.xml {
				t.Errorf("WriteXML:\n got %s\nwant %s", buf.String(), tc.xml)
			}
			toks, err := xmlstream.ReadAll(tc.e.TokenReader())
			if err != nil {
				t.Fatal(err)
			}
			if n != len(toks) {
				t.Errorf("WriteXML reported %d tokens, TokenReader yields %d", n, len(toks))
			}
			// AppendTokens appends the same tokens to what is there.
			prefix := xml.StartElement{Name: xml.Name{Local: "message"}}
			appended, err := tc.e.AppendTokens([]xml.Token{prefix})
			if err != nil {
				t.Fatalf("AppendTokens: %v", err)
			}
			appended = append(appended, prefix.End())
			buf.Reset()
			enc = xml.NewEncoder(&buf)
			for _, tok := range appended {
				if err := enc.EncodeToken(tok); err != nil {
					t.Fatal(err)
				}
			}
			if err := enc.Flush(); err != nil {
				t.Fatal(err)
			}
			if want := "<message>" + tc.xml + "</message>"; buf.String() != want {
				t.Errorf("AppendTokens:\n got %s\nwant %s", buf.String(), want)
			}
		})
	}
	// An invalid element appends nothing.
	toks := []xml.Token{xml.CharData("x")}
	got, err := encrypted.Encrypted{Namespace: ns.OMEMO2}.AppendTokens(toks)
	if !errors.Is(err, encrypted.ErrInvalidID) || len(got) != 1 {
		t.Errorf("AppendTokens of an invalid element: %d tokens, %v", len(got), err)
	}
}

func TestRoundTrip(t *testing.T) {
	many := encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1}
	for i := 1; i <= 300; i++ {
		many.Keys = append(many.Keys, encrypted.Key{
			JID: fmt.Sprintf("user%d@example.org", i%7), RID: uint32(i), KeyExchange: i%3 == 0, Data: seq(i, byte(i)),
		})
	}
	// Parsing groups by JID; start from the grouped order.
	grouped, err := decodeString(marshal(t, many))
	if err != nil {
		t.Fatal(err)
	}
	if len(grouped.Keys) != len(many.Keys) {
		t.Fatalf("lost keys: %d of %d", len(grouped.Keys), len(many.Keys))
	}
	for i, e := range []encrypted.Encrypted{
		0: sampleOMEMO2,
		1: sampleLegacy,
		2: *grouped,
		3: {Namespace: ns.Legacy, SID: 5, IV: seq(16, 1), Keys: []encrypted.Key{{RID: 1, Data: []byte{}}}},
		4: {Namespace: ns.OMEMO2, SID: 5, Payload: []byte{}},
		5: {Namespace: ns.OMEMO2, SID: 5, Keys: []encrypted.Key{{JID: "ünïcode@example.org/€", RID: 1, Data: []byte{}}}},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(marshal(t, e))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, e) {
				t.Errorf("round trip:\n got %#v\nwant %#v", *got, e)
			}
			var wrapper struct {
				XMLName   xml.Name            `xml:"jabber:client message"`
				Body      string              `xml:"body"`
				Encrypted encrypted.Encrypted `xml:",any"`
			}
			if err := xml.Unmarshal([]byte("<message xmlns='jabber:client'>"+marshal(t, e)+"<body>fallback</body></message>"), &wrapper); err != nil {
				t.Fatalf("xml.Unmarshal: %v", err)
			}
			if !reflect.DeepEqual(wrapper.Encrypted, e) {
				t.Errorf("xml.Unmarshal:\n got %#v\nwant %#v", wrapper.Encrypted, e)
			}
			r := e.TokenReader()
			start, err := r.Token()
			if err != nil {
				t.Fatal(err)
			}
			got, err = encrypted.Parse(r, start.(xml.StartElement))
			if err != nil {
				t.Fatalf("Parse(TokenReader): %v", err)
			}
			if !reflect.DeepEqual(*got, e) {
				t.Errorf("Parse(TokenReader):\n got %#v\nwant %#v", *got, e)
			}
		})
	}
}

func TestXEPExamples(t *testing.T) {
	placeholder := std("b64/encoded/data")
	payload := seq(48, 1)
	// Keep the whitespace around the payload; only the content changes.
	fix := func(doc string) string { return strings.Replace(doc, xepPayload, b64(payload), 1) }

	for i, tc := range []struct {
		doc  string
		want encrypted.Encrypted
	}{
		0: {fix(xep091Send), encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 27183, Keys: []encrypted.Key{
			{JID: "juliet@capulet.lit", RID: 31415, Data: placeholder},
			{JID: "romeo@montague.lit", RID: 1337, Data: placeholder},
			{JID: "romeo@montague.lit", RID: 12321, KeyExchange: true, Data: placeholder},
		}, Payload: payload}},
		1: {fix(xep091Group), encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 27183, Keys: []encrypted.Key{
			{JID: "juliet@capulet.lit", RID: 31415, Data: placeholder},
			{JID: "romeo@montague.lit", RID: 123, KeyExchange: true, Data: placeholder},
			{JID: "mercutio@verona.lit", RID: 456, KeyExchange: true, Data: placeholder},
		}, Payload: payload}},
		2: {replaceEach(strings.Replace(xep030Send, "<payload>BASE64ENCODED<", "<payload>"+b64(payload)+"<", 1),
			"BASE64ENCODED...", b64(seq(10, 1)), b64(seq(20, 2)), b64(seq(12, 3))),
			encrypted.Encrypted{Namespace: ns.Legacy, SID: 27183, Keys: []encrypted.Key{
				{RID: 31415, Data: seq(10, 1)}, {RID: 12321, KeyExchange: true, Data: seq(20, 2)},
			}, IV: seq(12, 3), Payload: payload}},
		3: {replaceEach(xep030Key, "BASE64ENCODED...", b64(seq(10, 1)), b64(seq(20, 2)), b64(seq(16, 3))),
			encrypted.Encrypted{Namespace: ns.Legacy, SID: 27183, Keys: []encrypted.Key{
				{RID: 31415, Data: seq(10, 1)}, {RID: 12321, KeyExchange: true, Data: seq(20, 2)},
			}, IV: seq(16, 3)}},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeFirst(tc.doc)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}

	// As printed, the placeholders are not valid base64.
	for i, doc := range []string{xep091Send, xep091Group, xep030Send, xep030Key} {
		if _, err := decodeFirst(doc); !errors.Is(err, encrypted.ErrInvalidBase64) {
			t.Errorf("example %d as printed: got %v, want ErrInvalidBase64", i, err)
		}
	}
}

func TestBooleans(t *testing.T) {
	for i, tc := range []struct {
		value string
		want  bool
		err   bool
	}{
		0:  {"true", true, false},
		1:  {"1", true, false},
		2:  {"false", false, false},
		3:  {"0", false, false},
		4:  {" true\n", true, false}, // xs:boolean collapses whitespace
		5:  {"\tfalse ", false, false},
		6:  {"TRUE", false, true},
		7:  {"True", false, true},
		8:  {"yes", false, true},
		9:  {"", false, true},
		10: {"01", false, true},
		11: {"t", false, true},
		12: {"-1", false, true},
		13: {"truefalse", false, true},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			for _, doc := range []string{
				`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'><key rid='2' kex='` + tc.value + `'>AA==</key></keys></header></encrypted>`,
				`<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2' prekey='` + tc.value + `'>AA==</key><iv>` + b64(seq(12, 0)) + `</iv></header></encrypted>`,
			} {
				e, err := decodeString(doc)
				if tc.err {
					if !errors.Is(err, encrypted.ErrInvalidBool) {
						t.Errorf("%q: got %v, want ErrInvalidBool", tc.value, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("%q: %v", tc.value, err)
				}
				if got := e.Keys[0].KeyExchange; got != tc.want {
					t.Errorf("%q: got %v, want %v", tc.value, got, tc.want)
				}
			}
		})
	}
	// The attribute of the other namespace is not interpreted.
	e, err := decodeString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a@b'><key rid='2' prekey='true'>AA==</key></keys></header></encrypted>`)
	if err != nil || e.Keys[0].KeyExchange {
		t.Errorf("prekey in OMEMO 2: %v, %#v", err, e)
	}
	e, err = decodeString(`<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='1'><key rid='2' kex='bogus'>AA==</key><iv>` + b64(seq(12, 0)) + `</iv></header></encrypted>`)
	if err != nil || e.Keys[0].KeyExchange {
		t.Errorf("kex in legacy: %v, %#v", err, e)
	}
}

func TestParseLenient(t *testing.T) {
	iv := `<iv>` + b64(seq(12, 0)) + `</iv>`
	for i, tc := range []struct {
		xml  string
		want encrypted.Encrypted
	}{
		// Keys of one JID in several <keys> elements are grouped.
		0: {`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'><key rid='1'>AQ==</key></keys><keys jid='b'><key rid='2'>Ag==</key></keys>` +
			`<keys jid='a'><key rid='3'>Aw==</key><key rid='1'>BA==</key></keys></header></encrypted>`,
			encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{
				{JID: "a", RID: 1, Data: []byte{1}}, {JID: "a", RID: 3, Data: []byte{3}}, {JID: "a", RID: 1, Data: []byte{4}},
				{JID: "b", RID: 2, Data: []byte{2}},
			}}},
		// No keys, empty <keys>, unknown elements and attributes, any order.
		1: {`<encrypted xmlns='urn:xmpp:omemo:2' x='y'><payload>AQID</payload><foo/><header sid='2' bar='baz'><keys jid='a'/>` +
			`<key rid='9'>AA==</key><keys jid='b'><other rid='1'>AA==</other></keys><iv>AAAA</iv></header></encrypted>`,
			encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 2, Payload: []byte{1, 2, 3}}},
		// Legacy: <keys> is unknown, the iv may come first, 16-byte iv.
		2: {`<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='2'><iv>` + b64(seq(16, 0)) + `</iv><keys jid='a'><key rid='1'>AA==</key></keys>` +
			`<key rid='3' jid='ignored'>AQ==</key></header></encrypted>`,
			encrypted.Encrypted{Namespace: ns.Legacy, SID: 2, IV: seq(16, 0), Keys: []encrypted.Key{{RID: 3, Data: []byte{1}}}}},
		// Whitespace inside base64, missing padding, CDATA, comments, empty key.
		3: {"<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid=' 2 '><key rid='3'>\n  AQ\n</key><key rid='4'><![CDATA[Ag]]><!-- c -->==</key><key rid='5'/>" + iv +
			"</header><payload>\n" + "aGVs\r\nbG8" + "\n</payload></encrypted>",
			encrypted.Encrypted{Namespace: ns.Legacy, SID: 2, IV: seq(12, 0), Payload: []byte("hello"), Keys: []encrypted.Key{
				{RID: 3, Data: []byte{1}}, {RID: 4, Data: []byte{2}}, {RID: 5, Data: []byte{}},
			}}},
		// Empty payload element.
		4: {`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='2'/><payload/></encrypted>`,
			encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 2, Payload: []byte{}}},
		// Prefixed namespace.
		5: {`<o:encrypted xmlns:o='urn:xmpp:omemo:2'><o:header sid='2'><o:keys jid='a'><o:key rid='1'>AA==</o:key></o:keys></o:header></o:encrypted>`,
			encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 2, Keys: []encrypted.Key{{JID: "a", RID: 1, Data: []byte{0}}}}},
		// Elements of another namespace are ignored.
		6: {`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='2'/><payload xmlns='urn:other'>!!</payload><header xmlns='urn:other'/></encrypted>`,
			encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 2}},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(tc.xml)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	iv := `<iv>` + b64(seq(12, 0)) + `</iv>`
	o2 := func(inner string) string { return `<encrypted xmlns='urn:xmpp:omemo:2'>` + inner + `</encrypted>` }
	old := func(inner string) string {
		return `<encrypted xmlns='eu.siacs.conversations.axolotl'>` + inner + `</encrypted>`
	}
	tests := []struct {
		xml string
		err error
	}{
		0:  {`<encrypted/>`, encrypted.ErrWrongElement},
		1:  {`<encrypted xmlns='urn:xmpp:omemo:1'/>`, encrypted.ErrWrongElement},
		2:  {`<header xmlns='urn:xmpp:omemo:2' sid='1'/>`, encrypted.ErrWrongElement},
		3:  {o2(``), encrypted.ErrMissingElement},
		4:  {o2(`<payload>AA==</payload>`), encrypted.ErrMissingElement},
		5:  {old(`<header xmlns='urn:xmpp:omemo:2' sid='1'>` + iv + `</header>`), encrypted.ErrMissingElement},
		6:  {o2(`<header sid='1'/><header sid='2'/>`), encrypted.ErrDuplicateElement},
		7:  {o2(`<header sid='1'/><payload/><payload/>`), encrypted.ErrDuplicateElement},
		8:  {old(`<header sid='1'>` + iv + iv + `</header>`), encrypted.ErrDuplicateElement},
		9:  {o2(`<header/>`), encrypted.ErrInvalidID},
		10: {o2(`<header sid=''/>`), encrypted.ErrInvalidID},
		11: {o2(`<header sid='0'/>`), encrypted.ErrInvalidID},
		12: {o2(`<header sid='-1'/>`), encrypted.ErrInvalidID},
		13: {o2(`<header sid='4294967296'/>`), encrypted.ErrInvalidID},
		14: {o2(`<header sid='one'/>`), encrypted.ErrInvalidID},
		15: {o2(`<header sid='1'><keys jid='a'><key>AA==</key></keys></header>`), encrypted.ErrInvalidID},
		16: {o2(`<header sid='1'><keys jid='a'><key rid='0'>AA==</key></keys></header>`), encrypted.ErrInvalidID},
		17: {old(`<header sid='1'><key rid='x'>AA==</key>` + iv + `</header>`), encrypted.ErrInvalidID},
		18: {o2(`<header sid='1'><keys jid='a'><key rid='1'>A</key></keys></header>`), encrypted.ErrInvalidBase64},
		19: {o2(`<header sid='1'><keys jid='a'><key rid='1'>AA=A</key></keys></header>`), encrypted.ErrInvalidBase64},
		20: {o2(`<header sid='1'><keys jid='a'><key rid='1'>AA-_</key></keys></header>`), encrypted.ErrInvalidBase64}, // URL alphabet
		21: {o2(`<header sid='1'/><payload>!!!!</payload>`), encrypted.ErrInvalidBase64},
		22: {old(`<header sid='1'><iv>****</iv></header>`), encrypted.ErrInvalidBase64},
		23: {o2(`<header sid='1'><keys><key rid='1'>AA==</key></keys></header>`), encrypted.ErrInvalidJID},
		24: {o2(`<header sid='1'><keys jid=''><key rid='1'>AA==</key></keys></header>`), encrypted.ErrInvalidJID},
		25: {old(`<header sid='1'><key rid='1'>AA==</key></header>`), encrypted.ErrInvalidIV},
		26: {old(`<header sid='1'><iv/></header>`), encrypted.ErrInvalidIV},
		27: {old(`<header sid='1'><iv>` + b64(seq(11, 0)) + `</iv></header>`), encrypted.ErrInvalidIV},
		28: {old(`<header sid='1'><iv>` + b64(seq(13, 0)) + `</iv></header>`), encrypted.ErrInvalidIV},
		29: {old(`<header sid='1'><iv>` + b64(seq(32, 0)) + `</iv></header>`), encrypted.ErrInvalidIV},
		30: {old(`<header sid='1'/><iv>` + b64(seq(12, 0)) + `</iv>`), encrypted.ErrInvalidIV}, // iv outside the header
		31: {o2(`<header sid='1'><keys jid='a'><key rid='1'>AA==`), nil},
		32: {``, io.ErrUnexpectedEOF},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			e, err := decodeString(tc.xml)
			if err == nil {
				t.Fatalf("no error, got %#v", e)
			}
			if e != nil {
				t.Errorf("a value was returned together with an error")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("got %v, want %v", err, tc.err)
			}
			if tc.err == nil {
				var se *xml.SyntaxError
				if !errors.As(err, &se) {
					t.Errorf("got %v, want an *xml.SyntaxError", err)
				}
			}
		})
	}
}

func TestLimits(t *testing.T) {
	keys := func(n int) string {
		var sb strings.Builder
		sb.WriteString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'>`)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&sb, `<key rid='%d'>AA==</key>`, i)
		}
		sb.WriteString(`</keys></header></encrypted>`)
		return sb.String()
	}
	e, err := decodeString(keys(encrypted.MaxKeys))
	if err != nil || len(e.Keys) != encrypted.MaxKeys {
		t.Fatalf("exactly MaxKeys: %v", err)
	}
	if _, err := decodeString(keys(encrypted.MaxKeys + 1)); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("MaxKeys+1: got %v, want ErrTooLarge", err)
	}
	e.Keys = append(e.Keys, encrypted.Key{JID: "a", RID: 1})
	if _, err := xml.Marshal(e); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("marshal MaxKeys+1: got %v, want ErrTooLarge", err)
	}

	// One blob at the limit (whitespace counts) and one above it.
	atLimit := strings.Repeat("A", encrypted.MaxBlobSize)
	if e, err := decodeString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/><payload>` + atLimit + `</payload></encrypted>`); err != nil {
		t.Errorf("payload of MaxBlobSize characters: %v", err)
	} else if _, err := xml.Marshal(e); err != nil {
		t.Errorf("payload of MaxBlobSize characters does not re-encode: %v", err)
	}
	if _, err := decodeString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/><payload>` + atLimit + ` </payload></encrypted>`); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("payload above MaxBlobSize: got %v, want ErrTooLarge", err)
	}
	if _, err := decodeString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'><key rid='1'>` + atLimit + `A</key></keys></header></encrypted>`); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("key above MaxBlobSize: got %v, want ErrTooLarge", err)
	}
	// Many blobs within MaxBlobSize but above MaxTotalSize together.
	var sb strings.Builder
	sb.WriteString(`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'>`)
	for i := 1; i <= encrypted.MaxTotalSize/encrypted.MaxBlobSize; i++ {
		fmt.Fprintf(&sb, `<key rid='%d'>%s</key>`, i, atLimit)
	}
	sb.WriteString(`</keys></header><payload>AAAA</payload></encrypted>`)
	if _, err := decodeString(sb.String()); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("above MaxTotalSize: got %v, want ErrTooLarge", err)
	}

	big := encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Payload: make([]byte, encrypted.MaxBlobSize/4*3+1)}
	if _, err := xml.Marshal(big); !errors.Is(err, encrypted.ErrTooLarge) {
		t.Errorf("marshal payload above MaxBlobSize: got %v, want ErrTooLarge", err)
	}
}

func TestMarshalErrors(t *testing.T) {
	for i, tc := range []struct {
		e   encrypted.Encrypted
		err error
	}{
		0:  {encrypted.Encrypted{SID: 1}, encrypted.ErrUnknownNamespace},
		1:  {encrypted.Encrypted{Namespace: "urn:xmpp:omemo:1", SID: 1}, encrypted.ErrUnknownNamespace},
		2:  {encrypted.Encrypted{Namespace: ns.OMEMO2}, encrypted.ErrInvalidID},
		3:  {encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{{JID: "a"}}}, encrypted.ErrInvalidID},
		4:  {encrypted.Encrypted{Namespace: ns.Legacy, SID: 1, IV: seq(12, 0), Keys: []encrypted.Key{{RID: 1}, {RID: 0}}}, encrypted.ErrInvalidID},
		5:  {encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{{RID: 1}}}, encrypted.ErrInvalidJID},
		6:  {encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{{JID: "a\x00b", RID: 1}}}, encrypted.ErrInvalidJID},
		7:  {encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{{JID: "\xff", RID: 1}}}, encrypted.ErrInvalidJID},
		8:  {encrypted.Encrypted{Namespace: ns.Legacy, SID: 1}, encrypted.ErrInvalidIV},
		9:  {encrypted.Encrypted{Namespace: ns.Legacy, SID: 1, IV: seq(11, 0)}, encrypted.ErrInvalidIV},
		10: {encrypted.Encrypted{Namespace: ns.Legacy, SID: 1, IV: seq(32, 0)}, encrypted.ErrInvalidIV},
		11: {encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, IV: seq(12, 0)}, encrypted.ErrInvalidIV},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if _, err := xml.Marshal(tc.e); !errors.Is(err, tc.err) {
				t.Errorf("xml.Marshal: got %v, want %v", err, tc.err)
			}
			n, err := tc.e.WriteXML(xml.NewEncoder(io.Discard))
			if !errors.Is(err, tc.err) || n != 0 {
				t.Errorf("WriteXML: %d tokens, %v; want 0, %v", n, err, tc.err)
			}
			if _, err := tc.e.TokenReader().Token(); !errors.Is(err, tc.err) {
				t.Errorf("TokenReader: got %v, want %v", err, tc.err)
			}
		})
	}
}

func TestKeysFor(t *testing.T) {
	o2 := encrypted.Encrypted{Namespace: ns.OMEMO2, SID: 1, Keys: []encrypted.Key{
		{JID: "a@b", RID: 1, Data: []byte{1}},
		{JID: "c@d", RID: 1, Data: []byte{2}},
		{JID: "a@b", RID: 2, Data: []byte{3}},
		{JID: "a@b", RID: 1, KeyExchange: true, Data: []byte{4}},
	}}
	if got, want := o2.KeysFor("a@b", 1), []encrypted.Key{o2.Keys[0], o2.Keys[3]}; !reflect.DeepEqual(got, want) {
		t.Errorf("KeysFor(a@b, 1) = %#v, want %#v", got, want)
	}
	if got, want := o2.KeysFor("c@d", 1), []encrypted.Key{o2.Keys[1]}; !reflect.DeepEqual(got, want) {
		t.Errorf("KeysFor(c@d, 1) = %#v, want %#v", got, want)
	}
	if got := o2.KeysFor("c@d", 2); got != nil {
		t.Errorf("KeysFor(c@d, 2) = %#v, want nil", got)
	}
	if got := o2.KeysFor("A@B", 1); got != nil {
		t.Errorf("KeysFor compares JIDs exactly, got %#v", got)
	}
	old := encrypted.Encrypted{Namespace: ns.Legacy, SID: 1, Keys: []encrypted.Key{{RID: 1, Data: []byte{1}}, {RID: 2, Data: []byte{2}}}}
	if got, want := old.KeysFor("anyone@example", 2), []encrypted.Key{old.Keys[1]}; !reflect.DeepEqual(got, want) {
		t.Errorf("legacy KeysFor = %#v, want %#v", got, want)
	}
	if got := (*encrypted.Encrypted)(nil).KeysFor("a@b", 1); got != nil {
		t.Errorf("nil KeysFor = %#v, want nil", got)
	}
	if got := old.KeysFor("", 3); got != nil {
		t.Errorf("legacy KeysFor(3) = %#v, want nil", got)
	}
}

func TestIs(t *testing.T) {
	for i, tc := range []struct {
		name xml.Name
		ns   string
		ok   bool
	}{
		0: {xml.Name{Space: ns.OMEMO2, Local: "encrypted"}, ns.OMEMO2, true},
		1: {xml.Name{Space: ns.Legacy, Local: "encrypted"}, ns.Legacy, true},
		2: {xml.Name{Space: "urn:xmpp:omemo:1", Local: "encrypted"}, "", false},
		3: {xml.Name{Local: "encrypted"}, "", false},
		4: {xml.Name{Space: ns.OMEMO2, Local: "header"}, "", false},
		5: {xml.Name{Space: "urn:xmpp:openpgp:0", Local: "openpgp"}, "", false},
	} {
		namespace, ok := encrypted.Is(xml.StartElement{Name: tc.name})
		if namespace != tc.ns || ok != tc.ok {
			t.Errorf("%d: Is(%v) = %q, %v; want %q, %v", i, tc.name, namespace, ok, tc.ns, tc.ok)
		}
	}
}

func TestErrorDoesNotEchoInput(t *testing.T) {
	secret := "SECRETSECRET"
	for _, doc := range []string{
		`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='` + secret + `'/></encrypted>`,
		`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'><key rid='1' kex='` + secret + `'>AA==</key></keys></header></encrypted>`,
		`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'><key rid='1'>` + secret + `!</key></keys></header></encrypted>`,
		`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'/><payload>` + secret + `!</payload></encrypted>`,
	} {
		if _, err := decodeString(doc); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("error %v echoes the input", err)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	toks, err := xmlstream.ReadAll(sampleLegacy.TokenReader())
	if err != nil {
		t.Fatal(err)
	}
	start := toks[0].(xml.StartElement)
	for i := 1; i < len(toks); i++ {
		_, err := encrypted.Parse(&sliceReader{toks: toks[1:i]}, start)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, encrypted.ErrMissingElement) && !errors.Is(err, encrypted.ErrInvalidIV) {
			t.Errorf("truncated at %d: %v", i, err)
		}
	}
	// Without the end element (an inner reader), the value is complete.
	got, err := encrypted.Parse(&sliceReader{toks: toks[1 : len(toks)-1]}, start)
	if err != nil || !reflect.DeepEqual(*got, sampleLegacy) {
		t.Errorf("inner reader: %v, %#v", err, got)
	}
	boom := errors.New("boom")
	if _, err := encrypted.Parse(xmlstream.ReaderFunc(func() (xml.Token, error) { return nil, boom }), start); !errors.Is(err, boom) {
		t.Errorf("reader error: got %v", err)
	}
}

type sliceReader struct{ toks []xml.Token }

func (r *sliceReader) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}
