package session_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// corruptKeys is a backend whose own key material fails the complete
// check, as a key damaged in a way the stored checksum cannot see would.
type corruptKeys struct{ backends.Backend }

func (corruptKeys) VerifyKeys() error {
	return fmt.Errorf("%w: pre key 7", backends.ErrCorruptKeys)
}

// A bundle is published only after its key material passed the complete
// check: keys that do not match are never offered to contacts.
func TestCorruptKeysNotPublished(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	corrupt := backends.Factory{Namespace: twomemo.Namespace, New: func(id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (backends.Backend, error) {
		b, err := twomemo.Factory.New(id, keys, opts)
		return corruptKeys{b}, err
	}}
	var reported []error
	m, err := session.New(ctx, store.NewMemory(), srv.Network("alice@example.org"), session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{corrupt}, StartSynced: true,
		OnError: func(err error) { reported = append(reported, err) },
	})
	if err == nil {
		defer m.Close()
		_ = m.Flush(ctx)
		id := m.DeviceID()
		if _, ok := srv.Bundle(twomemo.Namespace, "alice@example.org", id); ok {
			t.Fatal("a bundle whose keys fail VerifyKeys was published")
		}
		err = errors.Join(reported...)
	}
	if !errors.Is(err, backends.ErrCorruptKeys) {
		t.Fatalf("error %v, want ErrCorruptKeys", err)
	}
}
