// Package encrypted encodes and decodes the OMEMO <encrypted> message
// element.
//
// Both wire formats are supported:
//
//	<encrypted xmlns='urn:xmpp:omemo:2'>
//	  <header sid='1'>
//	    <keys jid='juliet@capulet.lit'><key rid='2' kex='true'>…</key>…</keys>…
//	  </header>
//	  <payload>…</payload>
//	</encrypted>
//
//	<encrypted xmlns='eu.siacs.conversations.axolotl'>
//	  <header sid='1'><key rid='2' prekey='true'>…</key>…<iv>…</iv></header>
//	  <payload>…</payload>
//	</encrypted>
//
// The package is a pure codec: key data and payload are opaque bytes.
// Everything in a parsed element is attacker controlled until the crypto
// layer has authenticated it; in particular sid, jid and the key exchange
// flag only tell the crypto layer how to try to decrypt.
//
// Parsing never panics and refuses oversized input early (see [MaxKeys],
// [MaxBlobSize] and [MaxTotalSize]) so that hostile stanzas cannot make it
// retain large amounts of memory.
// Errors wrap the sentinel errors of this package (use errors.Is).
package encrypted // import "mellium.im/omemo/encrypted"

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"mellium.im/omemo/internal/xmlutil"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

// Limits applied when parsing and encoding.
const (
	// MaxKeys is the largest number of <key> elements in one message.
	MaxKeys = 10000
	// MaxBlobSize is the largest number of characters (including whitespace)
	// of one base64 text: a key, the payload or the IV.
	MaxBlobSize = 1 << 20
	// MaxTotalSize is the largest total number of characters of base64 text
	// in one message.
	MaxTotalSize = 4 << 20
)

// Lengths of the legacy initialisation vector.
const (
	// IVSize is the length of the IV this codec expects senders to use.
	IVSize = 12
	// legacyIVSize is the IV length of some old clients, accepted on input.
	legacyIVSize = 16
)

// Errors returned by the codec.
var (
	// ErrWrongElement means that the element is not an <encrypted> element
	// of a known namespace.
	ErrWrongElement = errors.New("encrypted: not an encrypted element")
	// ErrUnknownNamespace means that an Encrypted to be encoded has a
	// namespace other than ns.OMEMO2 or ns.Legacy.
	ErrUnknownNamespace = errors.New("encrypted: unknown namespace")
	// ErrMissingElement means that the <header> is missing.
	ErrMissingElement = errors.New("encrypted: missing element")
	// ErrDuplicateElement means that <header>, <payload> or <iv> occurs more
	// than once.
	// Such a message is ambiguous and therefore refused.
	ErrDuplicateElement = errors.New("encrypted: duplicate element")
	// ErrInvalidID means that the sender (sid) or a recipient (rid) device
	// id is missing, not a decimal number, zero or larger than 2^32-1.
	ErrInvalidID = errors.New("encrypted: invalid device id")
	// ErrInvalidBool means that a kex or prekey attribute is neither "true",
	// "1", "false" nor "0".
	ErrInvalidBool = errors.New("encrypted: invalid boolean")
	// ErrInvalidBase64 means that a key, the payload or the IV is not valid
	// base64.
	ErrInvalidBase64 = errors.New("encrypted: invalid base64")
	// ErrInvalidIV means that a legacy message has no IV or one that is not
	// 12 or 16 bytes long, or that an OMEMO 2 message to be encoded has an
	// IV.
	ErrInvalidIV = errors.New("encrypted: invalid iv")
	// ErrInvalidJID means that an OMEMO 2 <keys> element has no or an empty
	// jid, or that a JID to be encoded cannot be represented in XML.
	ErrInvalidJID = errors.New("encrypted: invalid jid")
	// ErrTooLarge means that one of the limits MaxKeys, MaxBlobSize or
	// MaxTotalSize was exceeded.
	ErrTooLarge = errors.New("encrypted: too large")
)

// Key is the key material of the message encrypted for one recipient device.
type Key struct {
	// JID is the bare JID of the recipient (OMEMO 2 only; empty for legacy).
	JID string
	// RID is the recipient device id, never zero.
	RID uint32
	// KeyExchange reports whether Data is a key exchange message
	// (OMEMOKeyExchange, legacy PreKeyWhisperMessage) rather than a plain
	// ratchet message.
	KeyExchange bool
	// Data is the ratchet message.
	Data []byte
}

// Encrypted is an <encrypted> element.
type Encrypted struct {
	// Namespace is ns.OMEMO2 or ns.Legacy.
	Namespace string
	// SID is the sender device id, never zero.
	SID uint32
	// Keys holds the key material per recipient device.
	// For OMEMO 2, parsing groups it by JID in order of first appearance,
	// which is also how it is encoded.
	Keys []Key
	// IV is the AES-GCM initialisation vector (legacy only): 12 bytes when
	// sending, 12 or 16 accepted on input.
	IV []byte
	// Payload is the encrypted content.
	// nil means no <payload> element (an empty or key transport message);
	// an empty non-nil slice is an empty <payload/>.
	Payload []byte
}

// Is reports whether start is an <encrypted> element of either OMEMO
// namespace, and which.
func Is(start xml.StartElement) (namespace string, ok bool) {
	if start.Name.Local != "encrypted" {
		return "", false
	}
	switch start.Name.Space {
	case ns.OMEMO2, ns.Legacy:
		return start.Name.Space, true
	}
	return "", false
}

// KeysFor returns the keys addressed to device rid of jid, in message order.
// For OMEMO 2 both jid and rid must match (jid is compared exactly, so pass
// it in the same normalised bare form the sender used); for legacy OMEMO,
// which carries no JIDs, only rid is compared and jid is ignored.
// It returns nil if there are none (or e is nil).
func (e *Encrypted) KeysFor(jid string, rid uint32) []Key {
	if e == nil {
		return nil
	}
	var keys []Key
	for _, k := range e.Keys {
		if k.RID == rid && (e.Namespace == ns.Legacy || k.JID == jid) {
			keys = append(keys, k)
		}
	}
	return keys
}

// parser holds the state of one Parse call.
type parser struct {
	s     *xmlutil.TokenStream
	e     *Encrypted
	keys  int // <key> elements seen
	total int // canonical base64 length of the blobs seen
	// groups collects OMEMO 2 keys by JID in order of first appearance.
	groups map[string]int
	byJID  [][]Key
}

// Parse decodes an <encrypted> element.
// start is the start element, already consumed from r;
// r yields the content of the element and then, optionally, its end element
// (as the token readers that mellium passes to handlers do).
// Parse stops after the end element and does not read further.
//
// The namespace is taken from start.
// A missing or duplicate header, a missing or invalid sid or rid, a boolean
// other than true/1/false/0, bad base64 anywhere, a missing OMEMO 2 jid, a
// missing or malformed legacy IV, and exceeding a size limit are errors.
// Unknown attributes and elements are ignored; <payload> may be absent.
func Parse(r xml.TokenReader, start xml.StartElement) (*Encrypted, error) {
	return parse(xmlutil.NewTokenStream(r), start)
}

func parse(s *xmlutil.TokenStream, start xml.StartElement) (*Encrypted, error) {
	namespace, ok := Is(start)
	if !ok {
		return nil, fmt.Errorf("%w: got %.64q in namespace %.64q", ErrWrongElement, start.Name.Local, start.Name.Space)
	}
	p := &parser{s: s, e: &Encrypted{Namespace: namespace}, groups: make(map[string]int)}
	if err := p.encrypted(); err != nil {
		return nil, err
	}
	return p.e, nil
}

// children calls f for each child element of the element whose start was
// just read, until its end element (or the end of input at depth zero when
// outermost is set).
// f must consume the child completely.
func (p *parser) children(outermost bool, f func(xml.StartElement) error) error {
	for {
		tok, err := p.s.Next()
		if err == io.EOF {
			if outermost {
				return nil
			}
			return fmt.Errorf("encrypted: %w", io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("encrypted: %w", err)
		}
		switch tok := tok.(type) {
		case xml.EndElement:
			return nil
		case xml.StartElement:
			if err := f(tok); err != nil {
				return err
			}
		}
	}
}

func (p *parser) skip() error {
	if err := p.s.Skip(); err != nil {
		return fmt.Errorf("encrypted: %w", err)
	}
	return nil
}

func (p *parser) encrypted() error {
	e := p.e
	var haveHeader, havePayload bool
	err := p.children(true, func(child xml.StartElement) error {
		switch {
		case xmlutil.IsChild(child.Name, e.Namespace, "header"):
			if haveHeader {
				return fmt.Errorf("%w: header", ErrDuplicateElement)
			}
			haveHeader = true
			return p.header(child)
		case xmlutil.IsChild(child.Name, e.Namespace, "payload"):
			if havePayload {
				return fmt.Errorf("%w: payload", ErrDuplicateElement)
			}
			havePayload = true
			payload, err := p.blob("payload")
			e.Payload = payload
			return err
		}
		return p.skip()
	})
	if err != nil {
		return err
	}
	if !haveHeader {
		return fmt.Errorf("%w: header", ErrMissingElement)
	}
	if len(p.byJID) > 0 {
		e.Keys = make([]Key, 0, p.keys)
		for _, group := range p.byJID {
			e.Keys = append(e.Keys, group...)
		}
	}
	if e.Namespace == ns.Legacy {
		switch len(e.IV) {
		case 0:
			if e.IV == nil {
				return fmt.Errorf("%w: missing", ErrInvalidIV)
			}
			return fmt.Errorf("%w: empty", ErrInvalidIV)
		case IVSize, legacyIVSize:
		default:
			return fmt.Errorf("%w: %d bytes", ErrInvalidIV, len(e.IV))
		}
	}
	return nil
}

func (p *parser) header(start xml.StartElement) error {
	e := p.e
	v, present := xmlutil.Attr(start, "sid")
	sid, err := xmlutil.ParseID(v, present)
	if err != nil {
		return fmt.Errorf("%w: sid: %w", ErrInvalidID, err)
	}
	e.SID = sid
	haveIV := false
	return p.children(false, func(child xml.StartElement) error {
		switch {
		case e.Namespace == ns.OMEMO2 && xmlutil.IsChild(child.Name, e.Namespace, "keys"):
			jid, _ := xmlutil.Attr(child, "jid")
			if jid == "" {
				return fmt.Errorf("%w: keys without jid", ErrInvalidJID)
			}
			return p.children(false, func(key xml.StartElement) error {
				if !xmlutil.IsChild(key.Name, e.Namespace, "key") {
					return p.skip()
				}
				return p.key(key, jid, "kex")
			})
		case e.Namespace == ns.Legacy && xmlutil.IsChild(child.Name, e.Namespace, "key"):
			return p.key(child, "", "prekey")
		case e.Namespace == ns.Legacy && xmlutil.IsChild(child.Name, e.Namespace, "iv"):
			if haveIV {
				return fmt.Errorf("%w: iv", ErrDuplicateElement)
			}
			haveIV = true
			iv, err := p.blob("iv")
			e.IV = iv
			return err
		}
		return p.skip()
	})
}

// key consumes a <key> element whose start has just been read.
func (p *parser) key(start xml.StartElement, jid, boolAttr string) error {
	p.keys++
	if p.keys > MaxKeys {
		return fmt.Errorf("%w: more than %d keys", ErrTooLarge, MaxKeys)
	}
	v, present := xmlutil.Attr(start, "rid")
	rid, err := xmlutil.ParseID(v, present)
	if err != nil {
		return fmt.Errorf("%w: key %d: rid: %w", ErrInvalidID, p.keys, err)
	}
	k := Key{JID: jid, RID: rid}
	if v, present := xmlutil.Attr(start, boolAttr); present {
		if k.KeyExchange, err = parseBool(v); err != nil {
			return fmt.Errorf("%w: key %d: %s: %w", ErrInvalidBool, p.keys, boolAttr, err)
		}
	}
	if k.Data, err = p.blob("key"); err != nil {
		return err
	}
	i, ok := p.groups[jid]
	if !ok {
		i = len(p.byJID)
		p.groups[jid] = i
		p.byJID = append(p.byJID, nil)
	}
	p.byJID[i] = append(p.byJID[i], k)
	return nil
}

// blob consumes an element with base64 text whose start has just been read.
// The result is never nil.
//
// The text of one element is limited to MaxBlobSize characters before it is
// decoded; the running total is counted as the canonical (padded, unwrapped)
// base64 length, which is what validate applies when encoding, so that
// everything Parse accepts can be encoded again.
func (p *parser) blob(name string) ([]byte, error) {
	text, tooLong, err := p.s.Text(MaxBlobSize)
	switch {
	case err != nil:
		return nil, fmt.Errorf("encrypted: %w", err)
	case tooLong:
		return nil, fmt.Errorf("%w: %s longer than %d characters", ErrTooLarge, name, MaxBlobSize)
	}
	raw, err := xmlutil.DecodeBase64(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidBase64, name, err)
	}
	p.total += base64.StdEncoding.EncodedLen(len(raw))
	if p.total > MaxTotalSize {
		return nil, fmt.Errorf("%w: more than %d characters of base64 in total", ErrTooLarge, MaxTotalSize)
	}
	return raw, nil
}

var errNotBool = errors.New("not true, 1, false or 0")

// parseBool parses an xs:boolean.
// XML Schema collapses whitespace of booleans, so surrounding whitespace is
// ignored; any other deviation is an error (python-twomemo and
// python-oldmemo 1.0.3 read every value, "false" included, as true).
func parseBool(s string) (bool, error) {
	switch strings.Trim(s, xmlutil.Space) {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, errNotBool
}

// Decode reads the next element from r and decodes it as an <encrypted>
// element.
// Tokens before the first start element (such as a procinst, comments or
// whitespace) are skipped.
func Decode(r xml.TokenReader) (*Encrypted, error) {
	return xmlutil.DecodeFirst(r, "encrypted", ErrWrongElement, parse)
}

// UnmarshalXML implements xml.Unmarshaler.
// See Parse for the rules applied.
func (e *Encrypted) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	parsed, err := Parse(d, start)
	if err != nil {
		return err
	}
	*e = *parsed
	return nil
}

// validate checks that e can be encoded such that Parse returns it
// unchanged (up to the grouping of OMEMO 2 keys by JID and the dropping of
// legacy JIDs).
func (e Encrypted) validate() error {
	if _, ok := Is(xml.StartElement{Name: xml.Name{Space: e.Namespace, Local: "encrypted"}}); !ok {
		return ErrUnknownNamespace
	}
	if e.SID == 0 {
		return fmt.Errorf("%w: sid: %w", ErrInvalidID, xmlutil.ErrIDZero)
	}
	if len(e.Keys) > MaxKeys {
		return fmt.Errorf("%w: %d keys > %d", ErrTooLarge, len(e.Keys), MaxKeys)
	}
	total := 0
	add := func(name string, b []byte) error {
		n := base64.StdEncoding.EncodedLen(len(b))
		total += n
		if n > MaxBlobSize || total > MaxTotalSize {
			return fmt.Errorf("%w: %s", ErrTooLarge, name)
		}
		return nil
	}
	for i, k := range e.Keys {
		if k.RID == 0 {
			return fmt.Errorf("%w: key %d: rid: %w", ErrInvalidID, i+1, xmlutil.ErrIDZero)
		}
		if e.Namespace == ns.OMEMO2 && (k.JID == "" || !xmlutil.ValidString(k.JID)) {
			return fmt.Errorf("%w: key %d", ErrInvalidJID, i+1)
		}
		if err := add("key", k.Data); err != nil {
			return err
		}
	}
	switch {
	case e.Namespace == ns.Legacy && len(e.IV) != IVSize && len(e.IV) != legacyIVSize:
		return fmt.Errorf("%w: %d bytes", ErrInvalidIV, len(e.IV))
	case e.Namespace == ns.OMEMO2 && len(e.IV) != 0:
		return fmt.Errorf("%w: OMEMO 2 has no iv", ErrInvalidIV)
	}
	if err := add("iv", e.IV); err != nil {
		return err
	}
	return add("payload", e.Payload)
}

// TokenReader implements xmlstream.Marshaler.
//
// For OMEMO 2 the keys are written in one <keys> element per JID, the
// groups in order of first appearance and the keys of a group in the given
// order.
// For legacy OMEMO the JIDs are dropped and the <iv> follows the keys.
// kex='true' or prekey='true' is written for key exchanges only; the
// attribute is never written as false, because python-twomemo and
// python-oldmemo 1.0.3 read any value as true.
// <payload> is written if Payload is not nil.
// An invalid Encrypted makes the reader return an error instead of any
// token.
func (e Encrypted) TokenReader() xml.TokenReader {
	toks, err := e.AppendTokens(nil)
	if err != nil {
		return errReader{err}
	}
	return &sliceReader{toks: toks}
}

// AppendTokens appends the tokens TokenReader yields to toks and returns
// the extended slice, or an error if e is invalid (toks is then returned
// unchanged). Every token is new (attribute slices and character data
// included), so the caller may hand them to an encoder that modifies
// them.
func (e Encrypted) AppendTokens(toks []xml.Token) ([]xml.Token, error) {
	if err := e.validate(); err != nil {
		return toks, err
	}
	start := xml.StartElement{Name: xml.Name{Space: e.Namespace, Local: "encrypted"}}
	header := xml.StartElement{Name: xml.Name{Local: "header"},
		Attr: []xml.Attr{{Name: xml.Name{Local: "sid"}, Value: strconv.FormatUint(uint64(e.SID), 10)}}}
	toks = append(toks, start, header)
	if e.Namespace == ns.Legacy {
		for _, k := range e.Keys {
			toks = appendKey(toks, k, "prekey")
		}
		toks = appendElement(toks, "iv", e.IV)
	} else {
		// One <keys> per JID, in order of first appearance; quadratic in
		// the number of JIDs, which is small (a room's members).
		for i, k := range e.Keys {
			first := true
			for _, prev := range e.Keys[:i] {
				if prev.JID == k.JID {
					first = false
					break
				}
			}
			if !first {
				continue
			}
			keys := xml.StartElement{Name: xml.Name{Local: "keys"}, Attr: []xml.Attr{{Name: xml.Name{Local: "jid"}, Value: k.JID}}}
			toks = append(toks, keys)
			for _, kk := range e.Keys[i:] {
				if kk.JID == k.JID {
					toks = appendKey(toks, kk, "kex")
				}
			}
			toks = append(toks, keys.End())
		}
	}
	toks = append(toks, header.End())
	if e.Payload != nil {
		toks = appendElement(toks, "payload", e.Payload)
	}
	return append(toks, start.End()), nil
}

func appendKey(toks []xml.Token, k Key, boolAttr string) []xml.Token {
	attrs := make([]xml.Attr, 1, 2)
	attrs[0] = xml.Attr{Name: xml.Name{Local: "rid"}, Value: strconv.FormatUint(uint64(k.RID), 10)}
	if k.KeyExchange {
		attrs = append(attrs, xml.Attr{Name: xml.Name{Local: boolAttr}, Value: "true"})
	}
	start := xml.StartElement{Name: xml.Name{Local: "key"}, Attr: attrs}
	return append(toks, start, b64(k.Data), start.End())
}

// appendElement appends a child element (which inherits the namespace)
// holding raw in base64.
func appendElement(toks []xml.Token, local string, raw []byte) []xml.Token {
	start := xml.StartElement{Name: xml.Name{Local: local}}
	return append(toks, start, b64(raw), start.End())
}

// b64 returns the base64 character data of raw.
func b64(raw []byte) xml.CharData {
	out := make([]byte, base64.StdEncoding.EncodedLen(len(raw)))
	base64.StdEncoding.Encode(out, raw)
	return out
}

// sliceReader yields tokens of a slice.
type sliceReader struct{ toks []xml.Token }

func (r *sliceReader) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks = r.toks[1:]
	return t, nil
}

// WriteXML implements xmlstream.WriterTo.
// It writes the same tokens as TokenReader and returns the number of tokens
// written.
func (e Encrypted) WriteXML(w xmlstream.TokenWriter) (int, error) {
	return xmlstream.Copy(w, e.TokenReader())
}

// MarshalXML implements xml.Marshaler.
// The start element passed by encoding/xml is ignored.
func (e Encrypted) MarshalXML(enc *xml.Encoder, _ xml.StartElement) error {
	_, err := e.WriteXML(enc)
	return err
}

// errReader is a token reader that fails immediately.
type errReader struct{ err error }

func (r errReader) Token() (xml.Token, error) { return nil, r.err }
