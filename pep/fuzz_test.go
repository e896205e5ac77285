package pep_test

import (
	"bytes"
	"encoding/xml"
	"testing"

	"mellium.im/omemo/pep"
)

var eventSeeds = []string{
	`<message from='pubsub.shakespeare.lit' id='foo'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='princely_musings'><item id='ae89'><entry xmlns='http://www.w3.org/2005/Atom'><title>Soliloquy</title></entry></item></items></event></message>`,
	`<message from='pubsub.shakespeare.lit'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='princely_musings'><retract id='ae89'/></items></event></message>`,
	`<message from='pubsub.shakespeare.lit'><event xmlns='http://jabber.org/protocol/pubsub#event'><delete node='princely_musings'><redirect uri='xmpp:hamlet@denmark.lit?;node=blog'/></delete></event></message>`,
	`<message from='pubsub.shakespeare.lit'><event xmlns='http://jabber.org/protocol/pubsub#event'><purge node='princely_musings'/></event></message>`,
	`<message type='headline' from=''><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1001' label='Phone'/></devices></item></items></event></message>`,
	`<message from='a@b'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'><item id='1'><p:x xmlns:p='urn:p' xmlns:q='urn:q' q:a='1' xml:lang='en'>t<y xmlns=''/></p:x></item></items></event></message>`,
}

// FuzzParseEvent checks that ParseEvent never panics, that accepted events
// are attributed to a bare JID and that every payload is well-formed XML
// that serialises to the same bytes again.
func FuzzParseEvent(f *testing.F) {
	for _, s := range eventSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		ev, err := pep.ParseEvent(xml.NewDecoder(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if ev.From.Resourcepart() != "" {
			t.Fatalf("event from full JID %v", ev.From)
		}
		if ev.Node == "" {
			t.Fatal("event without node")
		}
		for _, it := range ev.Items {
			if it.Payload == nil {
				continue
			}
			again, err := pep.Reencode(it.Payload)
			if err != nil {
				t.Fatalf("payload %q does not parse: %v", it.Payload, err)
			}
			if !bytes.Equal(again, it.Payload) {
				t.Fatalf("payload not stable:\n%q\n%q", it.Payload, again)
			}
		}
	})
}

// FuzzParseError checks that ParseError never panics and always yields a
// condition and bounded, printable text.
func FuzzParseError(f *testing.F) {
	for _, s := range []string{
		`<iq type='error'><error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Field does not match: access_model</text></error></iq>`,
		`<iq type='error'><error type='cancel'><feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><unsupported xmlns='http://jabber.org/protocol/pubsub#errors' feature='publish'/></error></iq>`,
		`<error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xml:lang='en' xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>no</text></error>`,
		`<error/>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		e, err := pep.ParseError(xml.NewDecoder(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if e.Condition == "" {
			t.Fatal("empty condition")
		}
		if len(e.Text) > 1024 {
			t.Fatalf("text of %d bytes", len(e.Text))
		}
		for _, r := range e.Text {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("control character in %q", e.Text)
			}
		}
		_ = e.Error()
	})
}
