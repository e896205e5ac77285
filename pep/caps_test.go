package pep_test

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/xml"
	"strings"
	"testing"

	"mellium.im/omemo/pep"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/disco/info"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/stanza"
)

func TestCapsVer(t *testing.T) {
	m := mux.New(stanza.NSClient,
		pep.HandleDisco("https://example.org/client"),
		ping.Handle(),
		mux.Feature(pep.NotifyFeatures("urn:xmpp:omemo:2:devices", "eu.siacs.conversations.axolotl.devicelist")),
		mux.Ident(identities{{Category: "client", Type: "pc", Name: "Test"}}),
	)
	ver, err := pep.CapsVer(m)
	if err != nil {
		t.Fatal(err)
	}
	// XEP-0115 §5.1 by hand: identities, then sorted features, each
	// followed by '<'; disco#info appears once although disco registers two
	// patterns.
	s := "client/pc//Test<" +
		"eu.siacs.conversations.axolotl.devicelist+notify<" +
		disco.NSInfo + "<" +
		"urn:xmpp:omemo:2:devices+notify<" +
		ping.NS + "<"
	sum := sha1.Sum([]byte(s))
	if want := base64.StdEncoding.EncodeToString(sum[:]); ver != want {
		t.Fatalf("ver = %s, want %s", ver, want)
	}

	r, err := pep.CapsPresence(m, "https://example.org/client", stanza.Presence{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	e := xml.NewEncoder(&b)
	for {
		tok, err := r.Token()
		if tok != nil {
			if err := e.EncodeToken(tok); err != nil {
				t.Fatal(err)
			}
		}
		if err != nil {
			break
		}
	}
	e.Flush()
	out := b.String()
	for _, want := range []string{`<presence`, `hash="sha-1"`, `node="https://example.org/client"`, `ver="` + ver + `"`, `http://jabber.org/protocol/caps`} {
		if !strings.Contains(out, want) {
			t.Errorf("presence %s lacks %s", out, want)
		}
	}
}

func TestCapsHashResets(t *testing.T) {
	h := pep.CapsHash()
	i := disco.Info{Features: []info.Feature{{Var: "a"}, {Var: "b"}}}
	first := i.Hash(h)
	if second := i.Hash(h); second != first {
		t.Fatalf("second hash %s differs from first %s", second, first)
	}
	if plain := i.Hash(sha1.New()); plain != first {
		t.Fatalf("hash %s differs from sha-1 %s", first, plain)
	}
}

func TestNotifyFeaturesOnlyRootNode(t *testing.T) {
	fs := pep.NotifyFeatures("n1", "n2")
	var got []string
	_ = fs.ForFeatures("", func(f info.Feature) error { got = append(got, f.Var); return nil })
	_ = fs.ForFeatures("other#node", func(f info.Feature) error { got = append(got, "BAD"); return nil })
	if strings.Join(got, ",") != "n1+notify,n2+notify" {
		t.Fatalf("features = %v", got)
	}
}

type identities []info.Identity

func (ids identities) ForIdentities(node string, f func(info.Identity) error) error {
	if node != "" {
		return nil
	}
	for _, i := range ids {
		if err := f(i); err != nil {
			return err
		}
	}
	return nil
}
