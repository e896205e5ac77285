package bundle_test

import (
	"context"
	"errors"
	"testing"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/ns"
	"mellium.im/xmpp/jid"
)

// testBundle returns a bundle whose keys are derived from seed (the codec
// does not check them cryptographically).
func testBundle(namespace string, seed byte) bundle.Bundle {
	b := bundle.Bundle{
		Namespace:             namespace,
		IdentityKey:           k32(seq(32, seed)),
		SignedPreKeyID:        uint32(seed) + 1,
		SignedPreKey:          k32(seq(32, seed+1)),
		SignedPreKeySignature: s64(seq(64, seed+2)),
	}
	for i := range 3 {
		b.PreKeys = append(b.PreKeys, bundle.PreKey{ID: uint32(i) + 1, Key: k32(seq(32, seed+3+byte(i)))})
	}
	return b
}

// Invalid arguments are refused before the session is used (a nil session
// would panic otherwise).
func TestPEPRefuseBeforeSending(t *testing.T) {
	ctx := context.Background()
	dup := testBundle(ns.Legacy, 1)
	dup.PreKeys = append(dup.PreKeys, dup.PreKeys[0])
	for _, tc := range []struct {
		name string
		id   uint32
		b    bundle.Bundle
		want error
	}{
		{"unknown namespace", 1, testBundle("urn:other", 1), bundle.ErrUnknownNamespace},
		{"zero device id", 0, testBundle(ns.OMEMO2, 1), bundle.ErrInvalidDeviceID},
		{"zero legacy device id", 0, testBundle(ns.Legacy, 1), bundle.ErrInvalidDeviceID},
		{"duplicate pre key", 1, dup, bundle.ErrDuplicateID},
	} {
		if err := bundle.Publish(ctx, nil, tc.id, tc.b); !errors.Is(err, tc.want) {
			t.Errorf("Publish, %s: %v, want %v", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct {
		namespace string
		id        uint32
		want      error
	}{
		{"urn:other", 1, bundle.ErrUnknownNamespace},
		{"", 1, bundle.ErrUnknownNamespace},
		{ns.OMEMO2, 0, bundle.ErrInvalidDeviceID},
		{ns.Legacy, 0, bundle.ErrInvalidDeviceID},
	} {
		if _, err := bundle.Fetch(ctx, nil, jid.JID{}, tc.namespace, tc.id); !errors.Is(err, tc.want) {
			t.Errorf("Fetch(%q, %d): %v, want %v", tc.namespace, tc.id, err, tc.want)
		}
		if err := bundle.Delete(ctx, nil, tc.namespace, tc.id); !errors.Is(err, tc.want) {
			t.Errorf("Delete(%q, %d): %v, want %v", tc.namespace, tc.id, err, tc.want)
		}
	}
}
