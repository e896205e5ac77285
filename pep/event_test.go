package pep_test

import (
	"encoding/xml"
	"errors"
	"reflect"
	"strconv"
	"testing"

	"mellium.im/omemo/pep"
	"mellium.im/xmpp/jid"
)

func TestParseEvent(t *testing.T) {
	for i, tc := range []struct {
		in   string
		want pep.Event
		err  error
	}{
		// XEP-0060 Example 98 (payload shortened), default namespace jabber:client.
		0: {in: `<message from='pubsub.shakespeare.lit' to='francisco@denmark.lit' id='foo' xmlns='jabber:client'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <items node='princely_musings'>
      <item id='ae890ac52d0df67ed7cfdf51b644e901'>
        <entry xmlns='http://www.w3.org/2005/Atom'><title>Soliloquy</title></entry>
      </item>
    </items>
  </event>
</message>`, want: pep.Event{
			From: jid.MustParse("pubsub.shakespeare.lit"), Node: "princely_musings",
			Items: []pep.Item{{ID: "ae890ac52d0df67ed7cfdf51b644e901", Payload: []byte(`<entry xmlns="http://www.w3.org/2005/Atom"><title>Soliloquy</title></entry>`)}},
		}},
		// XEP-0060 Example 117: retraction, plus SHIM headers that are ignored.
		1: {in: `<message from='pubsub.shakespeare.lit' to='bernardo@denmark.lit' id='bar'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <items node='princely_musings'>
      <retract id='ae890ac52d0df67ed7cfdf51b644e901'/>
    </items>
  </event>
  <headers xmlns='http://jabber.org/protocol/shim'>
    <header name='SubID'>123-abc</header>
  </headers>
</message>`, want: pep.Event{From: jid.MustParse("pubsub.shakespeare.lit"), Node: "princely_musings", Retracted: []string{"ae890ac52d0df67ed7cfdf51b644e901"}}},
		// XEP-0060 Example 162: node deletion with redirect.
		2: {in: `<message from='pubsub.shakespeare.lit' to='francisco@denmark.lit' id='foo'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <delete node='princely_musings'>
      <redirect uri='xmpp:hamlet@denmark.lit?;node=blog'/>
    </delete>
  </event>
</message>`, want: pep.Event{From: jid.MustParse("pubsub.shakespeare.lit"), Node: "princely_musings", Deleted: true}},
		// XEP-0060 Example 169: purge.
		3: {in: `<message from='pubsub.shakespeare.lit' to='francisco@denmark.lit' id='foo'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <purge node='princely_musings'/>
  </event>
</message>`, want: pep.Event{From: jid.MustParse("pubsub.shakespeare.lit"), Node: "princely_musings", Purged: true}},
		// Own account (mellium empties the own bare JID), OMEMO device list
		// as Prosody sends it, an item without payload and a retraction.
		4: {in: `<message type='headline' to='alice@localhost/x' from=''><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><item publisher='alice@localhost' id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1001' label='Phone'/></devices></item><item id='empty'/><retract id='old'/></items></event><delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25Z'/></message>`,
			want: pep.Event{Node: "urn:xmpp:omemo:2:devices", Items: []pep.Item{
				{ID: "current", Payload: []byte(`<devices xmlns="urn:xmpp:omemo:2"><device id="1001" label="Phone"/></devices>`)},
				{ID: "empty"},
			}, Retracted: []string{"old"}}},
		// A contact's PEP service.
		5: {in: `<message type='headline' from='Bob@Example.org'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event></message>`,
			want: pep.Event{From: jid.MustParse("bob@example.org"), Node: "n"}},

		// A client resource (or MUC occupant) cannot speak for a PEP service.
		6:  {in: `<message from='bob@example.org/evil'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event></message>`, err: pep.ErrUntrustedSender},
		7:  {in: `<message from='@@'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event></message>`, err: pep.ErrUntrustedSender},
		8:  {in: `<message type='error' from='bob@example.org'><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event></message>`, err: pep.ErrMalformed},
		9:  {in: `<event xmlns='http://jabber.org/protocol/pubsub#event'><items node='n'/></event>`, err: pep.ErrMalformed},
		10: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items/></event></message>`, err: pep.ErrMalformed},
		11: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='a'/></event><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='b'/></event></message>`, err: pep.ErrMalformed},
		12: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='a'><item id='1'><a/><b/></item></items></event></message>`, err: pep.ErrMalformed},
		13: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='a'><retract/></items></event></message>`, err: pep.ErrMalformed},
		14: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><configuration node='a'/></event></message>`, err: pep.ErrUnsupportedEvent},
		15: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub'><items node='a'/></event></message>`, err: pep.ErrMalformed},
		16: {in: `<message><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='a'>`, err: pep.ErrMalformed},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := pep.ParseEvent(decoder(tc.in))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.From.Equal(tc.want.From) {
				t.Errorf("From = %v, want %v", got.From, tc.want.From)
			}
			got.From, tc.want.From = jid.JID{}, jid.JID{}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// The payload bytes of an event decode again, namespaces intact.
func TestEventPayloadDecodes(t *testing.T) {
	ev, err := pep.ParseEvent(decoder(`<message from=''><event xmlns='http://jabber.org/protocol/pubsub#event'><items node='urn:xmpp:omemo:2:devices'><item id='current'><devices xmlns='urn:xmpp:omemo:2'><device id='1001'/><device id='42'/></devices></item></items></event></message>`))
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		XMLName xml.Name `xml:"urn:xmpp:omemo:2 devices"`
		Devices []struct {
			ID uint32 `xml:"id,attr"`
		} `xml:"urn:xmpp:omemo:2 device"`
	}
	if err := xml.NewTokenDecoder(ev.Items[0].TokenReader()).Decode(&l); err != nil {
		t.Fatal(err)
	}
	if len(l.Devices) != 2 || l.Devices[0].ID != 1001 || l.Devices[1].ID != 42 {
		t.Fatalf("devices = %+v", l.Devices)
	}
}
