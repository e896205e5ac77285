package omemo

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"

	"mellium.im/omemo/session/sessiontest"
	"mellium.im/xmpp/stanza"
)

// FuzzReceive feeds arbitrary stanzas to a started plugin through its mux,
// as Serve would. Whatever arrives, the handlers return no error for a
// well-formed stanza (an error would close the stream), nothing panics,
// nothing forged reaches the application, and one stanza causes at most
// one report per kind of OMEMO content (direct, carbon, archive), however
// many children it repeats.
func FuzzReceive(f *testing.F) {
	enc := `<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='bob@example.org'><key rid='2'>AAAA</key></keys></header><payload>AAAA</payload></encrypted>`
	for _, s := range []string{
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'>` + enc + `</message>`,
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'>` + strings.Repeat(enc, 20) + `</message>`,
		`<message xmlns='jabber:client' type='chat'><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='alice@example.org/a' to='bob@example.org'>` + enc + `</message></forwarded></received></message>`,
		`<message xmlns='jabber:client' type='chat' from='eve@example.org'><sent xmlns='urn:xmpp:carbons:2'/><sent xmlns='urn:xmpp:carbons:2'/></message>`,
		`<message xmlns='jabber:client'><result xmlns='urn:xmpp:mam:2' queryid='q' id='1'/><result xmlns='urn:xmpp:mam:2' queryid='q' id='2'/></message>`,
		`<message xmlns='jabber:client' from='alice@example.org' type='headline'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><retract id='current'/></items></event><event xmlns='http://jabber.org/protocol/pubsub#event'/></message>`,
		`<message xmlns='jabber:client' type='chat' from='alice@example.org/a'>` + enc + `<delay xmlns='urn:xmpp:delay' from='example.org' stamp='2000-01-01T00:00:00Z'/></message>`,
	} {
		f.Add(s)
	}
	srv := sessiontest.NewServer()
	bob := newDevice(f, srv, "bob@example.org/b", both, true)
	f.Fuzz(func(t *testing.T, raw string) {
		bob.t = t
		err := dispatch(bob.m, raw)
		if err != nil && wellFormed(raw) {
			t.Fatalf("handler error for a well-formed stanza: %v", err)
		}
		bob.wait()
		msgs, errs := bob.take()
		if len(msgs) != 0 {
			t.Fatalf("forged input reached the application: %+v", msgs)
		}
		if len(errs) > 3 {
			t.Fatalf("%d reports for one stanza: %v", len(errs), errs)
		}
	})
}

// wellFormed reports whether raw holds one well-formed element whose
// stanza attributes parse (the mux itself fails stanzas whose from or to
// is not a JID, before any handler runs).
func wellFormed(raw string) bool {
	d := xml.NewDecoder(strings.NewReader(raw))
	depth, elements := 0, 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return depth == 0 && elements > 0
		}
		if err != nil {
			return false
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				elements++
				if _, err := stanza.NewMessage(t); err != nil {
					return false
				}
			}
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 0 && len(bytes.TrimSpace(t)) > 0 {
				return false
			}
		}
	}
}
