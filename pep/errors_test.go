package pep_test

import (
	"encoding/xml"
	"errors"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/pep"
	"mellium.im/xmpp/stanza"
)

func decoder(s string) xml.TokenReader { return xml.NewDecoder(strings.NewReader(s)) }

func TestParseError(t *testing.T) {
	for i, tc := range []struct {
		in   string
		want pep.Error
		err  error
	}{
		// XEP-0060 Example 125-style precondition failure, with Prosody's text.
		0: {in: `<iq type='error' from='pubsub.shakespeare.lit' to='hamlet@denmark.lit/elsinore' id='publish1' xmlns='jabber:client'>
  <error type='cancel'>
    <conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/>
    <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Field does not match: access_model</text>
  </error>
</iq>`, want: pep.Error{Type: stanza.Cancel, Condition: stanza.Conflict, PubSubCondition: "precondition-not-met", Text: "Field does not match: access_model"}},
		// XEP-0060 Example 112: item publication not supported.
		1: {in: `<iq type='error' from='pubsub.shakespeare.lit' to='hamlet@denmark.lit/elsinore' id='publish1'>
  <error type='cancel'>
    <feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <unsupported xmlns='http://jabber.org/protocol/pubsub#errors'
                 feature='publish'/>
  </error>
</iq>`, want: pep.Error{Type: stanza.Cancel, Condition: stanza.FeatureNotImplemented, PubSubCondition: "unsupported", Feature: "publish"}},
		// XEP-0060 Example 63: presence subscription required.
		2: {in: `<iq type='error' from='pubsub.shakespeare.lit' to='francisco@denmark.lit/barracks' id='items1'>
  <error type='auth'>
    <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <presence-subscription-required xmlns='http://jabber.org/protocol/pubsub#errors'/>
  </error>
</iq>`, want: pep.Error{Type: stanza.Auth, Condition: stanza.NotAuthorized, PubSubCondition: "presence-subscription-required"}},
		// A bare <error/> element; the untagged text wins over a tagged one.
		3: {in: `<error type='cancel' xmlns='jabber:client'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xml:lang='de' xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>weg</text><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></error>`,
			want: pep.Error{Type: stanza.Cancel, Condition: stanza.ItemNotFound, Text: "gone"}},
		// No defined condition.
		4: {in: `<error type='wait'/>`, want: pep.Error{Type: stanza.Wait, Condition: stanza.UndefinedCondition}},
		// Control characters are neutralised.
		5: {in: "<error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>a\x0ab\tc</text></error>",
			want: pep.Error{Type: stanza.Modify, Condition: stanza.BadRequest, Text: "a b c"}},
		6: {in: `<iq type='error'/>`, err: pep.ErrMalformed},
		7: {in: `<iq type='error'><error>`, err: pep.ErrMalformed},
		8: {in: ``, err: pep.ErrMalformed},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := pep.ParseError(decoder(tc.in))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != tc.want {
				t.Fatalf("got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestErrorMatching(t *testing.T) {
	e, err := pep.ParseError(decoder(`<error type='cancel'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/></error>`))
	if err != nil {
		t.Fatal(err)
	}
	var wrapped error = e
	if !errors.Is(wrapped, pep.ErrPreconditionNotMet) {
		t.Error("not ErrPreconditionNotMet")
	}
	if errors.Is(wrapped, pep.ErrForbidden) || errors.Is(wrapped, pep.ErrNotFound) {
		t.Error("matches unrelated sentinels")
	}
	if !errors.Is(wrapped, stanza.Error{Condition: stanza.Conflict}) {
		t.Error("does not unwrap to stanza.Error conflict")
	}
	if s := e.Error(); !strings.Contains(s, "conflict") || !strings.Contains(s, "precondition-not-met") {
		t.Errorf("Error() = %q", s)
	}

	f, _ := pep.ParseError(decoder(`<error type='auth'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>`))
	if !errors.Is(f, pep.ErrForbidden) || errors.Is(f, pep.ErrPreconditionNotMet) {
		t.Error("forbidden matching")
	}
}

func TestParseErrorBoundsText(t *testing.T) {
	long := strings.Repeat("é", 5000)
	e, err := pep.ParseError(decoder(`<error type='cancel'><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>` + long + `</text></error>`))
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Text) > 1024 || !strings.HasPrefix(long, e.Text) || e.Text == "" {
		t.Fatalf("text not bounded on a rune boundary: %d bytes", len(e.Text))
	}
}
