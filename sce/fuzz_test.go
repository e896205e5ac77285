package sce_test

import (
	"bytes"
	"testing"

	"mellium.im/omemo/sce"
)

// FuzzParse checks that Parse never panics, that no server-processed
// element survives it, and that whatever it accepts re-marshals into canonical bytes that parse to the same envelope and
// marshal to the same bytes again.
func FuzzParse(f *testing.F) {
	for _, x := range xepExamples {
		f.Add([]byte(x))
	}
	for _, s := range []string{
		`<envelope xmlns='urn:xmpp:sce:1'><content><body>hi</body></content><rpad>x</rpad><time stamp='2004-01-25T06:05:00.5+01:00'/><to jid='a@b/c'/><from jid='d@e'/></envelope>`,
		`<s:envelope xmlns:s='urn:xmpp:sce:1' xmlns:o='urn:o'><s:content><o:x o:a='1' xml:lang='en'>&lt;&#xD;</o:x></s:content></s:envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><a xmlns=''><b xmlns='urn:xmpp:sce:1'/></a></content><unknown/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><h:store xmlns:h='urn:xmpp:hints'><x/></h:store><body>b</body><stanza-id xmlns='urn:xmpp:sid:0'/></content></envelope>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := sce.Parse(data)
		if err != nil {
			if e != nil {
				t.Fatal("envelope returned with error")
			}
			return
		}
		out, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of parsed %q: %v", data, err)
		}
		e2, err := sce.Parse(out)
		if err != nil {
			t.Fatalf("re-Parse of %q (from %q): %v", out, data, err)
		}
		if len(e2.Dropped) != 0 {
			t.Fatalf("server-processed elements survived Parse: %q -> %q", data, out)
		}
		if !equal(e, e2) {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", e, e2)
		}
		out2, err := e2.Marshal()
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("Marshal not stable: %q vs %q (%v)", out, out2, err)
		}
		toks := e.ContentTokens()
		for {
			if _, err := toks.Token(); err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("ContentTokens of canonical content: %v", err)
				}
				break
			}
		}
	})
}
