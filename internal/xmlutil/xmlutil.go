// Package xmlutil holds the token-level helpers shared by the XML codecs
// devicelist, bundle and encrypted.
//
// Every helper is written for untrusted input: none of them panics, none
// recurses on the depth of the input, text is bounded by the caller, and the
// errors never echo the input.
// The errors are sentinels of this package; the codecs wrap them in their own
// public sentinels (for example devicelist.ErrInvalidID) with fmt.Errorf and
// %w, so that both remain reachable through errors.Is.
package xmlutil // import "mellium.im/omemo/internal/xmlutil"

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Errors returned by ParseID.
// They carry no part of the input.
var (
	ErrIDMissing = errors.New("missing")
	ErrIDSyntax  = errors.New("not a decimal number")
	ErrIDRange   = errors.New("out of range")
	ErrIDZero    = errors.New("zero")
)

// Errors returned by DecodeBase64.
// They carry no part of the input.
var (
	ErrBase64Truncated = errors.New("truncated base64")
	ErrBase64Malformed = errors.New("malformed base64")
)

// ErrEndElement is returned by FirstStart when an end element comes before
// any start element.
var ErrEndElement = errors.New("found an end element")

// Space holds the XML whitespace characters (the production S of XML 1.0).
const Space = " \t\r\n"

// TokenStream wraps an xml.TokenReader and normalises the ways a reader may
// signal the end of its input.
// Once the end has been seen, it never calls the underlying reader again.
type TokenStream struct {
	r   xml.TokenReader
	eof bool
}

// NewTokenStream returns a TokenStream reading from r.
func NewTokenStream(r xml.TokenReader) *TokenStream {
	return &TokenStream{r: r}
}

// Next returns the next token, or io.EOF once the input is exhausted.
// A reader that returns a token together with io.EOF yields the token first;
// a reader that returns a nil token with a nil error is treated as exhausted.
// Other errors of the reader are returned unchanged.
func (s *TokenStream) Next() (xml.Token, error) {
	if s.eof {
		return nil, io.EOF
	}
	tok, err := s.r.Token()
	switch {
	case errors.Is(err, io.EOF):
		s.eof = true
		if tok == nil {
			return nil, io.EOF
		}
		return tok, nil
	case err != nil:
		return nil, err
	case tok == nil:
		s.eof = true
		return nil, io.EOF
	}
	return tok, nil
}

// DecodeFirst reads r up to its first start element and hands it to parse:
// the Decode of every codec package. An end element first yields
// wrongElement; other errors are prefixed with pkg ("bundle: …").
func DecodeFirst[T any](r xml.TokenReader, pkg string, wrongElement error, parse func(*TokenStream, xml.StartElement) (*T, error)) (*T, error) {
	s := NewTokenStream(r)
	start, err := s.FirstStart()
	switch {
	case errors.Is(err, ErrEndElement):
		return nil, fmt.Errorf("%w: found an end element", wrongElement)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", pkg, err)
	}
	return parse(s, start)
}

// FirstStart reads up to and including the first start element and returns
// it; the tokens before it (a procinst, comments, whitespace) are dropped.
// An end element before any start element is ErrEndElement, the end of input
// is io.ErrUnexpectedEOF, and other errors of the reader are returned
// unchanged.
func (s *TokenStream) FirstStart() (xml.StartElement, error) {
	for {
		tok, err := s.Next()
		if err == io.EOF {
			return xml.StartElement{}, io.ErrUnexpectedEOF
		}
		if err != nil {
			return xml.StartElement{}, err
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			return tok, nil
		case xml.EndElement:
			return xml.StartElement{}, ErrEndElement
		}
	}
}

// Skip consumes the remainder of an element whose start element has just been
// read, including its end element.
// It keeps a depth counter rather than recursing, so deeply nested input
// cannot exhaust the stack.
// The end of input before the end element is io.ErrUnexpectedEOF.
func (s *TokenStream) Skip() error {
	for depth := 1; depth > 0; {
		tok, err := s.Next()
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		}
	}
	return nil
}

// Text consumes the remainder of an element whose start element has just
// been read and returns its character data (child elements are skipped).
// If the text exceeds max bytes, Text still consumes the element but keeps no
// more than max bytes in memory and reports tooLong (with a nil text), so
// that the caller may refuse or skip just this element.
// err is only set for errors of the token stream itself; the end of input
// before the end element is io.ErrUnexpectedEOF.
func (s *TokenStream) Text(max int) (text []byte, tooLong bool, err error) {
	for {
		tok, err := s.Next()
		if err == io.EOF {
			return nil, false, io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, false, err
		}
		switch tok := tok.(type) {
		case xml.CharData:
			if tooLong || len(text)+len(tok) > max {
				tooLong = true
				continue
			}
			text = append(text, tok...)
		case xml.StartElement:
			if err := s.Skip(); err != nil {
				return nil, false, err
			}
		case xml.EndElement:
			if tooLong {
				return nil, true, nil
			}
			return text, false, nil
		}
	}
}

// IsChild reports whether name is the child element local of an element in
// namespace.
// Token streams built in memory (for example with mellium.im/xmlstream) leave
// the namespace of children empty to mean "inherited", so an empty namespace is
// accepted as well.
func IsChild(name xml.Name, namespace, local string) bool {
	return name.Local == local && (name.Space == namespace || name.Space == "")
}

// Attr returns the value of the unqualified attribute local and whether it
// is present.
// Attributes in a namespace never match.
func Attr(start xml.StartElement, local string) (string, bool) {
	for _, a := range start.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

// ParseKeyID is ParseID for the ids of pre keys and signed pre keys, which
// may be zero: libsignal-style clients (converse.js, through libomemo.js)
// number them from 0, and XEP-0384 only says they are unsigned integers.
// Device ids stay non-zero.
func ParseKeyID(s string, present bool) (uint32, error) {
	id, err := ParseID(s, present)
	if errors.Is(err, ErrIDZero) {
		return 0, nil
	}
	return id, err
}

// ParseID parses a non-zero decimal uint32 (xs:unsignedInt, whitespace
// collapsed), as used for OMEMO device ids.
// present tells whether the attribute holding s exists at all.
// Signs, other bases and anything but ASCII digits are refused.
// The error is one of ErrIDMissing, ErrIDSyntax, ErrIDRange and ErrIDZero and
// never echoes the input.
func ParseID(s string, present bool) (uint32, error) {
	if !present {
		return 0, ErrIDMissing
	}
	s = strings.Trim(s, Space)
	if s == "" {
		return 0, ErrIDMissing
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrIDSyntax
		}
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, ErrIDRange
	}
	if v == 0 {
		return 0, ErrIDZero
	}
	return uint32(v), nil
}

// DecodeBase64 decodes standard base64, ignoring XML whitespace anywhere in
// the input and tolerating missing padding.
// The URL-safe alphabet, other characters and misplaced padding are refused
// with ErrBase64Malformed; a length that cannot be completed by padding is
// ErrBase64Truncated.
// An empty input decodes to an empty, non-nil slice.
// The input is not modified and the error never echoes it.
func DecodeBase64(text []byte) ([]byte, error) {
	if len(text)%4 == 0 && !bytes.ContainsAny(text, " \t\r\n") {
		// Nothing to clean (what senders write): decode in place.
		out := make([]byte, base64.StdEncoding.DecodedLen(len(text)))
		n, err := base64.StdEncoding.Decode(out, text)
		if err != nil {
			return nil, ErrBase64Malformed
		}
		return out[:n], nil
	}
	clean := make([]byte, 0, len(text)+2)
	for _, c := range text {
		switch c {
		case ' ', '\t', '\r', '\n':
		default:
			clean = append(clean, c)
		}
	}
	switch len(clean) % 4 {
	case 1:
		return nil, ErrBase64Truncated
	case 2:
		clean = append(clean, '=', '=')
	case 3:
		clean = append(clean, '=')
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		return nil, ErrBase64Malformed
	}
	return out[:n], nil
}

// ValidString reports whether s is valid UTF-8 consisting only of
// characters that XML 1.0 can carry.
// encoding/xml would silently replace anything else with U+FFFD, so an
// encoder must refuse such strings to keep what it writes equal to what a
// peer reads.
func ValidString(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		switch {
		case r == '\t' || r == '\n' || r == '\r':
		case r < 0x20, r == 0xFFFE, r == 0xFFFF:
			return false
		}
	}
	return true
}
