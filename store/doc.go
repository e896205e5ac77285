// Package store is the transactional key-value storage layer of the OMEMO
// library.
//
// The session manager keeps all of its state (identity key, signed and
// one-time pre-keys, Double Ratchet sessions, device lists, trust decisions)
// in a [Store]. Every operation of the session manager runs in a single
// [Store.Update] transaction, so its state changes are committed atomically:
// either all of them become visible (and, for the persistent store, durable)
// or none of them do. This is stricter than python-omemo, which writes key by
// key and can be left half-written by a crash, for example with a ratchet
// advanced but the message key not deleted, or a one-time pre-key consumed
// in one place and still present in another.
//
// # Keys and values
//
// Keys are non-empty strings of at most [MaxKeySize] bytes. The session
// manager uses '/'-separated paths such as
// "omemo/ns/urn:xmpp:omemo:2/sessions/alice@example.org/1234", which makes
// [Tx.Scan] and [Tx.DeletePrefix] natural ways to enumerate or drop a
// subtree. Values are opaque bytes and are treated as secret: they are never
// included in error messages. Every value passed to or returned from a store
// is copied, so callers can never alias the store's internal memory (for
// bbolt, memory-mapped pages that are only valid inside a transaction) and
// mutating a slice after Put or after Get cannot change the stored state.
//
// # Implementations
//
// [NewMemory] returns an in-memory store with the same transactional
// semantics, for tests and for ephemeral clients. Nothing it holds survives
// the process.
//
// [Open] returns the persistent default, built on go.etcd.io/bbolt. bbolt was
// chosen because:
//
//   - it is pure Go (no cgo), so the library stays trivially cross-compilable;
//   - a store is a single file, which is easy to locate, back up, protect
//     with file permissions (0600) and delete;
//   - it provides ACID transactions: a read-write transaction is committed
//     by writing new pages and then a new meta page, each followed by fsync,
//     so once [Bolt.Update] has returned nil the change survives a process
//     crash and a power loss;
//   - its copy-on-write B+tree never overwrites live pages and keeps two
//     checksummed meta pages, so a write interrupted at any point (SIGKILL,
//     power loss) leaves the previous committed state intact, with no
//     journal to replay and no recovery step on the next open (Open only
//     checks the file's structure before bbolt maps it, so that a damaged
//     or truncated file is refused with [ErrCorrupt] instead of crashing
//     the process: about 1 ms per 3.5 MB);
//   - it takes an exclusive flock on the file, so two processes (or two
//     opens in one process) cannot use the same store at the same time and
//     corrupt each other's state; a second [Open] fails with [ErrLocked]
//     after [Options.LockTimeout].
//
// The persistent file records a format version in a meta bucket. It is
// written when the file is created and checked on every open: a file from a
// newer version of this package is refused with [ErrVersion], a file from an
// older version is upgraded by running the registered migrations (version N
// to N+1, each in turn) inside one transaction, so an interrupted upgrade
// leaves the old version in place.
//
// # Many accounts
//
// A process that serves many XMPP accounts (a gateway, a bot host) would
// need one file, one file descriptor, one memory map and one lock per
// account with [Open]. [Accounts] keeps them all in one database instead:
// Accounts.Account returns the [Store] of one account, leased to its
// caller until its Close (a second Account for the same name fails with
// [ErrLocked]), and each account's Store sees and changes only that
// account's keys. [NewMemoryAccounts] keeps them in memory; [OpenAccounts]
// keeps them in one bbolt file, with one bucket per account that has keys,
// the same file lock, checks and crash guarantees as [Open], and a format
// of its own (a multi-account file and a single-account file are each
// refused, with [ErrVersion], by the function that opens the other kind).
// Opening an account costs no I/O and a few hundred bytes of memory. bbolt
// has a single writer, so the Updates of all the accounts of a file are
// serialised, each with its own commit.
//
// Package mellium.im/omemo/store/storetest is the conformance suite that
// every implementation of Store and Accounts, in this module or outside,
// runs from its tests.
//
// # Concurrency
//
// Stores are safe for concurrent use by many goroutines. Read-only
// transactions ([Store.View]) run concurrently with each other and with at
// most one read-write transaction ([Store.Update]); read-write transactions
// are serialised. A goroutine waiting for the write lock gives up when its
// context is done. A [Tx] must only be used by the goroutine running the
// transaction function and only until that function returns.
//
// Do not start a transaction from inside another transaction's function in
// the same goroutine, and do not make a View wait for an Update: an Update
// waits for the previous one, and bbolt may need every open read transaction
// to finish before it can grow the file, so either pattern can deadlock.
//
// # Threat model
//
// The store protects integrity and atomicity against crashes, not
// confidentiality against someone who can read the file: values (including
// private keys) are stored unencrypted, protected only by the file's 0600
// permissions and the 0700 directory created by [DefaultPath]. Applications
// that need encryption at rest should use full-disk encryption or wrap the
// [Store] interface.
package store
