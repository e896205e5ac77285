package sce

import (
	"bytes"
	"encoding/xml"
	"unicode/utf8"
)

// Fast paths. Every message of a conversation goes through New and Marshal
// on the sending side and Parse on the receiving side, and nearly all of
// them are in the form this package writes: a <body> (or a few simple
// elements) in canonical form, the affixes in Marshal's order, no
// whitespace. For exactly that form the work of the XML decoder is not
// needed: the functions below recognise it byte by byte and produce what
// the full path would; anything else, however slightly different, is left
// to the full path (they never reject). FuzzParse and FuzzFastPaths check
// that both paths agree on every input the fast ones accept.

// scanSimple returns the length of the longest prefix of b made of simple
// canonical elements, each
//
//	<name xmlns='namespace'>text</name>
//
// with a name of ASCII letters, digits, '_', '.' and '-' (not starting with
// a digit, '.' or '-'), a namespace of printable ASCII without quotes, '&',
// '<' and '>' that is neither empty, the SCE namespace nor a reserved one,
// and text of XML characters without '<', '>' and CR, in which '&' only
// starts &amp;, &lt;, &gt; or &#xD;. Such elements are their own canonical
// form (see Envelope.Content): decoding and writing them again gives the
// same bytes. With parse, elements that Parse drops (ServerProcessed) end
// the prefix too. It stops at the first byte that does not begin such an
// element.
func scanSimple(b []byte, parse bool) int {
	n := 0
	for n < len(b) {
		m := simpleElement(b[n:], parse)
		if m == 0 {
			break
		}
		n += m
	}
	return n
}

// simpleElement returns the length of the simple element b starts with,
// 0 if it does not start with one.
func simpleElement(b []byte, parse bool) int {
	if len(b) == 0 || b[0] != '<' {
		return 0
	}
	i := 1
	nameStart := i
	for i < len(b) && isNameByte(b[i], i == nameStart) {
		i++
	}
	name := b[nameStart:i]
	if len(name) == 0 {
		return 0
	}
	const xmlnsOpen = " xmlns='"
	if !bytes.HasPrefix(b[i:], []byte(xmlnsOpen)) {
		return 0
	}
	i += len(xmlnsOpen)
	nsStart := i
	for i < len(b) && isNSByte(b[i]) {
		i++
	}
	space := b[nsStart:i]
	if i+2 > len(b) || b[i] != '\'' || b[i+1] != '>' || len(space) == 0 {
		return 0
	}
	switch string(space) {
	case NS, xmlURL, xmlnsURL:
		return 0
	}
	if parse && ServerProcessed(xml.Name{Space: string(space), Local: string(name)}) {
		return 0
	}
	i += 2
	t := simpleText(b[i:])
	i += t
	// </name>
	if i+3+len(name) > len(b) || b[i] != '<' || b[i+1] != '/' || !bytes.Equal(b[i+2:i+2+len(name)], name) || b[i+2+len(name)] != '>' {
		return 0
	}
	return i + 3 + len(name)
}

// simpleText returns the length of the text b starts with: XML characters
// (valid UTF-8) other than '<', '>' and CR, '&' only in the four canonical
// escapes. It stops before the first byte that does not belong.
func simpleText(b []byte) int {
	i := 0
	for i < len(b) {
		c := b[i]
		switch {
		case c == '<' || c == '>' || c == '\r':
			return i
		case c == '&':
			m := canonicalEscape(b[i:])
			if m == 0 {
				return i
			}
			i += m
		case c < utf8.RuneSelf:
			if c < 0x20 && c != '\t' && c != '\n' {
				return i
			}
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 || !isXMLChar(r) {
				return i
			}
			i += size
		}
	}
	return i
}

// canonicalEscape returns the length of the canonical escape b starts
// with, 0 if none.
func canonicalEscape(b []byte) int {
	for _, e := range [...]string{"&amp;", "&lt;", "&gt;", "&#xD;"} {
		if bytes.HasPrefix(b, []byte(e)) {
			return len(e)
		}
	}
	return 0
}

func isXMLChar(r rune) bool {
	switch {
	case r == 0x9 || r == 0xA || r == 0xD:
	case r >= 0x20 && r <= 0xD7FF:
	case r >= 0xE000 && r <= 0xFFFD:
	case r >= 0x10000 && r <= 0x10FFFF:
	default:
		return false
	}
	return true
}

func isNameByte(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		return true
	case c >= '0' && c <= '9', c == '.', c == '-':
		return !first
	}
	return false
}

// isNSByte reports whether c may appear in a namespace the fast path
// accepts (it needs no escaping in a single quoted attribute).
func isNSByte(c byte) bool {
	return c > ' ' && c < 0x7f && c != '\'' && c != '"' && c != '&' && c != '<' && c != '>'
}

// isCanonical reports whether content is a sequence of simple canonical
// elements (see scanSimple), and so its own canonical form.
func isCanonical(content []byte) bool {
	return scanSimple(content, false) == len(content)
}

// attrValue reads a single quoted attribute value that needs no
// unescaping (no '&', '<', quotes, or whitespace that attribute value
// normalisation changes) from b and returns it with the length read up to
// and including the closing quote; ok is false if b does not start so.
func attrValue(b []byte) (v string, n int, ok bool) {
	i := 0
	for i < len(b) && b[i] != '\'' {
		switch c := b[i]; {
		case c == '&' || c == '<' || c == '"' || c < 0x20:
			return "", 0, false
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 || !isXMLChar(r) {
				return "", 0, false
			}
			i += size
		}
	}
	if i == len(b) {
		return "", 0, false
	}
	return string(b[:i]), i + 1, true
}

// parseCanonical decodes an envelope in the exact form Marshal writes,
// with simple content and an rpad of padding characters; ok is false for
// anything else (Parse then takes the full path). The result is what
// Parse returns for the same input.
func parseCanonical(data []byte) (*Envelope, bool) {
	const head = `<envelope xmlns='` + NS + `'><content>`
	if !bytes.HasPrefix(data, []byte(head)) {
		return nil, false
	}
	b := data[len(head):]
	n := scanSimple(b, true)
	content := b[:n]
	b = b[n:]
	if !bytes.HasPrefix(b, []byte("</content>")) {
		return nil, false
	}
	b = b[len("</content>"):]
	e := &Envelope{}
	if n > 0 {
		e.Content = bytes.Clone(content)
	}
	switch {
	case bytes.HasPrefix(b, []byte("<rpad/>")):
		e.HasRPad = true
		b = b[len("<rpad/>"):]
	case bytes.HasPrefix(b, []byte("<rpad>")):
		b = b[len("<rpad>"):]
		i := 0
		for i < len(b) && isPadByte(b[i]) {
			i++
		}
		if !bytes.HasPrefix(b[i:], []byte("</rpad>")) {
			return nil, false
		}
		e.RPad, e.HasRPad = string(b[:i]), true
		b = b[i+len("</rpad>"):]
	}
	// The affixes with one attribute, in Marshal's order.
	for _, affix := range [...]struct{ name, attr string }{{"time", "stamp"}, {"to", "jid"}, {"from", "jid"}} {
		open := "<" + affix.name + " " + affix.attr + "='"
		if !bytes.HasPrefix(b, []byte(open)) {
			continue
		}
		v, m, ok := attrValue(b[len(open):])
		if !ok || !bytes.HasPrefix(b[len(open)+m:], []byte("/>")) {
			return nil, false
		}
		b = b[len(open)+m+2:]
		t := xml.StartElement{Name: xml.Name{Space: NS, Local: affix.name}, Attr: []xml.Attr{{Name: xml.Name{Local: affix.attr}, Value: v}}}
		var bad *InvalidAffixError
		switch affix.name {
		case "time":
			e.Time, bad = parseStamp(t)
		case "to":
			e.To, bad = parseJIDAttr(t)
		case "from":
			e.From, bad = parseJIDAttr(t)
		}
		if bad != nil {
			e.Invalid = append(e.Invalid, bad)
		}
	}
	if string(b) != "</envelope>" {
		return nil, false
	}
	return e, true
}

// isPadByte reports whether c is one of padAlphabet's characters.
func isPadByte(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
