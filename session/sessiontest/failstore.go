package sessiontest

import (
	"context"
	"errors"
	"sync"

	"mellium.im/omemo/store"
)

// ErrInjected is the error a FailStore injects. Code under test usually
// wraps it (the session manager wraps it in session.ErrStorage); test with
// errors.Is.
var ErrInjected = errors.New("sessiontest: injected store failure")

// FailMode is how a FailStore makes a write transaction fail.
type FailMode int

const (
	// FailBegin makes Update return ErrInjected without running the
	// transaction function, as when the store cannot start a transaction.
	FailBegin FailMode = iota
	// FailCommit runs the transaction function to its end, then discards
	// its changes and returns ErrInjected, as when the final commit (the
	// write or fsync of the file) fails. This is the hardest case for the
	// caller: everything it did inside the transaction, such as handing a
	// message over, happened, but nothing was stored.
	FailCommit
	// FailWrite makes the first Put, Delete or DeletePrefix of the
	// transaction, and every one after it, return ErrInjected. If the
	// transaction function ignores the error and returns nil, the
	// transaction commits without the failed writes, as a real store
	// would, and the failure is counted in Ignored.
	FailWrite
)

// String names the mode.
func (m FailMode) String() string {
	switch m {
	case FailBegin:
		return "begin"
	case FailCommit:
		return "commit"
	case FailWrite:
		return "write"
	}
	return "unknown"
}

// FailStore is a store.Store wrapper for fault injection tests: it makes
// the N-th write transaction (Update) fail, or every write transaction from
// some point on, in one of the FailModes, and otherwise passes everything
// through to the wrapped store. Read-only transactions (View) never fail.
// A FailStore is safe for concurrent use.
//
// The failure is all or nothing, like a real store's: a failed Update
// changes nothing in the wrapped store (except for ignored write errors in
// FailWrite mode, see there). So after a failure, the wrapped store holds
// exactly what a process that crashed at that point would find on disk,
// and a test can reopen it to check recovery.
type FailStore struct {
	inner store.Store

	mu      sync.Mutex
	updates int // Update calls so far
	failAt  int // Update number that fails (0: none)
	from    int // Update number from which every Update fails (0: none)
	mode    FailMode
	fails   int
	ignored int
}

// NewFailStore wraps s. It injects no failures until FailNth or FailFrom is
// called.
func NewFailStore(s store.Store) *FailStore { return &FailStore{inner: s} }

// Inner returns the wrapped store.
func (f *FailStore) Inner() store.Store { return f.inner }

// FailNth makes the n-th Update from now on fail in mode (n = 1 is the next
// one); n <= 0 cancels a pending FailNth. Only that one Update fails.
func (f *FailStore) FailNth(n int, mode FailMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = 0
	if n > 0 {
		f.failAt = f.updates + n
	}
	f.mode = mode
}

// FailFrom makes every Update from the n-th one from now on fail in mode
// (n = 1: from the next one on); n <= 0 cancels it.
func (f *FailStore) FailFrom(n int, mode FailMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.from = 0
	if n > 0 {
		f.from = f.updates + n
	}
	f.mode = mode
}

// Heal cancels every pending failure.
func (f *FailStore) Heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt, f.from = 0, 0
}

// Updates returns the number of Update calls so far, failed ones included.
func (f *FailStore) Updates() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updates
}

// Failures returns the number of Updates that were made to fail.
func (f *FailStore) Failures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fails
}

// Ignored returns how many transactions committed although a write in them
// failed (FailWrite mode) because the transaction function ignored the
// error: a bug in the code under test.
func (f *FailStore) Ignored() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ignored
}

// next counts an Update and reports whether it must fail, and how.
func (f *FailStore) next() (bool, FailMode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates++
	fail := f.updates == f.failAt || f.from > 0 && f.updates >= f.from
	if fail {
		f.fails++
	}
	return fail, f.mode
}

// View implements store.Store; it never fails by injection.
func (f *FailStore) View(ctx context.Context, fn func(store.Tx) error) error {
	return f.inner.View(ctx, fn)
}

// Update implements store.Store, failing as configured.
func (f *FailStore) Update(ctx context.Context, fn func(store.Tx) error) error {
	fail, mode := f.next()
	if !fail {
		return f.inner.Update(ctx, fn)
	}
	switch mode {
	case FailCommit:
		return f.inner.Update(ctx, func(tx store.Tx) error {
			if err := fn(tx); err != nil {
				return err
			}
			return ErrInjected // rolls the transaction back
		})
	case FailWrite:
		var ftx *failTx
		err := f.inner.Update(ctx, func(tx store.Tx) error {
			ftx = &failTx{Tx: tx}
			return fn(ftx)
		})
		if err == nil && ftx != nil && ftx.failed {
			f.mu.Lock()
			f.ignored++
			f.mu.Unlock()
		}
		return err
	default:
		return ErrInjected
	}
}

// Close closes the wrapped store.
func (f *FailStore) Close() error { return f.inner.Close() }

// failTx fails every write.
type failTx struct {
	store.Tx
	failed bool
}

func (t *failTx) Put(string, []byte) error  { t.failed = true; return ErrInjected }
func (t *failTx) Delete(string) error       { t.failed = true; return ErrInjected }
func (t *failTx) DeletePrefix(string) error { t.failed = true; return ErrInjected }
