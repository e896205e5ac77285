// Package sce implements the envelopes of XEP-0420: Stanza Content
// Encryption, as profiled by OMEMO 2 (XEP-0384).
//
// An envelope carries the stanza children that are to be encrypted in its
// <content> element, together with affix elements that bind the ciphertext to
// its context:
//
//	<envelope xmlns='urn:xmpp:sce:1'>
//	  <content><body xmlns='jabber:client'>Hello</body></content>
//	  <rpad>Vx3…</rpad>
//	  <time stamp='2026-11-26T10:00:00Z'/>
//	  <to jid='juliet@capulet.lit'/>
//	  <from jid='romeo@montague.lit'/>
//	</envelope>
//
// The package is a codec plus an affix checker; it does no cryptography.
// [New] and [Envelope.Marshal] build the plaintext that the OMEMO layer
// encrypts, [Parse] and [Envelope.Check] validate the plaintext that it
// decrypted.
// An envelope is only meaningful after the surrounding encryption has
// authenticated it; the affixes then protect against a server that replays,
// redirects or re-labels authenticated ciphertext.
//
// # Profile
//
// OMEMO 2 requires <rpad> (length hiding), recommends <from>, allows <time>
// and requires <to> in group chats (so that a server cannot turn a group
// message into a private one or the other way round).
// [Policy] expresses these requirements on the receiving side.
//
// # Padding
//
// XEP-0420 (0.5.0) chooses the length of <rpad> "in a two-step process:
// first, the stanza is padded to a fixed minimum size. Afterwards, between
// 0 and 200 characters are added on top", and "longer paddings than
// expected MUST NOT be rejected"; its revision history names the
// 0-length rpad. XEP-0384 only requires that the envelope "MUST contain an
// <rpad/> affix element".
//
// On the receiving side any length is therefore accepted, including an
// empty <rpad/>: [Policy.RequireRPad] asks for the element to be present
// ([Envelope.HasRPad]), not for it to be non-empty.
//
// [New] follows the two steps: it first pads the envelope to
// [MinPaddedSize] bytes of XML (an envelope that already is that large
// with an empty <rpad> gets no such padding), then adds 1 to [MaxRPad]
// random characters on top. The spec leaves the minimum size open; 512
// bytes make every chat line of up to about 300 bytes of content look
// alike. The random part is never empty although XEP-0420 allows 0: an
// empty <rpad/> is legal, but receivers built against older revisions
// (this package among them) rejected it as a missing affix, and one
// character more costs nothing.
//
// # Invalid affixes
//
// An affix element that is present but whose value cannot be parsed (a
// <time> without a valid XEP-0082 DateTime 'stamp', a <to> or <from>
// without a valid 'jid') is not a structural error: [Parse] accepts the
// envelope, leaves the affix's field zero as if it were absent and records
// an [*InvalidAffixError] in [Envelope.Invalid].
// [Envelope.Check] then treats the affix as absent (it protects nothing: a
// sender could as well have left it out) unless the Policy requires it or
// asks for [Policy.StrictAffixes], in which case the *InvalidAffixError is
// the result.
// A caller that accepts such an envelope should still let the application
// know (XEP-0420 asks receivers to "alert the user/reject the stanza" when
// an affix does not verify).
// A present affix that parses and contradicts the stanza is always an
// error ([*AffixError]).
//
// # Namespaces of the content
//
// XEP-0420 requires every child of <content> to carry a namespace; <body>
// is jabber:client.
// Senders sometimes omit it, and an element without xmlns inside <content>
// then inherits the default namespace of the envelope.
// This package treats a content element whose namespace is empty or
// urn:xmpp:sce:1 as jabber:client, at every depth: SCE defines no element
// that may appear inside <content>, so such a name can only come from a
// missing declaration.
// [Envelope.Content] always holds the canonical form described at
// [Envelope.Content], in which every top-level child declares its namespace
// explicitly; [Envelope.ContentTokens] presents the children as tokens whose
// Name.Space is the resolved namespace (so a body is
// {Space: "jabber:client", Local: "body"}) and whose attributes contain no
// xmlns declarations, which is the form encoding/xml and mellium expect and
// which never produces duplicated xmlns attributes.
//
// # Parsing untrusted input
//
// [Parse] never panics, refuses input larger than [MaxSize] or nested deeper
// than [MaxDepth], rejects DTDs (and so entity definitions), processing
// instructions other than a leading XML declaration, undefined entities,
// undeclared namespace prefixes, duplicated attributes, invalid UTF-8,
// a second root element, a missing or repeated <content>, repeated
// affixes and elements inside <rpad>.
// Comments are dropped.
// Unparseable affix values are not rejected by Parse (see Invalid
// affixes above).
// Its errors wrap the sentinels of this package and never quote the
// (decrypted, hence confidential) input.
package sce // import "mellium.im/omemo/sce"

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"mellium.im/xmpp/jid"
)

// NS is the namespace of Stanza Content Encryption.
const NS = "urn:xmpp:sce:1"

// nsClient is the namespace given to content elements without one.
const nsClient = "jabber:client"

// Limits.
const (
	// MaxSize is the largest envelope, in bytes of XML, that Parse accepts
	// and that Marshal produces.
	MaxSize = 256 << 10
	// MaxDepth is the deepest element nesting Parse accepts, counting the
	// envelope as depth 1 (so children of <content> are at depth 3).
	MaxDepth = 64
	// MaxRPad is the largest number of random characters New adds on top
	// of the padding up to MinPaddedSize (at least one is added).
	// Longer paddings, and empty ones, are accepted on input, as XEP-0420
	// requires.
	MaxRPad = 200
	// MinPaddedSize is the fixed minimum size, in bytes of XML, to which
	// New pads an envelope before adding the random part of the padding
	// (XEP-0420 0.5.0, <rpad>).
	MinPaddedSize = 512
)

// Errors.
// Every error returned by this package wraps one of them (use errors.Is).
var (
	// ErrMalformed means the XML is not a valid SCE envelope or content.
	ErrMalformed = errors.New("sce: malformed envelope")
	// ErrTooLarge means the envelope exceeds MaxSize.
	ErrTooLarge = errors.New("sce: envelope too large")
	// ErrTooDeep means the elements nest deeper than MaxDepth.
	ErrTooDeep = errors.New("sce: elements nested too deeply")
	// ErrAffixMismatch means an affix contradicts the stanza; the concrete
	// error is an *AffixError.
	ErrAffixMismatch = errors.New("sce: affix mismatch")
	// ErrMissingAffix means an affix required by the Policy is absent.
	ErrMissingAffix = errors.New("sce: missing affix")
	// ErrInvalidAffix means an affix is present but its value cannot be
	// parsed; the concrete error is an *InvalidAffixError.
	ErrInvalidAffix = errors.New("sce: invalid affix")
)

// Envelope is a decoded SCE <envelope>.
//
// The zero value of each affix field means that the affix is absent (or,
// for Time, To and From, present but invalid: see Invalid), except for
// <rpad>, whose presence HasRPad records separately because an empty
// <rpad/> is a valid padding of length 0.
type Envelope struct {
	// Content is the inner XML of <content>: the stanza children that were
	// encrypted, e.g. <body xmlns='jabber:client'>hi</body>.
	//
	// New and Parse store it in canonical form: UTF-8 without comments, no
	// whitespace between top-level children, each top-level child (and each
	// descendant whose namespace differs from its parent's) declaring its
	// namespace with xmlns='…', no namespace prefixes on elements, single
	// quoted attributes.
	// Marshal validates and canonicalises whatever it holds, so a Content set
	// by hand can never break out of the <content> element.
	Content []byte
	// Dropped names the server-processed elements (see ServerProcessed)
	// that Parse found among the children of <content> and removed from
	// Content, as XEP-0420 requires.
	Dropped []xml.Name
	// RPad is the random padding. OMEMO requires the element; its text
	// may be empty.
	RPad string
	// HasRPad reports that the <rpad> element is present, even if empty.
	// Parse and New set it; Marshal writes <rpad> when HasRPad is set or
	// RPad is not empty, and Check counts a non-empty RPad as present
	// too, so an Envelope built by hand with only RPad set keeps working.
	HasRPad bool
	// Time is the moment the sender encrypted the envelope.
	Time time.Time
	// To is the recipient's bare JID (the room's in a group chat).
	To jid.JID
	// From is the sender's bare JID.
	From jid.JID
	// Invalid lists the affixes (<time>, <to>, <from>) that Parse found
	// present but could not parse, in document order; their fields above
	// are left zero. Marshal ignores it.
	Invalid []*InvalidAffixError
}

// hasRPad reports whether the envelope has an <rpad> element.
func (e *Envelope) hasRPad() bool { return e.HasRPad || e.RPad != "" }

// New returns an envelope holding content, with the from and to affixes set
// to the bare JIDs of from and to (a zero JID leaves the affix out), the
// time affix set to now truncated to the second in UTC (a zero now leaves it
// out) and a random padding.
//
// The padding is made of characters drawn from the URL-safe base64
// alphabet. Its length follows XEP-0420: as many characters as bring the
// marshalled envelope to MinPaddedSize bytes (none if it is already that
// large), plus a uniformly random number of 1 to MaxRPad characters (see
// Padding in the package documentation). It is never empty, so that even
// receivers that confuse an empty <rpad/> with an absent one accept it.
// rand defaults to crypto/rand.Reader when nil.
//
// content must be a sequence of well-formed XML elements (whitespace
// between them is dropped); it is validated and stored in canonical form
// (see [Envelope.Content]), where elements without a namespace become
// jabber:client.
func New(content []byte, from, to jid.JID, now time.Time, rand io.Reader) (*Envelope, error) {
	canon, err := canonicalContent(content)
	if err != nil {
		return nil, err
	}
	e := &Envelope{Content: canon}
	if !isZero(from) {
		e.From = from.Bare()
	}
	if !isZero(to) {
		e.To = to.Bare()
	}
	if !now.IsZero() {
		e.Time = now.UTC().Truncate(time.Second)
	}
	// The size without <rpad>; padding characters need no escaping.
	unpadded, err := e.Marshal()
	if err != nil {
		return nil, err
	}
	fixed := 0
	if n := len(unpadded) + len("<rpad></rpad>"); n < MinPaddedSize {
		fixed = MinPaddedSize - n
	}
	pad, err := randomPad(rand, fixed)
	if err != nil {
		return nil, err
	}
	e.RPad, e.HasRPad = pad, true
	// Marshal accepts the envelope it wrote without the padding, and the
	// padding characters need no escaping: only the size can fail.
	if len(unpadded)+len("<rpad></rpad>")+len(pad) > MaxSize {
		return nil, ErrTooLarge
	}
	return e, nil
}

const padAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// randomPad returns fixed+1..fixed+MaxRPad characters of padAlphabet, the
// number above fixed uniformly distributed.
func randomPad(r io.Reader, fixed int) (string, error) {
	if r == nil {
		r = rand.Reader
	}
	var b [1]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return "", fmt.Errorf("sce: reading randomness: %w", err)
		}
		// Rejection sampling keeps the length uniform.
		if int(b[0]) < MaxRPad {
			break
		}
	}
	pad := make([]byte, fixed+int(b[0])+1)
	if _, err := io.ReadFull(r, pad); err != nil {
		return "", fmt.Errorf("sce: reading randomness: %w", err)
	}
	for i, c := range pad {
		pad[i] = padAlphabet[c&63] // 256 is a multiple of 64: uniform
	}
	return string(pad), nil
}

func isZero(j jid.JID) bool { return j.Equal(jid.JID{}) }

// Marshal returns the XML of the envelope:
//
//	<envelope xmlns='urn:xmpp:sce:1'><content>…</content><rpad>…</rpad><time stamp='…'/><to jid='…'/><from jid='…'/></envelope>
//
// Absent affixes are left out (Invalid is ignored); an <rpad> with
// HasRPad set and an empty RPad is written as <rpad/>; the stamp is RFC 3339
// (XEP-0082) in UTC.
// The content is validated and written in canonical form; Content from New
// or Parse is already canonical and is written verbatim.
// The result is never larger than MaxSize and always parses with Parse into
// an equal envelope.
func (e *Envelope) Marshal() ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: nil envelope", ErrMalformed)
	}
	var b bytes.Buffer
	b.Grow(len(e.Content) + len(e.RPad) + 256)
	b.WriteString(`<envelope xmlns='` + NS + `'><content>`)
	if err := writeCanonical(&b, e.Content); err != nil {
		return nil, err
	}
	b.WriteString(`</content>`)
	switch {
	case e.RPad != "":
		if !validChars(e.RPad) {
			return nil, fmt.Errorf("%w: rpad holds characters not allowed in XML", ErrMalformed)
		}
		b.WriteString(`<rpad>`)
		escapeText(&b, e.RPad)
		b.WriteString(`</rpad>`)
	case e.HasRPad:
		b.WriteString(`<rpad/>`)
	}
	if !e.Time.IsZero() {
		t := e.Time.UTC()
		if y := t.Year(); y < 0 || y > 9999 {
			return nil, fmt.Errorf("%w: time out of range", ErrMalformed)
		}
		b.WriteString(`<time stamp='`)
		b.WriteString(t.Format(time.RFC3339Nano))
		b.WriteString(`'/>`)
	}
	writeJID(&b, "to", e.To)
	writeJID(&b, "from", e.From)
	b.WriteString(`</envelope>`)
	if b.Len() > MaxSize {
		return nil, ErrTooLarge
	}
	return b.Bytes(), nil
}

func writeJID(b *bytes.Buffer, name string, j jid.JID) {
	if isZero(j) {
		return
	}
	b.WriteString(`<` + name + ` jid='`)
	escapeAttr(b, j.String())
	b.WriteString(`'/>`)
}

// Policy says which affixes a receiver requires and how it checks time.
//
// For an OMEMO 2 one-to-one chat use RequireRPad; for a group chat also
// RequireTo.
// RequireFrom is off by default because OMEMO only recommends <from>; a
// present <from> is always checked.
type Policy struct {
	// RequireRPad requires an <rpad> element, which may be empty.
	RequireRPad bool
	RequireFrom bool
	RequireTo   bool
	// StrictAffixes rejects an envelope with a present but unparseable
	// affix (Envelope.Invalid) instead of treating the affix as absent.
	StrictAffixes bool
	// MaxSkew, when positive, is the largest accepted difference between a
	// present <time> affix and Now. An absent <time> is accepted (OMEMO
	// makes it optional).
	MaxSkew time.Duration
	// Now returns the sending time derived from the stanza, defaulting to
	// time.Now. Set it to the XEP-0203 delay stamp for offline and MAM
	// messages, or they fail the skew check.
	Now func() time.Time
}

// AffixError reports an affix that contradicts the stanza.
// It matches ErrAffixMismatch with errors.Is.
type AffixError struct {
	Affix string // "from", "to" or "time"
	Want  string // the value derived from the stanza
	Got   string // the value in the envelope
}

func (e *AffixError) Error() string {
	return fmt.Sprintf("sce: %s affix mismatch: stanza has %q, envelope has %q", e.Affix, e.Want, e.Got)
}

// Unwrap returns ErrAffixMismatch.
func (e *AffixError) Unwrap() error { return ErrAffixMismatch }

// InvalidAffixError reports an affix that is present but whose value
// cannot be parsed. It matches ErrInvalidAffix with errors.Is.
// Parse records it in Envelope.Invalid; Check returns it when the Policy
// requires the affix or is strict (see Invalid affixes in the package
// documentation). It never quotes the value, which is confidential.
type InvalidAffixError struct {
	Affix  string // "time", "to" or "from"
	Reason string // what is wrong, e.g. "stamp is not an XEP-0082 DateTime"
}

func (e *InvalidAffixError) Error() string {
	return fmt.Sprintf("sce: invalid %s affix: %s", e.Affix, e.Reason)
}

// Unwrap returns ErrInvalidAffix.
func (e *InvalidAffixError) Unwrap() error { return ErrInvalidAffix }

// invalid returns the entry of Invalid for affix, or nil.
func (e *Envelope) invalid(affix string) *InvalidAffixError {
	for _, ie := range e.Invalid {
		if ie != nil && ie.Affix == affix {
			return ie
		}
	}
	return nil
}

// Check verifies the affixes against the stanza that carried the envelope.
//
// from and to are the sender and recipient the envelope must name: in a
// one-to-one chat the from and to attributes of the stanza, in a group chat
// the real JID of the occupant who sent it and the room's JID.
// Only bare JIDs are compared, so resources on either side do not matter.
//
//   - A present <from> must equal from; a zero from then mismatches.
//     Absence is an error only with RequireFrom.
//   - A present <to> must equal to; absence is an error only with RequireTo.
//   - <rpad> must be present with RequireRPad; it may be empty.
//   - With MaxSkew > 0, a present <time> must lie within MaxSkew of Now.
//
// An affix listed in Envelope.Invalid counts as absent, except that its
// *InvalidAffixError is returned where absence would be an error
// (RequireFrom, RequireTo) and with StrictAffixes. The caller should report
// the entries of Invalid it tolerated.
//
// Errors are *AffixError (ErrAffixMismatch), *InvalidAffixError
// (ErrInvalidAffix) or wrap ErrMissingAffix; the first failing check, in
// the order above, is reported.
// A caller must reject the stanza (or alert the user) on any error:
// the affixes are the only protection against a server that redirects or
// re-labels authenticated ciphertext.
func (e *Envelope) Check(p Policy, from, to jid.JID) error {
	if e == nil {
		return fmt.Errorf("%w: nil envelope", ErrMalformed)
	}
	if err := e.checkJID("from", e.From, from, p.RequireFrom, p.StrictAffixes); err != nil {
		return err
	}
	if err := e.checkJID("to", e.To, to, p.RequireTo, p.StrictAffixes); err != nil {
		return err
	}
	if p.RequireRPad && !e.hasRPad() {
		return fmt.Errorf("%w: rpad", ErrMissingAffix)
	}
	if ie := e.invalid("time"); ie != nil && e.Time.IsZero() && p.StrictAffixes {
		return ie
	}
	if p.MaxSkew > 0 && !e.Time.IsZero() {
		now := time.Now()
		if p.Now != nil {
			now = p.Now()
		}
		d := now.Sub(e.Time)
		if d < 0 {
			d = -d
			if d < 0 { // -math.MinInt64
				d = math.MaxInt64
			}
		}
		if d > p.MaxSkew {
			return &AffixError{
				Affix: "time",
				Want:  now.UTC().Format(time.RFC3339Nano),
				Got:   e.Time.UTC().Format(time.RFC3339Nano),
			}
		}
	}
	return nil
}

func (e *Envelope) checkJID(affix string, got, want jid.JID, required, strict bool) error {
	if isZero(got) {
		if ie := e.invalid(affix); ie != nil && (required || strict) {
			return ie
		}
		if required {
			return fmt.Errorf("%w: %s", ErrMissingAffix, affix)
		}
		return nil
	}
	if !got.Bare().Equal(want.Bare()) {
		return &AffixError{Affix: affix, Want: want.Bare().String(), Got: got.Bare().String()}
	}
	return nil
}
