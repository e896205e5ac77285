package store

import (
	"context"
	"fmt"
	"sync"
)

// BoltAccounts is the persistent [Accounts]: the state of many accounts in
// a single bbolt file, with the guarantees of [Bolt] for each account's
// transactions (atomic, durable commits; a crash leaves the last committed
// state; the file is checked before it is mapped).
//
// The file holds one bucket per account that has keys (an account's first
// write creates it, and the transaction that deletes its last key removes
// it), so an account costs the file little more than its keys. The file
// lock is taken as by Open: another process (or another OpenAccounts or
// Open of the same file in this process) fails with ErrLocked. Within the
// process, an account is leased to one Store at a time: Account fails at
// once with ErrLocked while the account's Store is open. An open account
// that is not in a transaction costs a few hundred bytes of memory and no
// file or I/O; Account itself does no I/O.
//
// bbolt has a single writer, so the Updates of all the accounts of a file
// are serialised, each with its own commit (and fsync): the accounts of a
// file share its write throughput, about that of one account with its own
// file. Views of any accounts run concurrently with each other and with
// the Update. The caveats of the package documentation about transactions
// apply across accounts: bbolt may need every read transaction of the
// file to finish before an Update can grow the file, so a View held open
// for long in one account can delay the Updates of all of them.
type BoltAccounts struct {
	file *boltFile
	lc   lifecycle // Check, and the end of the file

	mu     sync.Mutex
	closed bool
	held   map[string]*boltAccount
}

// boltAccount is the Store of an account of a BoltAccounts.
type boltAccount struct {
	boltStore
	owner *BoltAccounts
}

// OpenAccounts opens (creating it if needed, with permissions 0600) the
// multi-account store at path, as Open opens a single-account one and with
// the same options, checks and errors. A single-account file (written by
// Open) is refused with ErrVersion, and Open refuses a multi-account file
// the same way.
func OpenAccounts(path string, opts *Options) (*BoltAccounts, error) {
	f, err := openLayout(path, opts, accountsLayout)
	if err != nil {
		return nil, err
	}
	a := &BoltAccounts{file: f, held: map[string]*boltAccount{}}
	a.lc.init()
	return a, nil
}

// Account implements [Accounts.Account]. It does no I/O and never waits:
// an account whose Store is open fails at once with ErrLocked. The Store
// has a Stats method, which counts that Store's transactions.
func (a *BoltAccounts) Account(ctx context.Context, name string) (Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckAccountName(name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	if _, ok := a.held[name]; ok {
		return nil, fmt.Errorf("%w: the account is open", ErrLocked)
	}
	s := &boltAccount{boltStore: boltStore{file: a.file, account: name}, owner: a}
	s.lc.init()
	a.held[name] = s
	return s, nil
}

// Path returns the file name of the store.
func (a *BoltAccounts) Path() string { return a.file.db.Path() }

// Check verifies the consistency of the whole file, as [Bolt.Check] does,
// and that the accounts bucket holds only the buckets of accounts with
// valid names.
func (a *BoltAccounts) Check(ctx context.Context) error {
	return a.file.check(ctx, &a.lc, accountsLayout)
}

// Close implements [Accounts.Close]: it closes the open accounts (waiting
// for their running transactions), then the file, and releases its lock.
func (a *BoltAccounts) Close() error {
	a.mu.Lock()
	a.closed = true
	open := make([]*boltAccount, 0, len(a.held))
	for _, s := range a.held {
		open = append(open, s)
	}
	a.mu.Unlock()
	for _, s := range open {
		s.Close()
	}
	if !a.lc.close() {
		return nil
	}
	return a.file.close()
}

// View implements [Store.View].
func (s *boltAccount) View(ctx context.Context, f func(Tx) error) error { return s.view(ctx, f) }

// Update implements [Store.Update].
func (s *boltAccount) Update(ctx context.Context, f func(Tx) error) error { return s.update(ctx, f) }

// Stats returns the counters of this Store of the account.
func (s *boltAccount) Stats() Stats { return s.stats() }

// Close implements [Store.Close]: it waits for the account's running
// transactions and releases the account.
func (s *boltAccount) Close() error {
	if !s.lc.close() {
		return nil
	}
	a := s.owner
	a.mu.Lock()
	if a.held[s.account] == s {
		delete(a.held, s.account)
	}
	a.mu.Unlock()
	return nil
}
