package pep

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strconv"
	"strings"
)

// Limits on untrusted input.
// A c2s stream is already limited by the server (Prosody: 256 KiB per
// stanza by default); these bound what a misbehaving peer or a custom token
// reader can make us hold.
const (
	maxTokens     = 1 << 18 // tokens per stanza
	maxEventBytes = 4 << 20 // names, attributes and text of a notification
	maxTextBytes  = 1024    // bytes of an error <text/> kept
)

const (
	nsXML     = "http://www.w3.org/XML/1998/namespace"
	nsStanzas = "urn:ietf:params:xml:ns:xmpp-stanzas"
)

// node is an element of a parsed stanza.
// toks holds the element's tokens from its start to its end, inclusive.
type node struct {
	start    xml.StartElement
	children []*node
	toks     []xml.Token
}

func (n *node) attr(local string) (string, bool) {
	for _, a := range n.start.Attr {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

func (n *node) is(space, local string) bool {
	return n.start.Name.Space == space && n.start.Name.Local == local
}

// child returns the first child with the given name.
func (n *node) child(space, local string) *node {
	for _, c := range n.children {
		if c.is(space, local) {
			return c
		}
	}
	return nil
}

// readTokens copies every token of r until io.EOF.
// Readers that return a final token together with io.EOF are handled.
func readTokens(r xml.TokenReader) ([]xml.Token, error) {
	var toks []xml.Token
	for {
		tok, err := r.Token()
		if tok != nil {
			if len(toks) >= maxTokens {
				return nil, errTooLarge
			}
			toks = append(toks, xml.CopyToken(tok))
		}
		switch {
		case err == io.EOF:
			return toks, nil
		case err != nil:
			return nil, err
		case tok == nil:
			// A reader that returns neither a token nor an error would
			// spin forever; treat it as the end.
			return toks, nil
		}
	}
}

var (
	errTooLarge   = errors.New("too many tokens")
	errUnbalanced = errors.New("unbalanced elements")
	errNoElement  = errors.New("no element")
	errBadName    = errors.New("invalid XML name")
)

// buildTree returns the first element of toks as a tree.
// Tokens before it (whitespace, a declaration) and after it are ignored.
// It uses an explicit stack, not recursion, so deep input cannot exhaust
// the goroutine stack.
func buildTree(toks []xml.Token) (*node, error) {
	var (
		root  *node
		stack []*node
		first []int // index of each open element's start token
	)
	for i, tok := range toks {
		switch t := tok.(type) {
		case xml.StartElement:
			if root != nil && len(stack) == 0 {
				// Content after the root element.
				return root, nil
			}
			n := &node{start: t}
			if len(stack) == 0 {
				root = n
			} else {
				parent := stack[len(stack)-1]
				parent.children = append(parent.children, n)
			}
			stack = append(stack, n)
			first = append(first, i)
		case xml.EndElement:
			if len(stack) == 0 {
				if root != nil {
					return root, nil
				}
				return nil, errUnbalanced
			}
			n := stack[len(stack)-1]
			if n.start.Name != t.Name {
				return nil, errUnbalanced
			}
			n.toks = toks[first[len(first)-1] : i+1]
			stack = stack[:len(stack)-1]
			first = first[:len(first)-1]
			if len(stack) == 0 {
				return root, nil
			}
		}
	}
	if root == nil {
		return nil, errNoElement
	}
	return nil, errUnbalanced
}

// marshal serialises one element (toks from its start to its end) to bytes.
//
// It writes every namespace explicitly instead of re-using the xmlns
// attributes of the input, which encoding/xml would duplicate: the element
// gets xmlns="…" whenever its namespace differs from its parent's (including
// xmlns="" for an unqualified child of a qualified parent), xml:* attributes
// keep the reserved prefix and other qualified attributes get a prefix
// declared on their element.
// Comments, processing instructions and directives are dropped.
// Empty elements are written as <a/>.
func marshal(toks []xml.Token) ([]byte, error) {
	var (
		b      bytes.Buffer
		spaces = []string{""} // default namespace in scope
		open   bool           // a start tag is waiting for '>' or '/>'
	)
	closeTag := func() {
		if open {
			b.WriteByte('>')
			open = false
		}
	}
	for _, tok := range toks {
		switch t := tok.(type) {
		case xml.StartElement:
			closeTag()
			if !validName(t.Name.Local) {
				return nil, errBadName
			}
			b.WriteByte('<')
			b.WriteString(t.Name.Local)
			if t.Name.Space != spaces[len(spaces)-1] {
				b.WriteString(` xmlns="`)
				escape(&b, t.Name.Space)
				b.WriteByte('"')
			}
			spaces = append(spaces, t.Name.Space)
			prefixes := 0
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
					continue // namespace declarations are regenerated
				}
				if !validName(a.Name.Local) {
					return nil, errBadName
				}
				b.WriteByte(' ')
				switch a.Name.Space {
				case "":
				case nsXML, "xml":
					b.WriteString("xml:")
				default:
					p := "ns" + strconv.Itoa(prefixes)
					prefixes++
					b.WriteString(`xmlns:` + p + `="`)
					escape(&b, a.Name.Space)
					b.WriteString(`" ` + p + ":")
				}
				b.WriteString(a.Name.Local)
				b.WriteString(`="`)
				escape(&b, a.Value)
				b.WriteByte('"')
			}
			open = true
		case xml.EndElement:
			if len(spaces) == 1 {
				return nil, errUnbalanced
			}
			spaces = spaces[:len(spaces)-1]
			if open {
				b.WriteString("/>")
				open = false
				continue
			}
			b.WriteString("</")
			b.WriteString(t.Name.Local)
			b.WriteByte('>')
		case xml.CharData:
			closeTag()
			escape(&b, string(t))
		}
	}
	if len(spaces) != 1 || open {
		return nil, errUnbalanced
	}
	return b.Bytes(), nil
}

func escape(b *bytes.Buffer, s string) {
	// xml.EscapeText escapes the five special characters, tab, newline and
	// carriage return and replaces characters that are not allowed in XML.
	_ = xml.EscapeText(b, []byte(s))
}

// validName is a conservative check that a local name can be written back
// without changing the document structure.
func validName(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n<>&\"'=/:") && strings.ToValidUTF8(s, "") == s
}
