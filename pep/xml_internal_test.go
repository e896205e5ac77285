package pep

import (
	"encoding/xml"
	"strconv"
	"strings"
	"testing"
)

func TestMarshalRoundTrip(t *testing.T) {
	for i, tc := range []struct{ in, want string }{
		0: {`<devices xmlns='urn:xmpp:omemo:2'><device id='1' label='a&amp;b "q"'/></devices>`,
			`<devices xmlns="urn:xmpp:omemo:2"><device id="1" label="a&amp;b &#34;q&#34;"/></devices>`},
		// An unqualified child of a qualified parent keeps xmlns="".
		1: {`<a xmlns='urn:a'><b xmlns=''><c/></b></a>`, `<a xmlns="urn:a"><b xmlns=""><c/></b></a>`},
		// Prefixed elements and attributes; xml:lang keeps its prefix.
		2: {`<p:x xmlns:p='urn:p' xmlns:q='urn:q' q:a='1' xml:lang='en'>t&lt;<p:y/></p:x>`,
			`<x xmlns="urn:p" xmlns:ns0="urn:q" ns0:a="1" xml:lang="en">t&lt;<y/></x>`},
		// Comments and processing instructions are dropped; text is escaped.
		3: {"<a><!-- c --><?pi x?>1\n2</a>", "<a>1&#xA;2</a>"},
		4: {`<a xmlns='urn:a'><b xmlns='urn:b'/><c/></a>`, `<a xmlns="urn:a"><b xmlns="urn:b"/><c/></a>`},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			toks, err := readTokens(xml.NewDecoder(strings.NewReader(tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			root, err := buildTree(toks)
			if err != nil {
				t.Fatal(err)
			}
			got, err := marshal(root.toks)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			// Idempotent: marshalling the output again gives the same bytes.
			toks2, _ := readTokens(xml.NewDecoder(strings.NewReader(string(got))))
			root2, err := buildTree(toks2)
			if err != nil {
				t.Fatal(err)
			}
			again, err := marshal(root2.toks)
			if err != nil || string(again) != string(got) {
				t.Fatalf("not idempotent: %s, %v", again, err)
			}
		})
	}
}

func TestMarshalRejectsBadNames(t *testing.T) {
	for i, toks := range [][]xml.Token{
		{xml.StartElement{Name: xml.Name{Local: "a b"}}, xml.EndElement{Name: xml.Name{Local: "a b"}}},
		{xml.StartElement{Name: xml.Name{Local: "a"}, Attr: []xml.Attr{{Name: xml.Name{Local: `x="1`}, Value: "v"}}}, xml.EndElement{Name: xml.Name{Local: "a"}}},
		{xml.StartElement{Name: xml.Name{Local: ""}}, xml.EndElement{Name: xml.Name{Local: ""}}},
		{xml.StartElement{Name: xml.Name{Local: "a"}}},
		{xml.EndElement{Name: xml.Name{Local: "a"}}},
	} {
		if _, err := marshal(toks); err == nil {
			t.Errorf("%d: accepted", i)
		}
	}
}

func TestBuildTreeDeepInput(t *testing.T) {
	// Deep nesting must not recurse.
	const depth = 100000
	in := strings.Repeat("<a>", depth) + strings.Repeat("</a>", depth)
	toks, err := readTokens(xml.NewDecoder(strings.NewReader(in)))
	if err != nil {
		t.Fatal(err)
	}
	root, err := buildTree(toks)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := marshal(root.toks); err != nil {
		t.Fatal(err)
	}
}
