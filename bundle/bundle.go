// Package bundle encodes and decodes OMEMO bundles.
//
// A bundle is the public key material a device publishes so that others can
// start a session with it: the identity key, the signed pre key with its
// signature, and a list of one-time pre keys.
// It is published in the PEP node returned by [Node] under the item id
// returned by [ItemID].
// Both wire formats are supported:
//
//	<bundle xmlns='urn:xmpp:omemo:2'>
//	  <spk id='1'>…</spk><spks>…</spks><ik>…</ik>
//	  <prekeys><pk id='1'>…</pk>…</prekeys>
//	</bundle>
//
//	<bundle xmlns='eu.siacs.conversations.axolotl'>
//	  <signedPreKeyPublic signedPreKeyId='1'>…</signedPreKeyPublic>
//	  <signedPreKeySignature>…</signedPreKeySignature>
//	  <identityKey>…</identityKey>
//	  <prekeys><preKeyPublic preKeyId='1'>…</preKeyPublic>…</prekeys>
//	</bundle>
//
// The package is a pure codec: it checks encodings and lengths, not
// cryptographic validity.
// A parsed bundle is attacker controlled until the crypto layer has verified
// the signed pre key signature against the identity key, and rejected
// low-order or otherwise invalid points.
//
// Parsing never panics, keeps memory bounded, and reports malformed input
// with errors that wrap the sentinel errors of this package (use errors.Is).
package bundle // import "mellium.im/omemo/bundle"

import (
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"

	"mellium.im/omemo/internal/xmlutil"
	"mellium.im/omemo/ns"
	"mellium.im/xmlstream"
)

// MaxPreKeys is the largest number of pre key elements a bundle may contain
// (valid or not).
// Bundles with more are refused with ErrTooManyPreKeys.
const MaxPreKeys = 10000

// maxKeyText bounds the character data of a single key or signature element.
// Valid values need at most 88 characters; the rest is room for whitespace.
const maxKeyText = 4096

// legacyKeyType is the key type prefix that libsignal puts in front of
// Curve25519 public keys.
const legacyKeyType = 0x05

// Errors returned by the codec.
var (
	// ErrWrongElement means that the element is not a bundle of a known
	// namespace.
	ErrWrongElement = errors.New("bundle: not a bundle element")
	// ErrUnknownNamespace means that a Bundle to be encoded has a namespace
	// other than ns.OMEMO2 or ns.Legacy.
	ErrUnknownNamespace = errors.New("bundle: unknown namespace")
	// ErrMissingElement means that the signed pre key, its signature or the
	// identity key is missing.
	ErrMissingElement = errors.New("bundle: missing element")
	// ErrDuplicateElement means that the signed pre key, its signature or
	// the identity key occurs more than once.
	// Such a bundle is ambiguous and therefore refused.
	ErrDuplicateElement = errors.New("bundle: duplicate element")
	// ErrInvalidID means that the signed pre key id is missing, not a
	// decimal number or larger than 2^32-1. Zero is a valid id of a signed
	// pre key or pre key: libsignal-style clients (converse.js) number them
	// from 0.
	ErrInvalidID = errors.New("bundle: invalid key id")
	// ErrDuplicateID means that a Bundle to be encoded has two pre keys with
	// the same id.
	ErrDuplicateID = errors.New("bundle: duplicate pre key id")
	// ErrInvalidKey means that the identity key or the signed pre key is not
	// valid base64 or has the wrong length (32 bytes for OMEMO 2; 33 bytes
	// starting with 0x05 for legacy OMEMO).
	ErrInvalidKey = errors.New("bundle: invalid key")
	// ErrInvalidSignature means that the signed pre key signature is not
	// valid base64 or not 64 bytes long.
	ErrInvalidSignature = errors.New("bundle: invalid signature")
	// ErrTooManyPreKeys means that the bundle has more than MaxPreKeys pre
	// key elements.
	ErrTooManyPreKeys = errors.New("bundle: too many pre keys")
)

// PreKey is a one-time pre key.
type PreKey struct {
	// ID is the pre key id (zero is valid: libsignal-style clients number
	// pre keys from 0).
	ID uint32
	// Key is the X25519 public key (legacy: with the 0x05 prefix stripped).
	Key [32]byte
}

// Bundle is the public key material of one device.
type Bundle struct {
	// Namespace is ns.OMEMO2 or ns.Legacy.
	Namespace string
	// IdentityKey is, for OMEMO 2, the Ed25519 public identity key as on the
	// wire; for legacy OMEMO, the Curve25519 form with the 0x05 prefix
	// stripped.
	IdentityKey [32]byte
	// SignedPreKeyID is the id of the signed pre key (zero is valid).
	SignedPreKeyID uint32
	// SignedPreKey is the X25519 signed pre key (legacy: 0x05 stripped).
	SignedPreKey [32]byte
	// SignedPreKeySignature is the signature of the signed pre key as on the
	// wire.
	// In legacy OMEMO bit 7 of byte 63 may carry the sign bit of the
	// identity key's Ed25519 form; this codec does not interpret it.
	SignedPreKeySignature [64]byte
	// PreKeys holds the valid pre keys in document order, each id at most
	// once.
	// It may be empty; the crypto layer must refuse to build a session
	// without a pre key.
	PreKeys []PreKey
}

// Node returns the PEP node in which the bundle of a device is published:
// ns.OMEMO2Bundles for OMEMO 2 and ns.LegacyBundles(deviceID) for legacy
// OMEMO.
// It returns the empty string for an unknown namespace.
func Node(namespace string, deviceID uint32) string {
	switch namespace {
	case ns.OMEMO2:
		return ns.OMEMO2Bundles
	case ns.Legacy:
		return ns.LegacyBundles(deviceID)
	}
	return ""
}

// ItemID returns the PubSub item id under which the bundle of a device is
// published: the decimal device id for OMEMO 2 and "current" for legacy
// OMEMO.
// It returns the empty string for an unknown namespace.
func ItemID(namespace string, deviceID uint32) string {
	switch namespace {
	case ns.OMEMO2:
		return strconv.FormatUint(uint64(deviceID), 10)
	case ns.Legacy:
		return "current"
	}
	return ""
}

// names holds the element and attribute names of one namespace.
type names struct {
	spk, spkID, spks, ik, prekeys, pk, pkID string
}

var (
	omemo2Names = names{
		spk: "spk", spkID: "id", spks: "spks", ik: "ik",
		prekeys: "prekeys", pk: "pk", pkID: "id",
	}
	legacyNames = names{
		spk: "signedPreKeyPublic", spkID: "signedPreKeyId", spks: "signedPreKeySignature", ik: "identityKey",
		prekeys: "prekeys", pk: "preKeyPublic", pkID: "preKeyId",
	}
)

func namesOf(namespace string) (names, bool) {
	switch namespace {
	case ns.OMEMO2:
		return omemo2Names, true
	case ns.Legacy:
		return legacyNames, true
	}
	return names{}, false
}

// Parse decodes a bundle.
// start is the start element of the bundle, already consumed from r;
// r yields the content of the element and then, optionally, its end element
// (as the token readers that mellium passes to handlers do).
// Parse stops after the end element and does not read further.
//
// The namespace is taken from start.
// Children may come in any order; unknown attributes and elements are
// ignored.
// Base64 may contain whitespace and may lack padding.
// A missing, duplicated or malformed identity key, signed pre key, signature
// or signed pre key id is an error.
// A pre key with a malformed key or id is skipped, and of pre keys sharing an
// id only the first is kept.
func Parse(r xml.TokenReader, start xml.StartElement) (*Bundle, error) {
	return parse(xmlutil.NewTokenStream(r), start)
}

func parse(s *xmlutil.TokenStream, start xml.StartElement) (*Bundle, error) {
	n, ok := namesOf(start.Name.Space)
	if !ok || start.Name.Local != "bundle" {
		return nil, fmt.Errorf("%w: got %.64q in namespace %.64q", ErrWrongElement, start.Name.Local, start.Name.Space)
	}
	b := &Bundle{Namespace: start.Name.Space}
	legacy := b.Namespace == ns.Legacy
	var haveSPK, haveSPKS, haveIK bool
	p := preKeyParser{seen: make(map[uint32]struct{})}
	for {
		tok, err := s.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("bundle: %w", err)
		}
		if _, ok := tok.(xml.EndElement); ok {
			break
		}
		child, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch {
		case xmlutil.IsChild(child.Name, b.Namespace, n.spk):
			if haveSPK {
				return nil, fmt.Errorf("%w: %s", ErrDuplicateElement, n.spk)
			}
			haveSPK = true
			v, present := xmlutil.Attr(child, n.spkID)
			if b.SignedPreKeyID, err = xmlutil.ParseKeyID(v, present); err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalidID, n.spkID, err)
			}
			var bad error
			if b.SignedPreKey, bad, err = readKey(s, legacy); err != nil {
				return nil, fmt.Errorf("bundle: %w", err)
			} else if bad != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalidKey, n.spk, bad)
			}
		case xmlutil.IsChild(child.Name, b.Namespace, n.spks):
			if haveSPKS {
				return nil, fmt.Errorf("%w: %s", ErrDuplicateElement, n.spks)
			}
			haveSPKS = true
			var bad error
			if b.SignedPreKeySignature, bad, err = readSignature(s); err != nil {
				return nil, fmt.Errorf("bundle: %w", err)
			} else if bad != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalidSignature, n.spks, bad)
			}
		case xmlutil.IsChild(child.Name, b.Namespace, n.ik):
			if haveIK {
				return nil, fmt.Errorf("%w: %s", ErrDuplicateElement, n.ik)
			}
			haveIK = true
			var bad error
			if b.IdentityKey, bad, err = readKey(s, legacy); err != nil {
				return nil, fmt.Errorf("bundle: %w", err)
			} else if bad != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrInvalidKey, n.ik, bad)
			}
		case xmlutil.IsChild(child.Name, b.Namespace, n.prekeys):
			// Several <prekeys> elements are merged.
			if err := p.parse(s, b, n); err != nil {
				return nil, err
			}
		default:
			if err := s.Skip(); err != nil {
				return nil, fmt.Errorf("bundle: %w", err)
			}
		}
	}
	switch {
	case !haveSPK:
		return nil, fmt.Errorf("%w: %s", ErrMissingElement, n.spk)
	case !haveSPKS:
		return nil, fmt.Errorf("%w: %s", ErrMissingElement, n.spks)
	case !haveIK:
		return nil, fmt.Errorf("%w: %s", ErrMissingElement, n.ik)
	}
	return b, nil
}

// preKeyParser collects pre keys across the <prekeys> elements of a bundle.
type preKeyParser struct {
	seen  map[uint32]struct{}
	count int
}

// parse consumes a <prekeys> element whose start has just been read and
// appends its valid pre keys to b.
func (p *preKeyParser) parse(s *xmlutil.TokenStream, b *Bundle, n names) error {
	legacy := b.Namespace == ns.Legacy
	for {
		tok, err := s.Next()
		if err == io.EOF {
			return fmt.Errorf("bundle: %s: %w", n.prekeys, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if _, ok := tok.(xml.EndElement); ok {
			return nil
		}
		child, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if !xmlutil.IsChild(child.Name, b.Namespace, n.pk) {
			if err := s.Skip(); err != nil {
				return fmt.Errorf("bundle: %w", err)
			}
			continue
		}
		p.count++
		if p.count > MaxPreKeys {
			return fmt.Errorf("%w: more than %d", ErrTooManyPreKeys, MaxPreKeys)
		}
		v, present := xmlutil.Attr(child, n.pkID)
		id, idErr := xmlutil.ParseKeyID(v, present)
		key, keyErr, err := readKey(s, legacy)
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if idErr != nil || keyErr != nil {
			continue // an unusable pre key is skipped
		}
		if _, dup := p.seen[id]; dup {
			continue
		}
		p.seen[id] = struct{}{}
		b.PreKeys = append(b.PreKeys, PreKey{ID: id, Key: key})
	}
}

// errTooLong reports character data above maxKeyText.
var errTooLong = errors.New("text too long")

// readKey consumes a key element whose start has just been read.
// bad reports malformed content; err reports errors of the token stream.
func readKey(s *xmlutil.TokenStream, legacy bool) (key [32]byte, bad, err error) {
	raw, bad, err := readBase64(s)
	if bad != nil || err != nil {
		return key, bad, err
	}
	if legacy {
		if len(raw) != 33 || raw[0] != legacyKeyType {
			return key, errors.New("want 33 bytes starting with 0x05"), nil
		}
		raw = raw[1:]
	} else if len(raw) != 32 {
		return key, errors.New("want 32 bytes"), nil
	}
	copy(key[:], raw)
	return key, nil, nil
}

// readSignature consumes a signature element whose start has just been read.
// bad reports malformed content; err reports errors of the token stream.
func readSignature(s *xmlutil.TokenStream) (sig [64]byte, bad, err error) {
	raw, bad, err := readBase64(s)
	if bad != nil || err != nil {
		return sig, bad, err
	}
	if len(raw) != 64 {
		return sig, errors.New("want 64 bytes"), nil
	}
	copy(sig[:], raw)
	return sig, nil, nil
}

// readBase64 consumes an element whose start has just been read and decodes
// its text.
func readBase64(s *xmlutil.TokenStream) (raw []byte, bad, err error) {
	text, tooLong, err := s.Text(maxKeyText)
	switch {
	case err != nil:
		return nil, nil, err
	case tooLong:
		return nil, errTooLong, nil
	}
	raw, bad = xmlutil.DecodeBase64(text)
	return raw, bad, nil
}

// Decode reads the next element from r and decodes it as a bundle.
// Tokens before the first start element (such as a procinst, comments or
// whitespace) are skipped.
func Decode(r xml.TokenReader) (*Bundle, error) {
	return xmlutil.DecodeFirst(r, "bundle", ErrWrongElement, parse)
}

// UnmarshalXML implements xml.Unmarshaler.
// See Parse for the rules applied.
func (b *Bundle) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	parsed, err := Parse(d, start)
	if err != nil {
		return err
	}
	*b = *parsed
	return nil
}

// validate checks that b can be encoded such that Parse returns it unchanged.
func (b Bundle) validate() error {
	if _, ok := namesOf(b.Namespace); !ok {
		return ErrUnknownNamespace
	}
	if len(b.PreKeys) > MaxPreKeys {
		return fmt.Errorf("%w: %d > %d", ErrTooManyPreKeys, len(b.PreKeys), MaxPreKeys)
	}
	seen := make(map[uint32]struct{}, len(b.PreKeys))
	for _, pk := range b.PreKeys {
		if _, dup := seen[pk.ID]; dup {
			return fmt.Errorf("%w: %d", ErrDuplicateID, pk.ID)
		}
		seen[pk.ID] = struct{}{}
	}
	return nil
}

// TokenReader implements xmlstream.Marshaler.
// It writes the children in the order given in the package documentation.
// An invalid Bundle (unknown namespace, zero or duplicate id) makes the
// reader return an error instead of any token.
func (b Bundle) TokenReader() xml.TokenReader {
	if err := b.validate(); err != nil {
		return errReader{err}
	}
	n, _ := namesOf(b.Namespace)
	legacy := b.Namespace == ns.Legacy
	pks := make([]xml.TokenReader, 0, len(b.PreKeys))
	for _, pk := range b.PreKeys {
		pks = append(pks, element(n.pk, b64(encodeKey(pk.Key, legacy)), attrID(n.pkID, pk.ID)))
	}
	return xmlstream.Wrap(
		xmlstream.MultiReader(
			element(n.spk, b64(encodeKey(b.SignedPreKey, legacy)), attrID(n.spkID, b.SignedPreKeyID)),
			element(n.spks, b64(b.SignedPreKeySignature[:])),
			element(n.ik, b64(encodeKey(b.IdentityKey, legacy))),
			xmlstream.Wrap(xmlstream.MultiReader(pks...), xml.StartElement{Name: xml.Name{Local: n.prekeys}}),
		),
		xml.StartElement{Name: xml.Name{Space: b.Namespace, Local: "bundle"}},
	)
}

// encodeKey returns the wire form of a public key.
func encodeKey(key [32]byte, legacy bool) []byte {
	if legacy {
		return append([]byte{legacyKeyType}, key[:]...)
	}
	return key[:]
}

// b64 returns the base64 character data of raw.
func b64(raw []byte) xml.TokenReader {
	return xmlstream.Token(xml.CharData(base64.StdEncoding.EncodeToString(raw)))
}

func attrID(name string, id uint32) xml.Attr {
	return xml.Attr{Name: xml.Name{Local: name}, Value: strconv.FormatUint(uint64(id), 10)}
}

// element wraps inner in a child element (which inherits the namespace).
func element(local string, inner xml.TokenReader, attrs ...xml.Attr) xml.TokenReader {
	return xmlstream.Wrap(inner, xml.StartElement{Name: xml.Name{Local: local}, Attr: attrs})
}

// WriteXML implements xmlstream.WriterTo.
// It writes the same tokens as TokenReader and returns the number of tokens
// written.
func (b Bundle) WriteXML(w xmlstream.TokenWriter) (int, error) {
	return xmlstream.Copy(w, b.TokenReader())
}

// MarshalXML implements xml.Marshaler.
// The start element passed by encoding/xml is ignored.
func (b Bundle) MarshalXML(e *xml.Encoder, _ xml.StartElement) error {
	_, err := b.WriteXML(e)
	return err
}

// errReader is a token reader that fails immediately.
type errReader struct{ err error }

func (r errReader) Token() (xml.Token, error) { return nil, r.err }
