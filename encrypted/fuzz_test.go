package encrypted_test

import (
	"encoding/xml"
	"reflect"
	"testing"
)

// FuzzParseEncrypted checks that parsing never panics and that whatever
// parses encodes and parses back to the same value.
func FuzzParseEncrypted(f *testing.F) {
	for _, s := range []string{
		pyTwomemoMessage,
		pyTwomemoEmpty,
		pyOldmemoMessage,
		xep091Send,
		xep091Group,
		xep030Send,
		xep030Key,
		`<encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='a'><key rid='1' kex='1'>AQ==</key></keys><keys jid='b'><key rid='2' kex='false'>Ag</key></keys>` +
			`<keys jid='a'><key rid='3'>Aw==</key></keys></header><payload/></encrypted>`,
		`<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='2'><iv>AAECAwQFBgcICQoLDA0ODw==</iv><key rid='3' prekey='0'>` +
			"\n AQ\n" + `</key><key rid='4' prekey='true'/></header></encrypted>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := decodeFirst(s)
		if err != nil {
			return
		}
		out, err := xml.Marshal(e)
		if err != nil {
			t.Fatalf("parsed element does not marshal: %v\n%#v", err, e)
		}
		again, err := decodeString(string(out))
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(again, e) {
			t.Fatalf("round trip changed the value:\n got %#v\nwant %#v\nxml %s", again, e, out)
		}
	})
}
