package xmlutil

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	tests := []struct {
		in      string
		present bool
		want    uint32
		err     error
	}{
		{in: "1", present: true, want: 1},
		{in: "4294967295", present: true, want: 4294967295},
		{in: " \t\r\n42\n ", present: true, want: 42},
		{in: "007", present: true, want: 7},
		{in: "", present: false, err: ErrIDMissing},
		{in: "12", present: false, err: ErrIDMissing},
		{in: "", present: true, err: ErrIDMissing},
		{in: " \t\r\n", present: true, err: ErrIDMissing},
		{in: "0", present: true, err: ErrIDZero},
		{in: "000", present: true, err: ErrIDZero},
		{in: "4294967296", present: true, err: ErrIDRange},
		{in: "99999999999999999999999", present: true, err: ErrIDRange},
		{in: "+1", present: true, err: ErrIDSyntax},
		{in: "-1", present: true, err: ErrIDSyntax},
		{in: "0x10", present: true, err: ErrIDSyntax},
		{in: "1 2", present: true, err: ErrIDSyntax},
		{in: "1_000", present: true, err: ErrIDSyntax},
		{in: "\u00a012", present: true, err: ErrIDSyntax}, // NBSP is not XML whitespace
		{in: "١٢", present: true, err: ErrIDSyntax},       // non-ASCII digits
		{in: "\v12", present: true, err: ErrIDSyntax},
	}
	for _, tc := range tests {
		got, err := ParseID(tc.in, tc.present)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("ParseID(%q, %t): err = %v, want %v", tc.in, tc.present, err, tc.err)
			}
			if got != 0 {
				t.Errorf("ParseID(%q, %t) = %d on error, want 0", tc.in, tc.present, got)
			}
			if in := strings.Trim(tc.in, Space); len(in) > 1 && strings.Contains(err.Error(), in) {
				t.Errorf("ParseID(%q): error %q echoes the input", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseID(%q, %t) = %d, %v; want %d, nil", tc.in, tc.present, got, err, tc.want)
		}
	}
}

func TestDecodeBase64(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  error
	}{
		{in: "", want: ""},
		{in: " \n\t\r ", want: ""},
		{in: "YQ==", want: "a"},
		{in: "YQ", want: "a"}, // missing padding
		{in: "YWI=", want: "ab"},
		{in: "YWI", want: "ab"}, // missing padding
		{in: "YWJj", want: "abc"},
		{in: " Y W\nJ\tj\r\n", want: "abc"},        // whitespace anywhere
		{in: "YW\nI", want: "ab"},                  // whitespace and missing padding
		{in: "AAEC/w==", want: "\x00\x01\x02\xff"}, // standard alphabet
		{in: "Y", err: ErrBase64Truncated},
		{in: "YWJjZ", err: ErrBase64Truncated},
		{in: "AAEC_w==", err: ErrBase64Malformed}, // URL alphabet
		{in: "AAEC-w==", err: ErrBase64Malformed}, // URL alphabet
		{in: "Y=Q=", err: ErrBase64Malformed},     // misplaced padding
		{in: "YQ===", err: ErrBase64Truncated},    // extra padding, length 5
		{in: "Y===", err: ErrBase64Malformed},     // too much padding     // extra padding
		{in: "YQ==YQ==", err: ErrBase64Malformed}, // padding in the middle
		{in: "YQ\v==", err: ErrBase64Truncated},   // \v is not XML whitespace
		{in: "YQ\u00a0", err: ErrBase64Malformed}, // NBSP is not XML whitespace
		{in: "secret!!", err: ErrBase64Malformed},
	}
	for _, tc := range tests {
		in := []byte(tc.in)
		got, err := DecodeBase64(in)
		if string(in) != tc.in {
			t.Errorf("DecodeBase64(%q) modified its input to %q", tc.in, in)
		}
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("DecodeBase64(%q): err = %v, want %v", tc.in, err, tc.err)
			}
			if got != nil {
				t.Errorf("DecodeBase64(%q) = %x on error, want nil", tc.in, got)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("DecodeBase64(%q): error %q echoes the input", tc.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("DecodeBase64(%q): unexpected error %v", tc.in, err)
			continue
		}
		if got == nil {
			t.Errorf("DecodeBase64(%q) = nil, want non-nil", tc.in)
		}
		if !bytes.Equal(got, []byte(tc.want)) {
			t.Errorf("DecodeBase64(%q) = %x, want %x", tc.in, got, tc.want)
		}
	}
}

// stream returns a TokenStream over s, positioned after the first start
// element.
func stream(t *testing.T, s string) *TokenStream {
	t.Helper()
	ts := NewTokenStream(xml.NewDecoder(strings.NewReader(s)))
	for {
		tok, err := ts.Next()
		if err != nil {
			t.Fatalf("no start element in %q: %v", s, err)
		}
		if _, ok := tok.(xml.StartElement); ok {
			return ts
		}
	}
}

// rest returns the local names of the start elements left in ts.
func rest(t *testing.T, ts *TokenStream) []string {
	t.Helper()
	var names []string
	for {
		tok, err := ts.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if start, ok := tok.(xml.StartElement); ok {
			names = append(names, start.Name.Local)
		}
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		max     int
		want    string
		tooLong bool
	}{
		{name: "empty", in: "<a></a><next/>", max: 4, want: ""},
		{name: "exact limit", in: "<a>abcd</a><next/>", max: 4, want: "abcd"},
		{name: "over limit", in: "<a>abcde</a><next/>", max: 4, tooLong: true},
		{name: "over limit in pieces", in: "<a>ab<!--c-->cd<![CDATA[e]]></a><next/>", max: 4, tooLong: true},
		{name: "pieces within limit", in: "<a>ab<!--c-->c<![CDATA[d]]></a><next/>", max: 4, want: "abcd"},
		{name: "children skipped", in: "<a>ab<b>xyz<c>uvw</c></b>cd</a><next/>", max: 4, want: "abcd"},
		{name: "zero limit", in: "<a>x</a><next/>", max: 0, tooLong: true},
		{name: "entities", in: "<a>&lt;&amp;</a><next/>", max: 2, want: "<&"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := stream(t, "<root>"+tc.in+"</root>")
			if _, err := ts.Next(); err != nil { // <a>
				t.Fatal(err)
			}
			text, tooLong, err := ts.Text(tc.max)
			if err != nil {
				t.Fatalf("Text: %v", err)
			}
			if tooLong != tc.tooLong {
				t.Errorf("tooLong = %t, want %t", tooLong, tc.tooLong)
			}
			if tooLong && text != nil {
				t.Errorf("text = %q with tooLong, want nil", text)
			}
			if !tooLong && string(text) != tc.want {
				t.Errorf("text = %q, want %q", text, tc.want)
			}
			// The element is consumed completely, also when too long.
			if got := rest(t, ts); len(got) != 1 || got[0] != "next" {
				t.Errorf("after Text the stream continues with %v, want [next]", got)
			}
		})
	}
}

func TestTextUnexpectedEOF(t *testing.T) {
	for _, in := range []string{"<a>abc", "<a>abc<b>", "<a>abcdefgh"} {
		ts := NewTokenStream(&sliceReader{toks: tokens(t, in)})
		if _, err := ts.Next(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ts.Text(4); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Text on %q: err = %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
}

func TestSkip(t *testing.T) {
	ts := stream(t, "<root><a x='1'>t<b><c/><d>u</d></b><a/></a><next/></root>")
	if _, err := ts.Next(); err != nil { // <a>
		t.Fatal(err)
	}
	if err := ts.Skip(); err != nil {
		t.Fatalf("Skip: %v", err)
	}
	if got := rest(t, ts); len(got) != 1 || got[0] != "next" {
		t.Errorf("after Skip the stream continues with %v, want [next]", got)
	}
}

func TestSkipDeep(t *testing.T) {
	// Skip keeps a counter instead of recursing; a deep input must neither
	// exhaust the stack nor confuse the depth.
	const depth = 100000
	toks := make([]xml.Token, 0, 2*depth+1)
	for range depth {
		toks = append(toks, xml.StartElement{Name: xml.Name{Local: "x"}})
	}
	for range depth {
		toks = append(toks, xml.EndElement{Name: xml.Name{Local: "x"}})
	}
	toks = append(toks, xml.StartElement{Name: xml.Name{Local: "next"}})
	ts := NewTokenStream(&sliceReader{toks: toks})
	if _, err := ts.Next(); err != nil {
		t.Fatal(err)
	}
	if err := ts.Skip(); err != nil {
		t.Fatalf("Skip: %v", err)
	}
	if got := rest(t, ts); len(got) != 1 || got[0] != "next" {
		t.Errorf("after Skip the stream continues with %v, want [next]", got)
	}
}

func TestSkipUnexpectedEOF(t *testing.T) {
	for _, in := range []string{"<a>", "<a><b></b>", "<a><b>text"} {
		ts := NewTokenStream(&sliceReader{toks: tokens(t, in)})
		if _, err := ts.Next(); err != nil {
			t.Fatal(err)
		}
		if err := ts.Skip(); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Skip on %q: err = %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
}

func TestSkipReaderError(t *testing.T) {
	errBoom := errors.New("boom")
	ts := NewTokenStream(&sliceReader{
		toks: []xml.Token{xml.StartElement{Name: xml.Name{Local: "a"}}},
		err:  errBoom,
	})
	if _, err := ts.Next(); err != nil {
		t.Fatal(err)
	}
	if err := ts.Skip(); !errors.Is(err, errBoom) {
		t.Errorf("Skip: err = %v, want %v", err, errBoom)
	}
}

func TestNextEOFConventions(t *testing.T) {
	start := xml.StartElement{Name: xml.Name{Local: "a"}}

	// A token returned together with io.EOF is delivered first.
	r := &eofWithToken{tok: start}
	ts := NewTokenStream(r)
	tok, err := ts.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if s, ok := tok.(xml.StartElement); !ok || s.Name.Local != "a" {
		t.Errorf("Next = %#v, want <a>", tok)
	}
	for range 2 {
		if _, err := ts.Next(); err != io.EOF {
			t.Errorf("Next after end: err = %v, want io.EOF", err)
		}
	}
	if r.calls != 1 {
		t.Errorf("underlying reader called %d times, want 1", r.calls)
	}

	// A nil token with a nil error ends the input.
	ts = NewTokenStream(nilReader{})
	if tok, err := ts.Next(); tok != nil || err != io.EOF {
		t.Errorf("Next on nil, nil = %v, %v; want nil, io.EOF", tok, err)
	}

	// A wrapped io.EOF also ends the input.
	ts = NewTokenStream(&sliceReader{err: wrappedEOF{}})
	if tok, err := ts.Next(); tok != nil || err != io.EOF {
		t.Errorf("Next on wrapped EOF = %v, %v; want nil, io.EOF", tok, err)
	}
}

func TestIsChild(t *testing.T) {
	const ns = "urn:example"
	tests := []struct {
		name xml.Name
		want bool
	}{
		{xml.Name{Space: ns, Local: "key"}, true},
		{xml.Name{Space: "", Local: "key"}, true},
		{xml.Name{Space: "urn:other", Local: "key"}, false},
		{xml.Name{Space: ns, Local: "keys"}, false},
		{xml.Name{Space: ns, Local: "Key"}, false},
	}
	for _, tc := range tests {
		if got := IsChild(tc.name, ns, "key"); got != tc.want {
			t.Errorf("IsChild(%v) = %t, want %t", tc.name, got, tc.want)
		}
	}
}

func TestAttr(t *testing.T) {
	start := xml.StartElement{Attr: []xml.Attr{
		{Name: xml.Name{Space: "urn:x", Local: "id"}, Value: "namespaced"},
		{Name: xml.Name{Local: "id"}, Value: "plain"},
		{Name: xml.Name{Local: "id"}, Value: "second"},
		{Name: xml.Name{Local: "empty"}, Value: ""},
	}}
	if v, ok := Attr(start, "id"); !ok || v != "plain" {
		t.Errorf(`Attr("id") = %q, %t; want "plain", true`, v, ok)
	}
	if v, ok := Attr(start, "empty"); !ok || v != "" {
		t.Errorf(`Attr("empty") = %q, %t; want "", true`, v, ok)
	}
	if v, ok := Attr(start, "absent"); ok || v != "" {
		t.Errorf(`Attr("absent") = %q, %t; want "", false`, v, ok)
	}
	onlyNS := xml.StartElement{Attr: start.Attr[:1]}
	if _, ok := Attr(onlyNS, "id"); ok {
		t.Error("Attr matched an attribute in a namespace")
	}
}

func TestValidString(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"", true},
		{"user@example.org/res", true},
		{"tab\tnl\ncr\r", true},
		{"Ünïcödé ☃ 𝄞", true},
		{"\uFFFD", true},
		{"\uE000\uFFFC", true},
		{"a\x00b", false},
		{"\x1f", false},
		{"\x0b", false},
		{"\uFFFE", false},
		{"\uFFFF", false},
		{"\xff", false},
		{"\xed\xa0\x80", false}, // encoded surrogate
		{"abc\xc3", false},      // truncated sequence
	}
	for _, tc := range tests {
		if got := ValidString(tc.in); got != tc.want {
			t.Errorf("ValidString(%q) = %t, want %t", tc.in, got, tc.want)
		}
	}
}

// tokens returns the tokens of the (possibly incomplete) document s, up to
// the first error.
func tokens(t *testing.T, s string) []xml.Token {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(s))
	var toks []xml.Token
	for {
		tok, err := d.RawToken()
		if err != nil {
			return toks
		}
		toks = append(toks, xml.CopyToken(tok))
	}
}

// sliceReader yields toks and then err (io.EOF if nil).
type sliceReader struct {
	toks []xml.Token
	err  error
}

func (r *sliceReader) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		if r.err != nil {
			return nil, r.err
		}
		return nil, io.EOF
	}
	tok := r.toks[0]
	r.toks = r.toks[1:]
	return tok, nil
}

// eofWithToken returns its token together with io.EOF, then io.EOF.
type eofWithToken struct {
	tok   xml.Token
	calls int
}

func (r *eofWithToken) Token() (xml.Token, error) {
	r.calls++
	tok := r.tok
	r.tok = nil
	return tok, io.EOF
}

// nilReader returns nil, nil.
type nilReader struct{}

func (nilReader) Token() (xml.Token, error) { return nil, nil }

type wrappedEOF struct{}

func (wrappedEOF) Error() string { return "wrapped: EOF" }
func (wrappedEOF) Unwrap() error { return io.EOF }

func TestFirstStart(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name string
		toks []xml.Token
		err  error // reader error after toks
		want string
		werr error
	}{
		{
			name: "prolog skipped",
			toks: []xml.Token{
				xml.ProcInst{Target: "xml", Inst: []byte("version='1.0'")},
				xml.Comment("c"), xml.CharData("\n "), xml.Directive("x"),
				xml.StartElement{Name: xml.Name{Local: "list"}},
			},
			want: "list",
		},
		{name: "empty", werr: io.ErrUnexpectedEOF},
		{name: "only prolog", toks: []xml.Token{xml.Comment("c")}, werr: io.ErrUnexpectedEOF},
		{
			name: "end element first",
			toks: []xml.Token{xml.CharData(" "), xml.EndElement{Name: xml.Name{Local: "a"}}},
			werr: ErrEndElement,
		},
		{name: "reader error", toks: []xml.Token{xml.Comment("c")}, err: errBoom, werr: errBoom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := NewTokenStream(&sliceReader{toks: tc.toks, err: tc.err})
			start, err := ts.FirstStart()
			if tc.werr != nil {
				if !errors.Is(err, tc.werr) {
					t.Errorf("err = %v, want %v", err, tc.werr)
				}
				return
			}
			if err != nil || start.Name.Local != tc.want {
				t.Errorf("FirstStart = %v, %v; want <%s>", start.Name, err, tc.want)
			}
		})
	}
}

// Input without whitespace and of a length that needs no padding is
// decoded without the cleaning copy: the result is what the cleaning path
// (taken here because of the added whitespace) gives.
func TestDecodeBase64FastPath(t *testing.T) {
	for _, in := range []string{"", "YWJj", "YQ==", "AAEC/w==", "Y=Q=", "AAEC_w==", "YWJjZA==", "====", "YQ=a", "////", "YWJjZ==="} {
		fast, ferr := DecodeBase64([]byte(in))
		slow, serr := DecodeBase64([]byte(" " + in))
		if string(fast) != string(slow) || ferr != serr || (fast == nil) != (slow == nil) {
			t.Errorf("%q: fast %q, %v; full %q, %v", in, fast, ferr, slow, serr)
		}
	}
}
