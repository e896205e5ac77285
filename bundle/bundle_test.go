package bundle_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

var (
	_ xml.Marshaler       = bundle.Bundle{}
	_ xml.Unmarshaler     = (*bundle.Bundle)(nil)
	_ xmlstream.Marshaler = bundle.Bundle{}
	_ xmlstream.WriterTo  = bundle.Bundle{}
)

// pyTwomemoBundle was produced once by the Debian python-twomemo 1.0.3
// (b(n, s) is bytes((s+i)%256 for i in range(n))):
//
//	bundle = twomemo.twomemo.BundleImpl("a@b", 31415, x3dh.Bundle(b(32,1), b(32,33), b(64,65),
//	    frozenset([b(32,129), b(32,161)])), 7, {b(32,129): 1, b(32,161): 100})
//	print(ET.tostring(twomemo.etree.serialize_bundle(bundle), encoding="unicode"))
const pyTwomemoBundle = `<ns0:bundle xmlns:ns0="urn:xmpp:omemo:2"><ns0:spk id="7">ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=</ns0:spk><ns0:spks>QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2BhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gA==</ns0:spks><ns0:ik>AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=</ns0:ik><ns0:prekeys><ns0:pk id="1">gYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6A=</ns0:pk><ns0:pk id="100">oaKjpKWmp6ipqqusra6vsLGys7S1tre4ubq7vL2+v8A=</ns0:pk></ns0:prekeys></ns0:bundle>`

// pyOldmemoBundle was produced once by the Debian python-oldmemo 1.0.3 with
// an Ed25519 identity key whose sign bit is set
// (ik = xeddsa.seed_to_ed25519_pub(bytes([2])*32)), the signed pre key and
// pre keys xeddsa.priv_to_curve25519_pub(b(32,3)), (b(32,50)) and (b(32,90)),
// and the signature b(63,65)+bytes([0x11]):
//
//	bundle = oldmemo.oldmemo.BundleImpl("a@b", 31415, x3dh.Bundle(ik, spk, sig,
//	    frozenset(pks)), 7, {pks[0]: 1, pks[1]: 100})
//	print(ET.tostring(oldmemo.etree.serialize_bundle(bundle), encoding="unicode"))
//
// oldmemo converted the identity key to its Curve25519 form and moved its
// sign bit into bit 7 of the last signature byte (0x11 became 0x91).
const pyOldmemoBundle = `<ns0:bundle xmlns:ns0="eu.siacs.conversations.axolotl"><ns0:signedPreKeyPublic signedPreKeyId="7">BZCXBbDn0YF9tWzcuJui+rrT6aAbLCO8c+PsnZov+bgn</ns0:signedPreKeyPublic><ns0:signedPreKeySignature>QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2BhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/kQ==</ns0:signedPreKeySignature><ns0:identityKey>BWA0bnyRGl9roVQSkXTK/nWylKw7vVVJYy9IzsYmb4QQ</ns0:identityKey><ns0:prekeys><ns0:preKeyPublic preKeyId="100">BRXXt1Bk/dHKO2iH11s31q/B/SVz7Z3f7zjWfcPNyvkb</ns0:preKeyPublic><ns0:preKeyPublic preKeyId="1">BeBbGuMiAkg4CV/979hlRo3bd7FLLdJ1F16gq0KU+m16</ns0:preKeyPublic></ns0:prekeys></ns0:bundle>`

// The bundle examples of XEP-0384 0.9.1 ("Publishing bundle information")
// and 0.3.0 ("Announcing bundle information"), with the &ns; entities
// expanded.
const (
	xep091Publish = `<iq from='juliet@capulet.lit' type='set' id='annouce2'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='urn:xmpp:omemo:2:bundles'>
      <item id='31415'>
        <bundle xmlns='urn:xmpp:omemo:2'>
          <spk id='1'>b64/encoded/data</spk>
          <spks>b64/encoded/data</spks>
          <ik>b64/encoded/data</ik>
          <prekeys>
            <pk id='1'>b64/encoded/data</pk>
            <pk id='2'>b64/encoded/data</pk>
            <!-- … -->
            <pk id='100'>b64/encoded/data</pk>
          </prekeys>
        </bundle>
      </item>
    </publish>
    <publish-options>
      <x xmlns='jabber:x:data' type='submit'>
        <field var='FORM_TYPE' type='hidden'>
          <value>http://jabber.org/protocol/pubsub#publish-options</value>
        </field>
        <field var='pubsub#max_items'>
          <value>max</value>
        </field>
      </x>
    </publish-options>
  </pubsub>
</iq>`
	xep030Announce = `<iq from='juliet@capulet.lit' type='set' id='announce2'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='eu.siacs.conversations.axolotl.bundles:31415'>
      <item id='current'>
        <bundle xmlns='eu.siacs.conversations.axolotl'>
          <signedPreKeyPublic signedPreKeyId='1'>
            BASE64ENCODED...
          </signedPreKeyPublic>
          <signedPreKeySignature>
            BASE64ENCODED...
          </signedPreKeySignature>
          <identityKey>
            BASE64ENCODED...
          </identityKey>
          <prekeys>
            <preKeyPublic preKeyId='1'>
              BASE64ENCODED...
            </preKeyPublic>
            <preKeyPublic preKeyId='2'>
              BASE64ENCODED...
            </preKeyPublic>
            <preKeyPublic preKeyId='3'>
              BASE64ENCODED...
            </preKeyPublic>
            <!-- ... -->
          </prekeys>
        </bundle>
      </item>
    </publish>
  </pubsub>
</iq>`
)

// seq returns n bytes counting up from start (mod 256), like the b()
// helper used to produce the python constants.
func seq(n int, start byte) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = start + byte(i)
	}
	return out
}

func k32(b []byte) (k [32]byte) {
	if copy(k[:], b) != 32 {
		panic("k32: short input")
	}
	return k
}

func s64(b []byte) (s [64]byte) {
	if copy(s[:], b) != 64 {
		panic("s64: short input")
	}
	return s
}

func hexKey(s string) [32]byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return k32(b)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// replaceEach replaces the successive occurrences of old in s by values.
func replaceEach(s, old string, values ...string) string {
	for _, v := range values {
		s = strings.Replace(s, old, v, 1)
	}
	return s
}

func decodeString(s string) (*bundle.Bundle, error) {
	return bundle.Decode(xml.NewDecoder(strings.NewReader(s)))
}

// decodeFirst parses the first <bundle> inside doc and checks that the rest
// of the document stays readable.
func decodeFirst(doc string) (*bundle.Bundle, error) {
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		if start, ok := tok.(xml.StartElement); ok && start.Name.Local == "bundle" {
			b, err := bundle.Parse(d, start)
			if err != nil {
				return nil, err
			}
			for {
				if _, err := d.Token(); err == io.EOF {
					return b, nil
				} else if err != nil {
					return nil, fmt.Errorf("document after Parse: %w", err)
				}
			}
		}
	}
}

func marshal(t *testing.T, b bundle.Bundle) string {
	t.Helper()
	out, err := xml.Marshal(b)
	if err != nil {
		t.Fatalf("xml.Marshal: %v", err)
	}
	return string(out)
}

var (
	sampleOMEMO2 = bundle.Bundle{
		Namespace:             ns.OMEMO2,
		IdentityKey:           k32(seq(32, 1)),
		SignedPreKeyID:        7,
		SignedPreKey:          k32(seq(32, 33)),
		SignedPreKeySignature: s64(seq(64, 65)),
		PreKeys: []bundle.PreKey{
			{ID: 1, Key: k32(seq(32, 129))},
			{ID: 100, Key: k32(seq(32, 161))},
		},
	}
	sampleLegacy = bundle.Bundle{
		Namespace:             ns.Legacy,
		IdentityKey:           hexKey("60346e7c911a5f6ba154129174cafe75b294ac3bbd5549632f48cec6266f8410"),
		SignedPreKeyID:        7,
		SignedPreKey:          hexKey("909705b0e7d1817db56cdcb89ba2fabad3e9a01b2c23bc73e3ec9d9a2ff9b827"),
		SignedPreKeySignature: s64(append(seq(63, 65), 0x91)),
		PreKeys: []bundle.PreKey{
			{ID: 100, Key: hexKey("15d7b75064fdd1ca3b6887d75b37d6afc1fd2573ed9ddfef38d67dc3cdcaf91b")},
			{ID: 1, Key: hexKey("e05b1ae322024838095ffdefd865468ddb77b14b2dd275175ea0ab4294fa6d7a")},
		},
	}
)

func TestExactXML(t *testing.T) {
	tests := []struct {
		bundle bundle.Bundle
		xml    string
	}{
		0: {
			bundle: sampleOMEMO2,
			xml: `<bundle xmlns="urn:xmpp:omemo:2">` +
				`<spk id="7">ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0A=</spk>` +
				`<spks>QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2BhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gA==</spks>` +
				`<ik>AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=</ik>` +
				`<prekeys><pk id="1">gYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6A=</pk>` +
				`<pk id="100">oaKjpKWmp6ipqqusra6vsLGys7S1tre4ubq7vL2+v8A=</pk></prekeys></bundle>`,
		},
		1: {
			bundle: sampleLegacy,
			xml: `<bundle xmlns="eu.siacs.conversations.axolotl">` +
				`<signedPreKeyPublic signedPreKeyId="7">BZCXBbDn0YF9tWzcuJui+rrT6aAbLCO8c+PsnZov+bgn</signedPreKeyPublic>` +
				`<signedPreKeySignature>QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2BhYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/kQ==</signedPreKeySignature>` +
				`<identityKey>BWA0bnyRGl9roVQSkXTK/nWylKw7vVVJYy9IzsYmb4QQ</identityKey>` +
				`<prekeys><preKeyPublic preKeyId="100">BRXXt1Bk/dHKO2iH11s31q/B/SVz7Z3f7zjWfcPNyvkb</preKeyPublic>` +
				`<preKeyPublic preKeyId="1">BeBbGuMiAkg4CV/979hlRo3bd7FLLdJ1F16gq0KU+m16</preKeyPublic></prekeys></bundle>`,
		},
		2: {
			bundle: bundle.Bundle{Namespace: ns.OMEMO2, SignedPreKeyID: 4294967295},
			xml: `<bundle xmlns="urn:xmpp:omemo:2"><spk id="4294967295">AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</spk>` +
				`<spks>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==</spks>` +
				`<ik>AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=</ik><prekeys></prekeys></bundle>`,
		},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if got := marshal(t, tc.bundle); got != tc.xml {
				t.Errorf("xml.Marshal:\n got %s\nwant %s", got, tc.xml)
			}
			var buf bytes.Buffer
			e := xml.NewEncoder(&buf)
			n, err := tc.bundle.WriteXML(e)
			if err != nil {
				t.Fatalf("WriteXML: %v", err)
			}
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tc.xml {
				t.Errorf("WriteXML:\n got %s\nwant %s", buf.String(), tc.xml)
			}
			toks, err := xmlstream.ReadAll(tc.bundle.TokenReader())
			if err != nil {
				t.Fatal(err)
			}
			if n != len(toks) {
				t.Errorf("WriteXML reported %d tokens, TokenReader yields %d", n, len(toks))
			}
		})
	}
}

func TestPythonOutput(t *testing.T) {
	for i, tc := range []struct {
		xml  string
		want bundle.Bundle
	}{
		0: {pyTwomemoBundle, sampleOMEMO2},
		1: {pyOldmemoBundle, sampleLegacy},
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

func TestRoundTrip(t *testing.T) {
	many := sampleOMEMO2
	many.PreKeys = nil
	for i := uint32(1); i <= 150; i++ {
		many.PreKeys = append(many.PreKeys, bundle.PreKey{ID: i * 7919, Key: k32(seq(32, byte(i)))})
	}
	legacyNoPK := sampleLegacy
	legacyNoPK.PreKeys = nil
	for i, b := range []bundle.Bundle{sampleOMEMO2, sampleLegacy, many, legacyNoPK} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(marshal(t, b))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, b) {
				t.Errorf("round trip:\n got %#v\nwant %#v", *got, b)
			}
			var wrapper struct {
				XMLName xml.Name      `xml:"item"`
				Bundle  bundle.Bundle `xml:",any"`
			}
			if err := xml.Unmarshal([]byte("<item>"+marshal(t, b)+"</item>"), &wrapper); err != nil {
				t.Fatalf("xml.Unmarshal: %v", err)
			}
			if !reflect.DeepEqual(wrapper.Bundle, b) {
				t.Errorf("xml.Unmarshal:\n got %#v\nwant %#v", wrapper.Bundle, b)
			}
			r := b.TokenReader()
			start, err := r.Token()
			if err != nil {
				t.Fatal(err)
			}
			got, err = bundle.Parse(r, start.(xml.StartElement))
			if err != nil {
				t.Fatalf("Parse(TokenReader): %v", err)
			}
			if !reflect.DeepEqual(*got, b) {
				t.Errorf("Parse(TokenReader):\n got %#v\nwant %#v", *got, b)
			}
		})
	}
}

func TestXEPExamples(t *testing.T) {
	// The 0.9.1 example as printed: its placeholder decodes to 12 bytes,
	// which is not a key.
	if _, err := decodeFirst(xep091Publish); !errors.Is(err, bundle.ErrInvalidKey) {
		t.Errorf("XEP 0.9.1 example with placeholders: got %v, want ErrInvalidKey", err)
	}
	// The same structure (whitespace, comment, order) with real values.
	doc := replaceEach(xep091Publish, "b64/encoded/data",
		b64(seq(32, 33)), b64(seq(64, 65)), b64(seq(32, 1)), b64(seq(32, 129)), b64(seq(32, 161)), b64(seq(32, 200)))
	got, err := decodeFirst(doc)
	if err != nil {
		t.Fatal(err)
	}
	want := bundle.Bundle{
		Namespace: ns.OMEMO2, IdentityKey: k32(seq(32, 1)), SignedPreKeyID: 1, SignedPreKey: k32(seq(32, 33)),
		SignedPreKeySignature: s64(seq(64, 65)),
		PreKeys: []bundle.PreKey{
			{ID: 1, Key: k32(seq(32, 129))}, {ID: 2, Key: k32(seq(32, 161))}, {ID: 100, Key: k32(seq(32, 200))},
		},
	}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("XEP 0.9.1:\n got %#v\nwant %#v", *got, want)
	}

	// The 0.3.0 example: "BASE64ENCODED..." is not base64 at all.
	if _, err := decodeFirst(xep030Announce); !errors.Is(err, bundle.ErrInvalidKey) {
		t.Errorf("XEP 0.3.0 example with placeholders: got %v, want ErrInvalidKey", err)
	}
	legacyKey := func(b []byte) string { return b64(append([]byte{5}, b...)) }
	doc = replaceEach(xep030Announce, "BASE64ENCODED...",
		legacyKey(seq(32, 33)), b64(seq(64, 65)), legacyKey(seq(32, 1)),
		legacyKey(seq(32, 129)), legacyKey(seq(32, 161)), legacyKey(seq(32, 200)))
	got, err = decodeFirst(doc)
	if err != nil {
		t.Fatal(err)
	}
	want.Namespace = ns.Legacy
	want.PreKeys[2].ID = 3
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("XEP 0.3.0:\n got %#v\nwant %#v", *got, want)
	}
}

// omemo2Doc builds an OMEMO 2 bundle document from child XML.
func omemo2Doc(children string) string {
	return `<bundle xmlns='urn:xmpp:omemo:2'>` + children + `</bundle>`
}

var (
	spk2  = `<spk id='7'>` + b64(seq(32, 33)) + `</spk>`
	spks2 = `<spks>` + b64(seq(64, 65)) + `</spks>`
	ik2   = `<ik>` + b64(seq(32, 1)) + `</ik>`
	pk    = func(id string, key []byte) string { return `<pk id='` + id + `'>` + b64(key) + `</pk>` }

	spkL  = `<signedPreKeyPublic signedPreKeyId='7'>` + b64(append([]byte{5}, seq(32, 33)...)) + `</signedPreKeyPublic>`
	spksL = `<signedPreKeySignature>` + b64(seq(64, 65)) + `</signedPreKeySignature>`
	ikL   = `<identityKey>` + b64(append([]byte{5}, seq(32, 1)...)) + `</identityKey>`
)

func TestParseLenient(t *testing.T) {
	base := bundle.Bundle{
		Namespace: ns.OMEMO2, IdentityKey: k32(seq(32, 1)), SignedPreKeyID: 7,
		SignedPreKey: k32(seq(32, 33)), SignedPreKeySignature: s64(seq(64, 65)),
	}
	withPK := func(b bundle.Bundle, pks ...bundle.PreKey) bundle.Bundle {
		b.PreKeys = pks
		return b
	}
	legacy := base
	legacy.Namespace = ns.Legacy
	wrapped := func(b []byte) string {
		s := b64(b)
		return "\n  " + s[:10] + "\r\n\t" + s[10:20] + " " + s[20:] + "\n"
	}
	unpadded := func(b []byte) string { return strings.TrimRight(b64(b), "=") }

	tests := []struct {
		xml  string
		want bundle.Bundle
	}{
		// No pre keys at all (missing <prekeys>, or empty).
		0: {omemo2Doc(spk2 + spks2 + ik2), base},
		1: {omemo2Doc(spk2 + spks2 + ik2 + `<prekeys/>`), base},
		// Any order.
		2: {omemo2Doc(`<prekeys>` + pk("3", seq(32, 3)) + `</prekeys>` + ik2 + spks2 + spk2),
			withPK(base, bundle.PreKey{ID: 3, Key: k32(seq(32, 3))})},
		// Bad pre keys are skipped, duplicates keep the first.
		3: {omemo2Doc(spk2 + spks2 + ik2 + `<prekeys>` +
			pk("1", seq(32, 1)) +
			pk("-2", seq(32, 2)) + pk("x", seq(32, 2)) + pk("4294967296", seq(32, 2)) +
			`<pk>` + b64(seq(32, 2)) + `</pk>` +
			pk("3", seq(31, 3)) + pk("4", seq(33, 4)) + `<pk id='5'>!!!!</pk>` + `<pk id='6'></pk>` +
			`<pk id='7'>` + strings.Repeat(" ", 5000) + `</pk>` +
			pk("1", seq(32, 9)) +
			pk("8", seq(32, 8)) +
			`</prekeys>`),
			withPK(base, bundle.PreKey{ID: 1, Key: k32(seq(32, 1))}, bundle.PreKey{ID: 8, Key: k32(seq(32, 8))})},
		// Whitespace inside base64 and missing padding.
		4: {omemo2Doc(`<spk id=' 7 '>` + wrapped(seq(32, 33)) + `</spk><spks>` + unpadded(seq(64, 65)) + `</spks>` +
			`<ik>` + unpadded(seq(32, 1)) + `</ik><prekeys><pk id='2'>` + wrapped(seq(32, 2)) + `</pk></prekeys>`),
			withPK(base, bundle.PreKey{ID: 2, Key: k32(seq(32, 2))})},
		// Unknown attributes, elements, comments, CDATA.
		5: {omemo2Doc(`<extra><spk id='1'>junk</spk></extra><spk id='7' foo='bar'><![CDATA[` + b64(seq(32, 33)) + `]]></spk>` +
			spks2 + `<!-- c -->` + ik2 + `<prekeys><other/>` + pk("2", seq(32, 2)) + `</prekeys>`),
			withPK(base, bundle.PreKey{ID: 2, Key: k32(seq(32, 2))})},
		// Multiple <prekeys> are merged.
		6: {omemo2Doc(spk2 + spks2 + ik2 + `<prekeys>` + pk("2", seq(32, 2)) + `</prekeys><prekeys>` + pk("2", seq(32, 5)) + pk("3", seq(32, 3)) + `</prekeys>`),
			withPK(base, bundle.PreKey{ID: 2, Key: k32(seq(32, 2))}, bundle.PreKey{ID: 3, Key: k32(seq(32, 3))})},
		// Legacy: pre keys without the 0x05 prefix or with another type are skipped.
		7: {`<bundle xmlns='eu.siacs.conversations.axolotl'>` + ikL + spksL + spkL + `<prekeys>` +
			`<preKeyPublic preKeyId='1'>` + b64(seq(32, 1)) + `</preKeyPublic>` +
			`<preKeyPublic preKeyId='2'>` + b64(append([]byte{6}, seq(32, 2)...)) + `</preKeyPublic>` +
			`<preKeyPublic preKeyId='3'>` + b64(append([]byte{5}, seq(32, 3)...)) + `</preKeyPublic>` +
			`<pk id='4'>` + b64(append([]byte{5}, seq(32, 4)...)) + `</pk>` +
			`</prekeys></bundle>`,
			withPK(legacy, bundle.PreKey{ID: 3, Key: k32(seq(32, 3))})},
		// Prefixed namespace.
		8: {`<o:bundle xmlns:o='urn:xmpp:omemo:2'><o:spk id='7'>` + b64(seq(32, 33)) + `</o:spk><o:spks>` + b64(seq(64, 65)) +
			`</o:spks><o:ik>` + b64(seq(32, 1)) + `</o:ik></o:bundle>`, base},
	}
	for i, tc := range tests {
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
	legacyDoc := func(children string) string {
		return `<bundle xmlns='eu.siacs.conversations.axolotl'>` + children + `</bundle>`
	}
	tests := []struct {
		xml string
		err error
	}{
		0:  {`<bundle/>`, bundle.ErrWrongElement},
		1:  {`<bundle xmlns='urn:example'/>`, bundle.ErrWrongElement},
		2:  {`<devices xmlns='urn:xmpp:omemo:2'/>`, bundle.ErrWrongElement},
		3:  {omemo2Doc(spks2 + ik2), bundle.ErrMissingElement},
		4:  {omemo2Doc(spk2 + ik2), bundle.ErrMissingElement},
		5:  {omemo2Doc(spk2 + spks2), bundle.ErrMissingElement},
		6:  {omemo2Doc(spkL + spksL + ikL), bundle.ErrMissingElement}, // legacy names in the OMEMO 2 namespace
		7:  {legacyDoc(spk2 + spks2 + ik2), bundle.ErrMissingElement},
		8:  {omemo2Doc(spk2 + spk2 + spks2 + ik2), bundle.ErrDuplicateElement},
		9:  {omemo2Doc(spk2 + spks2 + spks2 + ik2), bundle.ErrDuplicateElement},
		10: {omemo2Doc(spk2 + spks2 + ik2 + ik2), bundle.ErrDuplicateElement},
		11: {omemo2Doc(`<spk>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidID},
		12: {omemo2Doc(`<spk id=''>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidID},
		13: {omemo2Doc(`<spk id='-1'>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidID},
		14: {omemo2Doc(`<spk id='4294967296'>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidID},
		15: {omemo2Doc(`<spk id='a'>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidID},
		16: {omemo2Doc(`<spk id='1'>` + b64(seq(31, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidKey},
		17: {omemo2Doc(`<spk id='1'>` + b64(seq(33, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidKey},
		18: {omemo2Doc(`<spk id='1'>` + b64(append([]byte{5}, seq(32, 1)...)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidKey},
		19: {omemo2Doc(`<spk id='1'>*` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2), bundle.ErrInvalidKey},
		20: {omemo2Doc(`<spk id='1'></spk>` + spks2 + ik2), bundle.ErrInvalidKey},
		21: {omemo2Doc(spk2 + spks2 + `<ik>` + b64(seq(31, 1)) + `</ik>`), bundle.ErrInvalidKey},
		22: {omemo2Doc(spk2 + `<spks>` + b64(seq(63, 1)) + `</spks>` + ik2), bundle.ErrInvalidSignature},
		23: {omemo2Doc(spk2 + `<spks>` + b64(seq(65, 1)) + `</spks>` + ik2), bundle.ErrInvalidSignature},
		24: {omemo2Doc(spk2 + `<spks>A` + b64(seq(64, 1)) + `</spks>` + ik2), bundle.ErrInvalidSignature},
		25: {omemo2Doc(spk2 + `<spks>` + strings.Repeat("A", 5000) + `</spks>` + ik2), bundle.ErrInvalidSignature},
		26: {legacyDoc(spkL + spksL + `<identityKey>` + b64(seq(32, 1)) + `</identityKey>`), bundle.ErrInvalidKey},
		27: {legacyDoc(spkL + spksL + `<identityKey>` + b64(append([]byte{6}, seq(32, 1)...)) + `</identityKey>`), bundle.ErrInvalidKey},
		28: {legacyDoc(`<signedPreKeyPublic signedPreKeyId='1'>` + b64(append([]byte{5}, seq(31, 1)...)) + `</signedPreKeyPublic>` + spksL + ikL), bundle.ErrInvalidKey},
		29: {legacyDoc(`<signedPreKeyPublic id='1'>` + b64(append([]byte{5}, seq(32, 1)...)) + `</signedPreKeyPublic>` + spksL + ikL), bundle.ErrInvalidID},
		30: {legacyDoc(spkL + `<signedPreKeySignature>` + b64(seq(65, 1)) + `</signedPreKeySignature>` + ikL), bundle.ErrInvalidSignature},
		31: {omemo2Doc(spk2 + spks2 + ik2 + `<prekeys><pk id='1'>`), nil},
		32: {``, io.ErrUnexpectedEOF},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			b, err := decodeString(tc.xml)
			if err == nil {
				t.Fatalf("no error, got %#v", b)
			}
			if b != nil {
				t.Errorf("a bundle was returned together with an error")
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

func TestTooManyPreKeys(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`<bundle xmlns='urn:xmpp:omemo:2'>` + spk2 + spks2 + ik2 + `<prekeys>`)
	// Invalid pre keys count towards the limit too.
	for i := 0; i < bundle.MaxPreKeys; i++ {
		sb.WriteString(`<pk id='0'/>`)
	}
	if _, err := decodeString(sb.String() + `</prekeys></bundle>`); err != nil {
		t.Errorf("exactly MaxPreKeys: %v", err)
	}
	if _, err := decodeString(sb.String() + `<pk/></prekeys></bundle>`); !errors.Is(err, bundle.ErrTooManyPreKeys) {
		t.Errorf("got %v, want ErrTooManyPreKeys", err)
	}

	b := sampleOMEMO2
	b.PreKeys = nil
	for i := 1; i <= bundle.MaxPreKeys+1; i++ {
		b.PreKeys = append(b.PreKeys, bundle.PreKey{ID: uint32(i)})
	}
	if _, err := xml.Marshal(b); !errors.Is(err, bundle.ErrTooManyPreKeys) {
		t.Errorf("marshal: got %v, want ErrTooManyPreKeys", err)
	}
}

func TestMarshalErrors(t *testing.T) {
	noNS := sampleOMEMO2
	noNS.Namespace = ""
	dupPK := sampleLegacy
	dupPK.PreKeys = []bundle.PreKey{{ID: 1}, {ID: 1, Key: k32(seq(32, 1))}}
	for i, tc := range []struct {
		bundle bundle.Bundle
		err    error
	}{
		0: {noNS, bundle.ErrUnknownNamespace},
		1: {dupPK, bundle.ErrDuplicateID},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if _, err := xml.Marshal(tc.bundle); !errors.Is(err, tc.err) {
				t.Errorf("xml.Marshal: got %v, want %v", err, tc.err)
			}
			n, err := tc.bundle.WriteXML(xml.NewEncoder(io.Discard))
			if !errors.Is(err, tc.err) || n != 0 {
				t.Errorf("WriteXML: %d tokens, %v; want 0, %v", n, err, tc.err)
			}
		})
	}
}

func TestErrorDoesNotEchoInput(t *testing.T) {
	secret := "SECRETSECRET"
	for _, doc := range []string{
		omemo2Doc(`<spk id='` + secret + `'>` + b64(seq(32, 1)) + `</spk>` + spks2 + ik2),
		omemo2Doc(`<spk id='1'>` + secret + `</spk>` + spks2 + ik2),
		omemo2Doc(spk2 + `<spks>` + secret + `</spks>` + ik2),
	} {
		if _, err := decodeString(doc); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("error %v echoes the input", err)
		}
	}
}

func TestNodeAndItemID(t *testing.T) {
	for i, tc := range []struct {
		namespace  string
		id         uint32
		node, item string
	}{
		0: {ns.OMEMO2, 31415, "urn:xmpp:omemo:2:bundles", "31415"},
		1: {ns.OMEMO2, 4294967295, "urn:xmpp:omemo:2:bundles", "4294967295"},
		2: {ns.Legacy, 31415, "eu.siacs.conversations.axolotl.bundles:31415", "current"},
		3: {"urn:example", 1, "", ""},
	} {
		if got := bundle.Node(tc.namespace, tc.id); got != tc.node {
			t.Errorf("%d: Node = %q, want %q", i, got, tc.node)
		}
		if got := bundle.ItemID(tc.namespace, tc.id); got != tc.item {
			t.Errorf("%d: ItemID = %q, want %q", i, got, tc.item)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	toks, err := xmlstream.ReadAll(sampleOMEMO2.TokenReader())
	if err != nil {
		t.Fatal(err)
	}
	start := toks[0].(xml.StartElement)
	// Every truncation of the token stream inside a child is an
	// unexpected EOF; truncation between children only loses data.
	for i := 1; i < len(toks); i++ {
		r := &sliceReader{toks: toks[1:i]}
		_, err := bundle.Parse(r, start)
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, bundle.ErrMissingElement) {
			t.Errorf("truncated at %d: %v", i, err)
		}
	}
	boom := errors.New("boom")
	if _, err := bundle.Parse(xmlstream.ReaderFunc(func() (xml.Token, error) { return nil, boom }), start); !errors.Is(err, boom) {
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

// libsignal-style clients (converse.js through libomemo.js) number signed
// pre keys and pre keys from 0: such bundles parse, in both namespaces,
// and encode back unchanged.
func TestKeyIDZero(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
	}{
		{"OMEMO 2", `<bundle xmlns='urn:xmpp:omemo:2'><spk id='0'>` + b64(seq(32, 33)) + `</spk><spks>` + b64(seq(64, 65)) +
			`</spks><ik>` + b64(seq(32, 1)) + `</ik><prekeys><pk id='0'>` + b64(seq(32, 2)) + `</pk><pk id='1'>` + b64(seq(32, 3)) + `</pk></prekeys></bundle>`},
		{"legacy", `<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='0'>` + b64(append([]byte{5}, seq(32, 33)...)) +
			`</signedPreKeyPublic><signedPreKeySignature>` + b64(seq(64, 65)) + `</signedPreKeySignature><identityKey>` + b64(append([]byte{5}, seq(32, 1)...)) +
			`</identityKey><prekeys><preKeyPublic preKeyId='0'>` + b64(append([]byte{5}, seq(32, 2)...)) + `</preKeyPublic><preKeyPublic preKeyId='1'>` +
			b64(append([]byte{5}, seq(32, 3)...)) + `</preKeyPublic></prekeys></bundle>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := decodeString(tc.doc)
			if err != nil {
				t.Fatalf("id 0 refused: %v", err)
			}
			if b.SignedPreKeyID != 0 || len(b.PreKeys) != 2 || b.PreKeys[0].ID != 0 || b.PreKeys[1].ID != 1 {
				t.Fatalf("parsed %+v", b)
			}
			raw, err := xml.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			again, err := decodeString(string(raw))
			if err != nil || !reflect.DeepEqual(again, b) {
				t.Fatalf("round trip: %+v, %v", again, err)
			}
		})
	}
}
