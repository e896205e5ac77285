package bundle

// This file holds small token-level helpers.
// The same helpers exist in the devicelist, bundle and encrypted packages;
// they are kept private to each codec so that none of the packages has to
// export XML plumbing.

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"io"
	"strconv"
	"strings"
)

// tokenStream wraps an xml.TokenReader and normalises the ways a reader may
// signal the end of its input.
type tokenStream struct {
	r   xml.TokenReader
	eof bool
}

// next returns the next token, or io.EOF once the input is exhausted.
// A reader that returns a token together with io.EOF yields the token first.
func (s *tokenStream) next() (xml.Token, error) {
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

// skip consumes the remainder of an element whose start element has just been
// read, including its end element.
// It keeps a depth counter rather than recursing, so deeply nested input
// cannot exhaust the stack.
func (s *tokenStream) skip() error {
	for depth := 1; depth > 0; {
		tok, err := s.next()
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

// text consumes the remainder of an element whose start element has just
// been read and returns its character data (child elements are skipped).
// If the text exceeds max bytes, text still consumes the element but keeps no
// more than max bytes and reports tooLong, so that the caller may refuse or
// skip just this element.
// err is only set for errors of the token stream itself.
func (s *tokenStream) text(max int) (text []byte, tooLong bool, err error) {
	for {
		tok, err := s.next()
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
			if err := s.skip(); err != nil {
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

// isChild reports whether name is the child element local of an element in
// namespace.
// Token streams built in memory (for example with mellium.im/xmlstream) leave
// the namespace of children empty to mean "inherited", so an empty namespace is
// accepted as well.
func isChild(name xml.Name, namespace, local string) bool {
	return name.Local == local && (name.Space == namespace || name.Space == "")
}

// attr returns the value of the unqualified attribute local.
func attr(start xml.StartElement, local string) (string, bool) {
	for _, a := range start.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

var (
	errIDMissing = errors.New("missing")
	errIDSyntax  = errors.New("not a decimal number")
	errIDRange   = errors.New("out of range")
	errIDZero    = errors.New("zero")
)

// parseID parses a non-zero decimal uint32 (xs:unsignedInt, whitespace
// collapsed) without echoing the input in the error.
func parseID(s string, present bool) (uint32, error) {
	if !present {
		return 0, errIDMissing
	}
	s = strings.Trim(s, xmlSpace)
	if s == "" {
		return 0, errIDMissing
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errIDSyntax
		}
	}
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, errIDRange
	}
	if v == 0 {
		return 0, errIDZero
	}
	return uint32(v), nil
}

// xmlSpace holds the XML whitespace characters.
const xmlSpace = " \t\r\n"

// decodeBase64 decodes standard base64, ignoring XML whitespace anywhere in
// the input and tolerating missing padding.
// An empty input decodes to an empty, non-nil slice.
func decodeBase64(text []byte) ([]byte, error) {
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
		return nil, errors.New("truncated base64")
	case 2:
		clean = append(clean, '=', '=')
	case 3:
		clean = append(clean, '=')
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(out, clean)
	if err != nil {
		return nil, errors.New("malformed base64")
	}
	return out[:n], nil
}
