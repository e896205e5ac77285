package media

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"path"
	"strconv"
	"strings"
)

const (
	keySize = 32
	// ivSize is the IV size XEP-0454 prescribes; ivSizeLegacy the 16-byte
	// IV of older senders, accepted when decrypting only.
	ivSize       = 12
	ivSizeLegacy = 16

	scheme      = "aesgcm://"
	https       = "https://"
	thumbPrefix = "data:image/jpeg;base64,"
	// thumbPrefixXEP is the form of the example in XEP-0454 §4, without
	// ";base64" although the data is base64.
	thumbPrefixXEP = "data:image/jpeg,"
)

// MaxThumbnailSize is the largest embedded JPEG thumbnail, in bytes,
// ParseBody accepts and Upload sends. XEP-0454 suggests about 5 KiB.
const MaxThumbnailSize = 32 << 10

const redacted = "REDACTED"

// secret is the key and IV of one file. Its fields are unexported and it
// never prints them: String, GoString and Format redact.
type secret struct {
	key   [keySize]byte
	iv    [ivSizeLegacy]byte
	ivLen int
}

func newSecret() (secret, error) {
	var s secret
	s.ivLen = ivSize
	if _, err := io.ReadFull(rand.Reader, s.key[:]); err != nil {
		return secret{}, fmt.Errorf("media: random key: %w", err)
	}
	if _, err := io.ReadFull(rand.Reader, s.iv[:ivSize]); err != nil {
		s.wipe()
		return secret{}, fmt.Errorf("media: random IV: %w", err)
	}
	return s, nil
}

// wipe zeroes the key and IV.
func (s *secret) wipe() {
	clear(s.key[:])
	clear(s.iv[:])
	s.ivLen = 0
}

func (s secret) String() string                { return "media.secret{" + redacted + "}" }
func (s secret) GoString() string              { return s.String() }
func (s secret) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, s.String()) }

// fragment returns hex(IV || key), lowercase.
func (s *secret) fragment() string {
	b := make([]byte, 0, 2*(s.ivLen+keySize))
	b = hex.AppendEncode(b, s.iv[:s.ivLen])
	return string(hex.AppendEncode(b, s.key[:]))
}

// Link is a parsed OMEMO media sharing message body (XEP-0454): the https
// URL of an encrypted file, its key and IV, and an optional thumbnail.
//
// A Link is a secret: whoever has it can fetch and decrypt the file.
// Printing it with the fmt package shows only the host; Body returns the
// secret form. Call Wipe when done with it.
type Link struct {
	fetch string // https URL without fragment
	host  string
	name  string
	sec   secret
	thumb []byte
}

// ParseBody parses a message body strictly as XEP-0454 §3-4 define it: an
// aesgcm URL ("aesgcm://" host [":" port] path ["?" query] "#" fragment),
// optionally followed by exactly one "\n" and a JPEG thumbnail as a data
// URI ("data:image/jpeg;base64," or XEP-0454's "data:image/jpeg," then
// base64), and nothing else: no white space, no third line.
// The fragment must be 88 hex digits (12-byte IV then 32-byte key) or 96
// (16-byte IV, from older senders). The URL must be plain ASCII with
// everything RFC 3986 does not allow percent-encoded, have a host and no
// user info.
//
// Errors match ErrInvalidLink and one of the more specific errors; they
// never contain the body.
func ParseBody(body string) (*Link, error) {
	first, second, two := strings.Cut(body, "\n")
	if strings.ContainsFunc(first, isSpace) || strings.ContainsFunc(second, isSpace) {
		return nil, invalid(ErrTrailingText)
	}
	rest, ok := strings.CutPrefix(first, scheme)
	if !ok {
		return nil, invalid(ErrNotAESGCM)
	}
	mid, frag, ok := strings.Cut(rest, "#")
	if !ok {
		return nil, invalid(ErrMissingFragment)
	}
	var sec secret
	switch len(frag) {
	case 2 * (ivSize + keySize):
		sec.ivLen = ivSize
	case 2 * (ivSizeLegacy + keySize):
		sec.ivLen = ivSizeLegacy
	default:
		return nil, invalid(ErrFragmentLength)
	}
	ivHex, keyHex := frag[:2*sec.ivLen], frag[2*sec.ivLen:]
	if _, err := hex.Decode(sec.iv[:sec.ivLen], []byte(ivHex)); err != nil {
		sec.wipe()
		return nil, invalid(ErrFragmentHex)
	}
	if _, err := hex.Decode(sec.key[:], []byte(keyHex)); err != nil {
		sec.wipe()
		return nil, invalid(ErrFragmentHex)
	}
	l := &Link{fetch: https + mid, sec: sec}
	if err := l.checkURL(mid); err != nil {
		l.Wipe()
		return nil, err
	}
	if two {
		thumb, err := parseThumbnail(second)
		if err != nil {
			l.Wipe()
			return nil, err
		}
		l.thumb = thumb
	}
	return l, nil
}

func isSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\r', '\n', '\v', '\f', 0x85, 0xa0:
		return true
	}
	return false
}

// urlByte reports whether c may appear literally in the URL: the RFC 3986
// unreserved and reserved characters and "%" (escapes are checked by
// url.Parse). "#" is not among them: it starts the fragment.
func urlByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-._~:/?[]@!$&'()*+,;=%", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// checkURL validates the part between "aesgcm://" and "#" and sets host
// and name.
func (l *Link) checkURL(mid string) error {
	for i := 0; i < len(mid); i++ {
		if !urlByte(mid[i]) {
			return invalid(ErrBadURL)
		}
		if mid[i] == '%' && (i+2 >= len(mid) || !isHex(mid[i+1]) || !isHex(mid[i+2])) {
			return invalid(ErrBadURL)
		}
	}
	u, err := url.Parse(l.fetch)
	if err != nil || u.Scheme != "https" || u.Opaque != "" || u.User != nil ||
		u.Hostname() == "" || u.Fragment != "" || !strings.HasPrefix(mid, u.Host) {
		return invalid(ErrBadURL)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return invalid(ErrBadURL)
		}
	}
	l.host = u.Host
	l.name = safeName(path.Base(u.Path))
	return nil
}

func parseThumbnail(s string) ([]byte, error) {
	if !strings.HasPrefix(s, "data:") {
		return nil, invalid(ErrTrailingText)
	}
	b64, ok := strings.CutPrefix(s, thumbPrefix)
	if !ok {
		if b64, ok = strings.CutPrefix(s, thumbPrefixXEP); !ok {
			return nil, invalid(ErrBadThumbnail)
		}
	}
	if len(b64) == 0 || len(b64) > base64.StdEncoding.EncodedLen(MaxThumbnailSize) {
		return nil, invalid(ErrBadThumbnail)
	}
	jpeg, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || checkJPEG(jpeg) != nil {
		return nil, invalid(ErrBadThumbnail)
	}
	return jpeg, nil
}

// checkJPEG accepts a non-empty JPEG (it starts with the SOI marker and a
// marker byte) of at most MaxThumbnailSize bytes.
func checkJPEG(b []byte) error {
	if len(b) < 3 || len(b) > MaxThumbnailSize || !bytes.HasPrefix(b, []byte{0xff, 0xd8, 0xff}) {
		return ErrBadThumbnail
	}
	return nil
}

// newLink makes the link of an uploaded file from the slot's GET URL,
// refusing anything but https, and checks that ParseBody accepts it.
func newLink(get *url.URL, sec secret, thumb []byte) (*Link, error) {
	if get == nil || get.Scheme != "https" {
		return nil, ErrNotHTTPS
	}
	s := get.String()
	mid, ok := strings.CutPrefix(s, https)
	if !ok || get.Fragment != "" || get.RawFragment != "" {
		return nil, invalid(ErrBadURL)
	}
	body := scheme + mid + "#" + sec.fragment()
	if thumb != nil {
		body += "\n" + thumbPrefix + base64.StdEncoding.EncodeToString(thumb)
	}
	return ParseBody(body)
}

// Body returns the message body to send, inside an OMEMO message only:
// the aesgcm URL with the IV and key as lowercase hex and, if the link
// has a thumbnail, a newline and the thumbnail as a data URI. It is the
// secret form of the link: never log it.
func (l *Link) Body() string {
	var b strings.Builder
	b.WriteString(scheme)
	b.WriteString(strings.TrimPrefix(l.fetch, https))
	b.WriteByte('#')
	b.WriteString(l.sec.fragment())
	if l.thumb != nil {
		b.WriteByte('\n')
		b.WriteString(thumbPrefix)
		b.WriteString(base64.StdEncoding.EncodeToString(l.thumb))
	}
	return b.String()
}

// Host returns the host (and port, if any) the file is on.
func (l *Link) Host() string { return l.host }

// URL returns the https URL the file is fetched from, without the
// fragment: the aesgcm URL of the link with the scheme https and without
// the IV and key. It is not secret (the file behind it is ciphertext, and
// the upload service and the network path see it anyway), so a client may
// show or log it; it keeps working after Wipe. Body is the secret form.
func (l *Link) URL() string { return l.fetch }

// Name returns the file name from the URL's last path segment,
// percent-decoded and made safe (see Download); "file" if there is none.
func (l *Link) Name() string { return l.name }

// Thumbnail returns the embedded JPEG thumbnail, or nil.
func (l *Link) Thumbnail() []byte { return bytes.Clone(l.thumb) }

// LegacyIV reports whether the link has a 16-byte IV (older senders)
// instead of XEP-0454's 12 bytes.
func (l *Link) LegacyIV() bool { return l.sec.ivLen == ivSizeLegacy }

// Wipe zeroes the key and IV; the link cannot be downloaded afterwards.
func (l *Link) Wipe() { l.sec.wipe() }

// String returns the link without its secret parts:
// "aesgcm://host/[REDACTED]".
func (l Link) String() string {
	return scheme + l.host + "/[" + redacted + "]"
}

// GoString is String.
func (l Link) GoString() string { return l.String() }

// Format prints String for every verb, so that fmt never shows the key.
func (l Link) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, l.String()) }
