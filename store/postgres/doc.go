// Package postgres is a [store.Store] in PostgreSQL, for deployments that
// outgrow one process: a gateway serving many accounts, or several
// processes sharing the accounts of one database.
//
// A process opens the database once with [Open], which returns a [DB]
// (a pool of connections, built on github.com/jackc/pgx/v5), and then one
// [Store] per account (a bare JID) with [DB.Account]. Every account lives
// in the same tables; the account is part of the key, so accounts are
// isolated from each other (DeletePrefix("") in one leaves the others
// alone). [DB] has the methods of the store.Accounts interface (Account and
// Close).
//
// # Schema
//
// Open creates the tables in the first schema of the connection's
// search_path (set search_path in the DSN to use another one):
// omemo_schema_version, omemo_accounts (name, id, lease epoch) and omemo_kv
// (account id, key, value), and the function omemo_fence. The schema is
// versioned: Open runs the missing migrations in one transaction under an
// advisory lock, so processes starting together do not race and an
// interrupted migration leaves the previous version; a database written
// by a newer version of this package is refused with store.ErrVersion.
//
// Keys are stored as bytea, which compares bytewise: Scan returns keys in
// lexicographic byte order whatever the database's collation, and prefix
// scans and deletions use the range [prefix, successor(prefix)), never
// LIKE, so that any byte ('%', '_', 0xff, NUL) is an ordinary byte. A
// B-tree entry must fit in a third of a page while keys may be 32 KiB
// (store.MaxKeySize), so the unique index holds the first 1024 bytes of a
// key and, for longer keys only, a SHA-256 of the whole key; Scan sorts
// the (rare) runs of long keys sharing their first 1024 bytes itself.
// Values are stored unencrypted as bytea of at most [MaxValueSize] bytes
// (a few MiB are routine); protecting them is the database's access
// control's job, as file permissions are for the bbolt store.
//
// # Transactions
//
// [Store.Update] is one PostgreSQL transaction. Its reads run at once, as
// single statements on a connection of the pool; its writes (Put, Delete,
// DeletePrefix) are kept in memory, where its own reads and scans see
// them, and are sent at commit as one pipelined batch: the lease check
// (see below), the prefix deletions, the key deletions and the upserts.
// PostgreSQL runs such a batch as one implicit transaction that commits
// at its end (durably, with the server's fsync and synchronous_commit), so
// an Update costs its reads plus one round trip: a steady-state decryption
// (read a session, write it back, add an inbox entry) is two round trips,
// and an Update that writes nothing has nothing to commit.
//
// The isolation level is READ COMMITTED, which is enough because the lease
// makes the account single-writer: no other transaction writes the
// account's rows while the Store holds the lease, and the Store serialises
// its Updates, so an Update's reads, although separate statements, all
// see the state its writes apply to, with no lost update or write skew
// possible. There are no serialization failures to retry. (SERIALIZABLE
// would add nothing but predicate locks, which could make the commits of
// different accounts fail each other, and REPEATABLE READ would cost a
// BEGIN and a COMMIT round trip.)
//
// [Store.View] is a READ ONLY REPEATABLE READ transaction on a connection
// of the pool: a consistent snapshot, which the lease alone cannot give,
// since Views run concurrently with the Store's Updates. It is started in
// the same round trip as the View's first read and ended with one more.
//
// If an Update's function fails or panics, or its context is done before
// the commit, nothing is sent. A context that is done cancels the
// Update's running statement (with a cancel request to the server, which
// keeps the connection), and so makes the Update fail; as the store
// contract has it, a View's context only matters before the View starts.
//
// # The lease
//
// A Store holds its account exclusively, so that two processes never
// drive the same device's ratchets. The lease is a session-level advisory
// lock, keyed by the schema's lock class (random per schema) and the
// account's id (unique, so there are no hash collisions), held on one
// connection per DB taken out of the pool for the purpose. A second
// opener, in this process or another, waits up to Options.LockTimeout and
// gets store.ErrLocked. [Store.Close] releases the lock; if the process
// dies, its connections close and PostgreSQL releases the locks at once,
// so another process can take the accounts over. (If the network fails
// instead, the server keeps the lock until it notices that the client is
// gone: see PostgreSQL's tcp_keepalives_* settings.)
//
// Each holder that takes the lease increments the account's epoch, and
// every commit starts with omemo_fence, which aborts the transaction
// unless the epoch is still the Store's (checked under a row lock that
// also holds a new holder's increment back until the commit is over) and
// the backend holding the Store's advisory lock is still alive.
//
// # Connection loss
//
// When the lease connection is lost (the server restarted, the network
// failed, an administrator ended the backend), the locks of every account
// of the DB are gone. The next Update that writes fails with [ErrLeaseLost]
// (which wraps store.ErrLocked) and writes nothing, even if nobody took the
// account over, and from then on every transaction of the Store fails the
// same way. The same happens if the connection breaks while a commit is
// under way and the Store cannot tell whether it happened. The
// application closes such a Store (and its session Manager) and opens the
// account again, which starts from the committed state, as after a
// restart. Losing an ordinary connection of the pool only fails the
// transaction running on it.
//
// # Capacity
//
// A DB uses its pool (pool_max_conns in the DSN, by default the larger of
// 4 and the number of CPUs) plus the lease connection. Each open account
// takes one entry of the server's lock table, whose size is
// max_locks_per_transaction × (max_connections + max_prepared_transactions)
// for the whole server (6400 by default): raise max_locks_per_transaction
// to serve more accounts at once. Session-level advisory locks do not work
// through a pooler in transaction mode (PgBouncer's pool_mode=transaction):
// connect directly or in session mode.
package postgres // import "mellium.im/omemo/store/postgres"
