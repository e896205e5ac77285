package sce

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/xmpp/jid"
)

// sameEnvelope compares everything Parse sets.
func sameEnvelope(a, b *Envelope) error {
	switch {
	case !bytes.Equal(a.Content, b.Content):
		return fmt.Errorf("content %q vs %q", a.Content, b.Content)
	case a.RPad != b.RPad || a.HasRPad != b.HasRPad:
		return fmt.Errorf("rpad %q/%v vs %q/%v", a.RPad, a.HasRPad, b.RPad, b.HasRPad)
	case !a.Time.Equal(b.Time) || a.Time.Location() != b.Time.Location():
		return fmt.Errorf("time %v vs %v", a.Time, b.Time)
	case !a.To.Equal(b.To) || a.To.String() != b.To.String():
		return fmt.Errorf("to %v vs %v", a.To, b.To)
	case !a.From.Equal(b.From) || a.From.String() != b.From.String():
		return fmt.Errorf("from %v vs %v", a.From, b.From)
	case !slices.Equal(a.Dropped, b.Dropped):
		return fmt.Errorf("dropped %v vs %v", a.Dropped, b.Dropped)
	case len(a.Invalid) != len(b.Invalid):
		return fmt.Errorf("invalid %v vs %v", a.Invalid, b.Invalid)
	}
	for i := range a.Invalid {
		if *a.Invalid[i] != *b.Invalid[i] {
			return fmt.Errorf("invalid %v vs %v", a.Invalid[i], b.Invalid[i])
		}
	}
	return nil
}

// checkFastPaths fails if a fast path accepts data (as an envelope, or as
// content) and disagrees with the full path.
func checkFastPaths(t *testing.T, data []byte) {
	t.Helper()
	if e, ok := parseCanonical(data); ok {
		full, err := parseFull(data)
		if err != nil {
			t.Fatalf("fast path accepted %q, full path: %v", data, err)
		}
		if err := sameEnvelope(e, full); err != nil {
			t.Fatalf("fast and full paths differ on %q: %v", data, err)
		}
	}
	if isCanonical(data) {
		var b bytes.Buffer
		if err := writeCanonicalFull(&b, data); err != nil {
			t.Fatalf("fast path took %q as canonical content, full path: %v", data, err)
		}
		if !bytes.Equal(b.Bytes(), data) {
			t.Fatalf("content %q is not its own canonical form %q", data, b.Bytes())
		}
	}
}

var fastSeeds = []string{
	"<body xmlns='jabber:client'>hi</body>",
	"<body xmlns='jabber:client'>a &amp; b &lt;c&gt; &#xD;\n\t\"'</body><x xmlns='urn:x'></x>",
	"<body xmlns='jabber:client'>&quot;</body>",
	"<body xmlns='jabber:client'>]]&gt;</body>",
	"<store xmlns='urn:xmpp:hints'></store>",
	"<body xmlns='urn:xmpp:sce:1'>x</body>",
	"<body xmlns=''>x</body>",
	"<body xmlns='jabber:client'>\r</body>",
	"<body xmlns='jabber:client'>\xff</body>",
	"<body xmlns='jabber:client'>\uFFFE</body>",
	"<b-1.x xmlns='u'>é😀</b-1.x>",
	"<body xmlns='jabber:client'><i>x</i></body>",
}

func envelopeOf(content, tail string) string {
	return "<envelope xmlns='urn:xmpp:sce:1'><content>" + content + "</content>" + tail + "</envelope>"
}

var fastTails = []string{
	"",
	"<rpad/>",
	"<rpad></rpad>",
	"<rpad>AZaz09-_</rpad><time stamp='2026-11-26T10:00:00Z'/><to jid='bob@example.org'/><from jid='alice@example.org'/>",
	"<rpad>x</rpad><time stamp='garbage'/><to jid='@'/><from jid='a@b/c'/>",
	"<rpad>x</rpad><from jid='a@b'/><to jid='c@d'/>",
	"<rpad>x y</rpad>",
	"<rpad>&amp;</rpad>",
	"<time stamp='2026-11-26T10:00:00.5+01:00'/>",
	"<to jid='a@b'/><to jid='c@d'/>",
	"<to jid='a&amp;b@c'/>",
	"<to jid='ünï@example.org'/>",
	"<to jid='example.org..'/>",
	"<time stamp='0000-01-01T00:00:00+01:00'/>",
}

func TestFastPathsAgree(t *testing.T) {
	for _, c := range fastSeeds {
		checkFastPaths(t, []byte(c))
		for _, tail := range fastTails {
			checkFastPaths(t, []byte(envelopeOf(c, tail)))
		}
	}
	// The envelopes New writes take the fast paths.
	for _, body := range []string{"", "hi", "a <b> & c\r\n\t'\"", strings.Repeat("é", 300)} {
		content := []byte("<body xmlns='jabber:client'>" + canonicalText(body) + "</body>")
		if !isCanonical(content) {
			t.Errorf("%q: content not recognised as canonical", body)
		}
		e, err := New(content, jid.MustParse("alice@example.org/a"), jid.MustParse("bob@example.org"), time.Now(), nil)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := e.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := parseCanonical(raw); !ok {
			t.Errorf("%q: the envelope New wrote misses the fast path: %q", body, raw)
		}
		checkFastPaths(t, raw)
	}
}

// canonicalText escapes s as the canonical form does.
func canonicalText(s string) string {
	var b bytes.Buffer
	escapeText(&b, s)
	return b.String()
}

func FuzzFastPaths(f *testing.F) {
	for _, c := range fastSeeds {
		f.Add([]byte(c))
		for _, tail := range fastTails {
			f.Add([]byte(envelopeOf(c, tail)))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkFastPaths(t, data)
		// The fast paths never turn an error of the full path into
		// success.
		if _, err := Parse(data); err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTooDeep) {
			t.Fatalf("Parse error %v wraps no sentinel", err)
		}
	})
}

// The JID cache gives what parsing gives, keeps only valid JIDs and stays
// bounded.
func TestJIDCache(t *testing.T) {
	validJIDs = jidCache{}
	attrOf := func(v string) xml.StartElement {
		return xml.StartElement{Name: xml.Name{Space: NS, Local: "to"}, Attr: []xml.Attr{{Name: xml.Name{Local: "jid"}, Value: v}}}
	}
	for range 2 {
		j, bad := parseJIDAttr(attrOf("Bob@Example.ORG/res"))
		if bad != nil || j.String() != "bob@example.org/res" {
			t.Fatalf("got %v, %v", j, bad)
		}
	}
	if _, ok := validJIDs.get("Bob@Example.ORG/res"); !ok {
		t.Fatal("valid JID not cached")
	}
	for range 2 {
		if _, bad := parseJIDAttr(attrOf("example.org..")); bad == nil {
			t.Fatal("invalid JID accepted")
		}
	}
	if _, ok := validJIDs.get("example.org.."); ok {
		t.Fatal("invalid JID cached")
	}
	for i := range 3 * maxCachedJIDs {
		if _, bad := parseJIDAttr(attrOf(fmt.Sprintf("u%d@example.org", i))); bad != nil {
			t.Fatal(bad)
		}
	}
	if n := len(validJIDs.m); n > maxCachedJIDs {
		t.Fatalf("%d cached JIDs, at most %d", n, maxCachedJIDs)
	}
}
