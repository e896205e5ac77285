package media

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// The example of XEP-0454 §3.
const (
	xepIV   = "8c3d050e9386ec173861778f"
	xepKey  = "68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587"
	xepGet  = "https://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg"
	xepBody = "aesgcm://download.montague.tld/4a771ac1-f0b2-4a4a-9700-f2a26fa2bb67/tr%C3%A8s%20cool.jpg#8c3d050e9386ec173861778f68e9af38a97aaf82faa4063b4d0878a61261534410c8a84331eaac851759f587"
)

var jpeg = []byte{0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 'J', 'F', 'I', 'F', 0, 1, 2, 3, 0xff, 0xd9}

func TestXEPExample(t *testing.T) {
	l, err := ParseBody(xepBody)
	if err != nil {
		t.Fatal(err)
	}
	if l.fetch != xepGet || l.Host() != "download.montague.tld" || l.Name() != "très cool.jpg" || l.LegacyIV() {
		t.Fatalf("parsed %q %q %q", l.fetch, l.Host(), l.Name())
	}
	if hex.EncodeToString(l.sec.iv[:l.sec.ivLen]) != xepIV || hex.EncodeToString(l.sec.key[:]) != xepKey {
		t.Fatal("key or IV differ")
	}
	if l.Body() != xepBody {
		t.Fatalf("Body = %q", l.Body())
	}
	// Formatting from the slot URL and the secret gives the same body.
	u, _ := url.Parse(xepGet)
	var sec secret
	sec.ivLen = ivSize
	hex.Decode(sec.iv[:], []byte(xepIV))
	hex.Decode(sec.key[:], []byte(xepKey))
	l2, err := newLink(u, sec, nil)
	if err != nil || l2.Body() != xepBody {
		t.Fatalf("newLink: %v", err)
	}
}

func TestParseBodyValid(t *testing.T) {
	key := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		body, fetch, name string
		legacy            bool
		thumb             bool
	}{
		{body: "aesgcm://h.example/a/b.txt#" + strings.Repeat("0", 24) + key, fetch: "https://h.example/a/b.txt", name: "b.txt"},
		{body: "aesgcm://h.example/a/b.txt#" + strings.Repeat("1", 32) + key, fetch: "https://h.example/a/b.txt", name: "b.txt", legacy: true},
		{body: "aesgcm://h.example:5281/x?token=1&y=%41#" + strings.ToUpper(strings.Repeat("a", 24)+key), fetch: "https://h.example:5281/x?token=1&y=%41", name: "x"},
		{body: "aesgcm://[::1]:443/f#" + strings.Repeat("0", 24) + key, fetch: "https://[::1]:443/f", name: "f"},
		{body: "aesgcm://h.example#" + strings.Repeat("0", 24) + key, fetch: "https://h.example", name: "file"},
		{body: "aesgcm://h.example/..%2F..%2Fetc%2Fpasswd#" + strings.Repeat("0", 24) + key, fetch: "https://h.example/..%2F..%2Fetc%2Fpasswd", name: "passwd"},
		{body: "aesgcm://h.example/%2e%2e#" + strings.Repeat("0", 24) + key, fetch: "https://h.example/%2e%2e", name: "file"},
		{body: "aesgcm://h.example/p.jpg#" + strings.Repeat("0", 24) + key + "\n" + thumbPrefix + base64.StdEncoding.EncodeToString(jpeg), fetch: "https://h.example/p.jpg", name: "p.jpg", thumb: true},
		{body: "aesgcm://h.example/p.jpg#" + strings.Repeat("0", 24) + key + "\n" + thumbPrefixXEP + base64.StdEncoding.EncodeToString(jpeg), fetch: "https://h.example/p.jpg", name: "p.jpg", thumb: true},
	} {
		l, err := ParseBody(tc.body)
		if err != nil {
			t.Errorf("%q: %v", tc.body, err)
			continue
		}
		if l.fetch != tc.fetch || l.Name() != tc.name || l.LegacyIV() != tc.legacy || (l.Thumbnail() != nil) != tc.thumb {
			t.Errorf("%q: fetch %q name %q legacy %v thumb %v", tc.body, l.fetch, l.Name(), l.LegacyIV(), l.Thumbnail() != nil)
		}
		if tc.thumb && !bytes.Equal(l.Thumbnail(), jpeg) {
			t.Errorf("%q: thumbnail differs", tc.body)
		}
		// Body is canonical (lowercase hex, ";base64") and parses to the
		// same link.
		l2, err := ParseBody(l.Body())
		if err != nil || l2.Body() != l.Body() || l2.fetch != l.fetch || l2.sec != l.sec {
			t.Errorf("%q: round trip: %v", tc.body, err)
		}
	}
}

func TestParseBodyInvalid(t *testing.T) {
	frag := strings.Repeat("0", 24) + strings.Repeat("ab", 32)
	ok := "aesgcm://h.example/f.txt#" + frag
	thumb := base64.StdEncoding.EncodeToString(jpeg)
	for _, tc := range []struct {
		body string
		want error
	}{
		{"", ErrNotAESGCM},
		{"hello", ErrNotAESGCM},
		{"https://h.example/f.txt#" + frag, ErrNotAESGCM},
		{"http://h.example/f.txt#" + frag, ErrNotAESGCM},
		{"AESGCM://h.example/f.txt#" + frag, ErrNotAESGCM},
		{"aesgcm:/h.example/f.txt#" + frag, ErrNotAESGCM},
		{"aesgcm://h.example/f.txt", ErrMissingFragment},
		{"aesgcm://h.example/f.txt#", ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + frag[:87], ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + frag + "0", ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + strings.Repeat("0", 64), ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + frag + "0000000000", ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + strings.Repeat("0", 96+2), ErrFragmentLength},
		{"aesgcm://h.example/f.txt#" + "g" + frag[1:], ErrFragmentHex},
		{"aesgcm://h.example/f.txt#" + frag[:87] + "#", ErrFragmentHex},
		{"aesgcm://h.example/f.txt#" + frag[:87] + "é"[:1], ErrFragmentHex},
		{" " + ok, ErrTrailingText},
		{ok + " ", ErrTrailingText},
		{ok + "\n", ErrTrailingText},
		{ok + "\r\n", ErrTrailingText},
		{ok + "\n\n", ErrTrailingText},
		{ok + "\nhello", ErrTrailingText},
		{"look: " + ok, ErrTrailingText},
		{ok + "\t", ErrTrailingText},
		{ok + "\u00a0", ErrTrailingText},
		{ok + "\n" + thumbPrefix + thumb + "\n", ErrTrailingText},
		{ok + "\n" + thumbPrefix + thumb + "\nmore", ErrTrailingText},
		{ok + "\n" + ok, ErrTrailingText},
		{ok + "\ndata:image/png;base64," + thumb, ErrBadThumbnail},
		{ok + "\n" + thumbPrefix, ErrBadThumbnail},
		{ok + "\n" + thumbPrefix + "!!!!", ErrBadThumbnail},
		{ok + "\n" + thumbPrefix + thumb[:len(thumb)-1], ErrBadThumbnail},
		{ok + "\n" + thumbPrefix + base64.StdEncoding.EncodeToString([]byte("not a jpeg")), ErrBadThumbnail},
		{ok + "\n" + thumbPrefix + base64.StdEncoding.EncodeToString(append(bytes.Clone(jpeg), make([]byte, MaxThumbnailSize)...)), ErrBadThumbnail},
		{"aesgcm:///f.txt#" + frag, ErrBadURL},
		{"aesgcm://#" + frag, ErrBadURL},
		{"aesgcm://user:pw@h.example/f.txt#" + frag, ErrBadURL},
		{"aesgcm://h.example/tr\u00e8s.txt#" + frag, ErrBadURL},
		{"aesgcm://h.example/a\"b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a<b>#" + frag, ErrBadURL},
		{"aesgcm://h.example/a\\b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a{b}#" + frag, ErrBadURL},
		{"aesgcm://h.example/a|b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a^b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a`b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a\x00b#" + frag, ErrBadURL},
		{"aesgcm://h.example/a\x7fb#" + frag, ErrBadURL},
		{"aesgcm://h.example/%zz#" + frag, ErrBadURL},
		{"aesgcm://h.example/%4#" + frag, ErrBadURL},
		{"aesgcm://h.example/x?q=%g0#" + frag, ErrBadURL},
		{"aesgcm://h.example:99999/f#" + frag, ErrBadURL},
		{"aesgcm://h.example:0/f#" + frag, ErrBadURL},
		{"aesgcm://h.example:x/f#" + frag, ErrBadURL},
		{"aesgcm://[::1/f#" + frag, ErrBadURL},
	} {
		l, err := ParseBody(tc.body)
		if err == nil {
			t.Errorf("%q: accepted (%q)", tc.body, l.fetch)
			continue
		}
		if !errors.Is(err, tc.want) || !errors.Is(err, ErrInvalidLink) {
			t.Errorf("%q: error %v, want %v", tc.body, err, tc.want)
		}
		if strings.Contains(err.Error(), "h.example") || strings.Contains(err.Error(), "abab") {
			t.Errorf("%q: error %q repeats the body", tc.body, err)
		}
	}
}

func TestNewLinkFromSlot(t *testing.T) {
	sec, err := newSecret()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		get  string
		want error
		body string
	}{
		{get: "https://up.example/s/a%20b.txt", body: "aesgcm://up.example/s/a%20b.txt#"},
		// Non-ASCII is percent-encoded when the URL is written out.
		{get: "https://up.example/s/très.txt", body: "aesgcm://up.example/s/tr%C3%A8s.txt#"},
		{get: "http://up.example/s/a.txt", want: ErrNotHTTPS},
		{get: "ftp://up.example/s/a.txt", want: ErrNotHTTPS},
		{get: "https://up.example/s/a.txt#frag", want: ErrBadURL},
		{get: "https://u:p@up.example/s/a.txt", want: ErrBadURL},
		{get: "https:///s/a.txt", want: ErrBadURL},
	} {
		u, err := url.Parse(tc.get)
		if err != nil {
			t.Fatal(err)
		}
		l, err := newLink(u, sec, nil)
		if tc.want != nil {
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.get, err, tc.want)
			}
			continue
		}
		if err != nil || !strings.HasPrefix(l.Body(), tc.body) || len(l.Body()) != len(tc.body)+88 {
			t.Errorf("%s: %v %q", tc.get, err, l.Body())
		}
	}
	if _, err := newLink(nil, sec, nil); !errors.Is(err, ErrNotHTTPS) {
		t.Errorf("nil GET URL: %v", err)
	}
	// A thumbnail makes the second line.
	u, _ := url.Parse("https://up.example/p.jpg")
	l, err := newLink(u, sec, jpeg)
	if err != nil || !strings.HasSuffix(l.Body(), "\n"+thumbPrefix+base64.StdEncoding.EncodeToString(jpeg)) {
		t.Fatalf("thumbnail: %v", err)
	}
}

// TestRedaction prints links and secrets every way fmt can and checks that
// neither the key, the IV nor the path shows.
func TestRedaction(t *testing.T) {
	l, err := ParseBody(xepBody)
	if err != nil {
		t.Fatal(err)
	}
	type wrapper struct {
		L  *Link
		V  Link
		S  secret
		PS *secret
	}
	w := wrapper{L: l, V: *l, S: l.sec, PS: &l.sec}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%T %v"} {
		for _, v := range []any{l, *l, l.sec, &l.sec, w, &w, []*Link{l}, map[string]Link{"k": *l}} {
			out := fmt.Sprintf(verb, v)
			for _, s := range []string{xepIV, xepKey, "4a771ac1", "cool", xepIV[:8], xepKey[:8], "68e9", "\x8c\x3d"} {
				if strings.Contains(strings.ToLower(out), s) {
					t.Errorf("Sprintf(%s, %T) = %q shows %q", verb, v, out, s)
				}
			}
		}
	}
	if got := l.String(); got != "aesgcm://download.montague.tld/[REDACTED]" {
		t.Errorf("String = %q", got)
	}
	var nl *Link
	if got := fmt.Sprint(nl); got != "<nil>" {
		t.Errorf("nil link prints %q", got)
	}
}

func TestWipe(t *testing.T) {
	l, err := ParseBody(xepBody)
	if err != nil {
		t.Fatal(err)
	}
	l.Wipe()
	if l.sec != (secret{}) {
		t.Fatal("key or IV left after Wipe")
	}
	if _, err := Download(t.Context(), l, t.TempDir(), nil); !errors.Is(err, ErrWiped) {
		t.Fatalf("Download of a wiped link: %v", err)
	}
}

// TestURL checks that URL is the https URL without the fragment: no key,
// no IV, also for a link with a thumbnail, and still after Wipe.
func TestURL(t *testing.T) {
	key := strings.Repeat("ab", 32)
	for _, tc := range []struct{ body, want string }{
		{xepBody, xepGet},
		{"aesgcm://h.example:5281/x?token=1&y=%41#" + strings.Repeat("c", 24) + key, "https://h.example:5281/x?token=1&y=%41"},
		{"aesgcm://h.example/p.jpg#" + strings.Repeat("0", 24) + key + "\n" + thumbPrefix + base64.StdEncoding.EncodeToString(jpeg), "https://h.example/p.jpg"},
		{"aesgcm://h.example/old#" + strings.Repeat("1", 32) + key, "https://h.example/old"},
	} {
		l, err := ParseBody(tc.body)
		if err != nil {
			t.Fatalf("%q: %v", tc.body, err)
		}
		frag := tc.body[strings.IndexByte(tc.body, '#')+1:]
		if i := strings.IndexByte(frag, '\n'); i >= 0 {
			frag = frag[:i]
		}
		got := l.URL()
		if got != tc.want || strings.Contains(got, "#") || strings.Contains(strings.ToLower(got), strings.ToLower(frag)) ||
			strings.Contains(got, key) || strings.Contains(got, "data:") {
			t.Errorf("%q: URL() = %q, want %q", tc.body, got, tc.want)
		}
		l.Wipe()
		if l.URL() != tc.want {
			t.Errorf("%q: URL() after Wipe = %q", tc.body, l.URL())
		}
	}
}
