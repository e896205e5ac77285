package session

import (
	"context"
	"errors"

	"mellium.im/omemo/store"
)

// CacheUsed reports the estimated memory, in bytes, of what m's cache
// holds (see Config.CacheBudget), for tests.
func CacheUsed(m *Manager) int64 { return m.cache.used() }

// RecordedNamespaces returns the namespaces the record of st lists as
// having state, and whether st has the record, for tests.
func RecordedNamespaces(ctx context.Context, st store.Store) (nss []string, ok bool, err error) {
	err = st.View(ctx, func(tx store.Tx) error {
		raw, err := tx.Get(keyNamespaces)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		nss, ok = unmarshalNamespaces(raw)
		return nil
	})
	return nss, ok, err
}
