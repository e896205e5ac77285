package pep

import (
	"encoding/xml"
	"errors"
	"strings"

	"mellium.im/xmpp/pubsub"
	"mellium.im/xmpp/stanza"
)

// Sentinel errors.
// They never contain data from the network.
var (
	// ErrNotFound is returned by the fetch functions when the node or item
	// does not exist or the requester may not see it (Prosody answers
	// forbidden, not item-not-found, to non-subscribers asking for a missing
	// node): in both cases nothing usable was published.
	// The server's *Error stays reachable with errors.As.
	ErrNotFound = errors.New("pep: nothing published")

	// ErrForbidden matches an *Error whose condition is forbidden.
	ErrForbidden = errors.New("pep: forbidden")

	// ErrPreconditionNotMet matches an *Error carrying the pubsub#errors
	// condition precondition-not-met: the node exists with a configuration
	// that differs from the publish-options.
	// Publish handles it itself; it is returned only when reconfiguring did
	// not help.
	ErrPreconditionNotMet = errors.New("pep: precondition not met")

	// ErrMalformed is returned for a response or notification that does not
	// have the structure XEP-0060 prescribes.
	ErrMalformed = errors.New("pep: malformed pubsub element")

	// ErrConfigRefused matches a *ConfigRefusedError: the service refused
	// the node configuration that Publish needed.
	ErrConfigRefused = errors.New("pep: node configuration refused")

	// ErrSubscriptionPending is returned by Subscribe when the service
	// accepted the request but has not approved the subscription (state
	// "pending" or "unconfigured").
	ErrSubscriptionPending = errors.New("pep: subscription not active")
)

// PubSub error conditions (namespace http://jabber.org/protocol/pubsub#errors)
// that this package acts on.
const (
	CondPreconditionNotMet = "precondition-not-met"
	CondUnsupported        = "unsupported"
)

// Error is an error returned by the pubsub service, with everything the
// <error/> element carried, including the pubsub#errors condition that
// stanza.Error loses.
type Error struct {
	// Type is the error type (cancel, auth, modify, wait, continue).
	Type stanza.ErrorType
	// Condition is the RFC 6120 defined condition; undefined-condition if
	// the server sent none.
	Condition stanza.Condition
	// PubSubCondition is the local name of the child in the pubsub#errors
	// namespace (for example "precondition-not-met"), or "".
	PubSubCondition string
	// Feature is the feature attribute of a pubsub#errors <unsupported/>.
	Feature string
	// Text is the human-readable <text/> (untrusted, at most 1 KiB of valid
	// UTF-8).
	Text string
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("pep: server error: ")
	b.WriteString(string(e.Condition))
	if e.PubSubCondition != "" {
		b.WriteString(" (")
		b.WriteString(e.PubSubCondition)
		if e.Feature != "" {
			b.WriteString(" " + e.Feature)
		}
		b.WriteString(")")
	}
	if e.Text != "" {
		b.WriteString(": ")
		b.WriteString(e.Text)
	}
	return b.String()
}

// Is reports whether e matches ErrForbidden or ErrPreconditionNotMet.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrForbidden:
		return e.Condition == stanza.Forbidden
	case ErrPreconditionNotMet:
		return e.PubSubCondition == CondPreconditionNotMet
	}
	return false
}

// Unwrap returns the equivalent stanza.Error, so that
// errors.Is(err, stanza.Error{Condition: stanza.ItemNotFound}) works.
func (e *Error) Unwrap() error {
	se := stanza.Error{Type: e.Type, Condition: e.Condition}
	if e.Text != "" {
		se.Text = map[string]string{"": e.Text}
	}
	return se
}

// ParseError parses a stanza error.
// r yields either an <error/> element or a stanza (iq, message, presence)
// whose first <error/> child is used.
// Unknown children are ignored; a missing defined condition becomes
// undefined-condition.
func ParseError(r xml.TokenReader) (*Error, error) {
	toks, err := readTokens(r)
	if err != nil {
		return nil, errors.Join(ErrMalformed, err)
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil, errors.Join(ErrMalformed, err)
	}
	return parseErrorNode(root)
}

func parseErrorNode(root *node) (*Error, error) {
	errNode := root
	if root.start.Name.Local != "error" {
		errNode = nil
		for _, c := range root.children {
			if c.start.Name.Local == "error" && c.start.Name.Space == root.start.Name.Space {
				errNode = c
				break
			}
		}
		if errNode == nil {
			return nil, ErrMalformed
		}
	}
	e := &Error{}
	if typ, ok := errNode.attr("type"); ok {
		e.Type = stanza.ErrorType(typ)
	}
	var texts []*node
	for _, c := range errNode.children {
		switch c.start.Name.Space {
		case nsStanzas:
			if c.start.Name.Local == "text" {
				texts = append(texts, c)
			} else if e.Condition == "" {
				e.Condition = stanza.Condition(c.start.Name.Local)
			}
		case pubsub.NSErrors:
			if e.PubSubCondition == "" {
				e.PubSubCondition = c.start.Name.Local
				e.Feature, _ = c.attr("feature")
				e.Feature = clean(e.Feature, 256)
			}
		}
	}
	if e.Condition == "" {
		e.Condition = stanza.UndefinedCondition
	}
	// Prefer the text without xml:lang, then the first one.
	var chosen *node
	for _, t := range texts {
		if lang := langOf(t); lang == "" {
			chosen = t
			break
		}
	}
	if chosen == nil && len(texts) > 0 {
		chosen = texts[0]
	}
	if chosen != nil {
		e.Text = clean(charData(chosen), maxTextBytes)
	}
	return e, nil
}

func langOf(n *node) string {
	for _, a := range n.start.Attr {
		if a.Name.Local == "lang" && (a.Name.Space == nsXML || a.Name.Space == "xml") {
			return a.Value
		}
	}
	return ""
}

// charData concatenates the character data directly inside n.
func charData(n *node) string {
	var b strings.Builder
	depth := 0
	for _, tok := range n.toks {
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		case xml.CharData:
			if depth == 1 && b.Len() <= maxTextBytes {
				b.Write(t)
			}
		}
	}
	return b.String()
}

// clean makes untrusted text safe to show: valid UTF-8, no control
// characters, at most max bytes.
func clean(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		cut := max
		for cut > 0 && !isRuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// ConfigRefusedError reports that the service refused to give a node the
// configuration Publish asked for (its publish-options, as a node
// configuration after precondition-not-met, or after a publish without
// options). Nothing was published with that configuration.
type ConfigRefusedError struct {
	Node string
	// Fields are the configuration fields asked for (var=value).
	Fields []string
	// Err is the service's answer, usually an *Error.
	Err error
}

func (e *ConfigRefusedError) Error() string {
	return "pep: the server refused to configure node " + e.Node + " with " + strings.Join(e.Fields, ", ") + ": " + e.Err.Error()
}

// Unwrap returns the service's answer.
func (e *ConfigRefusedError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrConfigRefused) true.
func (e *ConfigRefusedError) Is(target error) bool { return target == ErrConfigRefused }

// Asked reports whether the refused configuration asked for field=value.
func (e *ConfigRefusedError) Asked(field, value string) bool {
	for _, f := range e.Fields {
		if f == field+"="+value {
			return true
		}
	}
	return false
}

// OpenAccessError is an ErrConfigRefused for a node that had to be readable
// by everyone (access model open), put in words for the user: what the
// node is for, and what the server's operator can do.
type OpenAccessError struct {
	// What names the node's content ("the OMEMO device list").
	What string
	*ConfigRefusedError
}

func (e *OpenAccessError) Error() string {
	return "pep: " + e.What + " must be readable by everyone (PEP access model \"open\") so that contacts can encrypt for this device, " +
		"and the server refused that for node " + e.Node + " (" + e.Err.Error() + "); the server's operator must allow the open access model for PEP nodes"
}

// Unwrap returns the ConfigRefusedError.
func (e *OpenAccessError) Unwrap() error { return e.ConfigRefusedError }

// ExplainOpenAccess returns err as an *OpenAccessError if it reports a
// refused configuration that asked for the open access model, else err.
func ExplainOpenAccess(err error, what string) error {
	var cr *ConfigRefusedError
	if errors.As(err, &cr) && cr.Asked(FieldAccessModel, "open") {
		return &OpenAccessError{What: what, ConfigRefusedError: cr}
	}
	return err
}
