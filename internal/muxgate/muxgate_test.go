package muxgate

import (
	"encoding/xml"
	"errors"
	"strings"
	"testing"
)

var big = Limits{Tokens: 1 << 20, Bytes: 1 << 30}

func matchX(n xml.Name) bool { return n.Space == "urn:x" && n.Local == "x" }

// startOf returns the decoder of raw positioned after its first start
// element, and that element.
func startOf(t testing.TB, raw string) (*xml.Decoder, xml.StartElement) {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(raw))
	for {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("no start element: %v", err)
		}
		if s, ok := tok.(xml.StartElement); ok {
			return d, s
		}
	}
}

func TestRead(t *testing.T) {
	raw := `<m xmlns='jabber:client'><x xmlns='urn:x'><x xmlns='urn:x'/></x><y/><x xmlns='urn:x'/>text</m><after/>`
	d, start := startOf(t, raw)
	toks, n, err := Read(start, d, big, matchX)
	if err != nil || n != 2 {
		t.Fatalf("Read = %d, %v; want 2 top-level matches (the nested one does not count)", n, err)
	}
	if len(toks) != 11 {
		t.Fatalf("%d tokens, want the 11 of the stanza", len(toks))
	}
	if e, ok := toks[len(toks)-1].(xml.EndElement); !ok || e.Name.Local != "m" {
		t.Fatalf("last token %v", toks[len(toks)-1])
	}
	// It stops at the end of the stanza.
	if tok, _ := d.Token(); tok.(xml.StartElement).Name.Local != "after" {
		t.Fatalf("read past the stanza: next is %v", tok)
	}
}

// Read copies every token unless Limits.Shared: then the reader's own
// tokens come back.
func TestReadShared(t *testing.T) {
	raw := `<m><x xmlns='urn:x' a='1'>text</x></m>`
	for _, shared := range []bool{false, true} {
		d, start := startOf(t, raw)
		var seen []xml.Token
		r := readerFunc(func() (xml.Token, error) {
			tok, err := d.Token()
			if tok != nil {
				tok = xml.CopyToken(tok)
				seen = append(seen, tok)
			}
			return tok, err
		})
		lim := big
		lim.Shared = shared
		toks, n, err := Read(start, r, lim, matchX)
		if err != nil || n != 1 || len(toks) != len(seen)+1 {
			t.Fatalf("shared %v: %d tokens, %d matches, %v", shared, len(toks), n, err)
		}
		x := toks[1].(xml.StartElement)
		text := toks[2].(xml.CharData)
		sameAttrs := &x.Attr[0] == &seen[0].(xml.StartElement).Attr[0]
		sameText := &text[0] == &seen[1].(xml.CharData)[0]
		if sameAttrs != shared || sameText != shared {
			t.Fatalf("shared %v: attributes shared %v, text shared %v", shared, sameAttrs, sameText)
		}
	}
}

type readerFunc func() (xml.Token, error)

func (f readerFunc) Token() (xml.Token, error) { return f() }

func TestReadLimits(t *testing.T) {
	raw := `<m>` + strings.Repeat(`<x xmlns='urn:x'>abcdef</x>`, 100) + `</m>`
	for _, lim := range []Limits{{Tokens: 50, Bytes: 1 << 20}, {Tokens: 1 << 20, Bytes: 200}} {
		d, start := startOf(t, raw)
		toks, n, err := Read(start, d, lim, matchX)
		if !errors.Is(err, ErrTooLarge) || toks != nil || n != 100 {
			t.Fatalf("%+v: %d tokens, %d matches, %v; want ErrTooLarge with the exact count", lim, len(toks), n, err)
		}
	}
	d, start := startOf(t, `<m><x xmlns='urn:x'/><x xmlns='urn:x'>`)
	if _, n, err := Read(start, d, big, matchX); !errors.Is(err, ErrMalformed) || n != 2 {
		t.Fatalf("truncated: %d, %v", n, err)
	}
}

func TestGate(t *testing.T) {
	a := xml.StartElement{Name: xml.Name{Space: "jabber:client", Local: "message"}, Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: "1"}}}
	b := a.Copy()
	b.Attr[0].Value = "2"
	var g Gate
	if g.Repeat(a) {
		t.Fatal("a first call counted as a repeat")
	}
	g.Handled(a, 2)
	if !g.Repeat(a) || !g.Repeat(a) {
		t.Fatal("remaining calls not recognised")
	}
	if g.Repeat(a) {
		t.Fatal("more repeats than announced")
	}
	g.Handled(a, 5)
	if g.Repeat(b) {
		t.Fatal("another stanza counted as a repeat")
	}
	if g.Repeat(a) {
		t.Fatal("a stale count survived another stanza")
	}
}

// FuzzRead checks Read against encoding/xml on arbitrary input: the count
// of matching top-level children, tokens only within the limits, never a
// panic.
func FuzzRead(f *testing.F) {
	f.Add(`<m><x xmlns='urn:x'/><x xmlns='urn:x'><x xmlns='urn:x'/></x></m>`, 10, 100)
	f.Add(`<m><x xmlns='urn:x'>`+strings.Repeat("a", 300)+`</x></m>`, 100, 50)
	f.Add(`<m><x xmlns='urn:x'/>`, 100, 100)
	f.Fuzz(func(t *testing.T, raw string, maxTokens, maxBytes int) {
		d := xml.NewDecoder(strings.NewReader(raw))
		var start xml.StartElement
		for {
			tok, err := d.Token()
			if err != nil {
				return
			}
			if s, ok := tok.(xml.StartElement); ok {
				start = s.Copy()
				break
			}
		}
		lim := Limits{Tokens: maxTokens, Bytes: maxBytes}
		toks, n, err := Read(start, d, lim, matchX)
		if n < 0 {
			t.Fatalf("negative count %d", n)
		}
		if err != nil {
			if toks != nil {
				t.Fatal("tokens returned with an error")
			}
			if !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if len(toks) > max(maxTokens, 0)+1 {
			t.Fatalf("%d tokens beyond the limit %d", len(toks), maxTokens)
		}
		// Independent count over the tokens.
		depth, want := 0, 0
		for _, tok := range toks {
			switch tt := tok.(type) {
			case xml.StartElement:
				if depth == 1 && matchX(tt.Name) {
					want++
				}
				depth++
			case xml.EndElement:
				depth--
			}
		}
		if depth != 0 || want != n {
			t.Fatalf("count %d, tokens say %d (depth %d)", n, want, depth)
		}
	})
}
