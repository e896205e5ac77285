package devicelist_test

import (
	"encoding/xml"
	"reflect"
	"strings"
	"testing"

	"mellium.im/omemo/devicelist"
)

// FuzzParseDeviceList checks that parsing never panics and that whatever
// parses encodes and parses back to the same value.
func FuzzParseDeviceList(f *testing.F) {
	for _, s := range []string{
		pyTwomemoDeviceList,
		pyOldmemoDeviceList,
		`<devices xmlns="urn:xmpp:omemo:2"><device id="1"></device><device id="4223" label="Gajim"></device><device id="4294967295" label="Dino &lt;&amp;&gt;" labelsig="AQIDBA=="></device></devices>`,
		`<list xmlns="eu.siacs.conversations.axolotl"><device id="1"></device><device id="4223"></device></list>`,
		`<devices xmlns='urn:xmpp:omemo:2'><device id='5' label='l' labelsig='!!!'/><device id='5'/><x><device id='0'/></x></devices>`,
		`<list xmlns='eu.siacs.conversations.axolotl'/>`,
	} {
		f.Add(s)
	}
	for _, doc := range []string{xep091Update, xep091Announce, xep030Update, xep030Announce} {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := decodeFirst(s)
		if err != nil {
			return
		}
		b, err := xml.Marshal(l)
		if err != nil {
			t.Fatalf("parsed list does not marshal: %v\n%#v", err, l)
		}
		again, err := decodeString(string(b))
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, b)
		}
		if !reflect.DeepEqual(again, l) {
			t.Fatalf("round trip changed the value:\n got %#v\nwant %#v\nxml %s", again, l, b)
		}
	})
}

// decodeFirst parses the first <devices> or <list> element found in s, so
// that the XEP examples (full stanzas) are useful seeds too.
func decodeFirst(s string) (*devicelist.List, error) {
	d := xml.NewDecoder(strings.NewReader(s))
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		if start, ok := tok.(xml.StartElement); ok && (start.Name.Local == "devices" || start.Name.Local == "list") {
			return devicelist.Parse(d, start)
		}
	}
}
