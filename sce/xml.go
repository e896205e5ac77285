package sce

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"mellium.im/xmpp/jid"
)

const (
	xmlURL   = "http://www.w3.org/XML/1998/namespace"
	xmlnsURL = "http://www.w3.org/2000/xmlns/"
	// maxContentDepth keeps content produced by New parseable inside
	// <envelope><content>.
	maxContentDepth = MaxDepth - 2
)

func malformed(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }

// reader yields the tokens of a document or fragment after validating them:
// comments are dropped; DTDs, processing instructions (but a leading XML
// declaration when allowed), undeclared prefixes, reserved namespaces,
// colons in local names, duplicated attributes and excessive depth are
// errors.
// Syntax errors are reported without quoting the input.
type reader struct {
	d         *xml.Decoder
	depth     int
	maxDepth  int
	uris      map[string]int // namespace URIs declared by the open elements
	decls     [][]string
	first     bool
	allowDecl bool
	err       error
}

func newReader(data []byte, maxDepth int, allowDecl bool) *reader {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	return &reader{d: d, maxDepth: maxDepth, uris: map[string]int{}, first: true, allowDecl: allowDecl}
}

// next returns the next token or io.EOF. CharData is only valid until the
// following call.
func (r *reader) next() (xml.Token, error) {
	if r.err != nil {
		return nil, r.err
	}
	tok, err := r.token()
	if err != nil {
		r.err = err
	}
	return tok, err
}

func (r *reader) token() (xml.Token, error) {
	for {
		tok, err := r.d.Token()
		if err == io.EOF {
			if r.depth != 0 {
				return nil, malformed("unexpected end of input")
			}
			return nil, io.EOF
		}
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return nil, fmt.Errorf("%w: XML syntax error on line %d", ErrMalformed, se.Line)
			}
			return nil, malformed("invalid XML")
		}
		first := r.first
		r.first = false
		switch t := tok.(type) {
		case xml.StartElement:
			r.depth++
			if r.depth > r.maxDepth {
				return nil, ErrTooDeep
			}
			if err := r.push(t); err != nil {
				return nil, err
			}
			return t, nil
		case xml.EndElement:
			r.depth--
			r.pop()
			return t, nil
		case xml.CharData:
			return t, nil
		case xml.Comment:
			continue
		case xml.ProcInst:
			if first && r.allowDecl && t.Target == "xml" {
				continue
			}
			return nil, malformed("processing instruction")
		case xml.Directive:
			return nil, malformed("DTD or other directive")
		default:
			return nil, malformed("unexpected token")
		}
	}
}

func isDecl(a xml.Attr) bool {
	return a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns")
}

func (r *reader) declared(space string) bool { return space == "" || r.uris[space] > 0 }

func (r *reader) push(t xml.StartElement) error {
	var decl []string
	for _, a := range t.Attr {
		if isDecl(a) {
			if a.Name.Space == "xmlns" && a.Value == "" {
				return malformed("empty namespace prefix declaration")
			}
			decl = append(decl, a.Value)
			r.uris[a.Value]++
		}
	}
	r.decls = append(r.decls, decl)
	if strings.Contains(t.Name.Local, ":") {
		return malformed("colon in element name")
	}
	switch s := t.Name.Space; {
	case s == xmlURL || s == xmlnsURL:
		return malformed("element in a reserved namespace")
	case !r.declared(s):
		return malformed("undeclared namespace prefix")
	}
	var seen map[xml.Name]struct{}
	if len(t.Attr) > 1 {
		seen = make(map[xml.Name]struct{}, len(t.Attr))
	}
	for _, a := range t.Attr {
		if seen != nil {
			if _, dup := seen[a.Name]; dup {
				return malformed("duplicated attribute")
			}
			seen[a.Name] = struct{}{}
		}
		if isDecl(a) {
			continue
		}
		if strings.Contains(a.Name.Local, ":") {
			return malformed("colon in attribute name")
		}
		switch s := a.Name.Space; {
		case s == xmlnsURL:
			return malformed("attribute in a reserved namespace")
		case s != xmlURL && !r.declared(s):
			return malformed("undeclared namespace prefix")
		}
	}
	return nil
}

func (r *reader) pop() {
	if len(r.decls) == 0 {
		return
	}
	for _, u := range r.decls[len(r.decls)-1] {
		if r.uris[u]--; r.uris[u] <= 0 {
			delete(r.uris, u)
		}
	}
	r.decls = r.decls[:len(r.decls)-1]
}

// skip consumes tokens up to the end of the element whose start was just
// read.
func (r *reader) skip() error {
	target := r.depth - 1
	for {
		tok, err := r.next()
		if err == io.EOF {
			return malformed("unexpected end of input")
		}
		if err != nil {
			return err
		}
		if _, ok := tok.(xml.EndElement); ok && r.depth == target {
			return nil
		}
	}
}

// normalizer turns validated content tokens into their presented form:
// element names in the empty or SCE namespace become jabber:client, xmlns
// declarations are removed from attributes, whitespace between top-level
// children is dropped (other top-level text is an error) and CharData is
// copied.
// ok is false for dropped tokens and for the end of the enclosing element
// (end is then true).
type normalizer struct {
	stack []string // namespaces of the open content elements
}

func mapNS(s string) string {
	if s == "" || s == NS {
		return nsClient
	}
	return s
}

func (n *normalizer) normalize(tok xml.Token) (out xml.Token, ok, end bool, err error) {
	switch t := tok.(type) {
	case xml.StartElement:
		attrs := make([]xml.Attr, 0, len(t.Attr))
		for _, a := range t.Attr {
			if !isDecl(a) {
				attrs = append(attrs, a)
			}
		}
		s := xml.StartElement{Name: xml.Name{Space: mapNS(t.Name.Space), Local: t.Name.Local}, Attr: attrs}
		n.stack = append(n.stack, s.Name.Space)
		return s, true, false, nil
	case xml.EndElement:
		if len(n.stack) == 0 {
			return nil, false, true, nil
		}
		space := n.stack[len(n.stack)-1]
		n.stack = n.stack[:len(n.stack)-1]
		return xml.EndElement{Name: xml.Name{Space: space, Local: t.Name.Local}}, true, false, nil
	case xml.CharData:
		if len(n.stack) == 0 {
			if len(bytes.Trim(t, " \t\r\n")) != 0 {
				return nil, false, false, malformed("text outside the content elements")
			}
			return nil, false, false, nil
		}
		return t.Copy(), true, false, nil
	}
	return nil, false, false, malformed("unexpected token")
}

// canonWriter serialises normalized tokens in the canonical form documented
// at Envelope.Content.
type canonWriter struct {
	b     *bytes.Buffer
	stack []string
}

func (w *canonWriter) write(tok xml.Token) {
	switch t := tok.(type) {
	case xml.StartElement:
		parent := ""
		if len(w.stack) > 0 {
			parent = w.stack[len(w.stack)-1]
		}
		w.b.WriteByte('<')
		w.b.WriteString(t.Name.Local)
		if t.Name.Space != parent {
			w.b.WriteString(` xmlns='`)
			escapeAttr(w.b, t.Name.Space)
			w.b.WriteByte('\'')
		}
		var prefixes map[string]string
		for _, a := range t.Attr {
			w.b.WriteByte(' ')
			switch a.Name.Space {
			case "":
			case xmlURL:
				w.b.WriteString("xml:")
			default:
				if prefixes == nil {
					prefixes = map[string]string{}
				}
				p, ok := prefixes[a.Name.Space]
				if !ok {
					p = fmt.Sprintf("ns%d", len(prefixes))
					prefixes[a.Name.Space] = p
					w.b.WriteString("xmlns:" + p + "='")
					escapeAttr(w.b, a.Name.Space)
					w.b.WriteString("' ")
				}
				w.b.WriteString(p + ":")
			}
			w.b.WriteString(a.Name.Local)
			w.b.WriteString("='")
			escapeAttr(w.b, a.Value)
			w.b.WriteByte('\'')
		}
		w.b.WriteByte('>')
		w.stack = append(w.stack, t.Name.Space)
	case xml.EndElement:
		w.b.WriteString("</")
		w.b.WriteString(t.Name.Local)
		w.b.WriteByte('>')
		w.stack = w.stack[:len(w.stack)-1]
	case xml.CharData:
		escapeText(w.b, string(t))
	}
}

// writeCanonical validates the content fragment and writes its canonical
// form to b.
func writeCanonical(b *bytes.Buffer, content []byte) error {
	if isCanonical(content) {
		b.Write(content)
		return nil
	}
	return writeCanonicalFull(b, content)
}

// writeCanonicalFull is writeCanonical without the fast path.
func writeCanonicalFull(b *bytes.Buffer, content []byte) error {
	if !utf8.Valid(content) {
		return malformed("invalid UTF-8 in content")
	}
	r := newReader(content, maxContentDepth, false)
	var n normalizer
	w := canonWriter{b: b}
	for {
		tok, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		out, ok, end, err := n.normalize(tok)
		if err != nil {
			return err
		}
		if end {
			return malformed("unbalanced content")
		}
		if ok {
			w.write(out)
		}
	}
}

func canonicalContent(content []byte) ([]byte, error) {
	var b bytes.Buffer
	if err := writeCanonical(&b, content); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ContentTokens returns the children of <content> as a token reader, for
// re-injecting them into the plaintext stanza.
//
// Element names carry their resolved namespace in Name.Space (elements
// without one, or in the SCE namespace, are jabber:client), attributes
// carry no xmlns declarations (namespaced attributes keep their namespace
// URI in Name.Space), whitespace between the top-level children is dropped,
// and each CharData is a copy.
// Encoding the tokens with encoding/xml or mellium therefore produces each
// xmlns exactly once.
// An invalid Content (possible only if it was set by hand) surfaces as an
// error wrapping ErrMalformed or ErrTooDeep from Token; io.EOF ends the
// stream.
func (e *Envelope) ContentTokens() xml.TokenReader {
	var content []byte
	if e != nil {
		content = e.Content
	}
	cr := &contentReader{r: newReader(content, maxContentDepth, false)}
	if !utf8.Valid(content) {
		cr.err = malformed("invalid UTF-8 in content")
	}
	return cr
}

type contentReader struct {
	r   *reader
	n   normalizer
	err error
}

func (c *contentReader) Token() (xml.Token, error) {
	for c.err == nil {
		tok, err := c.r.next()
		if err != nil {
			c.err = err
			break
		}
		out, ok, end, err := c.n.normalize(tok)
		switch {
		case err != nil:
			c.err = err
		case end:
			c.err = malformed("unbalanced content")
		case ok:
			return out, nil
		}
	}
	return nil, c.err
}

// Parse decodes an envelope.
//
// data must hold exactly one <envelope> in the SCE namespace (optionally
// preceded by an XML declaration, surrounded by whitespace and comments)
// with exactly one <content> and at most one of each <rpad>, <time>, <to>
// and <from>.
// Other children of the envelope (unknown affixes) are ignored, and
// server-processed elements among the children of <content> are dropped
// (named in Dropped).
// <time> carries a 'stamp' (RFC 3339 / XEP-0082 DateTime), <to> and <from>
// a 'jid'; JIDs are kept as sent, Check compares their bare forms.
// An affix whose attribute is missing or cannot be parsed (or a stamp
// outside the years 0000 to 9999, or the zero time) is not an error: its
// field stays zero and an *InvalidAffixError is appended to Invalid.
// The time is returned in UTC. The rpad text is kept verbatim, may be
// empty (HasRPad tells an empty <rpad/> from an absent one) or longer
// than MaxRPad, and must not contain elements.
//
// Errors wrap ErrTooLarge, ErrTooDeep or ErrMalformed and do not quote the
// input. Parse never panics.
func Parse(data []byte) (*Envelope, error) {
	if len(data) > MaxSize {
		return nil, ErrTooLarge
	}
	if !utf8.Valid(data) {
		return nil, malformed("invalid UTF-8")
	}
	if e, ok := parseCanonical(data); ok {
		return e, nil
	}
	return parseFull(data)
}

// parseFull is Parse without the size and encoding checks and the fast
// path.
func parseFull(data []byte) (*Envelope, error) {
	r := newReader(data, MaxDepth, true)
	var e *Envelope
	for {
		tok, err := r.next()
		if err == io.EOF {
			if e == nil {
				return nil, malformed("no envelope element")
			}
			return e, nil
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.Trim(t, " \t\r\n")) != 0 {
				return nil, malformed("text outside the envelope")
			}
		case xml.StartElement:
			if e != nil {
				return nil, malformed("more than one root element")
			}
			if t.Name != (xml.Name{Space: NS, Local: "envelope"}) {
				return nil, malformed("root is not an SCE envelope")
			}
			if e, err = parseEnvelope(r); err != nil {
				return nil, err
			}
		default:
			return nil, malformed("unexpected token")
		}
	}
}

func parseEnvelope(r *reader) (*Envelope, error) {
	e := &Envelope{}
	seen := map[string]bool{}
	for {
		tok, err := r.next()
		if err == io.EOF {
			return nil, malformed("unexpected end of input")
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.EndElement:
			if !seen["content"] {
				return nil, malformed("missing content element")
			}
			return e, nil
		case xml.CharData:
			if len(bytes.Trim(t, " \t\r\n")) != 0 {
				return nil, malformed("text in the envelope")
			}
		case xml.StartElement:
			name := t.Name.Local
			known := t.Name.Space == NS
			switch name {
			case "content", "rpad", "time", "to", "from":
			default:
				known = false
			}
			if !known {
				if err := r.skip(); err != nil {
					return nil, err
				}
				continue
			}
			if seen[name] {
				return nil, malformed("repeated " + name + " element")
			}
			seen[name] = true
			switch name {
			case "content":
				e.Content, e.Dropped, err = readContent(r)
			case "rpad":
				e.RPad, err = readText(r)
				e.HasRPad = true
			case "time":
				var bad *InvalidAffixError
				if e.Time, bad = parseStamp(t); bad != nil {
					e.Invalid = append(e.Invalid, bad)
				}
				err = r.skip()
			case "to", "from":
				j, bad := parseJIDAttr(t)
				if bad != nil {
					e.Invalid = append(e.Invalid, bad)
				}
				if name == "to" {
					e.To = j
				} else {
					e.From = j
				}
				err = r.skip()
			}
			if err != nil {
				return nil, err
			}
		}
	}
}

// readContent reads the children of <content> into canonical form,
// dropping every top-level server-processed element (see ServerProcessed)
// and returning the names of those it dropped.
func readContent(r *reader) ([]byte, []xml.Name, error) {
	var b bytes.Buffer
	var n normalizer
	w := canonWriter{b: &b}
	var dropped []xml.Name
	skipping := false
	for {
		tok, err := r.next()
		if err == io.EOF {
			return nil, nil, malformed("unexpected end of input")
		}
		if err != nil {
			return nil, nil, err
		}
		out, ok, end, err := n.normalize(tok)
		switch {
		case err != nil:
			return nil, nil, err
		case end:
			return bytes.Clone(b.Bytes()), dropped, nil
		case ok:
			if se, isStart := out.(xml.StartElement); isStart && len(n.stack) == 1 && ServerProcessed(se.Name) {
				skipping = true
				dropped = append(dropped, se.Name)
			}
			if !skipping {
				w.write(out)
			}
			if _, isEnd := out.(xml.EndElement); isEnd && len(n.stack) == 0 {
				skipping = false
			}
		}
	}
}

// ServerProcessed reports whether an element is one that XEP-0420 keeps
// outside the envelope because servers process or filter it: message
// processing hints (XEP-0334), stanza-id (XEP-0359), extended addressing
// (XEP-0033) and EME (XEP-0380), and also the server-generated carbon
// (XEP-0280) and archive (XEP-0313) wrappers. Found inside <content> they
// could only be a sender's attempt to forge what the server says, so Parse
// drops them.
func ServerProcessed(name xml.Name) bool {
	switch name.Space {
	case "urn:xmpp:hints", "http://jabber.org/protocol/address", "urn:xmpp:eme:0",
		"urn:xmpp:carbons:2", "urn:xmpp:mam:2", "urn:xmpp:mam:tmp":
		return true
	case "urn:xmpp:sid:0":
		return name.Local == "stanza-id"
	}
	return false
}

func readText(r *reader) (string, error) {
	var sb strings.Builder
	for {
		tok, err := r.next()
		if err == io.EOF {
			return "", malformed("unexpected end of input")
		}
		if err != nil {
			return "", err
		}
		switch t := tok.(type) {
		case xml.CharData:
			sb.Write(t)
		case xml.EndElement:
			return sb.String(), nil
		default:
			return "", malformed("element inside rpad")
		}
	}
}

func attr(t xml.StartElement, local string) (string, bool) {
	for _, a := range t.Attr {
		if a.Name == (xml.Name{Local: local}) {
			return a.Value, true
		}
	}
	return "", false
}

// parseStamp returns the time of a <time> affix, or why it has none.
func parseStamp(t xml.StartElement) (time.Time, *InvalidAffixError) {
	bad := func(reason string) (time.Time, *InvalidAffixError) {
		return time.Time{}, &InvalidAffixError{Affix: "time", Reason: reason}
	}
	v, ok := attr(t, "stamp")
	if !ok {
		return bad("no stamp attribute")
	}
	ts, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return bad("stamp is not an XEP-0082 DateTime")
	}
	ts = ts.UTC()
	if y := ts.Year(); y < 0 || y > 9999 || ts.IsZero() {
		return bad("stamp out of range")
	}
	return ts, nil
}

// parseJIDAttr returns the JID of a <to> or <from> affix, or why it has
// none.
func parseJIDAttr(t xml.StartElement) (jid.JID, *InvalidAffixError) {
	v, ok := attr(t, "jid")
	if !ok {
		return jid.JID{}, &InvalidAffixError{Affix: t.Name.Local, Reason: "no jid attribute"}
	}
	if j, ok := validJIDs.get(v); ok {
		return j, nil
	}
	j, err := jid.Parse(v)
	if err == nil && !isZero(j) {
		// jid.Parse strips one final dot of the domainpart (RFC 7622,
		// 3.2), so "example.org.." gives the domainpart "example.org.",
		// an empty DNS label, whose string form parses to another JID.
		// Only JIDs that Marshal writes back unchanged are accepted.
		if again, err := jid.Parse(j.String()); err == nil && again.Equal(j) {
			validJIDs.put(v, j)
			return j, nil
		}
	}
	return jid.JID{}, &InvalidAffixError{Affix: t.Name.Local, Reason: "jid is not a valid JID"}
}

// jidCache remembers the affix values that parsed as valid JIDs: every
// message of a conversation names the same two JIDs, and parsing one
// (PRECIS and IDNA normalisation, twice) costs more than the rest of the
// envelope. Parsing is a pure function of the value, so a cached result
// is the one parsing would give.
type jidCache struct {
	mu sync.Mutex
	m  map[string]jid.JID
}

// maxCachedJIDs bounds the cache (it is emptied when full).
const maxCachedJIDs = 256

var validJIDs jidCache

func (c *jidCache) get(v string) (jid.JID, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.m[v]
	return j, ok
}

func (c *jidCache) put(v string, j jid.JID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedJIDs {
		c.m = make(map[string]jid.JID, 16)
	}
	c.m[v] = j
}

func escapeText(b *bytes.Buffer, s string) { escape(b, s, false) }

func escapeAttr(b *bytes.Buffer, s string) { escape(b, s, true) }

// escape writes s with the characters escaped that the canonical form
// escapes: &, <, > and CR everywhere, and in attribute values (single
// quoted) also both quotes, tab and LF, so that they survive attribute
// value normalisation.
func escape(b *bytes.Buffer, s string, attr bool) {
	last := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !attr && (c == '\'' || c == '"' || c == '\t' || c == '\n') {
			continue
		}
		var esc string
		switch c {
		case '&':
			esc = "&amp;"
		case '<':
			esc = "&lt;"
		case '>':
			esc = "&gt;"
		case '\r':
			esc = "&#xD;"
		case '\'':
			esc = "&apos;"
		case '"':
			esc = "&quot;"
		case '\t':
			esc = "&#x9;"
		case '\n':
			esc = "&#xA;"
		default:
			continue
		}
		b.WriteString(s[last:i])
		b.WriteString(esc)
		last = i + 1
	}
	b.WriteString(s[last:])
}

// validChars reports whether s is UTF-8 made of XML 1.0 characters.
func validChars(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		switch {
		case c == 0x9 || c == 0xA || c == 0xD:
		case c >= 0x20 && c <= 0xD7FF:
		case c >= 0xE000 && c <= 0xFFFD:
		case c >= 0x10000 && c <= 0x10FFFF:
		default:
			return false
		}
	}
	return true
}
