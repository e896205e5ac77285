package encrypted_test

import (
	"encoding/xml"
	"fmt"
	"strings"

	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
)

func Example() {
	msg := encrypted.Encrypted{
		Namespace: ns.OMEMO2,
		SID:       27183,
		Keys: []encrypted.Key{
			{JID: "juliet@capulet.lit", RID: 31415, KeyExchange: true, Data: []byte{1, 2, 3}},
			{JID: "romeo@montague.lit", RID: 1337, Data: []byte{4, 5, 6}},
		},
		Payload: []byte("ciphertext"),
	}
	out, err := xml.Marshal(msg)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(out))

	// On the receiving side, recognise the element and look up our key.
	d := xml.NewDecoder(strings.NewReader(string(out)))
	tok, _ := d.Token()
	start := tok.(xml.StartElement)
	if namespace, ok := encrypted.Is(start); ok {
		parsed, err := encrypted.Parse(d, start)
		if err != nil {
			panic(err)
		}
		for _, k := range parsed.KeysFor("juliet@capulet.lit", 31415) {
			fmt.Println(namespace, parsed.SID, k.KeyExchange, k.Data)
		}
	}
	// Output:
	// <encrypted xmlns="urn:xmpp:omemo:2"><header sid="27183"><keys jid="juliet@capulet.lit"><key rid="31415" kex="true">AQID</key></keys><keys jid="romeo@montague.lit"><key rid="1337">BAUG</key></keys></header><payload>Y2lwaGVydGV4dA==</payload></encrypted>
	// urn:xmpp:omemo:2 27183 true [1 2 3]
}
