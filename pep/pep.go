package pep

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/pubsub"
	"mellium.im/xmpp/stanza"
)

// Data form types and node configuration fields used by this package.
const (
	NSPublishOptions = pubsub.NS + "#publish-options"
	NSNodeConfig     = pubsub.NS + "#node_config"

	FieldAccessModel  = "pubsub#access_model"
	FieldPersistItems = "pubsub#persist_items"
	FieldMaxItems     = "pubsub#max_items"
)

// MaxItemsMax is the pubsub#max_items value meaning "as many as the service
// allows" (XEP-0060 1.15.1, pubsub:integer-or-max).
const MaxItemsMax = "max"

// maxItemsFallback are tried in order when a service rejects "max"
// (the strategy of QXmpp).
var maxItemsFallback = []string{MaxItemsMax, "1000", "100", "10"}

// PublishOptions are the publish-options (XEP-0060 §7.1.5) sent with an
// item.
// They are preconditions: a node that exists with a different
// configuration is reconfigured to match (§8.2) and the publish retried;
// a node that does not exist is created with them.
// The zero value sends no options.
//
// OMEMO uses AccessModel "open" and PersistItems true for both of its
// nodes, MaxItems "1" for a device list ("max" is also common) and "max" for
// the bundles node of OMEMO 2.
type PublishOptions struct {
	// AccessModel is pubsub#access_model ("open", "presence", "whitelist",
	// …); "" sends none.
	AccessModel string
	// PersistItems sends pubsub#persist_items=true when set.
	PersistItems bool
	// MaxItems is pubsub#max_items: a decimal number, MaxItemsMax or "" for
	// none.
	// With MaxItemsMax, a service that rejects "max" is asked for 1000, then
	// 100, then 10.
	MaxItems string
}

func (o PublishOptions) empty() bool {
	return o.AccessModel == "" && !o.PersistItems && o.MaxItems == ""
}

// fields returns the option fields (without FORM_TYPE) with the given
// max_items value.
func (o PublishOptions) fields(maxItems string) [][2]string {
	var f [][2]string
	if o.AccessModel != "" {
		f = append(f, [2]string{FieldAccessModel, o.AccessModel})
	}
	if o.PersistItems {
		f = append(f, [2]string{FieldPersistItems, "true"})
	}
	if maxItems != "" {
		f = append(f, [2]string{FieldMaxItems, maxItems})
	}
	return f
}

// Publish publishes payload (one element) as item itemID of the own PEP
// node, with the given publish-options.
// An empty itemID lets the service choose one.
//
// When the node exists with a different configuration the service answers
// precondition-not-met; Publish then reconfigures the node with the same
// values (owner namespace, §8.2.4) and retries once per max_items value.
// When opts.MaxItems is MaxItemsMax and the service rejects it (bad-request,
// not-acceptable, policy-violation, resource-constraint or a failed
// precondition), 1000, 100 and 10 are tried in turn.
// When every max_items value is rejected, the item is published without
// pubsub#max_items and the node configured with it afterwards (services
// such as ejabberd 23.01 accept it only in the node configuration); a
// service without publish-options support gets the item without options
// and the node configured the same way. An error then means the item is
// published but the node's configuration could not be set.
//
// The payload is buffered before anything is sent, so it may be read from
// any source; it must not call into s.
// Publish must not be called from inside a handler of s (see the package
// documentation).
func Publish(ctx context.Context, s *xmpp.Session, node, itemID string, payload xml.TokenReader, opts PublishOptions) error {
	if node == "" {
		return errors.New("pep: empty node")
	}
	var item []xml.Token
	if payload != nil {
		var err error
		item, err = readTokens(payload)
		if err != nil {
			return fmt.Errorf("pep: reading payload: %w", err)
		}
	}

	candidates := []string{opts.MaxItems}
	if opts.MaxItems == MaxItemsMax {
		candidates = maxItemsFallback
	}
	err := publishWithValues(ctx, s, node, itemID, item, opts, candidates)
	var pe *Error
	if err == nil || !errors.As(err, &pe) {
		return err
	}
	var rest PublishOptions
	switch {
	case unsupportedOptions(pe) && !opts.empty():
		// No publish-options at all: publish plainly, then configure the
		// node (the strategy of QXmpp and slixmpp-omemo).
	case opts.MaxItems != "" && rejectsValue(pe):
		// Some services (ejabberd 23.01) know pubsub#max_items in the node
		// configuration but not in publish-options: publish without it,
		// then configure it. Their default for PEP nodes can be a single
		// item, which would let the bundles of one account's devices evict
		// each other.
		rest = opts
		rest.MaxItems = ""
	default:
		return err
	}
	if perr := publishWithValues(ctx, s, node, itemID, item, rest, []string{""}); perr != nil {
		return err
	}
	var cerr error
	var tried string
	for _, maxItems := range candidates {
		tried = maxItems
		cerr = configure(ctx, s, node, opts.fields(maxItems))
		var ce *Error
		if cerr == nil || !errors.As(cerr, &ce) || !rejectsValue(ce) {
			break
		}
	}
	if cerr != nil {
		return refused(node, opts.fields(tried), cerr)
	}
	return nil
}

// refused returns the error of a refused node configuration; a failure
// that is not the service's answer (the network, the context) stays as
// it is.
func refused(node string, fields [][2]string, err error) error {
	var pe *Error
	if !errors.As(err, &pe) {
		return err
	}
	asked := make([]string, 0, len(fields))
	for _, f := range fields {
		if f[0] == "FORM_TYPE" {
			continue
		}
		asked = append(asked, f[0]+"="+f[1])
	}
	return &ConfigRefusedError{Node: node, Fields: asked, Err: err}
}

// publishWithValues publishes with each max_items value in turn until one
// is accepted, reconfiguring the node when a precondition fails.
func publishWithValues(ctx context.Context, s *xmpp.Session, node, itemID string, item []xml.Token, opts PublishOptions, candidates []string) error {
	var err error
	for i, maxItems := range candidates {
		last := i == len(candidates)-1
		err = publishOnce(ctx, s, node, itemID, item, opts, maxItems)
		if err == nil {
			return nil
		}
		var pe *Error
		if !errors.As(err, &pe) {
			return err
		}
		if isPrecondition(pe) {
			cerr := configure(ctx, s, node, opts.fields(maxItems))
			if cerr != nil {
				var ce *Error
				if errors.As(cerr, &ce) && rejectsValue(ce) && !last {
					continue
				}
				return refused(node, opts.fields(maxItems), cerr)
			}
			err = publishOnce(ctx, s, node, itemID, item, opts, maxItems)
			if err == nil {
				return nil
			}
			if !errors.As(err, &pe) {
				return err
			}
		}
		if !rejectsValue(pe) || last || maxItems == "" {
			return err
		}
	}
	return err
}

// unsupportedOptions reports a service without publish-options support
// (XEP-0060 §7.1.5: feature-not-implemented with <unsupported
// feature='publish-options'/>).
func unsupportedOptions(e *Error) bool {
	return e.PubSubCondition == CondUnsupported && (e.Feature == "publish-options" || e.Feature == "") ||
		e.Condition == stanza.FeatureNotImplemented && e.PubSubCondition == ""
}

// isPrecondition reports a failed publish-options precondition.
// A plain conflict without pubsub condition is treated the same, because a
// publish that carried options has no other reason to conflict.
func isPrecondition(e *Error) bool {
	return e.PubSubCondition == CondPreconditionNotMet ||
		(e.Condition == stanza.Conflict && e.PubSubCondition == "")
}

// rejectsValue reports an error that may go away with a smaller max_items.
func rejectsValue(e *Error) bool {
	switch e.Condition {
	case stanza.BadRequest, stanza.NotAcceptable, stanza.PolicyViolation,
		stanza.ResourceConstraint, stanza.Conflict:
		return true
	}
	return e.PubSubCondition == CondPreconditionNotMet
}

func publishOnce(ctx context.Context, s *xmpp.Session, node, itemID string, item []xml.Token, opts PublishOptions, maxItems string) error {
	var itemAttr []xml.Attr
	if itemID != "" {
		itemAttr = []xml.Attr{attr("id", itemID)}
	}
	inner := []xml.TokenReader{
		xmlstream.Wrap(
			xmlstream.Wrap(tokens(item), xml.StartElement{Name: xml.Name{Local: "item"}, Attr: itemAttr}),
			xml.StartElement{Name: xml.Name{Local: "publish"}, Attr: []xml.Attr{attr("node", node)}},
		),
	}
	if !opts.empty() || maxItems != "" {
		inner = append(inner, xmlstream.Wrap(
			dataForm(NSPublishOptions, opts.fields(maxItems)),
			xml.StartElement{Name: xml.Name{Local: "publish-options"}},
		))
	}
	_, err := roundTrip(ctx, s, jid.JID{}, stanza.SetIQ, xmlstream.Wrap(
		xmlstream.MultiReader(inner...),
		xml.StartElement{Name: xml.Name{Space: pubsub.NS, Local: "pubsub"}},
	))
	return err
}

// configure submits a node configuration form with only the given fields
// (XEP-0060 §8.2.4); services keep the other fields unchanged.
func configure(ctx context.Context, s *xmpp.Session, node string, fields [][2]string) error {
	_, err := roundTrip(ctx, s, jid.JID{}, stanza.SetIQ, xmlstream.Wrap(
		xmlstream.Wrap(
			dataForm(NSNodeConfig, fields),
			xml.StartElement{Name: xml.Name{Local: "configure"}, Attr: []xml.Attr{attr("node", node)}},
		),
		xml.StartElement{Name: xml.Name{Space: pubsub.NSOwner, Local: "pubsub"}},
	))
	return err
}

// Configure sets the given fields of the own node (for example
// FieldAccessModel) in the owner namespace, leaving the others unchanged.
func Configure(ctx context.Context, s *xmpp.Session, node string, fields map[string]string) error {
	f := make([][2]string, 0, len(fields))
	for k, v := range fields {
		f = append(f, [2]string{k, v})
	}
	return configure(ctx, s, node, f)
}

// dataForm builds a submitted data form with a hidden FORM_TYPE.
func dataForm(formType string, fields [][2]string) xml.TokenReader {
	const nsData = "jabber:x:data"
	field := func(name, value string, hidden bool) xml.TokenReader {
		a := []xml.Attr{attr("var", name)}
		if hidden {
			a = append(a, attr("type", "hidden"))
		}
		return xmlstream.Wrap(
			xmlstream.Wrap(xmlstream.Token(xml.CharData(value)), xml.StartElement{Name: xml.Name{Space: nsData, Local: "value"}}),
			xml.StartElement{Name: xml.Name{Space: nsData, Local: "field"}, Attr: a},
		)
	}
	rs := []xml.TokenReader{field("FORM_TYPE", formType, true)}
	for _, f := range fields {
		rs = append(rs, field(f[0], f[1], false))
	}
	return xmlstream.Wrap(xmlstream.MultiReader(rs...), xml.StartElement{
		Name: xml.Name{Space: nsData, Local: "x"},
		Attr: []xml.Attr{attr("type", "submit")},
	})
}

// Item is a published item.
type Item struct {
	// ID is the item id.
	ID string
	// Payload is the item's payload element serialised as XML (namespaces
	// written explicitly), or nil for an item without payload.
	Payload []byte
}

// TokenReader returns a reader over the payload element, suitable for
// decoders such as devicelist.Decode.
func (it Item) TokenReader() xml.TokenReader {
	if len(it.Payload) == 0 {
		return xmlstream.MultiReader()
	}
	return xml.NewDecoder(bytes.NewReader(it.Payload))
}

// FetchItem fetches the item with the given id from node of owner (a bare
// JID; the zero JID means the own account) with
// <items node='…'><item id='…'/></items>.
//
// If the item or node does not exist, or the service forbids access (which
// Prosody answers to non-subscribers for a missing node), the error matches
// ErrNotFound.
// If the service ignores the id filter and returns several items, the one
// with the requested id is picked.
func FetchItem(ctx context.Context, s *xmpp.Session, owner jid.JID, node, itemID string) (Item, error) {
	if itemID == "" {
		return Item{}, errors.New("pep: empty item id")
	}
	items, err := fetch(ctx, s, owner, node, itemID, 0)
	if err != nil {
		return Item{}, err
	}
	for _, it := range items {
		if it.ID == itemID {
			return it, nil
		}
	}
	return Item{}, ErrNotFound
}

// FetchItems fetches the items of node of owner (zero JID: own account).
// max > 0 asks for at most the max most recent items.
// An existing but empty node yields no items and no error; a missing or
// inaccessible node yields ErrNotFound.
// Result set management (XEP-0059) paging is not followed: PEP nodes used by
// OMEMO are small.
func FetchItems(ctx context.Context, s *xmpp.Session, owner jid.JID, node string, max int) ([]Item, error) {
	return fetch(ctx, s, owner, node, "", max)
}

// FetchLatest fetches the most recent item of node of owner (zero JID: own
// account) with max_items='1'.
// An empty node yields ErrNotFound.
func FetchLatest(ctx context.Context, s *xmpp.Session, owner jid.JID, node string) (Item, error) {
	items, err := fetch(ctx, s, owner, node, "", 1)
	if err != nil {
		return Item{}, err
	}
	if len(items) == 0 {
		return Item{}, ErrNotFound
	}
	// Services return the newest item when asked for one; a service that
	// ignored max_items returns them in publishing order (XEP-0060 §6.5.7),
	// so the newest is the last.
	return items[len(items)-1], nil
}

// FetchItemOrLatest returns item itemID of node of owner, or the newest
// item if there is none with that id (some clients publish under other
// ids, profanity-im/profanity#1385). The newest item is asked for first
// with max_items=1; for a well-behaved publisher it is itemID, so that
// takes one round trip. An empty node yields ErrNotFound.
func FetchItemOrLatest(ctx context.Context, s *xmpp.Session, owner jid.JID, node, itemID string) (Item, error) {
	latest, err := FetchLatest(ctx, s, owner, node)
	if err != nil || latest.ID == itemID {
		return latest, err
	}
	cur, err := FetchItem(ctx, s, owner, node, itemID)
	switch {
	case err == nil:
		return cur, nil
	case errors.Is(err, ErrNotFound):
		return latest, nil
	}
	return Item{}, err
}

func fetch(ctx context.Context, s *xmpp.Session, owner jid.JID, node, itemID string, max int) ([]Item, error) {
	if node == "" {
		return nil, errors.New("pep: empty node")
	}
	itemsAttr := []xml.Attr{attr("node", node)}
	if max > 0 {
		itemsAttr = append(itemsAttr, attr("max_items", strconv.Itoa(max)))
	}
	var inner xml.TokenReader
	if itemID != "" {
		inner = xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "item"}, Attr: []xml.Attr{attr("id", itemID)}})
	}
	resp, err := roundTrip(ctx, s, owner, stanza.GetIQ, xmlstream.Wrap(
		xmlstream.Wrap(inner, xml.StartElement{Name: xml.Name{Local: "items"}, Attr: itemsAttr}),
		xml.StartElement{Name: xml.Name{Space: pubsub.NS, Local: "pubsub"}},
	))
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) && (pe.Condition == stanza.ItemNotFound || pe.Condition == stanza.Forbidden) {
			return nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, err
	}
	if resp == nil || !resp.is(pubsub.NS, "pubsub") {
		return nil, ErrMalformed
	}
	itemsNode := resp.child(pubsub.NS, "items")
	if itemsNode == nil {
		return nil, ErrMalformed
	}
	if n, _ := itemsNode.attr("node"); n != node {
		return nil, ErrMalformed
	}
	var out []Item
	for _, c := range itemsNode.children {
		if !c.is(pubsub.NS, "item") {
			continue
		}
		it, err := parseItem(c)
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return out, nil
}

// parseItem converts an <item/> to an Item.
// An item may carry at most one payload element (XEP-0060 §7.1.3.6).
func parseItem(n *node) (Item, error) {
	id, _ := n.attr("id")
	it := Item{ID: id}
	switch len(n.children) {
	case 0:
	case 1:
		p, err := marshal(n.children[0].toks)
		if err != nil {
			return Item{}, errors.Join(ErrMalformed, err)
		}
		it.Payload = p
	default:
		return Item{}, ErrMalformed
	}
	return it, nil
}

// Retract deletes item itemID from the own node (XEP-0060 §7.2).
// With notify the service tells subscribers about the retraction.
// An item or node that does not exist counts as retracted.
func Retract(ctx context.Context, s *xmpp.Session, node, itemID string, notify bool) error {
	if node == "" || itemID == "" {
		return errors.New("pep: empty node or item id")
	}
	a := []xml.Attr{attr("node", node)}
	if notify {
		a = append(a, attr("notify", "true"))
	}
	_, err := roundTrip(ctx, s, jid.JID{}, stanza.SetIQ, xmlstream.Wrap(
		xmlstream.Wrap(
			xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "item"}, Attr: []xml.Attr{attr("id", itemID)}}),
			xml.StartElement{Name: xml.Name{Local: "retract"}, Attr: a},
		),
		xml.StartElement{Name: xml.Name{Space: pubsub.NS, Local: "pubsub"}},
	))
	return ignoreNotFound(err)
}

// DeleteNode deletes the own node with all its items (XEP-0060 §8.4, owner
// namespace); subscribers are notified by the service.
// A node that does not exist counts as deleted.
func DeleteNode(ctx context.Context, s *xmpp.Session, node string) error {
	if node == "" {
		return errors.New("pep: empty node")
	}
	_, err := roundTrip(ctx, s, jid.JID{}, stanza.SetIQ, xmlstream.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: "delete"}, Attr: []xml.Attr{attr("node", node)}}),
		xml.StartElement{Name: xml.Name{Space: pubsub.NSOwner, Local: "pubsub"}},
	))
	return ignoreNotFound(err)
}

func ignoreNotFound(err error) error {
	var pe *Error
	if errors.As(err, &pe) && pe.Condition == stanza.ItemNotFound {
		return nil
	}
	return err
}

// Subscribe subscribes the account of s (its bare JID, so that every
// resource receives the notifications) to node of owner (XEP-0060 §6.1).
// This is needed for contacts without a presence subscription, which get no
// +notify notifications.
// A subscription that the service left pending or unconfigured returns
// ErrSubscriptionPending.
func Subscribe(ctx context.Context, s *xmpp.Session, owner jid.JID, node string) error {
	return subscription(ctx, s, owner, node, "subscribe")
}

// Unsubscribe removes the subscription made by Subscribe (XEP-0060 §6.2).
// Not being subscribed counts as success.
func Unsubscribe(ctx context.Context, s *xmpp.Session, owner jid.JID, node string) error {
	err := subscription(ctx, s, owner, node, "unsubscribe")
	var pe *Error
	if errors.As(err, &pe) && (pe.PubSubCondition == "not-subscribed" || pe.Condition == stanza.ItemNotFound) {
		return nil
	}
	return err
}

func subscription(ctx context.Context, s *xmpp.Session, owner jid.JID, node, op string) error {
	if node == "" {
		return errors.New("pep: empty node")
	}
	self := s.LocalAddr().Bare().String()
	resp, err := roundTrip(ctx, s, owner, stanza.SetIQ, xmlstream.Wrap(
		xmlstream.Wrap(nil, xml.StartElement{Name: xml.Name{Local: op}, Attr: []xml.Attr{attr("node", node), attr("jid", self)}}),
		xml.StartElement{Name: xml.Name{Space: pubsub.NS, Local: "pubsub"}},
	))
	if err != nil || op != "subscribe" {
		return err
	}
	// The result may be empty (§6.1.2) or carry the subscription state.
	if resp == nil {
		return nil
	}
	if sub := resp.child(pubsub.NS, "subscription"); sub != nil {
		if state, ok := sub.attr("subscription"); ok && state != "subscribed" {
			return ErrSubscriptionPending
		}
	}
	return nil
}

// roundTrip sends an IQ with the payload to `to` (zero: own account) and
// returns the result's payload element (nil if the result was empty) or an
// *Error for an error reply.
// The whole response is copied and the response reader closed before
// returning, so Serve is blocked only while the response is read.
func roundTrip(ctx context.Context, s *xmpp.Session, to jid.JID, typ stanza.IQType, payload xml.TokenReader) (*node, error) {
	if to.Equal(s.LocalAddr().Bare()) {
		to = jid.JID{}
	}
	to = to.Bare()
	resp, err := s.SendIQElement(ctx, payload, stanza.IQ{To: to, Type: typ})
	if err != nil {
		return nil, err
	}
	toks, err := readTokens(resp)
	if cerr := resp.Close(); err == nil && cerr != nil && cerr != io.EOF {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	root, err := buildTree(toks)
	if err != nil {
		return nil, errors.Join(ErrMalformed, err)
	}
	if root.start.Name.Local != "iq" {
		return nil, ErrMalformed
	}
	iqType, _ := root.attr("type")
	from, _ := root.attr("from")
	switch iqType {
	case string(stanza.ResultIQ):
		// A result must come from the entity that was asked; mellium turns
		// the own bare JID into "".
		if !sameSender(from, to) {
			return nil, fmt.Errorf("%w: response from unexpected sender", ErrMalformed)
		}
		if len(root.children) == 0 {
			return nil, nil
		}
		return root.children[0], nil
	case string(stanza.ErrorIQ):
		e, err := parseErrorNode(root)
		if err != nil {
			return nil, err
		}
		return nil, e
	}
	return nil, ErrMalformed
}

func sameSender(from string, to jid.JID) bool {
	if to.Equal(jid.JID{}) {
		return from == ""
	}
	j, err := jid.Parse(from)
	return err == nil && j.Equal(to)
}

func attr(local, value string) xml.Attr {
	return xml.Attr{Name: xml.Name{Local: local}, Value: value}
}

// tokens returns a reader over copies of toks.
// The copies matter: the session encoder filters attribute slices in place,
// and Publish may send the same payload several times.
func tokens(toks []xml.Token) xml.TokenReader {
	i := 0
	return xmlstream.ReaderFunc(func() (xml.Token, error) {
		if i >= len(toks) {
			return nil, io.EOF
		}
		i++
		return xml.CopyToken(toks[i-1]), nil
	})
}
