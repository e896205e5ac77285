package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"mellium.im/omemo/store"
)

// DefaultLockTimeout is the default for Options.LockTimeout.
const DefaultLockTimeout = time.Second

// MaxValueSize is the maximum length of a value in bytes: PostgreSQL
// limits a field (and a protocol message) to 1 GiB, less room for the key.
// Put fails with store.ErrValueTooLarge for longer values.
const MaxValueSize = 1<<30 - 1<<20

// ErrLeaseLost is returned by every transaction of a Store that no longer
// holds its account's lease: the connection holding the lease was lost (the
// server, the network or an administrator ended it), another holder took
// the account over, or a commit's outcome is unknown because the
// connection broke while it was under way. It wraps store.ErrLocked. Such a
// Store never writes again; Close it and open the account again with
// [DB.Account], which reads the committed state afresh.
var ErrLeaseLost = fmt.Errorf("%w: account lease lost", store.ErrLocked)

// Options configures Open. The zero value (or a nil *Options) gives the
// defaults.
type Options struct {
	// LockTimeout is how long Account waits for an account whose lease is
	// held by another Store (of this or another process) before failing
	// with store.ErrLocked. Zero means DefaultLockTimeout (1s); a negative
	// value means fail at once.
	LockTimeout time.Duration
}

// DB is a PostgreSQL database holding the OMEMO state of many accounts, and
// a pool of connections to it. It is safe for concurrent use. Open one DB
// per process and one [Store] per account with [DB.Account].
type DB struct {
	pool      *pgxpool.Pool
	timeout   time.Duration
	lockClass int32

	mu      sync.Mutex
	closed  bool
	held    map[string]*Store // accounts open in this DB; nil while being opened
	changed chan struct{}     // closed (and replaced) when an account is released

	leaseMu sync.Mutex
	lease   *lease
}

// Open connects to the database at dsn (a URL or keyword/value connection
// string, see [pgxpool.ParseConfig]; pool settings such as pool_max_conns
// may be given in it) and creates or migrates the schema. The tables are
// created in the first schema of the connection's search_path.
//
// It fails with store.ErrVersion if the schema was written by a newer
// version of this package. Schema creation and migrations run in one
// transaction under an advisory lock, so processes starting together do
// not race and an interrupted migration leaves the old version.
func Open(ctx context.Context, dsn string, opts *Options) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return open(ctx, cfg, opts)
}

func open(ctx context.Context, cfg *pgxpool.Config, opts *Options) (*DB, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	cc := cfg.ConnConfig
	// A canceled context must not kill the connection (pgx's default sets
	// a deadline on the socket, which closes it): ask the server to cancel
	// the statement, and only close the connection if it does not answer.
	cc.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: 2 * time.Second}
	}
	// The design relies on READ COMMITTED for the writes (see the package
	// documentation); do not inherit another default from the server.
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["default_transaction_isolation"] = "read committed"
	cc.RuntimeParams["default_transaction_read_only"] = "off"

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	db := &DB{pool: pool, held: map[string]*Store{}, changed: make(chan struct{})}
	switch {
	case o.LockTimeout == 0:
		db.timeout = DefaultLockTimeout
	case o.LockTimeout > 0:
		db.timeout = o.LockTimeout
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	db.lockClass, err = migrate(ctx, conn.Conn())
	conn.Release()
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: schema: %w", err)
	}
	return db, nil
}

// Close closes every Store opened from db (waiting for their running
// transactions and releasing their leases) and the connection pool.
// Calling it more than once is harmless.
func (db *DB) Close() error {
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return nil
	}
	db.closed = true
	var open []*Store
	for _, s := range db.held {
		if s != nil {
			open = append(open, s)
		}
	}
	db.mu.Unlock()
	for _, s := range open {
		_ = s.Close()
	}
	db.leaseMu.Lock()
	if db.lease != nil {
		db.lease.close()
	}
	db.leaseMu.Unlock()
	db.pool.Close()
	return nil
}

// Account returns the Store of the named account (a bare JID, used as
// given: pass it in canonical form), creating the account if needed. The
// Store is a *[Store] holding the account's lease: no other Store, in this
// process or another, can open the account until it is closed or its
// process or connection dies. If another holds it, Account waits up to
// Options.LockTimeout and then fails with an error wrapping
// store.ErrLocked. A name that store.CheckAccountName refuses fails with
// store.ErrInvalidAccount.
func (db *DB) Account(ctx context.Context, name string) (store.Store, error) {
	if err := store.CheckAccountName(name); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(db.timeout)
	if err := db.reserve(ctx, name, deadline); err != nil {
		return nil, err
	}
	s, err := db.acquire(ctx, name, deadline)
	db.mu.Lock()
	if err == nil && db.closed {
		err = store.ErrClosed
	}
	if err != nil {
		db.mu.Unlock()
		if s != nil {
			s.lease.unlock(ctx, db.lockClass, s.id)
		}
		db.release(name)
		return nil, err
	}
	db.held[name] = s
	db.mu.Unlock()
	return s, nil
}

// reserve claims name in this DB, waiting until deadline for another Store
// of this DB to release it: the advisory lock cannot tell two Stores of one
// connection apart.
func (db *DB) reserve(ctx context.Context, name string, deadline time.Time) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		db.mu.Lock()
		if db.closed {
			db.mu.Unlock()
			return store.ErrClosed
		}
		if _, busy := db.held[name]; !busy {
			db.held[name] = nil
			db.mu.Unlock()
			return nil
		}
		changed := db.changed
		db.mu.Unlock()
		wait := time.Until(deadline)
		if wait <= 0 {
			return fmt.Errorf("postgres: account %q is open in this process: %w", name, store.ErrLocked)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		}
		select {
		case <-changed:
		case <-timer.C:
			timer = nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release ends the claim of reserve.
func (db *DB) release(name string) {
	db.mu.Lock()
	delete(db.held, name)
	close(db.changed)
	db.changed = make(chan struct{})
	db.mu.Unlock()
}

// acquire takes the account's lease: its id, the advisory lock on the lease
// connection, and a new epoch.
func (db *DB) acquire(ctx context.Context, name string, deadline time.Time) (*Store, error) {
	id, err := db.accountID(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("postgres: account %q: %w", name, err)
	}
	var l *lease
	for attempt, wait := 0, 10*time.Millisecond; ; attempt++ {
		if l, err = db.currentLease(ctx); err != nil {
			return nil, fmt.Errorf("postgres: account %q: lease connection: %w", name, err)
		}
		ok, err := l.tryLock(ctx, db.lockClass, id)
		if err != nil {
			if l.dead.Load() && attempt < 2 {
				continue // on a new lease connection
			}
			return nil, fmt.Errorf("postgres: account %q: lock: %w", name, err)
		}
		if ok {
			break
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("postgres: account %q is held by another process: %w", name, store.ErrLocked)
		}
		t := time.NewTimer(min(wait, left))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
	var epoch int64
	if err := db.pool.QueryRow(ctx, sqlBumpEpoch, id).Scan(&epoch); err != nil {
		l.unlock(ctx, db.lockClass, id)
		return nil, fmt.Errorf("postgres: account %q: %w", name, err)
	}
	s := &Store{db: db, name: name, id: id, epoch: epoch, lease: l, wlock: make(chan struct{}, 1)}
	s.life.init()
	return s, nil
}

// accountID returns the id of the named account, creating it if needed.
func (db *DB) accountID(ctx context.Context, name string) (int32, error) {
	for range 3 {
		var id int32
		err := db.pool.QueryRow(ctx, sqlAccountID, name).Scan(&id)
		if err == nil {
			return id, nil
		}
		// Another process created the row after this statement's
		// snapshot: it is visible to the next one.
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, err
		}
	}
	return 0, errors.New("account row not found")
}

// currentLease returns the DB's lease connection, opening a new one if
// there is none or it died.
func (db *DB) currentLease(ctx context.Context) (*lease, error) {
	db.leaseMu.Lock()
	defer db.leaseMu.Unlock()
	if db.lease != nil && !db.lease.dead.Load() {
		return db.lease, nil
	}
	if db.lease != nil {
		db.lease.close()
		db.lease = nil
	}
	l, err := newLease(ctx, db.pool)
	if err != nil {
		return nil, err
	}
	db.lease = l
	return l, nil
}

// A lease is a connection taken out of the pool that holds the
// session-level advisory locks of the accounts open in a DB (one lock per
// account: the schema's lock class and the account id). PostgreSQL releases
// them when the connection ends, whatever the reason; the Stores then
// notice at their next commit (omemo_fence checks that the backend, pid and
// start time, is still there).
type lease struct {
	mu    sync.Mutex // serialises the use of conn
	conn  *pgx.Conn
	pid   int32
	start time.Time
	dead  atomic.Bool
}

// leaseOpTimeout bounds a statement on the lease connection. Those
// statements are never canceled with the caller's context: a session-level
// advisory lock taken by a statement that is then canceled stays held, and
// the caller would not know it.
const leaseOpTimeout = 15 * time.Second

func newLease(ctx context.Context, pool *pgxpool.Pool) (*lease, error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	l := &lease{conn: pc.Hijack()}
	// The lease connection is idle most of the time: a server-wide
	// idle_session_timeout (PostgreSQL 14 and later) must not end it.
	// Older servers do not know the setting, which is fine.
	var pgErr *pgconn.PgError
	if _, err := l.conn.Exec(ctx, `SET idle_session_timeout = 0`); err != nil && !errors.As(err, &pgErr) {
		_ = l.conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	if err := l.conn.QueryRow(ctx, sqlWhoAmI).Scan(&l.pid, &l.start); err != nil {
		_ = l.conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return l, nil
}

// tryLock takes the advisory lock of an account without waiting.
func (l *lease) tryLock(ctx context.Context, class, id int32) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead.Load() {
		return false, errors.New("lease connection closed")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseOpTimeout)
	defer cancel()
	var ok bool
	if err := l.conn.QueryRow(ctx, sqlTryLock, class, id).Scan(&ok); err != nil {
		// Whether the lock was taken is unknown: drop the connection,
		// which releases whatever it held.
		l.closeLocked()
		return false, err
	}
	return ok, nil
}

// unlock releases the advisory lock of an account. If that fails, the
// connection is closed, which releases it too (and fences the other
// accounts on it).
func (l *lease) unlock(ctx context.Context, class, id int32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseOpTimeout)
	defer cancel()
	var ok bool
	if err := l.conn.QueryRow(ctx, sqlUnlock, class, id).Scan(&ok); err != nil || !ok {
		l.closeLocked()
	}
}

func (l *lease) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeLocked()
}

func (l *lease) closeLocked() {
	if l.dead.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}
