package sce_test

import (
	"bytes"
	"errors"
	"testing"

	"mellium.im/omemo/sce"
	"mellium.im/xmpp/jid"
)

// FuzzParse checks that Parse never panics, that no server-processed
// element survives it, and that whatever it accepts re-marshals into canonical bytes that parse to the same envelope and
// marshal to the same bytes again.
// It also checks the invalid affixes: each is recorded once, with its
// field left zero, Marshal drops it, a lenient Check tolerates it and a
// strict one rejects exactly the envelopes that have one; and that an
// <rpad>, empty or not, is reported present and satisfies RequireRPad.
func FuzzParse(f *testing.F) {
	for _, x := range xepExamples {
		f.Add([]byte(x))
	}
	for _, s := range []string{
		`<envelope xmlns='urn:xmpp:sce:1'><content><body>hi</body></content><rpad>x</rpad><time stamp='2004-01-25T06:05:00.5+01:00'/><to jid='a@b/c'/><from jid='d@e'/></envelope>`,
		`<s:envelope xmlns:s='urn:xmpp:sce:1' xmlns:o='urn:o'><s:content><o:x o:a='1' xml:lang='en'>&lt;&#xD;</o:x></s:content></s:envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><a xmlns=''><b xmlns='urn:xmpp:sce:1'/></a></content><unknown/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><h:store xmlns:h='urn:xmpp:hints'><x/></h:store><body>b</body><stanza-id xmlns='urn:xmpp:sid:0'/></content></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content><body>b</body></content><rpad/><time stamp='garbage'/><to jid='@'/><from/></envelope>`,
		`<envelope xmlns='urn:xmpp:sce:1'><content/><rpad></rpad><time stamp='0000-01-01T00:00:00+01:00'/><to jid='a@b'/><from jid=''/></envelope>`,
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
		checkAffixes(t, data, e)
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
		if !equal(e, e2) || e.HasRPad != e2.HasRPad {
			t.Fatalf("round trip changed the envelope:\n%+v\n%+v", e, e2)
		}
		if len(e2.Invalid) != 0 {
			t.Fatalf("Marshal wrote an invalid affix: %q -> %q", data, out)
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

// checkAffixes checks the affix invariants of an envelope Parse accepted.
func checkAffixes(t *testing.T, data []byte, e *sce.Envelope) {
	t.Helper()
	seen := map[string]bool{}
	for _, ie := range e.Invalid {
		if ie == nil || seen[ie.Affix] || !errors.Is(ie, sce.ErrInvalidAffix) {
			t.Fatalf("Invalid of %q: %v", data, e.Invalid)
		}
		seen[ie.Affix] = true
		switch ie.Affix {
		case "time":
			if !e.Time.IsZero() {
				t.Fatalf("invalid time of %q kept a value", data)
			}
		case "to":
			if !e.To.Equal(jid.JID{}) {
				t.Fatalf("invalid to of %q kept a value", data)
			}
		case "from":
			if !e.From.Equal(jid.JID{}) {
				t.Fatalf("invalid from of %q kept a value", data)
			}
		default:
			t.Fatalf("Invalid of %q names affix %q", data, ie.Affix)
		}
	}
	if e.RPad != "" && !e.HasRPad {
		t.Fatalf("rpad of %q not reported present", data)
	}
	// Against the stanza the affixes name, only invalid ones can fail.
	if err := e.Check(sce.Policy{}, e.From, e.To); err != nil {
		t.Fatalf("lenient Check of %q: %v", data, err)
	}
	err := e.Check(sce.Policy{StrictAffixes: true}, e.From, e.To)
	if (err != nil) != (len(e.Invalid) > 0) || err != nil && !errors.Is(err, sce.ErrInvalidAffix) {
		t.Fatalf("strict Check of %q with Invalid %v: %v", data, e.Invalid, err)
	}
	if err := e.Check(sce.Policy{RequireRPad: true}, e.From, e.To); (err == nil) != e.HasRPad {
		t.Fatalf("RequireRPad Check of %q (HasRPad %v): %v", data, e.HasRPad, err)
	}
}
