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
// a second root element, a missing or repeated <content> and repeated
// affixes.
// Comments are dropped.
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
	// MaxRPad is the largest padding length New chooses.
	// Longer paddings are accepted on input, as XEP-0420 requires.
	MaxRPad = 200
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
)

// Envelope is a decoded SCE <envelope>.
//
// The zero value of each affix field means that the affix is absent.
// An empty <rpad/> element is therefore indistinguishable from an absent
// one; it hides nothing, so a Policy with RequireRPad rejects both.
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
	// RPad is the random padding. OMEMO requires it.
	RPad string
	// Time is the moment the sender encrypted the envelope.
	Time time.Time
	// To is the recipient's bare JID (the room's in a group chat).
	To jid.JID
	// From is the sender's bare JID.
	From jid.JID
}

// New returns an envelope holding content, with the from and to affixes set
// to the bare JIDs of from and to (a zero JID leaves the affix out), the
// time affix set to now truncated to the second in UTC (a zero now leaves it
// out) and a random padding.
//
// The padding has a uniformly random length between 1 and MaxRPad
// characters drawn from the URL-safe base64 alphabet; it is never empty, so
// that the <rpad> element OMEMO requires is always present.
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
	pad, err := randomPad(rand)
	if err != nil {
		return nil, err
	}
	e := &Envelope{Content: canon, RPad: pad}
	if !isZero(from) {
		e.From = from.Bare()
	}
	if !isZero(to) {
		e.To = to.Bare()
	}
	if !now.IsZero() {
		e.Time = now.UTC().Truncate(time.Second)
	}
	if _, err := e.Marshal(); err != nil {
		return nil, err
	}
	return e, nil
}

const padAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// randomPad returns 1..MaxRPad characters of padAlphabet.
func randomPad(r io.Reader) (string, error) {
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
	pad := make([]byte, int(b[0])+1)
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
// Absent affixes are left out; the stamp is RFC 3339 (XEP-0082) in UTC.
// The content is validated and written in canonical form; Content from New
// or Parse is already canonical and is written verbatim.
// The result is never larger than MaxSize and always parses with Parse into
// an equal envelope.
func (e *Envelope) Marshal() ([]byte, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: nil envelope", ErrMalformed)
	}
	var b bytes.Buffer
	b.WriteString(`<envelope xmlns='` + NS + `'><content>`)
	if err := writeCanonical(&b, e.Content); err != nil {
		return nil, err
	}
	b.WriteString(`</content>`)
	if e.RPad != "" {
		if !validChars(e.RPad) {
			return nil, fmt.Errorf("%w: rpad holds characters not allowed in XML", ErrMalformed)
		}
		b.WriteString(`<rpad>`)
		escapeText(&b, e.RPad)
		b.WriteString(`</rpad>`)
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
	RequireRPad bool
	RequireFrom bool
	RequireTo   bool
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
//   - <rpad> must be non-empty with RequireRPad.
//   - With MaxSkew > 0, a present <time> must lie within MaxSkew of Now.
//
// Errors are *AffixError (ErrAffixMismatch) or wrap ErrMissingAffix; the
// first failing check, in the order above, is reported.
// A caller must reject the stanza (or alert the user) on any error:
// the affixes are the only protection against a server that redirects or
// re-labels authenticated ciphertext.
func (e *Envelope) Check(p Policy, from, to jid.JID) error {
	if e == nil {
		return fmt.Errorf("%w: nil envelope", ErrMalformed)
	}
	if err := checkJID("from", e.From, from, p.RequireFrom); err != nil {
		return err
	}
	if err := checkJID("to", e.To, to, p.RequireTo); err != nil {
		return err
	}
	if p.RequireRPad && e.RPad == "" {
		return fmt.Errorf("%w: rpad", ErrMissingAffix)
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

func checkJID(affix string, got, want jid.JID, required bool) error {
	if isZero(got) {
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
