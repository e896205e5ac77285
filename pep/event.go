package pep

import (
	"encoding/xml"
	"errors"

	"mellium.im/omemo/internal/muxgate"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/pubsub"
	"mellium.im/xmpp/stanza"
)

// Errors returned by ParseEvent.
var (
	// ErrUntrustedSender is returned for a notification whose from is not a
	// bare JID (a client or MUC occupant cannot speak for a PEP service) or
	// is not a valid JID.
	ErrUntrustedSender = errors.New("pep: notification not from a bare JID")
	// ErrUnsupportedEvent is returned for a well-formed notification other
	// than items, purge or delete (for example configuration or
	// subscription).
	ErrUnsupportedEvent = errors.New("pep: unsupported notification")
)

// Event is a PEP notification (XEP-0060 §7.1.2, §7.2.2.1, §8.4.3, §8.5.3).
type Event struct {
	// From is the bare JID of the PEP service (the account that owns the
	// node), taken from the message's from attribute.
	// The zero JID means the own account (mellium removes the own bare JID
	// from incoming stanzas).
	From jid.JID
	// Node is the node the notification is about.
	Node string
	// Items are the published items (possibly without payload).
	Items []Item
	// Retracted are the ids of retracted items.
	Retracted []string
	// Purged is set when all items of the node were purged.
	Purged bool
	// Deleted is set when the node was deleted.
	Deleted bool
}

// ParseEvent parses a <message/> that carries a pubsub#event notification.
// r must yield the whole message, starting with its start element, as the
// readers that mux message handlers receive do.
//
// The message must carry exactly one <event/> with exactly one items, purge
// or delete child naming a node, and its from must be empty (own account) or
// a bare JID; otherwise an error matching ErrMalformed, ErrUntrustedSender
// or ErrUnsupportedEvent is returned.
// Error messages are rejected.
func ParseEvent(r xml.TokenReader) (Event, error) {
	toks, err := readTokens(r)
	if err != nil {
		return Event{}, errors.Join(ErrMalformed, err)
	}
	root, err := buildTree(toks)
	if err != nil {
		return Event{}, errors.Join(ErrMalformed, err)
	}
	return parseEventMessage(root)
}

func parseEventMessage(root *node) (Event, error) {
	if root.start.Name.Local != "message" {
		return Event{}, ErrMalformed
	}
	if typ, _ := root.attr("type"); typ == string(stanza.ErrorMessage) {
		return Event{}, ErrMalformed
	}
	var ev Event
	if from, _ := root.attr("from"); from != "" {
		j, err := jid.Parse(from)
		if err != nil || j.Resourcepart() != "" {
			return Event{}, ErrUntrustedSender
		}
		ev.From = j
	}

	var eventNode *node
	for _, c := range root.children {
		if c.is(pubsub.NSEvent, "event") {
			if eventNode != nil {
				return Event{}, ErrMalformed
			}
			eventNode = c
		}
	}
	if eventNode == nil || len(eventNode.children) != 1 {
		return Event{}, ErrMalformed
	}
	body := eventNode.children[0]
	if body.start.Name.Space != pubsub.NSEvent {
		return Event{}, ErrMalformed
	}
	switch body.start.Name.Local {
	case "items", "purge", "delete":
	case "configuration", "subscription", "collection":
		return Event{}, ErrUnsupportedEvent
	default:
		return Event{}, ErrMalformed
	}
	ev.Node, _ = body.attr("node")
	if ev.Node == "" {
		return Event{}, ErrMalformed
	}
	switch body.start.Name.Local {
	case "purge":
		ev.Purged = true
		return ev, nil
	case "delete":
		ev.Deleted = true
		return ev, nil
	}
	for _, c := range body.children {
		switch {
		case c.is(pubsub.NSEvent, "item"):
			it, err := parseItem(c)
			if err != nil {
				return Event{}, err
			}
			ev.Items = append(ev.Items, it)
		case c.is(pubsub.NSEvent, "retract"):
			id, _ := c.attr("id")
			if id == "" {
				return Event{}, ErrMalformed
			}
			ev.Retracted = append(ev.Retracted, id)
		}
	}
	return ev, nil
}

// HandleEvents returns a mux option that passes every PEP notification
// (messages of type headline or normal with a pubsub#event payload) to f.
//
// f runs in the goroutine of Session.Serve: it must return quickly and must
// not send IQs on the session (hand the event to another goroutine for
// that).
// Notifications that ParseEvent rejects are dropped; the handler never
// returns an error, so a malformed notification cannot close the stream.
//
// The mux allows one handler per pattern, so a mux gets HandleEvents once;
// f dispatches on Event.Node.
// Only nodes advertised with +notify (see NotifyFeatures) or explicitly
// subscribed (see Subscribe) produce notifications.
func HandleEvents(f func(Event)) mux.Option {
	if f == nil {
		panic("pep: nil event callback")
	}
	name := xml.Name{Space: pubsub.NSEvent, Local: "event"}
	return func(m *mux.ServeMux) {
		h := &eventHandler{f: f}
		mux.Message(stanza.HeadlineMessage, name, h)(m)
		mux.Message(stanza.NormalMessage, name, h)(m)
	}
}

// eventHandler parses each notification once: the mux calls it once per
// <event> child, each time with the whole stanza (see internal/muxgate).
type eventHandler struct {
	f    func(Event)
	gate muxgate.Gate
}

// eventLimits bound what the handler copies of one notification.
var eventLimits = muxgate.Limits{Tokens: maxTokens, Bytes: maxEventBytes}

// HandleMessage implements mux.MessageHandler.
func (h *eventHandler) HandleMessage(_ stanza.Message, t xmlstream.TokenReadEncoder) error {
	tok, err := t.Token()
	start, ok := tok.(xml.StartElement)
	if err != nil || !ok {
		return nil
	}
	if h.gate.Repeat(start) {
		return nil
	}
	toks, calls, err := muxgate.Read(start, t, eventLimits, func(n xml.Name) bool {
		return n.Space == pubsub.NSEvent && n.Local == "event"
	})
	h.gate.Handled(start, calls-1)
	if err != nil {
		return nil
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil
	}
	ev, err := parseEventMessage(root)
	if err != nil {
		return nil
	}
	h.f(ev)
	return nil
}
