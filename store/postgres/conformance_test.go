package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"mellium.im/omemo/store"
	"mellium.im/omemo/store/storetest"
)

// TestConformance runs the store conformance suite on account Stores of
// the shared database, one fresh account per subtest.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return injectable(NewAccount(t)) })
}

// TestAccountsConformance runs the store.Accounts conformance suite on DBs
// of the shared database, each in a schema of its own (its own tables and
// advisory lock class: the accounts of one schema do not lock those of
// another).
func TestAccountsConformance(t *testing.T) {
	dsn := SharedDSN(t)
	admin := adminConn(t, dsn)
	var mu sync.Mutex
	var n atomic.Int64
	storetest.RunAccounts(t, func(t *testing.T) store.Accounts {
		schema := fmt.Sprintf("accounts_%d", n.Add(1))
		mu.Lock()
		_, err := admin.Exec(context.Background(), "CREATE SCHEMA "+schema)
		mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		return injectableAccounts{OpenDB(t, dsn+"&search_path="+schema, &Options{LockTimeout: -1})}
	})
}

// faultStore implements storetest.Injector through the Store's fault hook.
type faultStore struct {
	*Store
	mu      sync.Mutex
	pending map[storetest.Fault]error
}

func injectable(s *Store) *faultStore {
	f := &faultStore{Store: s, pending: map[storetest.Fault]error{}}
	s.faultHook = f.hook
	return f
}

// Inject implements storetest.Injector.
func (f *faultStore) Inject(fault storetest.Fault, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending[fault] = err
}

func (f *faultStore) hook(p faultPoint) error {
	fault := map[faultPoint]storetest.Fault{
		faultBegin:  storetest.FailBegin,
		faultWrite:  storetest.FailWrite,
		faultCommit: storetest.FailCommit,
	}[p]
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.pending[fault]
	delete(f.pending, fault)
	return err
}

type injectableAccounts struct{ *DB }

func (a injectableAccounts) Account(ctx context.Context, name string) (store.Store, error) {
	s, err := a.DB.Account(ctx, name)
	if err != nil {
		return nil, err
	}
	return injectable(s.(*Store)), nil
}
