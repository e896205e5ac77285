package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	life "mellium.im/omemo/internal/lifecycle"
	"mellium.im/omemo/store"
)

// Store is the [store.Store] of one account, returned by [DB.Account]. It
// holds the account's lease until Close. It is safe for concurrent use.
type Store struct {
	db    *DB
	name  string
	id    int32
	epoch int64
	lease *lease
	life  lifecycle
	wlock chan struct{} // one slot: serialises Updates

	lost atomic.Pointer[error] // set once the Store is fenced off

	commits   atomic.Uint64
	rollbacks atomic.Uint64

	// faultHook, set by tests before the Store is used, makes operations
	// fail (storetest.Injector).
	faultHook func(faultPoint) error
}

var _ store.Store = (*Store)(nil)

// faultPoint is where faultHook can make an operation fail.
type faultPoint int

const (
	faultBegin  faultPoint = iota + 1 // View or Update, before f
	faultWrite                        // Put, Delete, DeletePrefix
	faultCommit                       // the commit batch fails on the server
)

func (s *Store) injected(p faultPoint) error {
	if s.faultHook == nil {
		return nil
	}
	return s.faultHook(p)
}

// Name returns the account's name.
func (s *Store) Name() string { return s.name }

// Stats returns the Store's counters since it was opened.
func (s *Store) Stats() store.Stats {
	return store.Stats{Commits: s.commits.Load(), Rollbacks: s.rollbacks.Load()}
}

// fenced returns the error of a Store that lost its lease, or nil.
func (s *Store) fenced() error {
	if p := s.lost.Load(); p != nil {
		return *p
	}
	return nil
}

// fence marks the Store as having lost its lease and returns err.
func (s *Store) fence(err error) error {
	s.lost.CompareAndSwap(nil, &err)
	return err
}

// View implements [store.Store.View]: f runs in a read-only REPEATABLE READ
// transaction on a connection of the pool, started with f's first read. As
// the store contract has it, ctx only matters before the View starts: its
// reads are not canceled when ctx is done.
func (s *Store) View(ctx context.Context, f func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.life.enter(); err != nil {
		return err
	}
	defer s.life.leave()
	if err := s.fenced(); err != nil {
		return err
	}
	if err := s.injected(faultBegin); err != nil {
		return err
	}
	t := &tx{s: s, ctx: context.WithoutCancel(ctx)}
	defer t.finish()
	return f(t)
}

// Update implements [store.Store.Update]. Reads run at once on a connection
// of the pool; writes are kept in memory and sent at commit in one batch,
// one implicit transaction behind the lease check (one round trip).
func (s *Store) Update(ctx context.Context, f func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.life.enter(); err != nil {
		return err
	}
	defer s.life.leave()
	select {
	case s.wlock <- struct{}{}:
	default:
		select {
		case s.wlock <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.life.closing:
			return store.ErrClosed
		}
	}
	defer func() { <-s.wlock }()
	if err := s.fenced(); err != nil {
		return err
	}
	if err := s.injected(faultBegin); err != nil {
		return err
	}
	t := &tx{s: s, ctx: ctx, writable: true, writes: map[string]write{}}
	committed := false
	defer func() {
		t.finish()
		if committed {
			s.commits.Add(1)
		} else {
			s.rollbacks.Add(1)
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f(t); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.commit(); err != nil {
		return err
	}
	committed = true
	return nil
}

// Close waits for running transactions, then releases the account's lease
// so that another Store may open it. Transactions started afterwards fail
// with store.ErrClosed. Calling Close more than once is harmless; it must
// not be called from inside a transaction function.
func (s *Store) Close() error {
	if !s.life.close() {
		return nil
	}
	s.lease.unlock(context.Background(), s.db.lockClass, s.id)
	s.db.release(s.name)
	return nil
}

// commitError classifies a failed commit batch of n statements, of which
// done completed. The implicit transaction of the batch commits at its
// end, so nothing was written if nothing was sent, if the server reported
// an ERROR, or if it ended the connection (FATAL) before the last
// statement completed. Otherwise (the connection broke, or was ended after
// the last statement) the outcome is unknown, and the Store fences itself
// off: the caller must reopen the account, which reads the committed
// state.
func (s *Store) commitError(ctx context.Context, err error, done, n int) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case codeTakenOver:
			return s.fence(fmt.Errorf("postgres: account %q was taken over by another holder: %w", s.name, ErrLeaseLost))
		case codeLeaseGone:
			s.lease.close() // the next DB.Account opens a new one
			return s.fence(fmt.Errorf("postgres: account %q: the connection holding the lease is gone: %w", s.name, ErrLeaseLost))
		}
		severity := pgErr.SeverityUnlocalized
		if severity == "" {
			severity = pgErr.Severity
		}
		// An ERROR rolls the transaction back; a FATAL one (the server
		// ending the connection) before the last statement completed
		// means the commit never ran.
		if severity == "ERROR" || done < n {
			return wrap(ctx, "commit", err)
		}
	} else if pgconn.SafeToRetry(err) {
		return wrap(ctx, "commit", err)
	}
	return s.fence(fmt.Errorf("postgres: account %q: commit outcome unknown, connection lost: %w: %w", s.name, ErrLeaseLost, err))
}

// wrap annotates an error of the server or the connection, with ctx's error
// if ctx is done (a canceled statement reports a server error).
func wrap(ctx context.Context, op string, err error) error {
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("postgres: %s: %w (%w)", op, cerr, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
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
		return store.ErrClosed
	}
	return nil
}

func (l *lifecycle) leave() { l.Leave() }

// close marks the store closed and waits for the running transactions. It
// reports whether this was the first call.
func (l *lifecycle) close() bool { return l.Close() }

// batchResults reads the results of a batch of n statements; it returns
// the first error and how many statements completed before it.
func batchResults(br pgx.BatchResults, n int) (done int, err error) {
	for ; done < n; done++ {
		if _, err = br.Exec(); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return done, err
}
