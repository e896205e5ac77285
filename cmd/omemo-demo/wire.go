package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// tap receives the copy of one direction of an XMPP stream (as written to
// mellium's StreamConfig.TeeIn or TeeOut, after TLS) and picks the raw XML
// of every top-level <message> stanza that contains an <encrypted> element
// out of it.
//
// Write never blocks and never fails, so the tap cannot stall or break the
// session; a goroutine parses the bytes. Only bytes written after enable are
// parsed: the stream header and the negotiation before it are not stanzas.
type tap struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	on      bool
	closed  bool
	broken  error

	stanzas chan captured
}

// captured is one <message> stanza as it went over the wire.
type captured struct {
	ID  string
	Raw []byte
}

func newTap() *tap {
	t := &tap{stanzas: make(chan captured, 64)}
	t.cond = sync.NewCond(&t.mu)
	go t.parse()
	return t
}

// enable starts parsing; call it once the stream is negotiated (between
// top-level elements).
func (t *tap) enable() {
	t.mu.Lock()
	t.on = true
	t.mu.Unlock()
}

// close stops the parser.
func (t *tap) close() {
	t.mu.Lock()
	t.closed = true
	t.cond.Broadcast()
	t.mu.Unlock()
}

// Write implements io.Writer for the tee.
func (t *tap) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.on && !t.closed && t.broken == nil {
		t.pending = append(t.pending, p...)
		t.cond.Signal()
	}
	return len(p), nil
}

// Read feeds the parser.
func (t *tap) Read(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.pending) == 0 && !t.closed {
		t.cond.Wait()
	}
	if len(t.pending) == 0 {
		return 0, io.EOF
	}
	n := copy(p, t.pending)
	t.pending = t.pending[n:]
	if len(t.pending) == 0 {
		t.pending = nil
	}
	return n, nil
}

// recorder keeps the bytes the decoder has read, so that the raw text of
// an element can be cut out by offsets.
type recorder struct {
	r    io.Reader
	data []byte
	base int64 // stream offset of data[0]
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.data = append(r.data, p[:n]...)
	return n, err
}

func (r *recorder) slice(from, to int64) []byte {
	return bytes.Clone(r.data[from-r.base : to-r.base])
}

func (r *recorder) discard(before int64) {
	r.data = append([]byte(nil), r.data[before-r.base:]...)
	r.base = before
}

// parse runs the decoder over the stream (one top-level element after the
// other) and sends the matching stanzas to t.stanzas.
func (t *tap) parse() {
	rec := &recorder{r: t}
	d := xml.NewDecoder(rec)
	var (
		depth   int
		start   int64
		top     xml.StartElement
		hasEnc  bool
		stanzas = t.stanzas
	)
	defer close(stanzas)
	for {
		off := d.InputOffset()
		tok, err := d.RawToken()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.mu.Lock()
			t.broken = err
			t.pending = nil
			t.mu.Unlock()
			return
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				start, top, hasEnc = off, tk.Copy(), false
			}
			if tk.Name.Local == "encrypted" {
				hasEnc = true
			}
			depth++
		case xml.EndElement:
			depth--
			if depth == 0 {
				end := d.InputOffset()
				if top.Name.Local == "message" && hasEnc {
					c := captured{ID: attr(top, "id"), Raw: rec.slice(start, end)}
					select {
					case stanzas <- c:
					default: // nobody is reading: drop
					}
				}
				rec.discard(end)
			}
		}
	}
}

func attr(s xml.StartElement, local string) string {
	for _, a := range s.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

// node is an element of a stanza for pretty printing.
type node struct {
	start    xml.StartElement
	text     strings.Builder
	children []*node
}

// pretty returns raw (one XML element) indented by two spaces per level,
// each line prefixed with indent. Long text (base64 keys and payloads, the
// fallback body) is abbreviated; everything else is as sent.
func pretty(raw []byte, indent string) (string, error) {
	d := xml.NewDecoder(bytes.NewReader(raw))
	var root *node
	var stack []*node
	for {
		tok, err := d.RawToken()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		switch tk := tok.(type) {
		case xml.StartElement:
			n := &node{start: tk.Copy()}
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.children = append(p.children, n)
			} else if root == nil {
				root = n
			}
			stack = append(stack, n)
		case xml.EndElement:
			if len(stack) == 0 {
				return "", fmt.Errorf("unbalanced XML")
			}
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].text.Write(tk)
			}
		}
	}
	if root == nil {
		return "", fmt.Errorf("no element")
	}
	var b strings.Builder
	root.write(&b, indent)
	return b.String(), nil
}

func (n *node) write(b *strings.Builder, indent string) {
	b.WriteString(indent)
	b.WriteString("<")
	b.WriteString(qname(n.start.Name))
	for _, a := range n.start.Attr {
		fmt.Fprintf(b, " %s='%s'", qname(a.Name), escape(abbrev(a.Value, 40)))
	}
	text := strings.TrimSpace(n.text.String())
	switch {
	case len(n.children) == 0 && text == "":
		b.WriteString("/>\n")
		return
	case len(n.children) == 0:
		fmt.Fprintf(b, ">%s</%s>\n", escape(abbrev(text, 32)), qname(n.start.Name))
		return
	}
	b.WriteString(">\n")
	for _, c := range n.children {
		c.write(b, indent+"  ")
	}
	fmt.Fprintf(b, "%s</%s>\n", indent, qname(n.start.Name))
}

func qname(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return n.Space + ":" + n.Local
}

// abbrev shortens s to about max characters, saying how long it was.
func abbrev(s string, max int) string {
	if utf8.RuneCountInString(s) <= max+12 {
		return s
	}
	r := []rune(s)
	return fmt.Sprintf("%s… (%d chars)", string(r[:max]), len(r))
}

func escape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "&#39;", "&apos;")
}
