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

func equal(a, b *sce.Envelope) bool {
	return bytes.Equal(a.Content, b.Content) && a.RPad == b.RPad &&
		a.Time.Equal(b.Time) && a.To.Equal(b.To) && a.From.Equal(b.From)
}

func TestNewMarshalExact(t *testing.T) {
	// 200 and 255 are rejected, 4 gives a length of 5; then the characters.
	rnd := bytes.NewReader([]byte{200, 255, 4, 0, 1, 2, 3, 63})
	now := time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.FixedZone("CET", 3600))
	e, err := sce.New([]byte(`<body>hi &amp; bye</body>  <x xmlns='jabber:x:oob'><url>https://example.org/</url></x>`), romeoFull, julietRes, now, rnd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	const want = `<envelope xmlns='urn:xmpp:sce:1'><content>` +
		`<body xmlns='jabber:client'>hi &amp; bye</body><x xmlns='jabber:x:oob'><url>https://example.org/</url></x>` +
		`</content><rpad>ABCD_</rpad><time stamp='2026-11-26T09:00:00Z'/>` +
		`<to jid='juliet@capulet.lit'/><from jid='romeo@montague.lit'/></envelope>`
	if string(got) != want {
		t.Errorf("Marshal:\n got %s\nwant %s", got, want)
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
}

func TestNewRPad(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	lengths := map[int]bool{}
	for i := 0; i < 2000; i++ {
		e, err := sce.New([]byte(`<body>x</body>`), romeo, juliet, time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(e.RPad); n < 1 || n > sce.MaxRPad {
			t.Fatalf("rpad length %d", n)
		}
		if strings.Trim(e.RPad, alphabet) != "" {
			t.Fatalf("rpad %q has characters outside the URL-safe alphabet", e.RPad)
		}
		lengths[len(e.RPad)] = true
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
		})
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
	} {
		e, err := sce.Parse([]byte(c.in))
		if err != nil {
			t.Errorf("%d: %v", i, err)
			continue
		}
		if !equal(e, &c.want) {
			t.Errorf("%d:\n got %q %+v\nwant %q %+v", i, e.Content, e, c.want.Content, c.want)
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
		31: {env + `<content/><time/></envelope>`, sce.ErrMalformed},
		32: {env + `<content/><time stamp='yesterday'/></envelope>`, sce.ErrMalformed},
		33: {env + `<content/><to/></envelope>`, sce.ErrMalformed},
		34: {env + `<content/><from jid=''/></envelope>`, sce.ErrMalformed},
		35: {env + `<content/><from jid='@'/></envelope>`, sce.ErrMalformed},
		36: {env + `<content><body></content></envelope>`, sce.ErrMalformed},
		37: {env + `<content/>`, sce.ErrMalformed},
		38: {env + `<content><body xmlns='jabber:client'>&#0;</body></content></envelope>`, sce.ErrMalformed},
		39: {env + "<content/><rpad>\x01</rpad></envelope>", sce.ErrMalformed},
		40: {env + `<content><xml:a/></content></envelope>`, sce.ErrMalformed},
		41: {env + `<content><a xmlns:p=''/></content></envelope>`, sce.ErrMalformed},
		42: {env + `<content><a:b:c xmlns:a='urn:a'/></content></envelope>`, sce.ErrMalformed},
		43: {env + `<content/><time stamp='0001-01-01T00:00:00Z'/></envelope>`, sce.ErrMalformed},
		44: {env + `<content/><time stamp='0000-01-01T00:00:00+01:00'/></envelope>`, sce.ErrMalformed},
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
		`<envelope xmlns='urn:xmpp:sce:1'><content/><time stamp='` + secret + `'/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><a></` + secret + `></content></envelope>`,
	} {
		_, err := sce.Parse([]byte(in))
		if err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("Parse error %v echoes the input", err)
		}
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
