package bundle

import (
	"context"
	"errors"
	"fmt"

	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// Errors of the PEP functions.
var (
	// ErrInvalidItem means that a published bundle item is not a bundle of
	// the expected namespace: it has no payload, does not parse, or is an
	// element of the other namespace.
	// The error returned also wraps the codec error (for example
	// ErrInvalidKey), so errors.Is works for both.
	ErrInvalidItem = errors.New("bundle: published item is not a valid bundle")
	// ErrInvalidDeviceID means that the device id passed is zero.
	ErrInvalidDeviceID = errors.New("bundle: device id is zero")
)

// legacyItemID is the item id of legacy bundles.
const legacyItemID = "current"

// publishOptions returns the publish-options of the bundle node(s) of
// namespace: open access (anyone must be able to start a session with the
// device), persistent items, and room for one bundle per device (OMEMO 2,
// "max" as XEP-0384 requires, with pep's fallback to smaller values for
// services that reject it) or a single item (legacy, one node per device).
func publishOptions(namespace string) pep.PublishOptions {
	o := pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: "1"}
	if namespace == ns.OMEMO2 {
		o.MaxItems = pep.MaxItemsMax
	}
	return o
}

// location returns the node and item id of a device's bundle.
func location(namespace string, deviceID uint32) (node, item string, err error) {
	node, item = Node(namespace, deviceID), ItemID(namespace, deviceID)
	if node == "" {
		return "", "", fmt.Errorf("%w: %.64q", ErrUnknownNamespace, namespace)
	}
	if deviceID == 0 {
		return "", "", ErrInvalidDeviceID
	}
	return node, item, nil
}

// Publish publishes b as the own bundle of device deviceID in namespace
// b.Namespace.
// OMEMO 2 bundles are items of the node ns.OMEMO2Bundles with the decimal
// device id as item id (max_items "max", falling back to 1000, 100 and 10);
// legacy bundles are item "current" of the node ns.LegacyBundles(deviceID)
// (max_items 1).
// Both use access_model=open and persist_items=true; a node with another
// configuration is reconfigured (see pep.Publish).
//
// b is validated before anything is sent.
// Publish must not be called from inside a handler of s.
func Publish(ctx context.Context, s *xmpp.Session, deviceID uint32, b Bundle) error {
	node, item, err := location(b.Namespace, deviceID)
	if err != nil {
		return err
	}
	if err := b.validate(); err != nil {
		return err
	}
	if err := pep.Publish(ctx, s, node, item, b.TokenReader(), publishOptions(b.Namespace)); err != nil {
		return fmt.Errorf("bundle: publishing %s bundle of device %d: %w", b.Namespace, deviceID, pep.ExplainOpenAccess(err, "the OMEMO bundle"))
	}
	return nil
}

// Fetch fetches the bundle of device deviceID of owner (a bare JID; the zero
// JID means the own account) in namespace.
//
// OMEMO 2 fetches the item with the device id from ns.OMEMO2Bundles.
// Legacy fetches the newest item of ns.LegacyBundles(deviceID), preferring
// the item "current" if the newest has another id.
// A missing node or item, or one the requester may not read, is an error
// wrapping pep.ErrNotFound.
// An item that does not hold a bundle of namespace is an error wrapping
// ErrInvalidItem and the codec error.
//
// The bundle is untrusted: the crypto layer must verify the signed pre key
// signature against the identity key before using it.
// Fetch must not be called from inside a handler of s.
func Fetch(ctx context.Context, s *xmpp.Session, owner jid.JID, namespace string, deviceID uint32) (Bundle, error) {
	node, item, err := location(namespace, deviceID)
	if err != nil {
		return Bundle{}, err
	}
	owner = owner.Bare()
	var it pep.Item
	if namespace == ns.OMEMO2 {
		it, err = pep.FetchItem(ctx, s, owner, node, item)
	} else {
		it, err = pep.FetchItemOrLatest(ctx, s, owner, node, legacyItemID)
	}
	if err != nil {
		return Bundle{}, fmt.Errorf("bundle: fetching %s bundle of device %d: %w", namespace, deviceID, err)
	}
	if len(it.Payload) == 0 {
		return Bundle{}, fmt.Errorf("%w: item without payload", ErrInvalidItem)
	}
	b, err := Decode(it.TokenReader())
	if err != nil {
		return Bundle{}, fmt.Errorf("%w: %w", ErrInvalidItem, err)
	}
	if b.Namespace != namespace {
		return Bundle{}, fmt.Errorf("%w: %w: %s bundle in a %s node", ErrInvalidItem, ErrWrongElement, b.Namespace, namespace)
	}
	return *b, nil
}

// Delete removes the own bundle of device deviceID in namespace: for
// OMEMO 2 the item is retracted from ns.OMEMO2Bundles without notifying
// subscribers; for legacy OMEMO the node ns.LegacyBundles(deviceID) is
// deleted.
// A bundle that does not exist counts as deleted.
// Delete must not be called from inside a handler of s.
func Delete(ctx context.Context, s *xmpp.Session, namespace string, deviceID uint32) error {
	node, item, err := location(namespace, deviceID)
	if err != nil {
		return err
	}
	if namespace == ns.OMEMO2 {
		err = pep.Retract(ctx, s, node, item, false)
	} else {
		err = pep.DeleteNode(ctx, s, node)
	}
	if errors.Is(err, pep.ErrNotFound) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("bundle: deleting %s bundle of device %d: %w", namespace, deviceID, err)
	}
	return nil
}
