package bundle_test

import (
	"encoding/xml"
	"reflect"
	"testing"
)

// FuzzParseBundle checks that parsing never panics and that whatever parses
// encodes and parses back to the same value.
func FuzzParseBundle(f *testing.F) {
	for _, s := range []string{
		pyTwomemoBundle,
		pyOldmemoBundle,
		xep091Publish,
		xep030Announce,
		omemo2Doc(spk2 + spks2 + ik2 + `<prekeys>` + pk("1", seq(32, 1)) + pk("0", seq(32, 2)) + pk("1", seq(32, 3)) + `</prekeys>`),
		`<bundle xmlns='eu.siacs.conversations.axolotl'>` + ikL + spksL + spkL + `<prekeys/></bundle>`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := decodeFirst(s)
		if err != nil {
			return
		}
		out, err := xml.Marshal(b)
		if err != nil {
			t.Fatalf("parsed bundle does not marshal: %v\n%#v", err, b)
		}
		again, err := decodeString(string(out))
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(again, b) {
			t.Fatalf("round trip changed the value:\n got %#v\nwant %#v\nxml %s", again, b, out)
		}
	})
}
