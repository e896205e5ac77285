package devicelist_test

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

var (
	_ xml.Marshaler       = devicelist.List{}
	_ xml.Unmarshaler     = (*devicelist.List)(nil)
	_ xmlstream.Marshaler = devicelist.List{}
	_ xmlstream.WriterTo  = devicelist.List{}
)

// pyTwomemoDeviceList was produced once by the Debian python-twomemo 1.0.3:
//
//	/usr/bin/python3 -c 'import xml.etree.ElementTree as ET, twomemo.etree as te
//	print(ET.tostring(te.serialize_device_list({1: None, 4223: "Gajim",
//	    2147483647: "Dino \u00e9 <&>\u0027\""}), encoding="unicode"))'
const pyTwomemoDeviceList = `<ns0:devices xmlns:ns0="urn:xmpp:omemo:2"><ns0:device id="1" /><ns0:device id="4223" label="Gajim" /><ns0:device id="2147483647" label="Dino é &lt;&amp;&gt;'&quot;" /></ns0:devices>`

// pyOldmemoDeviceList was produced once by the Debian python-oldmemo 1.0.3:
//
//	/usr/bin/python3 -c 'import xml.etree.ElementTree as ET, oldmemo.etree as oe
//	print(ET.tostring(oe.serialize_device_list({1: None, 4223: "Gajim",
//	    2147483647: None}), encoding="unicode"))'
//
// (oldmemo drops the label.)
const pyOldmemoDeviceList = `<ns0:list xmlns:ns0="eu.siacs.conversations.axolotl"><ns0:device id="1" /><ns0:device id="4223" /><ns0:device id="2147483647" /></ns0:list>`

// The examples of XEP-0384 0.9.1 ("Devicelist update received by subscribed
// clients", "Adding the own device id to the list") and of XEP-0384 0.3.0,
// with the &ns; entities expanded.
const (
	xep091Update = `<message from='juliet@capulet.lit'
         to='romeo@montague.lit'
         type='headline'
         id='update_01'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <items node='urn:xmpp:omemo:2:devices'>
      <item id='current'>
        <devices xmlns='urn:xmpp:omemo:2'>
          <device id='12345' />
          <device id='4223' label='Gajim on Ubuntu Linux' labelsig='b64/encoded/data' />
        </devices>
      </item>
    </items>
  </event>
</message>`
	xep091Announce = `<iq from='juliet@capulet.lit' type='set' id='announce1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='urn:xmpp:omemo:2:devices'>
      <item id='current'>
        <devices xmlns='urn:xmpp:omemo:2'>
          <device id='12345' label='Dino on Lenovo Thinkpad T495' labelsig='b64/encoded/data' />
          <device id='4223' />
          <device id='31415' label='Conversations on Pixel 3' labelsig='b64/encoded/data' />
        </devices>
      </item>
    </publish>
    <publish-options>
      <x xmlns='jabber:x:data' type='submit'>
        <field var='FORM_TYPE' type='hidden'>
          <value>http://jabber.org/protocol/pubsub#publish-options</value>
        </field>
        <field var='pubsub#access_model'>
          <value>open</value>
        </field>
      </x>
    </publish-options>
  </pubsub>
</iq>`
	xep030Update = `<message from='juliet@capulet.lit'
         to='romeo@montague.lit'
         type='headline'
         id='update_01'>
  <event xmlns='http://jabber.org/protocol/pubsub#event'>
    <items node='eu.siacs.conversations.axolotl.devicelist'>
      <item id='current'>
        <list xmlns='eu.siacs.conversations.axolotl'>
          <device id='12345' />
          <device id='4223' />
        </list>
      </item>
    </items>
  </event>
</message>`
	xep030Announce = `<iq from='juliet@capulet.lit' type='set' id='announce1'>
  <pubsub xmlns='http://jabber.org/protocol/pubsub'>
    <publish node='eu.siacs.conversations.axolotl.devicelist'>
      <item id='current'>
        <list xmlns='eu.siacs.conversations.axolotl'>
          <device id='12345' />
          <device id='4223' />
          <device id='31415' />
        </list>
      </item>
    </publish>
  </pubsub>
</iq>`
)

// b64Placeholder is what the XEP's placeholder "b64/encoded/data" decodes to.
var b64Placeholder, _ = base64.StdEncoding.DecodeString("b64/encoded/data")

func decodeString(s string) (*devicelist.List, error) {
	return devicelist.Decode(xml.NewDecoder(strings.NewReader(s)))
}

// findAndParse parses the first element called local inside doc.
func findAndParse(t *testing.T, doc, local string) *devicelist.List {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := d.Token()
		if err != nil {
			t.Fatalf("no <%s> found: %v", local, err)
		}
		if start, ok := tok.(xml.StartElement); ok && start.Name.Local == local {
			l, err := devicelist.Parse(d, start)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			// The rest of the document must still be readable: Parse
			// consumed exactly the element.
			for {
				if _, err := d.Token(); err == io.EOF {
					break
				} else if err != nil {
					t.Fatalf("document after Parse: %v", err)
				}
			}
			return l
		}
	}
}

func marshal(t *testing.T, l devicelist.List) string {
	t.Helper()
	b, err := xml.Marshal(l)
	if err != nil {
		t.Fatalf("xml.Marshal: %v", err)
	}
	return string(b)
}

func TestExactXML(t *testing.T) {
	tests := []struct {
		list devicelist.List
		xml  string
	}{
		0: {
			list: devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{
				{ID: 1},
				{ID: 4223, Label: "Gajim"},
				{ID: 4294967295, Label: "Dino <&>", LabelSignature: []byte{1, 2, 3, 4}},
				{ID: 7, LabelSignature: []byte{9}}, // signature without label: dropped
				{ID: 8, Label: "x", LabelSignature: []byte{}},
			}},
			xml: `<devices xmlns="urn:xmpp:omemo:2"><device id="1"></device><device id="4223" label="Gajim"></device>` +
				`<device id="4294967295" label="Dino &lt;&amp;&gt;" labelsig="AQIDBA=="></device><device id="7"></device>` +
				`<device id="8" label="x"></device></devices>`,
		},
		1: {
			list: devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{
				{ID: 1}, {ID: 4223, Label: "dropped", LabelSignature: []byte{1}},
			}},
			xml: `<list xmlns="eu.siacs.conversations.axolotl"><device id="1"></device><device id="4223"></device></list>`,
		},
		2: {
			list: devicelist.List{Namespace: ns.OMEMO2},
			xml:  `<devices xmlns="urn:xmpp:omemo:2"></devices>`,
		},
		3: {
			list: devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{}},
			xml:  `<list xmlns="eu.siacs.conversations.axolotl"></list>`,
		},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if got := marshal(t, tc.list); got != tc.xml {
				t.Errorf("xml.Marshal:\n got %s\nwant %s", got, tc.xml)
			}
			// Pointer values marshal the same way.
			if b, err := xml.Marshal(&tc.list); err != nil || string(b) != tc.xml {
				t.Errorf("xml.Marshal(pointer): %v\n got %s\nwant %s", err, b, tc.xml)
			}
			var buf bytes.Buffer
			e := xml.NewEncoder(&buf)
			n, err := tc.list.WriteXML(e)
			if err != nil {
				t.Fatalf("WriteXML: %v", err)
			}
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
			if buf.String() != tc.xml {
				t.Errorf("WriteXML:\n got %s\nwant %s", buf.String(), tc.xml)
			}
			toks, err := xmlstream.ReadAll(tc.list.TokenReader())
			if err != nil {
				t.Fatalf("TokenReader: %v", err)
			}
			if n != len(toks) {
				t.Errorf("WriteXML reported %d tokens, TokenReader yields %d", n, len(toks))
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	lists := []devicelist.List{
		0: {Namespace: ns.OMEMO2, Devices: []devicelist.Device{
			{ID: 1}, {ID: 2, Label: "Gajim on\tUbuntu\r\n", LabelSignature: bytes.Repeat([]byte{0xab}, 64)},
			{ID: 2147483647, Label: "ünïcödé ✓ 😀"}, {ID: 4294967295},
		}},
		1: {Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 1}, {ID: 31415}, {ID: 4294967295}}},
		2: {Namespace: ns.OMEMO2},
		3: {Namespace: ns.Legacy},
	}
	for i, l := range lists {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(marshal(t, l))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(*got, l) {
				t.Errorf("round trip:\n got %#v\nwant %#v", *got, l)
			}
			// Also through encoding/xml's Unmarshal, embedded in a struct.
			var wrapper struct {
				XMLName xml.Name        `xml:"item"`
				List    devicelist.List `xml:",any"`
			}
			if err := xml.Unmarshal([]byte("<item>"+marshal(t, l)+"</item>"), &wrapper); err != nil {
				t.Fatalf("xml.Unmarshal: %v", err)
			}
			if !reflect.DeepEqual(wrapper.List, l) {
				t.Errorf("xml.Unmarshal:\n got %#v\nwant %#v", wrapper.List, l)
			}
			// And straight from the in-memory token stream, whose children
			// carry no namespace.
			r := l.TokenReader()
			start, err := r.Token()
			if err != nil {
				t.Fatal(err)
			}
			got, err = devicelist.Parse(r, start.(xml.StartElement))
			if err != nil {
				t.Fatalf("Parse(TokenReader): %v", err)
			}
			if !reflect.DeepEqual(*got, l) {
				t.Errorf("Parse(TokenReader):\n got %#v\nwant %#v", *got, l)
			}
		})
	}
}

func TestPythonOutput(t *testing.T) {
	got, err := decodeString(pyTwomemoDeviceList)
	if err != nil {
		t.Fatal(err)
	}
	want := devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{
		{ID: 1}, {ID: 4223, Label: "Gajim"}, {ID: 2147483647, Label: "Dino é <&>'\""},
	}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("twomemo:\n got %#v\nwant %#v", *got, want)
	}

	got, err = decodeString(pyOldmemoDeviceList)
	if err != nil {
		t.Fatal(err)
	}
	want = devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 1}, {ID: 4223}, {ID: 2147483647}}}
	if !reflect.DeepEqual(*got, want) {
		t.Errorf("oldmemo:\n got %#v\nwant %#v", *got, want)
	}
}

func TestXEPExamples(t *testing.T) {
	tests := []struct {
		doc, local string
		want       devicelist.List
	}{
		0: {xep091Update, "devices", devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{
			{ID: 12345},
			{ID: 4223, Label: "Gajim on Ubuntu Linux", LabelSignature: b64Placeholder},
		}}},
		1: {xep091Announce, "devices", devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{
			{ID: 12345, Label: "Dino on Lenovo Thinkpad T495", LabelSignature: b64Placeholder},
			{ID: 4223},
			{ID: 31415, Label: "Conversations on Pixel 3", LabelSignature: b64Placeholder},
		}}},
		2: {xep030Update, "list", devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 12345}, {ID: 4223}}}},
		3: {xep030Announce, "list", devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 12345}, {ID: 4223}, {ID: 31415}}}},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got := findAndParse(t, tc.doc, tc.local)
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestParseLenient(t *testing.T) {
	tests := []struct {
		xml  string
		want devicelist.List
	}{
		// Empty lists are valid.
		0: {`<devices xmlns='urn:xmpp:omemo:2'/>`, devicelist.List{Namespace: ns.OMEMO2}},
		1: {`<list xmlns='eu.siacs.conversations.axolotl'></list>`, devicelist.List{Namespace: ns.Legacy}},
		// Duplicate ids keep the first occurrence.
		2: {`<devices xmlns='urn:xmpp:omemo:2'><device id='5' label='first'/><device id='6'/><device id='5' label='second'/></devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5, Label: "first"}, {ID: 6}}}},
		// Unknown attributes, children, foreign elements and text are ignored.
		3: {`<devices xmlns='urn:xmpp:omemo:2' foo='bar'>text<device id='5' x='y' xmlns:z='urn:z' z:label='no'><child><device id='9'/></child></device>` +
			`<other id='7'/><device xmlns='urn:other' id='8'/><!-- c --><?pi x?></devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5}}}},
		// Labels are ignored in the legacy namespace.
		4: {`<list xmlns='eu.siacs.conversations.axolotl'><device id='5' label='l' labelsig='AAAA'/></list>`,
			devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 5}}}},
		// Invalid base64 in labelsig drops the signature, not the device.
		5: {`<devices xmlns='urn:xmpp:omemo:2'><device id='5' label='l' labelsig='!!!'/><device id='6' label='m' labelsig='A'/></devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5, Label: "l"}, {ID: 6, Label: "m"}}}},
		// A signature without label is dropped; an empty one is absent.
		6: {`<devices xmlns='urn:xmpp:omemo:2'><device id='5' labelsig='AAAA'/><device id='6' label='' labelsig='AAAA'/><device id='7' label='x' labelsig=''/></devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5}, {ID: 6}, {ID: 7, Label: "x"}}}},
		// Wrapped base64 without padding is accepted in labelsig.
		7: {"<devices xmlns='urn:xmpp:omemo:2'><device id='5' label='l' labelsig='AQID&#10;BA'/></devices>",
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 5, Label: "l", LabelSignature: []byte{1, 2, 3, 4}}}}},
		// Ids: whitespace (xs:unsignedInt collapses it) and leading zeros.
		8: {`<list xmlns='eu.siacs.conversations.axolotl'><device id=' 42 '/><device id='0007'/><device id='4294967295'/></list>`,
			devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 42}, {ID: 7}, {ID: 4294967295}}}},
		// Prefixed namespaces, as python's ElementTree writes them.
		// A child without namespace counts as inherited (as in token streams
		// built in memory).
		9: {`<p:devices xmlns:p='urn:xmpp:omemo:2'><p:device id='1'/><device id='2'/></p:devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1}, {ID: 2}}}},
		// Any label string, including one longer than the recommended 53
		// code points.
		10: {`<devices xmlns='urn:xmpp:omemo:2'><device id='1' label='` + strings.Repeat("é", 200) + `'/></devices>`,
			devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1, Label: strings.Repeat("é", 200)}}}},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			got, err := decodeString(tc.xml)
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("\n got %#v\nwant %#v", *got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		xml string
		err error
	}{
		0:  {`<device xmlns='urn:xmpp:omemo:2' id='1'/>`, devicelist.ErrWrongElement},
		1:  {`<list xmlns='urn:xmpp:omemo:2'/>`, devicelist.ErrWrongElement},
		2:  {`<devices xmlns='eu.siacs.conversations.axolotl'/>`, devicelist.ErrWrongElement},
		3:  {`<devices/>`, devicelist.ErrWrongElement},
		4:  {`<devices xmlns='urn:xmpp:omemo:1'/>`, devicelist.ErrWrongElement},
		5:  {`<devices xmlns='urn:xmpp:omemo:2'><device/></devices>`, devicelist.ErrInvalidID},
		6:  {`<devices xmlns='urn:xmpp:omemo:2'><device id=''/></devices>`, devicelist.ErrInvalidID},
		7:  {`<devices xmlns='urn:xmpp:omemo:2'><device id='0'/></devices>`, devicelist.ErrInvalidID},
		8:  {`<devices xmlns='urn:xmpp:omemo:2'><device id='-1'/></devices>`, devicelist.ErrInvalidID},
		9:  {`<devices xmlns='urn:xmpp:omemo:2'><device id='+1'/></devices>`, devicelist.ErrInvalidID},
		10: {`<devices xmlns='urn:xmpp:omemo:2'><device id='abc'/></devices>`, devicelist.ErrInvalidID},
		11: {`<devices xmlns='urn:xmpp:omemo:2'><device id='4294967296'/></devices>`, devicelist.ErrInvalidID},
		12: {`<devices xmlns='urn:xmpp:omemo:2'><device id='99999999999999999999999'/></devices>`, devicelist.ErrInvalidID},
		13: {`<list xmlns='eu.siacs.conversations.axolotl'><device id='1'/><device id='0x10'/></list>`, devicelist.ErrInvalidID},
		14: {`<list xmlns='eu.siacs.conversations.axolotl'><device id='1.0'/></list>`, devicelist.ErrInvalidID},
		15: {`<list xmlns='eu.siacs.conversations.axolotl'><device id='1_000'/></list>`, devicelist.ErrInvalidID},
		16: {`<devices xmlns='urn:xmpp:omemo:2'><device id='1'>`, nil},
		17: {``, io.ErrUnexpectedEOF},
		18: {`<devices xmlns='urn:xmpp:omemo:2'><device id='1'></devices>`, nil}, // syntax error from encoding/xml
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			l, err := decodeString(tc.xml)
			if err == nil {
				t.Fatalf("no error, got %#v", l)
			}
			if l != nil {
				t.Errorf("a list was returned together with an error")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("got %v, want %v", err, tc.err)
			}
			if tc.err == nil {
				var se *xml.SyntaxError
				if !errors.As(err, &se) {
					t.Errorf("got %v, want an *xml.SyntaxError", err)
				}
			}
		})
	}
}

func TestErrorDoesNotEchoInput(t *testing.T) {
	secret := strings.Repeat("9", 40) + "SECRET"
	_, err := decodeString(`<devices xmlns='urn:xmpp:omemo:2'><device id='` + secret + `'/></devices>`)
	if err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("error %v echoes the input", err)
	}
}

func TestTooManyDevices(t *testing.T) {
	var b strings.Builder
	b.WriteString(`<list xmlns='eu.siacs.conversations.axolotl'>`)
	for i := 1; i <= devicelist.MaxDevices; i++ {
		fmt.Fprintf(&b, `<device id='%d'/>`, i)
	}
	ok := b.String() + `</list>`
	l, err := decodeString(ok)
	if err != nil || len(l.Devices) != devicelist.MaxDevices {
		t.Fatalf("a list of exactly MaxDevices: %v", err)
	}
	tooMany := b.String() + `<device id='1'/></list>`
	if _, err := decodeString(tooMany); !errors.Is(err, devicelist.ErrTooManyDevices) {
		t.Errorf("got %v, want ErrTooManyDevices", err)
	}

	l.Devices = append(l.Devices, devicelist.Device{ID: devicelist.MaxDevices + 1})
	if _, err := xml.Marshal(l); !errors.Is(err, devicelist.ErrTooManyDevices) {
		t.Errorf("marshal: got %v, want ErrTooManyDevices", err)
	}
}

func TestMarshalErrors(t *testing.T) {
	tests := []struct {
		list devicelist.List
		err  error
	}{
		0: {devicelist.List{}, devicelist.ErrUnknownNamespace},
		1: {devicelist.List{Namespace: "urn:xmpp:omemo:1"}, devicelist.ErrUnknownNamespace},
		2: {devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 0}}}, devicelist.ErrInvalidID},
		3: {devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 1}, {ID: 0}}}, devicelist.ErrInvalidID},
		4: {devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1}, {ID: 1, Label: "x"}}}, devicelist.ErrDuplicateID},
		5: {devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 3}, {ID: 3}}}, devicelist.ErrDuplicateID},
		6: {devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1, Label: "a\x00b"}}}, devicelist.ErrInvalidLabel},
		7: {devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1, Label: "\xff"}}}, devicelist.ErrInvalidLabel},
		8: {devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1, Label: "\uffff"}}}, devicelist.ErrInvalidLabel},
	}
	for i, tc := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			if _, err := xml.Marshal(tc.list); !errors.Is(err, tc.err) {
				t.Errorf("xml.Marshal: got %v, want %v", err, tc.err)
			}
			var buf bytes.Buffer
			e := xml.NewEncoder(&buf)
			n, err := tc.list.WriteXML(e)
			if !errors.Is(err, tc.err) {
				t.Errorf("WriteXML: got %v, want %v", err, tc.err)
			}
			if n != 0 {
				t.Errorf("WriteXML wrote %d tokens before failing", n)
			}
			if _, err := tc.list.TokenReader().Token(); !errors.Is(err, tc.err) {
				t.Errorf("TokenReader: got %v, want %v", err, tc.err)
			}
		})
	}
	// Labels that are invalid XML are harmless in the legacy namespace,
	// where labels are dropped.
	if _, err := xml.Marshal(devicelist.List{Namespace: ns.Legacy, Devices: []devicelist.Device{{ID: 1, Label: "\x00"}}}); err != nil {
		t.Errorf("legacy list with unrepresentable label: %v", err)
	}
}

func TestNode(t *testing.T) {
	if got := devicelist.Node(ns.OMEMO2); got != "urn:xmpp:omemo:2:devices" {
		t.Errorf("Node(OMEMO2) = %q", got)
	}
	if got := devicelist.Node(ns.Legacy); got != "eu.siacs.conversations.axolotl.devicelist" {
		t.Errorf("Node(Legacy) = %q", got)
	}
	if got := devicelist.Node("urn:example"); got != "" {
		t.Errorf("Node(unknown) = %q", got)
	}
	if devicelist.ItemID != "current" {
		t.Errorf("ItemID = %q", devicelist.ItemID)
	}
}

// tokenAndEOF returns each token together with io.EOF on the last one, as
// the io.Reader-like contract of xml.TokenReader allows.
type tokenAndEOF struct{ toks []xml.Token }

func (r *tokenAndEOF) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	if len(r.toks) == 0 {
		return t, io.EOF
	}
	return t, nil
}

func TestTokenReaderContracts(t *testing.T) {
	l := devicelist.List{Namespace: ns.OMEMO2, Devices: []devicelist.Device{{ID: 1}, {ID: 2, Label: "x"}}}
	toks, err := xmlstream.ReadAll(l.TokenReader())
	if err != nil {
		t.Fatal(err)
	}
	// A reader that reports EOF together with the final end element.
	got, err := devicelist.Decode(&tokenAndEOF{toks: toks})
	if err != nil || !reflect.DeepEqual(*got, l) {
		t.Errorf("token+EOF reader: %v, %#v", err, got)
	}
	// A reader limited to the inner tokens (no end element).
	got, err = devicelist.Parse(&tokenAndEOF{toks: toks[1 : len(toks)-1]}, toks[0].(xml.StartElement))
	if err != nil || !reflect.DeepEqual(*got, l) {
		t.Errorf("inner reader: %v, %#v", err, got)
	}
	// A reader with a truncated child.
	if _, err := devicelist.Parse(&tokenAndEOF{toks: toks[1:2]}, toks[0].(xml.StartElement)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated child: got %v", err)
	}
	// Reader errors are passed on.
	boom := errors.New("boom")
	r := xmlstream.ReaderFunc(func() (xml.Token, error) { return nil, boom })
	if _, err := devicelist.Parse(r, toks[0].(xml.StartElement)); !errors.Is(err, boom) {
		t.Errorf("reader error: got %v", err)
	}
}
