package media

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// FuzzParseBody checks that ParseBody never panics, that every error
// matches ErrInvalidLink and repeats nothing of the body, and that every
// accepted body is an aesgcm URL of the strict form whose canonical Body
// parses to the same link.
func FuzzParseBody(f *testing.F) {
	frag := strings.Repeat("0", 24) + strings.Repeat("ab", 32)
	for _, s := range []string{
		xepBody,
		"aesgcm://h.example/f.txt#" + frag,
		"aesgcm://h.example/f.txt#" + strings.Repeat("1", 32) + strings.Repeat("cd", 32),
		"aesgcm://h.example:443/a%20b?x=y#" + frag,
		"aesgcm://[::1]/f#" + frag,
		"aesgcm://h.example/p.jpg#" + frag + "\n" + thumbPrefix + base64.StdEncoding.EncodeToString(jpeg),
		"aesgcm://h.example/p.jpg#" + frag + "\n" + thumbPrefixXEP + base64.StdEncoding.EncodeToString(jpeg),
		"aesgcm://h.example/f.txt#" + frag + "\n",
		"https://h.example/f.txt#" + frag,
		"aesgcm://user@h.example/f#" + frag,
		"hello",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		l, err := ParseBody(body)
		if err != nil {
			if l != nil || !errors.Is(err, ErrInvalidLink) {
				t.Fatalf("ParseBody: %v", err)
			}
			// The message is one of the fixed ones: nothing of the body.
			known := false
			for _, k := range []error{ErrNotAESGCM, ErrMissingFragment, ErrFragmentLength, ErrFragmentHex, ErrTrailingText, ErrBadURL, ErrBadThumbnail} {
				known = known || err.Error() == k.Error()
			}
			if !known {
				t.Fatalf("error %q", err)
			}
			return
		}
		first, _, _ := strings.Cut(body, "\n")
		if !strings.HasPrefix(first, scheme) || strings.Count(body, "\n") > 1 || strings.ContainsAny(first, " \t\r") {
			t.Fatalf("accepted %q", body)
		}
		frag := first[strings.IndexByte(first, '#')+1:]
		if len(frag) != 88 && len(frag) != 96 {
			t.Fatalf("accepted fragment of %d", len(frag))
		}
		if l.Host() == "" || l.Name() == "" || strings.ContainsAny(l.Name(), "/\\\x00") {
			t.Fatalf("host %q name %q", l.Host(), l.Name())
		}
		if !strings.HasPrefix(l.fetch, https) || strings.Contains(l.fetch, "#") {
			t.Fatalf("fetch URL %q", l.fetch)
		}
		canon := l.Body()
		if !strings.EqualFold(canon[:len(first)], first) {
			t.Fatalf("Body %q differs from %q beyond case", canon, first)
		}
		l2, err := ParseBody(canon)
		if err != nil || l2.fetch != l.fetch || l2.sec != l.sec || string(l2.thumb) != string(l.thumb) || l2.Body() != canon {
			t.Fatalf("canonical body %q: %v", canon, err)
		}
		// Only the host shows.
		if s := l.String(); s != scheme+l.Host()+"/["+redacted+"]" {
			t.Fatalf("String %q", s)
		}
	})
}
