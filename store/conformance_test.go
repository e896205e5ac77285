package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"mellium.im/omemo/store"
	"mellium.im/omemo/store/storetest"
)

// The conformance suite, run on every implementation of this package.
//
// The bbolt stores run without fsync: the suite checks the semantics of
// transactions, which do not depend on it, and with fsync (a few ms per
// commit, more when parallel subtests compete for the disk) its
// concurrency tests would take tens of seconds. Durability is what
// TestCrash and TestCrashAccounts check.

// noSync is the Options of the conformance tests.
var noSync = &store.Options{NoSync: true}

func TestConformance(t *testing.T) {
	t.Run("Memory", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store { return injectable(store.NewMemory()) })
	})
	t.Run("Bolt", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) store.Store {
			s, err := store.Open(filepath.Join(t.TempDir(), "s.db"), noSync)
			if err != nil {
				t.Fatal(err)
			}
			return injectable(s)
		})
	})
}

func TestAccountsConformance(t *testing.T) {
	t.Run("Memory", func(t *testing.T) {
		storetest.RunAccounts(t, func(t *testing.T) store.Accounts {
			return injectableAccounts{store.NewMemoryAccounts(), t}
		})
	})
	t.Run("Bolt", func(t *testing.T) {
		storetest.RunAccounts(t, func(t *testing.T) store.Accounts {
			a, err := store.OpenAccounts(filepath.Join(t.TempDir(), "accounts.db"), noSync)
			if err != nil {
				t.Fatal(err)
			}
			return injectableAccounts{a, t}
		})
	})
}

// faultStore is a store of this package that implements
// storetest.Injector through the package's test hook.
type faultStore struct {
	store.Store
	mu      sync.Mutex
	pending map[storetest.Fault]error
}

func injectable(s store.Store) *faultStore {
	f := &faultStore{Store: s, pending: map[storetest.Fault]error{}}
	store.SetFaultHook(s, f.hook)
	return f
}

// Inject implements storetest.Injector.
func (f *faultStore) Inject(fault storetest.Fault, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending[fault] = err
}

func (f *faultStore) hook(p store.FaultPoint) error {
	fault := map[store.FaultPoint]storetest.Fault{
		store.FaultBegin:  storetest.FailBegin,
		store.FaultWrite:  storetest.FailWrite,
		store.FaultCommit: storetest.FailCommit,
	}[p]
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.pending[fault]
	delete(f.pending, fault)
	return err
}

// Stats passes the wrapped store's counters on, for the suite to check.
func (f *faultStore) Stats() store.Stats { return f.Store.(storetest.Statser).Stats() }

// injectableAccounts makes the stores of its accounts injectable, and
// checks the file of a BoltAccounts before closing it.
type injectableAccounts struct {
	store.Accounts
	t *testing.T
}

func (a injectableAccounts) Close() error {
	if c, ok := a.Accounts.(*store.BoltAccounts); ok {
		if err := c.Check(context.Background()); err != nil && !errors.Is(err, store.ErrClosed) {
			a.t.Errorf("Check before Close: %v", err)
		}
	}
	return a.Accounts.Close()
}

func (a injectableAccounts) Account(ctx context.Context, name string) (store.Store, error) {
	s, err := a.Accounts.Account(ctx, name)
	if err != nil {
		return nil, err
	}
	return injectable(s), nil
}
