package devicelist

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// ErrInvalidItem means that a published device list item (fetched or
// received in a notification) is not a device list of the expected
// namespace: it has no payload, does not parse, or is an element of the
// other namespace.
// The error returned also wraps the codec error (for example ErrInvalidID or
// ErrWrongElement), so errors.Is works for both.
var ErrInvalidItem = errors.New("devicelist: published item is not a valid device list")

// ErrAccessDenied is returned by Fetch when the server refused to let this
// account read the device list (forbidden). It says nothing about the
// owner's devices: callers keep what they know. Prosody also answers
// forbidden to an account without a presence subscription when the node
// does not exist, so it may mean that there is no list.
var ErrAccessDenied = errors.New("devicelist: the server refused access to the device list")

// ErrListRetracted is returned by FromEvent for a notification that the
// device list item (ItemID) was retracted, or the node purged or deleted.
// It says nothing about the account's devices: the list must be fetched
// again, never assumed empty (a hostile or confused publisher, or a server
// migration, could otherwise make every device look gone).
var ErrListRetracted = errors.New("devicelist: device list retracted, purged or deleted")

// publishOptions are the publish-options used for the device list nodes of
// both namespaces: open access (XEP-0384 requires that anyone may read a
// device list, roster or not), persistent items, and a single item.
var publishOptions = pep.PublishOptions{
	AccessModel:  "open",
	PersistItems: true,
	MaxItems:     "1",
}

// Publish publishes l as the own device list of l.Namespace: item ItemID of
// node Node(l.Namespace), with the publish-options access_model=open
// (XEP-0384 requires that anyone may read a device list, roster or not),
// persist_items=true and max_items=1.
// A node that exists with another configuration is reconfigured (see
// pep.Publish).
//
// l is validated before anything is sent: an unknown namespace, a zero or
// duplicate id or a label that XML cannot carry is an error wrapping the
// corresponding sentinel (ErrUnknownNamespace, ErrInvalidID, …).
// Publish must not be called from inside a handler of s.
func Publish(ctx context.Context, s *xmpp.Session, l List) error {
	if err := l.validate(); err != nil {
		return err
	}
	if err := pep.Publish(ctx, s, Node(l.Namespace), ItemID, l.TokenReader(), publishOptions); err != nil {
		return fmt.Errorf("devicelist: publishing %s: %w", l.Namespace, pep.ExplainOpenAccess(err, "the OMEMO device list"))
	}
	return nil
}

// Fetch fetches the device list of namespace published by owner (a bare
// JID; the zero JID means the own account).
//
// A missing node or item yields an empty List of namespace and a nil
// error: the account announces no device. A node the requester may not
// read (forbidden, which Prosody also answers for a missing node of an
// account without a presence subscription) yields an error wrapping
// ErrAccessDenied: nothing is known about the devices then.
//
// The newest item is requested with max_items=1, so a bloated node does not
// produce a large response.
// If the newest item's id is not ItemID, the item ItemID is fetched
// explicitly and preferred; without one the newest item is used, as some
// clients publish under other ids (profanity-im/profanity#1385).
//
// An item that does not hold a device list of namespace yields an error
// wrapping ErrInvalidItem and the codec error.
// The list is untrusted input; labels in particular are unauthenticated
// (see Device).
// Fetch must not be called from inside a handler of s.
func Fetch(ctx context.Context, s *xmpp.Session, owner jid.JID, namespace string) (List, error) {
	node := Node(namespace)
	if node == "" {
		return List{}, fmt.Errorf("%w: %.64q", ErrUnknownNamespace, namespace)
	}
	it, err := pep.FetchItemOrLatest(ctx, s, owner.Bare(), node, ItemID)
	switch {
	case errors.Is(err, pep.ErrForbidden):
		return List{}, fmt.Errorf("%w (%s): %w", ErrAccessDenied, namespace, err)
	case errors.Is(err, pep.ErrNotFound):
		return List{Namespace: namespace}, nil
	case err != nil:
		return List{}, fmt.Errorf("devicelist: fetching %s: %w", namespace, err)
	}
	return decodeItem(it, namespace)
}

// decodeItem decodes the payload of a device list item of namespace.
func decodeItem(it pep.Item, namespace string) (List, error) {
	if len(it.Payload) == 0 {
		return List{}, fmt.Errorf("%w: item without payload", ErrInvalidItem)
	}
	l, err := Decode(it.TokenReader())
	if err != nil {
		return List{}, fmt.Errorf("%w: %w", ErrInvalidItem, err)
	}
	if l.Namespace != namespace {
		return List{}, fmt.Errorf("%w: %w: %s list in the %s node", ErrInvalidItem, ErrWrongElement, l.Namespace, namespace)
	}
	return *l, nil
}

// NamespaceOfNode returns the OMEMO namespace whose device list is published
// in node, or "" if node is not a device list node.
func NamespaceOfNode(node string) string {
	switch node {
	case ns.OMEMO2Devices:
		return ns.OMEMO2
	case ns.LegacyDevices:
		return ns.Legacy
	}
	return ""
}

// FromEvent interprets a PEP notification (see pep.HandleEvents).
// ok is false, and the other results zero, if ev is not about a device list
// node or carries nothing to learn; the account whose list changed is
// ev.From (zero: the own account).
//
// A published item yields the list it carries: the item ItemID if the
// notification has several items, else the last (newest) one.
// A retraction of the item ItemID, a purge and a deletion of the node
// yield the namespace, ok and ErrListRetracted: the caller fetches the list
// again. Retractions of other items are ignored (ok is false): the device
// list lives in ItemID.
// An item that does not hold a device list of the node's namespace (or has
// no payload, as when the service does not deliver payloads) yields the
// namespace, ok and an error wrapping ErrInvalidItem; the caller may then
// Fetch the list.
//
// The notification is only as trustworthy as its from attribute, which
// pep.ParseEvent has already checked to be a bare JID stamped by the
// server.
func FromEvent(ev pep.Event) (namespace string, l List, ok bool, err error) {
	namespace = NamespaceOfNode(ev.Node)
	if namespace == "" {
		return "", List{}, false, nil
	}
	switch {
	case len(ev.Items) > 0:
		it := ev.Items[len(ev.Items)-1]
		for _, c := range ev.Items {
			if c.ID == ItemID {
				it = c
				break
			}
		}
		l, err = decodeItem(it, namespace)
		return namespace, l, true, err
	case ev.Deleted, ev.Purged, slices.Contains(ev.Retracted, ItemID):
		return namespace, List{}, true, ErrListRetracted
	}
	// A well-formed notification with no content, or a retraction of an
	// item that is not the list: nothing to learn.
	return "", List{}, false, nil
}
