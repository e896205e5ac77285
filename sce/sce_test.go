package sce_test

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"mellium.im/omemo/internal/oracle"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/sce"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

var (
	romeo     = jid.MustParse("romeo@montague.lit")
	romeoFull = jid.MustParse("romeo@montague.lit/orchard")
	juliet    = jid.MustParse("juliet@capulet.lit")
	julietRes = jid.MustParse("juliet@capulet.lit/balcony")
	room      = jid.MustParse("verona@rooms.capulet.lit")
)

// equal compares the values of two envelopes (not Dropped or Invalid);
// an <rpad> counts as present when HasRPad is set or RPad is not empty.
func equal(a, b *sce.Envelope) bool {
	return bytes.Equal(a.Content, b.Content) && a.RPad == b.RPad &&
		(a.HasRPad || a.RPad != "") == (b.HasRPad || b.RPad != "") &&
		a.Time.Equal(b.Time) && a.To.Equal(b.To) && a.From.Equal(b.From)
}

// padReader yields the bytes of prefix, then 0, 1, 2, … (mod 256).
type padReader struct {
	prefix []byte
	n      int
}

func (r *padReader) Read(p []byte) (int, error) {
	for i := range p {
		if len(r.prefix) > 0 {
			p[i], r.prefix = r.prefix[0], r.prefix[1:]
			continue
		}
		p[i] = byte(r.n)
		r.n++
	}
	return len(p), nil
}

// padFor returns the padding New makes of a padReader: n characters of
// the alphabet, starting at 'A'.
func padFor(n int) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[i%64]
	}
	return string(b)
}

func TestNewMarshalExact(t *testing.T) {
	// 200 and 255 are rejected, 4 gives a random part of 5 characters on
	// top of the padding to MinPaddedSize; then the characters.
	rnd := &padReader{prefix: []byte{200, 255, 4}}
	now := time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.FixedZone("CET", 3600))
	e, err := sce.New([]byte(`<body>hi &amp; bye</body>  <x xmlns='jabber:x:oob'><url>https://example.org/</url></x>`), romeoFull, julietRes, now, rnd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	const head = `<envelope xmlns='urn:xmpp:sce:1'><content>` +
		`<body xmlns='jabber:client'>hi &amp; bye</body><x xmlns='jabber:x:oob'><url>https://example.org/</url></x>` +
		`</content><rpad>`
	const tail = `</rpad><time stamp='2026-11-26T09:00:00Z'/>` +
		`<to jid='juliet@capulet.lit'/><from jid='romeo@montague.lit'/></envelope>`
	want := head + padFor(sce.MinPaddedSize-len(head+tail)+5) + tail
	if string(got) != want {
		t.Errorf("Marshal:\n got %s\nwant %s", got, want)
	}
	if len(got) != sce.MinPaddedSize+5 || !e.HasRPad {
		t.Errorf("envelope of %d bytes (HasRPad %v), want %d", len(got), e.HasRPad, sce.MinPaddedSize+5)
	}
	if !e.From.Equal(romeo) || !e.To.Equal(juliet) {
		t.Errorf("New kept full JIDs: from %v to %v", e.From, e.To)
	}
	if strings.Count(string(got), "xmlns=") != 3 {
		t.Errorf("unexpected xmlns count in %s", got)
	}
}

func TestNewOmitsZeroAffixes(t *testing.T) {
	e, err := sce.New(nil, jid.JID{}, jid.JID{}, time.Time{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `<envelope xmlns='urn:xmpp:sce:1'><content></content><rpad>` + e.RPad + `</rpad></envelope>`
	if string(got) != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if n := len(got) - sce.MinPaddedSize; n < 1 || n > sce.MaxRPad {
		t.Errorf("envelope of %d bytes, want MinPaddedSize + 1..MaxRPad", len(got))
	}
}

// Envelopes larger than MinPaddedSize get only the random part.
func TestNewLargeEnvelopePadding(t *testing.T) {
	body := `<body>` + strings.Repeat("x", 2*sce.MinPaddedSize) + `</body>`
	e, err := sce.New([]byte(body), romeo, juliet, time.Time{}, &padReader{prefix: []byte{9}})
	if err != nil {
		t.Fatal(err)
	}
	if e.RPad != padFor(10) {
		t.Errorf("rpad %q, want %q", e.RPad, padFor(10))
	}
}

func TestNewRPad(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	lengths := map[int]bool{}
	for i := 0; i < 2000; i++ {
		e, err := sce.New([]byte(`<body>x</body>`), romeo, juliet, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		// Padded to MinPaddedSize, then 1..MaxRPad characters on top.
		n := len(out) - sce.MinPaddedSize
		if n < 1 || n > sce.MaxRPad || !e.HasRPad {
			t.Fatalf("envelope of %d bytes, rpad of %d", len(out), len(e.RPad))
		}
		if strings.Trim(e.RPad, alphabet) != "" {
			t.Fatalf("rpad %q has characters outside the URL-safe alphabet", e.RPad)
		}
		lengths[n] = true
	}
	if len(lengths) < 150 {
		t.Errorf("only %d distinct padding lengths in 2000 envelopes", len(lengths))
	}
	// Exhausted randomness is an error, not a short pad.
	if _, err := sce.New(nil, romeo, juliet, time.Time{}, bytes.NewReader([]byte{10, 1, 2})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short rand: err = %v", err)
	}
	if _, err := sce.New(nil, romeo, juliet, time.Time{}, bytes.NewReader(nil)); !errors.Is(err, io.EOF) {
		t.Errorf("empty rand: err = %v", err)
	}
}

func TestNewRejectsBadContent(t *testing.T) {
	for i, c := range []struct {
		content string
		err     error
	}{
		0: {`<body>`, sce.ErrMalformed},
		1: {`</content><from jid='mallory@evil.example'/><content>`, sce.ErrMalformed},
		2: {`hello`, sce.ErrMalformed},
		3: {`<body>&foo;</body>`, sce.ErrMalformed},
		4: {`<?xml version='1.0'?><body/>`, sce.ErrMalformed},
		5: {`<a:body/>`, sce.ErrMalformed},
		6: {"<body>\xff</body>", sce.ErrMalformed},
		7: {strings.Repeat("<a>", sce.MaxDepth) + strings.Repeat("</a>", sce.MaxDepth), sce.ErrTooDeep},
		8: {`<body>` + strings.Repeat("a", sce.MaxSize) + `</body>`, sce.ErrTooLarge},
		9: {`<body a='1' a='2'/>`, sce.ErrMalformed},
	} {
		if _, err := sce.New([]byte(c.content), romeo, juliet, time.Time{}, nil); !errors.Is(err, c.err) {
			t.Errorf("%d: err = %v, want %v", i, err, c.err)
		}
	}
}

func TestMarshalValidates(t *testing.T) {
	for i, e := range []*sce.Envelope{
		0: {Content: []byte(`</content><from jid='mallory@evil.example'/><content>`)},
		1: {Content: []byte(`<body>`)},
		2: {RPad: "a\x00b"},
		3: {RPad: "\xff"},
		4: {Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		5: {Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
		6: nil,
	} {
		if out, err := e.Marshal(); !errors.Is(err, sce.ErrMalformed) {
			t.Errorf("%d: Marshal = %q, %v; want ErrMalformed", i, out, err)
		}
	}
	// Hand-written content is canonicalised, not trusted.
	e := &sce.Envelope{Content: []byte(`<body xmlns="jabber:client" xmlns:p="urn:x" p:a="1"><!--c--><i>1 &lt; 2</i></body>`)}
	got, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := `<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client' xmlns:ns0='urn:x' ns0:a='1'><i>1 &lt; 2</i></body></content></envelope>`
	if string(got) != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	stamp := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	for i, e := range []*sce.Envelope{
		0: {},
		1: {Content: []byte(`<body xmlns='jabber:client'>hi</body>`), RPad: "x"},
		2: {Content: []byte(`<body xmlns='jabber:client'>  a &amp; b &lt;c&gt; ' " &#xD;
 tail </body><x xmlns='jabber:x:oob'><url>u</url></x>`), RPad: strings.Repeat("R", 1000), Time: stamp, To: room, From: romeo},
		3: {Content: []byte(`<html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml' xml:lang='en'><p style='a&apos;b&#xA;'>x</p></body></html>`), From: romeoFull},
		4: {Content: []byte(`<a xmlns='urn:a' xmlns:ns0='urn:b' ns0:x='1' xmlns:ns1='urn:c' ns1:x='2' x='3'><b xmlns='jabber:client'></b></a>`), RPad: " \t\n"},
		5: {Content: []byte(`<reply xmlns='urn:xmpp:reply:0' to='juliet@capulet.lit/balcony' id='1'></reply><body xmlns='jabber:client'>日本語 🙂</body>`), Time: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
		// An empty but present padding survives the round trip.
		6: {Content: []byte(`<body xmlns='jabber:client'>hi</body>`), HasRPad: true, From: romeo},
		7: {HasRPad: true, RPad: "p"},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			data, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := sce.Parse(data)
			if err != nil {
				t.Fatalf("Parse(%s): %v", data, err)
			}
			if !equal(got, e) {
				t.Errorf("round trip of %s:\n got %+v\nwant %+v", data, got, e)
			}
			again, err := got.Marshal()
			if err != nil || !bytes.Equal(again, data) {
				t.Errorf("re-marshal = %s, %v; want %s", again, err, data)
			}
			hasRPad := e.HasRPad || e.RPad != ""
			if got.HasRPad != hasRPad || len(got.Invalid) != 0 {
				t.Errorf("Parse(%s): HasRPad %v, Invalid %v", data, got.HasRPad, got.Invalid)
			}
		})
	}
	// The empty padding is written as <rpad/>.
	data, err := (&sce.Envelope{HasRPad: true}).Marshal()
	if want := `<envelope xmlns='urn:xmpp:sce:1'><content></content><rpad/></envelope>`; err != nil || string(data) != want {
		t.Errorf("Marshal = %s, %v; want %s", data, err, want)
	}
}

// The envelopes of XEP-0420 0.4.1 and XEP-0384 0.9.1, verbatim.
var xepExamples = []string{
	0: `<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <body xmlns='jabber:client'>[...]</body>
    <x xmlns='jabber:x:oob'>
      <url>https://en.wikipedia.org/wiki/Fight_Club#Plot</url>
    </x>
  </content>
</envelope>`,
	1: `<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <data xmlns='urn:xmpp:bob'
        cid='sha1+8f35fef110ffc5df08d579a50083ff9308fb6242@bob.xmpp.org'/>
  </content>
  <from jid='doctor@shakespeare.lit/pda'/>
  <to jid='ladymacbeth@shakespear.lit/castle'/>
</envelope>
`,
	2: `<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <body xmlns='jabber:client'>
     Hello World!
    </body>
  </content>
  <rpad>...</rpad>
  <from jid='romeo@montague.lit'/>
</envelope>`,
	3: `<envelope xmlns='urn:xmpp:sce:1'>
  <content>
    <opt-out xmlns='urn:xmpp:omemo:2'>
      <reason>
        Sorry, but for compliance reasons I need a permanent,
        server-side, record of our conversation.
      </reason>
    </opt-out>
  </content>
</envelope>`,
}

func TestParseXEPExamples(t *testing.T) {
	want := []sce.Envelope{
		0: {Content: []byte("<body xmlns='jabber:client'>[...]</body><x xmlns='jabber:x:oob'>\n      <url>https://en.wikipedia.org/wiki/Fight_Club#Plot</url>\n    </x>")},
		1: {
			Content: []byte("<data xmlns='urn:xmpp:bob' cid='sha1+8f35fef110ffc5df08d579a50083ff9308fb6242@bob.xmpp.org'></data>"),
			From:    jid.MustParse("doctor@shakespeare.lit/pda"),
			To:      jid.MustParse("ladymacbeth@shakespear.lit/castle"),
		},
		2: {Content: []byte("<body xmlns='jabber:client'>\n     Hello World!\n    </body>"), RPad: "...", From: romeo},
		3: {Content: []byte("<opt-out xmlns='urn:xmpp:omemo:2'>\n      <reason>\n        Sorry, but for compliance reasons I need a permanent,\n        server-side, record of our conversation.\n      </reason>\n    </opt-out>")},
	}
	for i, x := range xepExamples {
		e, err := sce.Parse([]byte(x))
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if !equal(e, &want[i]) {
			t.Errorf("%d:\n got %q %+v\nwant %q %+v", i, e.Content, e, want[i].Content, want[i])
		}
	}
	// The IQ example names full JIDs; Check compares bare JIDs.
	e, _ := sce.Parse([]byte(xepExamples[1]))
	if err := e.Check(sce.Policy{RequireFrom: true, RequireTo: true},
		jid.MustParse("doctor@shakespeare.lit/other"), jid.MustParse("ladymacbeth@shakespear.lit")); err != nil {
		t.Errorf("Check of the XEP IQ example: %v", err)
	}
}

func TestParseLenient(t *testing.T) {
	for i, c := range []struct {
		in   string
		want sce.Envelope
	}{
		// A body without xmlns inherits the envelope's default: jabber:client.
		0: {`<envelope xmlns='urn:xmpp:sce:1'><content><body>hi<b/></body></content></envelope>`,
			sce.Envelope{Content: []byte(`<body xmlns='jabber:client'>hi<b></b></body>`)}},
		// Prefixes are resolved; comments and the XML declaration are dropped.
		1: {"<?xml version='1.0' encoding='UTF-8'?>\n<!-- c --><s:envelope xmlns:s='urn:xmpp:sce:1' xmlns:o='jabber:x:oob'><s:content><o:x><o:url>u</o:url></o:x><!--c--></s:content></s:envelope>\n",
			sce.Envelope{Content: []byte(`<x xmlns='jabber:x:oob'><url>u</url></x>`)}},
		// Unknown affixes and foreign elements are ignored, in any order.
		2: {`<envelope xmlns='urn:xmpp:sce:1'><custom a='b'><deep/></custom><from jid='romeo@montague.lit'/><rpad xmlns='urn:other'>x</rpad><content/><time stamp='2004-01-25T06:05:00+01:00'/></envelope>`,
			sce.Envelope{From: romeo, Time: time.Date(2004, 1, 25, 5, 5, 0, 0, time.UTC)}},
		// Long padding MUST NOT be rejected (XEP-0420 0.5.0).
		3: {`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad>` + strings.Repeat("p", 100000) + `</rpad></envelope>`,
			sce.Envelope{RPad: strings.Repeat("p", 100000)}},
		// CDATA becomes escaped text.
		4: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'><![CDATA[<b>&]]></body></content></envelope>`,
			sce.Envelope{Content: []byte(`<body xmlns='jabber:client'>&lt;b&gt;&amp;</body>`)}},
		// Predefined and character entities.
		5: {`<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>&lt;&#65;&#x42;&quot;</body></content><rpad>&amp;</rpad></envelope>`,
			sce.Envelope{Content: []byte(`<body xmlns='jabber:client'>&lt;AB"</body>`), RPad: "&"}},
		// A 0-length padding (XEP-0420 0.5.0), in every spelling.
		6: {`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad/></envelope>`, sce.Envelope{HasRPad: true}},
		7: {`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad></rpad></envelope>`, sce.Envelope{HasRPad: true}},
		8: {`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad><!-- c --></rpad></envelope>`, sce.Envelope{HasRPad: true}},
		9: {`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad><![CDATA[]]></rpad></envelope>`, sce.Envelope{HasRPad: true}},
	} {
		e, err := sce.Parse([]byte(c.in))
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if !equal(e, &c.want) {
			t.Errorf("%d:\n got %q %+v\nwant %q %+v", i, e.Content, e, c.want.Content, c.want)
		}
		if e.HasRPad != (c.want.HasRPad || c.want.RPad != "") || len(e.Invalid) != 0 {
			t.Errorf("%d: HasRPad %v, Invalid %v", i, e.HasRPad, e.Invalid)
		}
	}
}

func TestParseHostile(t *testing.T) {
	const env = `<envelope xmlns='urn:xmpp:sce:1'>`
	deep := env + `<content>` + strings.Repeat("<a>", sce.MaxDepth) + strings.Repeat("</a>", sce.MaxDepth) + `</content></envelope>`
	for i, c := range []struct {
		in  string
		err error
	}{
		0:  {``, sce.ErrMalformed},
		1:  {env + `<content/></envelope>` + env + `<content/></envelope>`, sce.ErrMalformed},
		2:  {env + `</envelope>`, sce.ErrMalformed},
		3:  {env + `<rpad>x</rpad></envelope>`, sce.ErrMalformed},
		4:  {env + `<content/><content/></envelope>`, sce.ErrMalformed},
		5:  {env + `<content/><rpad>a</rpad><rpad>b</rpad></envelope>`, sce.ErrMalformed},
		6:  {env + `<content/><from jid='a@b'/><from jid='a@b'/></envelope>`, sce.ErrMalformed},
		7:  {env + `<content/><to jid='a@b'/><to jid='c@d'/></envelope>`, sce.ErrMalformed},
		8:  {env + `<content/><time stamp='2004-01-25T06:05:00Z'/><time stamp='2004-01-25T06:05:00Z'/></envelope>`, sce.ErrMalformed},
		9:  {env + `<content/><rpad>` + strings.Repeat("p", sce.MaxSize) + `</rpad></envelope>`, sce.ErrTooLarge},
		10: {deep, sce.ErrTooDeep},
		11: {`<!DOCTYPE envelope [<!ENTITY x "y">]>` + env + `<content>&x;</content></envelope>`, sce.ErrMalformed},
		12: {env + `<content><body xmlns='jabber:client'>&x;</body></content></envelope>`, sce.ErrMalformed},
		13: {`<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>` + env + `<content/><rpad>&lol2;</rpad></envelope>`, sce.ErrMalformed},
		14: {`<!DOCTYPE e SYSTEM "file:///etc/passwd">` + env + `<content/></envelope>`, sce.ErrMalformed},
		15: {env + "<content><body xmlns='jabber:client'>\xff\xfe</body></content></envelope>", sce.ErrMalformed},
		16: {"<?xml version='1.0' encoding='ISO-8859-1'?>" + env + `<content/></envelope>`, sce.ErrMalformed},
		17: {"\xfe\xff\x00<\x00e", sce.ErrMalformed}, // UTF-16
		18: {env + `<content/><?pi x?></envelope>`, sce.ErrMalformed},
		19: {env + `<content/>` + `<?xml version='1.0'?></envelope>`, sce.ErrMalformed},
		20: {`<envelope xmlns='urn:xmpp:sce:0'><content/></envelope>`, sce.ErrMalformed},
		21: {`<envelope><content/></envelope>`, sce.ErrMalformed},
		22: {`<content xmlns='urn:xmpp:sce:1'/>`, sce.ErrMalformed},
		23: {env + `<content><a:body/></content></envelope>`, sce.ErrMalformed},
		24: {env + `<content><body p:a='1'/></content></envelope>`, sce.ErrMalformed},
		25: {env + `<content><body a='1' a='2'/></content></envelope>`, sce.ErrMalformed},
		26: {env + `<content><body xmlns:p='urn:a' xmlns:q='urn:a' p:a='1' q:a='2'/></content></envelope>`, sce.ErrMalformed},
		27: {env + `<content>text</content></envelope>`, sce.ErrMalformed},
		28: {env + `<content/>text</envelope>`, sce.ErrMalformed},
		29: {env + `<content/></envelope>junk`, sce.ErrMalformed},
		30: {env + `<content/><rpad><b/></rpad></envelope>`, sce.ErrMalformed},
		// Invalid affix values are tolerated (TestParseInvalidAffixes),
		// structural errors in affixes are not.
		31: {env + `<content/><time stamp='yesterday' stamp='today'/></envelope>`, sce.ErrMalformed},
		32: {env + `<content/><time stamp='yesterday'/><time stamp='2004-01-25T06:05:00Z'/></envelope>`, sce.ErrMalformed},
		33: {env + `<content/><to><b></to></envelope>`, sce.ErrMalformed},
		34: {env + `<content/><from jid=''/><from jid='a@b'/></envelope>`, sce.ErrMalformed},
		35: {env + `<content/><from jid='@' p:x='1'/></envelope>`, sce.ErrMalformed},
		36: {env + `<content><body></content></envelope>`, sce.ErrMalformed},
		37: {env + `<content/>`, sce.ErrMalformed},
		38: {env + `<content><body xmlns='jabber:client'>&#0;</body></content></envelope>`, sce.ErrMalformed},
		39: {env + "<content/><rpad>\x01</rpad></envelope>", sce.ErrMalformed},
		40: {env + `<content><xml:a/></content></envelope>`, sce.ErrMalformed},
		41: {env + `<content><a xmlns:p=''/></content></envelope>`, sce.ErrMalformed},
		42: {env + `<content><a:b:c xmlns:a='urn:a'/></content></envelope>`, sce.ErrMalformed},
		43: {env + `<content/><rpad/><rpad/></envelope>`, sce.ErrMalformed},
		44: {env + `<content/><rpad/><time stamp='x'></envelope>`, sce.ErrMalformed},
		45: {env + `<content attr=unquoted/></envelope>`, sce.ErrMalformed},
		46: {"<envelope xmlns='urn:xmpp:sce:1'>\x00<content/></envelope>", sce.ErrMalformed},
	} {
		e, err := sce.Parse([]byte(c.in))
		if !errors.Is(err, c.err) {
			t.Errorf("%d: Parse = %+v, %v; want %v", i, e, err, c.err)
		}
		if e != nil {
			t.Errorf("%d: non-nil envelope with error", i)
		}
	}
}

func TestParseErrorsDoNotEchoInput(t *testing.T) {
	const secret = "attack-at-dawn"
	for _, in := range []string{
		`<envelope xmlns='urn:xmpp:sce:1'><content><body>` + secret + `&` + secret + `;</body></content></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><` + secret + `:x/></content></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content/><from jid='` + secret + `@@'/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content/><to jid='` + secret + `@@'/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content/><time stamp='` + secret + `'/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><a></` + secret + `></content></envelope>`,
	} {
		// Invalid affixes are no Parse error: Check reports them.
		e, err := sce.Parse([]byte(in))
		if err == nil {
			err = e.Check(sce.Policy{StrictAffixes: true}, romeo, juliet)
			for _, ie := range e.Invalid {
				if strings.Contains(ie.Error(), secret) {
					t.Errorf("Invalid %v echoes the input", ie)
				}
			}
		}
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("error %v echoes the input", err)
		}
	}
}

// An affix whose value cannot be parsed is recorded in Invalid and left
// zero; the envelope itself parses.
func TestParseInvalidAffixes(t *testing.T) {
	const env = `<envelope xmlns='urn:xmpp:sce:1'><content><body>hi</body></content><rpad>p</rpad>`
	for i, c := range []struct {
		in     string
		affix  string
		reason string
	}{
		0:  {env + `<time/></envelope>`, "time", "no stamp attribute"},
		1:  {env + `<time stamp='yesterday'/></envelope>`, "time", "stamp is not an XEP-0082 DateTime"},
		2:  {env + `<time stamp='garbage'/></envelope>`, "time", "stamp is not an XEP-0082 DateTime"},
		3:  {env + `<time stamp=''/></envelope>`, "time", "stamp is not an XEP-0082 DateTime"},
		4:  {env + `<time stamp='2004-01-25 06:05:00'/></envelope>`, "time", "stamp is not an XEP-0082 DateTime"},
		5:  {env + `<time stamp='0001-01-01T00:00:00Z'/></envelope>`, "time", "stamp out of range"},
		6:  {env + `<time stamp='0000-01-01T00:00:00+01:00'/></envelope>`, "time", "stamp out of range"},
		7:  {env + `<time Stamp='2004-01-25T06:05:00Z'/></envelope>`, "time", "no stamp attribute"},
		8:  {env + `<to/></envelope>`, "to", "no jid attribute"},
		9:  {env + `<to jid='@'/></envelope>`, "to", "jid is not a valid JID"},
		10: {env + `<from jid=''/></envelope>`, "from", "jid is not a valid JID"},
		11: {env + `<from jid='@'/></envelope>`, "from", "jid is not a valid JID"},
		12: {env + `<from xmlns:p='urn:p' p:jid='romeo@montague.lit'/></envelope>`, "from", "no jid attribute"},
		// An empty final label: jid.Parse strips one dot and keeps the
		// other, which the string form would lose (found by FuzzParse).
		13: {env + `<from jid='romeo@montague.lit..'/></envelope>`, "from", "jid is not a valid JID"},
		14: {env + `<to jid='000000000..'/></envelope>`, "to", "jid is not a valid JID"},
	} {
		e, err := sce.Parse([]byte(c.in))
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		want := sce.InvalidAffixError{Affix: c.affix, Reason: c.reason}
		if len(e.Invalid) != 1 || *e.Invalid[0] != want {
			t.Errorf("%d: Invalid = %v, want %v", i, e.Invalid, want)
			continue
		}
		if !errors.Is(e.Invalid[0], sce.ErrInvalidAffix) || errors.Is(e.Invalid[0], sce.ErrMalformed) {
			t.Errorf("%d: %v does not match ErrInvalidAffix only", i, e.Invalid[0])
		}
		if !e.Time.IsZero() || !e.To.Equal(jid.JID{}) || !e.From.Equal(jid.JID{}) {
			t.Errorf("%d: invalid affix kept a value: %+v", i, e)
		}
		if string(e.Content) != `<body xmlns='jabber:client'>hi</body>` || e.RPad != "p" {
			t.Errorf("%d: content %q rpad %q", i, e.Content, e.RPad)
		}
	}

	// Several at once, in document order, next to valid ones.
	e, err := sce.Parse([]byte(env + `<from jid='@'/><time stamp='x'/><to jid='juliet@capulet.lit'/></envelope>`))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Invalid) != 2 || e.Invalid[0].Affix != "from" || e.Invalid[1].Affix != "time" || !e.To.Equal(juliet) {
		t.Errorf("Invalid = %v, To = %v", e.Invalid, e.To)
	}
	// One final dot is part of the JID syntax (RFC 7622, 3.2).
	e2, err := sce.Parse([]byte(env + `<to jid='juliet@capulet.lit.'/></envelope>`))
	if err != nil || len(e2.Invalid) != 0 || !e2.To.Equal(juliet) {
		t.Errorf("to with a final dot: %v, %+v", err, e2)
	}
	// Marshal leaves the invalid affixes out.
	out, err := e.Marshal()
	if err != nil || strings.Contains(string(out), "<from") || strings.Contains(string(out), "<time") {
		t.Errorf("Marshal = %s, %v", out, err)
	}
}

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	full := &sce.Envelope{RPad: "p", From: romeo, To: juliet, Time: now.Add(-time.Minute)}
	for i, c := range []struct {
		e        *sce.Envelope
		p        sce.Policy
		from, to jid.JID
		err      error
		affix    string
	}{
		0:  {e: full, p: sce.Policy{RequireRPad: true, RequireFrom: true, RequireTo: true}, from: romeo, to: juliet},
		1:  {e: full, p: sce.Policy{}, from: romeoFull, to: julietRes},                  // full JIDs on the stanza
		2:  {e: &sce.Envelope{From: romeoFull, To: julietRes}, from: romeo, to: juliet}, // full JIDs in the affixes
		3:  {e: full, from: juliet, to: juliet, err: sce.ErrAffixMismatch, affix: "from"},
		4:  {e: full, from: jid.JID{}, to: juliet, err: sce.ErrAffixMismatch, affix: "from"},
		5:  {e: full, from: jid.MustParse("romeo@montague.lit.evil"), to: juliet, err: sce.ErrAffixMismatch, affix: "from"},
		6:  {e: full, from: romeo, to: room, err: sce.ErrAffixMismatch, affix: "to"},
		7:  {e: full, from: romeo, to: jid.JID{}, err: sce.ErrAffixMismatch, affix: "to"},
		8:  {e: &sce.Envelope{From: romeo}, p: sce.Policy{RequireTo: true}, from: romeo, to: room, err: sce.ErrMissingAffix},
		9:  {e: &sce.Envelope{From: romeo}, from: romeo, to: room}, // to optional by default
		10: {e: &sce.Envelope{To: juliet}, p: sce.Policy{RequireFrom: true}, from: romeo, to: juliet, err: sce.ErrMissingAffix},
		11: {e: &sce.Envelope{To: juliet}, from: romeo, to: juliet},
		12: {e: &sce.Envelope{From: romeo, To: juliet}, p: sce.Policy{RequireRPad: true}, from: romeo, to: juliet, err: sce.ErrMissingAffix},
		13: {e: full, p: sce.Policy{MaxSkew: 2 * time.Minute, Now: clock}, from: romeo, to: juliet},
		14: {e: full, p: sce.Policy{MaxSkew: 30 * time.Second, Now: clock}, from: romeo, to: juliet, err: sce.ErrAffixMismatch, affix: "time"},
		15: {e: &sce.Envelope{Time: now.Add(time.Hour)}, p: sce.Policy{MaxSkew: time.Minute, Now: clock}, err: sce.ErrAffixMismatch, affix: "time"},
		16: {e: &sce.Envelope{Time: time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC)}, p: sce.Policy{MaxSkew: time.Minute, Now: clock}, err: sce.ErrAffixMismatch, affix: "time"},
		17: {e: &sce.Envelope{Time: time.Date(9999, 1, 2, 0, 0, 0, 0, time.UTC)}, p: sce.Policy{MaxSkew: time.Minute, Now: clock}, err: sce.ErrAffixMismatch, affix: "time"},
		18: {e: &sce.Envelope{}, p: sce.Policy{MaxSkew: time.Minute, Now: clock}},                                                                              // time is optional
		19: {e: &sce.Envelope{Time: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)}, p: sce.Policy{MaxSkew: time.Hour}, err: sce.ErrAffixMismatch, affix: "time"}, // default clock
		20: {e: nil, err: sce.ErrMalformed},
		// A group message turned into a private one: to names the room.
		21: {e: &sce.Envelope{RPad: "p", From: romeo, To: room}, p: sce.Policy{RequireRPad: true}, from: romeo, to: juliet, err: sce.ErrAffixMismatch, affix: "to"},
		// A private message injected into the room: no to affix.
		22: {e: &sce.Envelope{RPad: "p", From: romeo}, p: sce.Policy{RequireRPad: true, RequireTo: true}, from: romeo, to: room, err: sce.ErrMissingAffix},
	} {
		err := c.e.Check(c.p, c.from, c.to)
		if c.err == nil {
			if err != nil {
				t.Errorf("%d: unexpected error %v", i, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%d: err = %v, want %v", i, err, c.err)
			continue
		}
		var ae *sce.AffixError
		if errors.As(err, &ae) != (c.affix != "") || (ae != nil && ae.Affix != c.affix) {
			t.Errorf("%d: err = %#v, want AffixError for %q", i, err, c.affix)
		}
	}
	// The fields of AffixError name the bare JIDs.
	err := full.Check(sce.Policy{}, julietRes, juliet)
	var ae *sce.AffixError
	if !errors.As(err, &ae) || *ae != (sce.AffixError{Affix: "from", Want: "juliet@capulet.lit", Got: "romeo@montague.lit"}) {
		t.Errorf("AffixError = %#v", err)
	}
}

// RequireRPad asks for the element, not for its length: XEP-0420 allows
// a 0-length padding, XEP-0384 requires the element.
func TestCheckRPad(t *testing.T) {
	const env = `<envelope xmlns='urn:xmpp:sce:1'><content><body>hi</body></content>`
	for i, c := range []struct {
		in      string
		present bool
	}{
		0: {env + `<rpad/></envelope>`, true},
		1: {env + `<rpad></rpad></envelope>`, true},
		2: {env + `<rpad>x</rpad></envelope>`, true},
		3: {env + `</envelope>`, false},
		4: {env + `<rpad xmlns='urn:other'/></envelope>`, false},
		5: {env + `<padding/></envelope>`, false},
	} {
		e, err := sce.Parse([]byte(c.in))
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		err = e.Check(sce.Policy{RequireRPad: true}, romeo, juliet)
		if c.present {
			if err != nil || !e.HasRPad {
				t.Errorf("%d: HasRPad %v, Check = %v", i, e.HasRPad, err)
			}
			continue
		}
		if !errors.Is(err, sce.ErrMissingAffix) || e.HasRPad {
			t.Errorf("%d: HasRPad %v, Check = %v; want ErrMissingAffix", i, e.HasRPad, err)
		}
		if err := e.Check(sce.Policy{}, romeo, juliet); err != nil {
			t.Errorf("%d: rpad not required: %v", i, err)
		}
	}
	// Hand-built envelopes: a non-empty RPad counts as present.
	for i, c := range []struct {
		e       sce.Envelope
		present bool
	}{
		0: {sce.Envelope{RPad: "x"}, true},
		1: {sce.Envelope{HasRPad: true}, true},
		2: {sce.Envelope{HasRPad: true, RPad: "x"}, true},
		3: {sce.Envelope{}, false},
	} {
		err := c.e.Check(sce.Policy{RequireRPad: true}, romeo, juliet)
		if (err == nil) != c.present {
			t.Errorf("hand-built %d: Check = %v", i, err)
		}
	}
}

// An invalid affix counts as absent, unless the Policy requires the affix
// or is strict; a present affix that contradicts the stanza is always an
// error.
func TestCheckInvalidAffixes(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	const env = `<envelope xmlns='urn:xmpp:sce:1'><content><body>hi</body></content><rpad/>`
	for i, c := range []struct {
		in    string
		p     sce.Policy
		err   error
		affix string // of the *InvalidAffixError, or of the *AffixError for ErrAffixMismatch
	}{
		// The time is only informational: tolerated unless strict.
		0: {in: `<time stamp='garbage'/>`, p: sce.Policy{RequireRPad: true, MaxSkew: time.Minute, Now: clock}},
		1: {in: `<time stamp='garbage'/>`, p: sce.Policy{RequireRPad: true, StrictAffixes: true}, err: sce.ErrInvalidAffix, affix: "time"},
		2: {in: `<time/>`, p: sce.Policy{StrictAffixes: true}, err: sce.ErrInvalidAffix, affix: "time"},
		3: {in: `<time stamp='0001-01-01T00:00:00Z'/>`, p: sce.Policy{StrictAffixes: true}, err: sce.ErrInvalidAffix, affix: "time"},
		// Optional from and to: tolerated unless strict.
		4: {in: `<from jid='@'/><to jid=''/>`, p: sce.Policy{RequireRPad: true}},
		5: {in: `<from jid='@'/>`, p: sce.Policy{StrictAffixes: true}, err: sce.ErrInvalidAffix, affix: "from"},
		6: {in: `<to/>`, p: sce.Policy{StrictAffixes: true}, err: sce.ErrInvalidAffix, affix: "to"},
		// Required ones: an invalid affix does not stand in for them.
		7: {in: `<from jid='@'/><to jid='juliet@capulet.lit'/>`, p: sce.Policy{RequireFrom: true, RequireTo: true}, err: sce.ErrInvalidAffix, affix: "from"},
		8: {in: `<from jid='romeo@montague.lit'/><to jid='@'/>`, p: sce.Policy{RequireTo: true}, err: sce.ErrInvalidAffix, affix: "to"},
		// A valid affix that contradicts the stanza still rejects,
		// whatever else is invalid.
		9:  {in: `<time stamp='garbage'/><from jid='mallory@evil.example'/>`, err: sce.ErrAffixMismatch, affix: "from"},
		10: {in: `<from jid='@'/><to jid='verona@rooms.capulet.lit'/>`, err: sce.ErrAffixMismatch, affix: "to"},
		// Strict, but nothing is invalid.
		11: {in: `<time stamp='2026-11-26T11:59:00Z'/><from jid='romeo@montague.lit'/>`, p: sce.Policy{StrictAffixes: true, RequireRPad: true, MaxSkew: time.Hour, Now: clock}},
	} {
		e, err := sce.Parse([]byte(env + c.in + `</envelope>`))
		if err != nil {
			t.Errorf("%d: Parse: %v", i, err)
			continue
		}
		err = e.Check(c.p, romeoFull, juliet)
		if c.err == nil {
			if err != nil {
				t.Errorf("%d: Check = %v", i, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%d: Check = %v, want %v", i, err, c.err)
			continue
		}
		var ie *sce.InvalidAffixError
		var ae *sce.AffixError
		switch {
		case c.err == sce.ErrInvalidAffix && (!errors.As(err, &ie) || ie.Affix != c.affix):
			t.Errorf("%d: Check = %#v, want an InvalidAffixError for %s", i, err, c.affix)
		case c.err == sce.ErrAffixMismatch && (!errors.As(err, &ae) || ae.Affix != c.affix):
			t.Errorf("%d: Check = %#v, want an AffixError for %s", i, err, c.affix)
		}
	}
}

func readTokens(t *testing.T, r xml.TokenReader) ([]xml.Token, error) {
	t.Helper()
	var toks []xml.Token
	for {
		tok, err := r.Token()
		if err == io.EOF {
			return toks, nil
		}
		if err != nil {
			return toks, err
		}
		toks = append(toks, tok)
	}
}

func TestContentTokens(t *testing.T) {
	e, err := sce.Parse([]byte(`<envelope xmlns='urn:xmpp:sce:1' xmlns:h='urn:example:h'>
	<content>
		<body>hi</body>
		<h:store/>
		<x xmlns='jabber:x:oob' xml:lang='en'><url>u</url></x>
	</content></envelope>`))
	if err != nil {
		t.Fatal(err)
	}
	toks, err := readTokens(t, e.ContentTokens())
	if err != nil {
		t.Fatal(err)
	}
	want := []xml.Token{
		xml.StartElement{Name: xml.Name{Space: "jabber:client", Local: "body"}, Attr: []xml.Attr{}},
		xml.CharData("hi"),
		xml.EndElement{Name: xml.Name{Space: "jabber:client", Local: "body"}},
		xml.StartElement{Name: xml.Name{Space: "urn:example:h", Local: "store"}, Attr: []xml.Attr{}},
		xml.EndElement{Name: xml.Name{Space: "urn:example:h", Local: "store"}},
		xml.StartElement{Name: xml.Name{Space: "jabber:x:oob", Local: "x"}, Attr: []xml.Attr{{Name: xml.Name{Space: "http://www.w3.org/XML/1998/namespace", Local: "lang"}, Value: "en"}}},
		xml.StartElement{Name: xml.Name{Space: "jabber:x:oob", Local: "url"}, Attr: []xml.Attr{}},
		xml.CharData("u"),
		xml.EndElement{Name: xml.Name{Space: "jabber:x:oob", Local: "url"}},
		xml.EndElement{Name: xml.Name{Space: "jabber:x:oob", Local: "x"}},
	}
	if len(toks) != len(want) {
		t.Fatalf("got %d tokens %#v, want %d", len(toks), toks, len(want))
	}
	for i := range want {
		if !tokenEqual(toks[i], want[i]) {
			t.Errorf("token %d = %#v, want %#v", i, toks[i], want[i])
		}
	}

	// Re-injected into a stanza and encoded, every xmlns appears once.
	msg := stanza.Message{From: romeoFull, To: julietRes, ID: "1", Type: stanza.ChatMessage}
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	if _, err := xmlstream.Copy(enc, msg.Wrap(e.ContentTokens())); err != nil {
		t.Fatal(err)
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, s := range []string{`<body xmlns="jabber:client">hi</body>`, `<store xmlns="urn:example:h"></store>`, `<url xmlns="jabber:x:oob">u</url>`, `xml:lang="en"`} {
		if !strings.Contains(out, s) {
			t.Errorf("encoded stanza %s lacks %s", out, s)
		}
	}
	if strings.Contains(out, `xmlns="jabber:client" xmlns="jabber:client"`) || strings.Contains(out, "xmlns=\"jabber:x:oob\" xmlns") {
		t.Errorf("duplicated xmlns in %s", out)
	}
	// And the result is well-formed with the right namespaces.
	var m struct {
		XMLName xml.Name `xml:"message"`
		Body    string   `xml:"jabber:client body"`
		URL     string   `xml:"jabber:x:oob x>url"`
	}
	if err := xml.Unmarshal(buf.Bytes(), &m); err != nil || m.Body != "hi" || m.URL != "u" {
		t.Errorf("Unmarshal(%s) = %+v, %v", out, m, err)
	}

	// Invalid hand-set content surfaces as an error, repeatedly.
	bad := &sce.Envelope{Content: []byte(`<a><b></a>`)}
	r := bad.ContentTokens()
	if _, err := readTokens(t, r); !errors.Is(err, sce.ErrMalformed) {
		t.Errorf("bad content: err = %v", err)
	}
	if _, err := r.Token(); !errors.Is(err, sce.ErrMalformed) {
		t.Errorf("bad content, second read: err = %v", err)
	}
	if toks, err := readTokens(t, (&sce.Envelope{}).ContentTokens()); err != nil || len(toks) != 0 {
		t.Errorf("empty content: %v, %v", toks, err)
	}
}

// Server-processed elements inside <content> are dropped (XEP-0420,
// Business Rules) wherever the sender placed them at the top level, with
// their whole subtree; the same names deeper down, and origin-id, stay.
func TestParseDropsServerProcessed(t *testing.T) {
	e, err := sce.Parse([]byte(`<envelope xmlns='urn:xmpp:sce:1'><content>
		<store xmlns='urn:xmpp:hints'/>
		<body>hi</body>
		<stanza-id xmlns='urn:xmpp:sid:0' id='forged' by='romeo@montague.lit'/>
		<origin-id xmlns='urn:xmpp:sid:0' id='o1'/>
		<addresses xmlns='http://jabber.org/protocol/address'><address type='to' jid='x@y'/></addresses>
		<encryption xmlns='urn:xmpp:eme:0' namespace='urn:xmpp:omemo:2'/>
		<sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message><body>forged</body></message></forwarded></sent>
		<result xmlns='urn:xmpp:mam:2' id='1'><body xmlns='jabber:client'>forged</body></result>
		<x xmlns='urn:example:x'><no-store xmlns='urn:xmpp:hints'/></x>
	</content><rpad>p</rpad></envelope>`))
	if err != nil {
		t.Fatal(err)
	}
	want := `<body xmlns='jabber:client'>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'></origin-id>` +
		`<x xmlns='urn:example:x'><no-store xmlns='urn:xmpp:hints'></no-store></x>`
	if string(e.Content) != want {
		t.Errorf("Content = %s\nwant      %s", e.Content, want)
	}
	var got []string
	for _, n := range e.Dropped {
		got = append(got, n.Space+" "+n.Local)
	}
	wantDropped := []string{"urn:xmpp:hints store", "urn:xmpp:sid:0 stanza-id", "http://jabber.org/protocol/address addresses",
		"urn:xmpp:eme:0 encryption", "urn:xmpp:carbons:2 sent", "urn:xmpp:mam:2 result"}
	if strings.Join(got, ",") != strings.Join(wantDropped, ",") {
		t.Errorf("Dropped = %v, want %v", got, wantDropped)
	}
	toks, err := readTokens(t, e.ContentTokens())
	if err != nil || len(toks) != 9 {
		t.Errorf("content tokens: %d, %v; want 9", len(toks), err)
	}
}

func tokenEqual(a, b xml.Token) bool {
	switch a := a.(type) {
	case xml.StartElement:
		b, ok := b.(xml.StartElement)
		if !ok || a.Name != b.Name || len(a.Attr) != len(b.Attr) {
			return false
		}
		for i := range a.Attr {
			if a.Attr[i] != b.Attr[i] {
				return false
			}
		}
		return true
	case xml.EndElement:
		return a == b
	case xml.CharData:
		b, ok := b.(xml.CharData)
		return ok && bytes.Equal(a, b)
	}
	return false
}

// TestPythonElementTree checks that Python's xml.etree (the parser most
// Python XMPP stacks build on) reads what Marshal produces with the right
// namespaces, text and attributes.
func TestPythonElementTree(t *testing.T) {
	py := oracle.Require(t)
	e, err := sce.New([]byte(`<body>it's 1 &lt; 2 &amp; "ok"
line 2</body><x xmlns='jabber:x:oob'><url>u</url></x><h xmlns='urn:x' xmlns:p='urn:p' p:q='a&apos;b' xml:lang='en'/>`),
		romeoFull, room, time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	script := `
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
S = '{urn:xmpp:sce:1}'
assert root.tag == S + 'envelope', root.tag
content = root.findall(S + 'content')
assert len(content) == 1
kids = list(content[0])
assert [k.tag for k in kids] == ['{jabber:client}body', '{jabber:x:oob}x', '{urn:x}h'], [k.tag for k in kids]
assert kids[0].text == 'it\'s 1 < 2 & "ok"\nline 2', repr(kids[0].text)
assert kids[1].find('{jabber:x:oob}url').text == 'u'
assert kids[2].attrib == {'{urn:p}q': "a'b", '{http://www.w3.org/XML/1998/namespace}lang': 'en'}, kids[2].attrib
assert root.find(S + 'rpad').text == sys.argv[1]
assert root.find(S + 'time').get('stamp') == '2026-11-26T10:00:00Z'
assert root.find(S + 'to').get('jid') == 'verona@rooms.capulet.lit'
assert root.find(S + 'from').get('jid') == 'romeo@montague.lit'
print('ok')
`
	cmd := exec.Command(py, "-c", script, e.RPad)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("python rejected %s: %v\n%s", data, err, out)
	}
}
