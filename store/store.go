package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	life "mellium.im/omemo/internal/lifecycle"
)

// Store is a transactional key-value store.
//
// Keys are strings (the session manager uses '/'-separated paths such as
// "omemo/ns/urn:xmpp:omemo:2/sessions/alice@example.org/1234"); values are
// opaque bytes and are secret (sessions and private keys): implementations
// never put them in error messages.
type Store interface {
	// View runs f in a read-only transaction that sees a consistent snapshot
	// of the committed state. Calls to Put, Delete or DeletePrefix inside f
	// fail with ErrReadOnly. View returns f's error unchanged, ctx.Err() if
	// ctx is done before the transaction starts, or ErrClosed.
	View(ctx context.Context, f func(Tx) error) error

	// Update runs f in a read-write transaction. If f returns nil the
	// changes are committed atomically and durably (after Update returns nil
	// they survive a crash or power loss, for the persistent store). If f
	// returns an error or panics, or ctx is done before commit, nothing is
	// changed and the error is returned (a panic is re-raised after
	// rollback). f's error is returned unchanged, so errors.Is and
	// errors.As work on it. Update transactions are serialised; a caller
	// waiting for its turn gives up with ctx.Err() when ctx is done.
	Update(ctx context.Context, f func(Tx) error) error

	// Close waits for running transactions to finish and releases the
	// store. Transactions started afterwards fail with ErrClosed. Calling
	// Close more than once is harmless. Close must not be called from
	// inside a transaction function.
	Close() error
}

// Tx is a transaction. It is only valid inside the function passed to
// [Store.View] or [Store.Update], and only in the goroutine running that
// function; after the function returns every method fails with ErrTxDone.
type Tx interface {
	// Get returns a copy of the value stored under key, which the caller may
	// keep and modify. It returns an error satisfying errors.Is(err,
	// ErrNotFound) if the key is absent. A value stored as nil or empty is
	// returned as a non-nil empty slice.
	Get(key string) ([]byte, error)

	// Put stores a copy of value under key, replacing any previous value.
	Put(key string, value []byte) error

	// Delete removes key. Deleting a missing key is not an error.
	Delete(key string) error

	// Scan calls f for each key with the prefix, in lexicographic (byte)
	// order, with a copy of its value that f may keep. An empty prefix
	// visits every key. f must not modify the transaction (Put, Delete and
	// DeletePrefix fail with ErrReadOnly while a Scan is running) but may
	// call Get and Scan. If f returns ErrStopScan, Scan stops and returns
	// nil; any other error stops the scan and is returned unchanged.
	Scan(prefix string, f func(key string, value []byte) error) error

	// DeletePrefix deletes every key with the prefix. An empty prefix
	// deletes every key.
	DeletePrefix(prefix string) error
}

// Accounts holds the state of many accounts, each in its own [Store], so
// that a process serving many XMPP accounts (a gateway, a bot host) needs
// one database rather than one per account.
//
// An account is named by an arbitrary string, usually its bare JID; names
// are compared byte for byte, so callers should normalise JIDs first. See
// [CheckAccountName] for the names that are accepted. An account has no
// state until something is written to it, and none again once everything
// has been deleted from it.
//
// The Store of an account is leased: it belongs to whoever opened it until
// its Close, and meanwhile a second Account for the same name fails with
// ErrLocked. This keeps two session managers from using one account's
// state at the same time, which would corrupt it. Closing an account's
// Store releases the lease but keeps its state. The stores of different
// accounts are independent: a transaction of one account neither sees nor
// changes another's keys, and DeletePrefix("") empties only its own
// account.
//
// Accounts implementations are safe for concurrent use.
type Accounts interface {
	// Account returns the Store of the account with the given name, held
	// exclusively until its Close. It fails with an error wrapping
	// ErrLocked if the account is held, by this process or (for databases
	// shared by several processes) another one; ErrInvalidAccount for an
	// invalid name; ctx.Err() if ctx is done; ErrClosed after Close.
	Account(ctx context.Context, name string) (Store, error)

	// Close closes every account Store that is still open (waiting for
	// their running transactions, as Store.Close does) and releases the
	// database. Account fails with ErrClosed afterwards. Calling Close
	// more than once is harmless.
	Close() error
}

// Errors returned by stores. Test for them with errors.Is: they are usually
// wrapped with context.
var (
	// ErrNotFound is returned by Tx.Get for a missing key.
	ErrNotFound = errors.New("store: key not found")
	// ErrClosed is returned when a closed store is used.
	ErrClosed = errors.New("store: store is closed")
	// ErrLocked is returned by Open and OpenAccounts when another process
	// (or another open in this process) holds the file lock for longer
	// than Options.LockTimeout, and by Accounts.Account when the account
	// is held by someone else.
	ErrLocked = errors.New("store: store is locked by another user")
	// ErrReadOnly is returned when writing in a read-only transaction, in a
	// transaction while a Scan is running, or to a store opened read-only.
	ErrReadOnly = errors.New("store: read-only")
	// ErrVersion is returned by Open when the file was written by a newer,
	// incompatible version of this package, or needs a migration that cannot
	// be run (no migration registered, or the store is opened read-only).
	// It is also returned when a multi-account file is opened with Open, or
	// a single-account file with OpenAccounts: the file is valid, but not
	// of the kind asked for.
	ErrVersion = errors.New("store: unsupported store format version")
	// ErrCorrupt is returned when the file is not a valid store or its
	// contents are damaged.
	ErrCorrupt = errors.New("store: store is corrupt or not an OMEMO store")
	// ErrTxDone is returned when a Tx is used after its transaction function
	// has returned.
	ErrTxDone = errors.New("store: transaction has already finished")
	// ErrInvalidKey is returned for an empty key or a key longer than
	// MaxKeySize bytes.
	ErrInvalidKey = errors.New("store: invalid key")
	// ErrValueTooLarge is returned by Put for a value longer than
	// MaxValueSize bytes.
	ErrValueTooLarge = errors.New("store: value too large")
	// ErrStopScan may be returned by a Scan callback to end the scan early;
	// Scan then returns nil.
	ErrStopScan = errors.New("store: stop scan")
)

const (
	// MaxKeySize is the maximum length of a key in bytes (bbolt's limit,
	// enforced by every store so that they behave alike).
	MaxKeySize = 32768
	// MaxValueSize is the maximum length of a value in bytes.
	MaxValueSize = (1 << 31) - 2
	// MaxAccountNameSize is the maximum length of an account name in
	// bytes: enough for any bare JID (RFC 7622 allows 1023 bytes each for
	// the localpart and the domainpart).
	MaxAccountNameSize = 2047
)

// CheckAccountName reports whether name is a valid account name: a
// non-empty string of valid UTF-8 of at most MaxAccountNameSize bytes,
// without NUL characters (so that SQL databases can store it as text). It
// returns an error wrapping ErrInvalidAccount if not. Every [Accounts]
// implementation accepts exactly these names.
func CheckAccountName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty name", ErrInvalidAccount)
	case len(name) > MaxAccountNameSize:
		return fmt.Errorf("%w: name of %d bytes exceeds %d", ErrInvalidAccount, len(name), MaxAccountNameSize)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: name is not valid UTF-8", ErrInvalidAccount)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: name contains NUL", ErrInvalidAccount)
	}
	return nil
}

// Stats are counters of a store since it was opened.
type Stats struct {
	// Commits is the number of Update transactions that committed (Update
	// returned nil), including those that changed nothing. For the
	// persistent store each one that wrote is a durable, fsync'd commit;
	// one that did not write costs no disk write.
	Commits uint64
	// Rollbacks is the number of Update transactions that started but did
	// not commit (f returned an error or panicked, ctx was done, or the
	// commit failed).
	Rollbacks uint64
}

var (
	_ Store    = (*Memory)(nil)
	_ Store    = (*Bolt)(nil)
	_ Accounts = (*MemoryAccounts)(nil)
	_ Accounts = (*BoltAccounts)(nil)
)

// counters are the Stats of one store.
type counters struct {
	commits   atomic.Uint64
	rollbacks atomic.Uint64
}

func (c *counters) stats() Stats {
	return Stats{Commits: c.commits.Load(), Rollbacks: c.rollbacks.Load()}
}

// faultPoint is a place where tests make a store's backend fail (see
// faults).
type faultPoint uint8

const (
	faultBegin  faultPoint = iota + 1 // starting a transaction
	faultWrite                        // Put, Delete or DeletePrefix, after its argument checks
	faultCommit                       // committing an Update
)

// faults is a test hook: if set (only by tests, through export_test.go),
// it is asked at each faultPoint of the store whether to fail there.
type faults struct {
	hook atomic.Pointer[func(faultPoint) error]
}

// at returns the error to fail with at p, or nil.
func (f *faults) at(p faultPoint) error {
	if f == nil {
		return nil
	}
	if h := f.hook.Load(); h != nil {
		return (*h)(p)
	}
	return nil
}

var errModifyDuringScan = fmt.Errorf("%w: transaction modified during Scan", ErrReadOnly)

func checkKey(key string) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes exceeds %d", ErrInvalidKey, len(key), MaxKeySize)
	}
	return nil
}

func checkValue(value []byte) error {
	if int64(len(value)) > MaxValueSize {
		return fmt.Errorf("%w: %d bytes", ErrValueTooLarge, len(value))
	}
	return nil
}

// clone returns a copy of b that is never nil.
func clone(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}

func notFound(key string) error {
	// Keys are paths of JIDs and device IDs, not secrets, but keep the
	// message short in case a caller uses something sensitive as a key.
	return fmt.Errorf("%w (key of %d bytes)", ErrNotFound, len(key))
}

// lifecycle is the shared lifecycle.L with this package's error: it
// tracks whether a store is closed and how many transactions are running.
type lifecycle struct {
	life.L
	closing <-chan struct{} // closed by close
}

func (l *lifecycle) init() {
	l.Init()
	l.closing = l.Closing()
}

// enter registers a running transaction; it fails with ErrClosed after
// close.
func (l *lifecycle) enter() error {
	if !l.Enter() {
		return ErrClosed
	}
	return nil
}

func (l *lifecycle) leave() { l.Leave() }

// close marks the store closed and waits for the running transactions. It
// reports whether this was the first call.
func (l *lifecycle) close() bool { return l.Close() }

// writeLock is a one-slot semaphore serialising read-write transactions. It
// is a channel rather than a mutex so that waiting honours ctx and Close.
type writeLock chan struct{}

func (w writeLock) acquire(ctx context.Context, closing <-chan struct{}) error {
	select {
	case w <- struct{}{}:
		return nil
	default:
	}
	select {
	case w <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-closing:
		return ErrClosed
	}
}

func (w writeLock) release() { <-w }

// txState is the life cycle every Tx implementation checks before writing.
type txState struct {
	writable bool
	scanning int  // nesting depth of running Scan callbacks
	done     bool // the transaction function returned
}

// writeable reports why the transaction may not be written to, if so.
func (t *txState) writeable() error {
	switch {
	case t.done:
		return ErrTxDone
	case !t.writable:
		return ErrReadOnly
	case t.scanning > 0:
		return errModifyDuringScan
	}
	return nil
}
