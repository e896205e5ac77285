package vectors

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// Node is an XML element reduced to what the OMEMO wire formats carry:
// the resolved name, the attributes (namespace declarations excluded), the
// character data with surrounding whitespace removed, and the child
// elements in document order.
type Node struct {
	Name     xml.Name
	Attrs    map[string]string // keyed by local name ("space local" if namespaced)
	Text     string
	Children []*Node
}

// ParseXML parses one element (and its subtree) from s.
func ParseXML(s string) (*Node, error) {
	d := xml.NewDecoder(strings.NewReader(s))
	var stack []*Node
	var root *Node
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			n := &Node{Name: t.Name, Attrs: map[string]string{}}
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || (a.Name.Space == "" && a.Name.Local == "xmlns") {
					continue
				}
				key := a.Name.Local
				if a.Name.Space != "" {
					key = a.Name.Space + " " + key
				}
				if _, dup := n.Attrs[key]; dup {
					return nil, fmt.Errorf("vectors: duplicate attribute %q", key)
				}
				n.Attrs[key] = a.Value
			}
			if len(stack) > 0 {
				p := stack[len(stack)-1]
				p.Children = append(p.Children, n)
			} else if root != nil {
				return nil, errors.New("vectors: more than one root element")
			} else {
				root = n
			}
			stack = append(stack, n)
		case xml.EndElement:
			n := stack[len(stack)-1]
			n.Text = strings.TrimSpace(n.Text)
			stack = stack[:len(stack)-1]
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].Text += string(t)
			}
		}
	}
	if root == nil {
		return nil, errors.New("vectors: no element")
	}
	return root, nil
}

// String renders n canonically (attributes sorted), for messages and for
// sorting unordered children.
func (n *Node) String() string {
	var b strings.Builder
	n.write(&b)
	return b.String()
}

func (n *Node) write(b *strings.Builder) {
	fmt.Fprintf(b, "<{%s}%s", n.Name.Space, n.Name.Local)
	keys := make([]string, 0, len(n.Attrs))
	for k := range n.Attrs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(b, " %s=%q", k, n.Attrs[k])
	}
	b.WriteString(">")
	b.WriteString(n.Text)
	for _, c := range n.Children {
		c.write(b)
	}
	fmt.Fprintf(b, "</%s>", n.Name.Local)
}

// XMLEqual compares two serialised elements structurally: element names
// including namespaces, attributes (order and namespace declarations
// ignored), trimmed character data and child order. The children of
// elements whose local name is in unordered are compared as a multiset
// (e.g. the pre keys of a bundle). It returns nil if they are equal and
// otherwise an error describing the first difference.
func XMLEqual(got, want string, unordered ...string) error {
	g, err := ParseXML(got)
	if err != nil {
		return fmt.Errorf("parsing got: %w", err)
	}
	w, err := ParseXML(want)
	if err != nil {
		return fmt.Errorf("parsing want: %w", err)
	}
	return nodeEqual("", g, w, unordered)
}

func nodeEqual(path string, g, w *Node, unordered []string) error {
	path += "/" + w.Name.Local
	if g.Name != w.Name {
		return fmt.Errorf("%s: element {%s}%s, want {%s}%s", path, g.Name.Space, g.Name.Local, w.Name.Space, w.Name.Local)
	}
	if len(g.Attrs) != len(w.Attrs) {
		return fmt.Errorf("%s: attributes %v, want %v", path, g.Attrs, w.Attrs)
	}
	for k, v := range w.Attrs {
		if gv, ok := g.Attrs[k]; !ok || gv != v {
			return fmt.Errorf("%s: attribute %s=%q (present %v), want %q", path, k, gv, ok, v)
		}
	}
	if g.Text != w.Text {
		return fmt.Errorf("%s: text %q, want %q", path, g.Text, w.Text)
	}
	if len(g.Children) != len(w.Children) {
		return fmt.Errorf("%s: %d children, want %d", path, len(g.Children), len(w.Children))
	}
	gc, wc := g.Children, w.Children
	if slices.Contains(unordered, w.Name.Local) {
		gc, wc = sortedChildren(gc), sortedChildren(wc)
	}
	for i := range wc {
		if err := nodeEqual(path, gc[i], wc[i], unordered); err != nil {
			return err
		}
	}
	return nil
}

func sortedChildren(c []*Node) []*Node {
	c = slices.Clone(c)
	slices.SortStableFunc(c, func(a, b *Node) int { return strings.Compare(a.String(), b.String()) })
	return c
}
