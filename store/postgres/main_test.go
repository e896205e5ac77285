package postgres

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"mellium.im/omemo/internal/pgtest"
	"mellium.im/omemo/store"
)

// The tests share one cluster, started on first use and stopped when they
// are done, and one database for the tests that only need accounts of
// their own.
var shared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error

	dbOnce sync.Once
	dsn    string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "pgtest: server log (tail):\n%s\n", shared.srv.LogTail(8<<10))
		}
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
	os.Exit(code)
}

// Cluster returns the cluster shared by the tests of this package. It skips
// the test (fails it with CI=true) if PostgreSQL is unavailable.
func Cluster(tb testing.TB) *pgtest.Server {
	tb.Helper()
	pgtest.Require(tb)
	shared.once.Do(func() { shared.srv, shared.err = pgtest.Launch() })
	if shared.err != nil {
		tb.Fatalf("pgtest: %v", shared.err)
	}
	return shared.srv
}

// SharedDSN returns the database shared by the tests of this package.
func SharedDSN(tb testing.TB) string {
	tb.Helper()
	srv := Cluster(tb)
	shared.dbOnce.Do(func() { shared.dsn = srv.CreateDatabase(tb) })
	return shared.dsn
}

// OpenDB opens dsn for the test and closes it in tb.Cleanup.
func OpenDB(tb testing.TB, dsn string, opts *Options) *DB {
	tb.Helper()
	db, err := Open(context.Background(), dsn, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

var (
	sharedDBOnce sync.Once
	sharedDB     *DB
	accountSeq   atomic.Int64
)

// NewAccount opens a fresh account of the shared database, closed in
// tb.Cleanup.
func NewAccount(tb testing.TB) *Store {
	tb.Helper()
	dsn := SharedDSN(tb)
	sharedDBOnce.Do(func() {
		var err error
		if sharedDB, err = Open(context.Background(), dsn, nil); err != nil {
			tb.Fatal(err)
		}
	})
	if sharedDB == nil {
		tb.Fatal("shared database not open")
	}
	return OpenAccount(tb, sharedDB, fmt.Sprintf("user%d@example.org", accountSeq.Add(1)))
}

// OpenAccount opens the named account of db, closed in tb.Cleanup.
func OpenAccount(tb testing.TB, db *DB, name string) *Store {
	tb.Helper()
	st, err := db.Account(context.Background(), name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	return st.(*Store)
}

// roundTrips counts the round trips of the connections dialled through it:
// each write to the server that follows a read from it (or comes first)
// starts one.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) Load() int64 { return r.n.Load() }

type countingConn struct {
	net.Conn
	r     *roundTrips
	wrote atomic.Bool // the last operation was a write
}

func (c *countingConn) Write(b []byte) (int, error) {
	if !c.wrote.Swap(true) {
		c.r.n.Add(1)
	}
	return c.Conn.Write(b)
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.wrote.Store(false)
	}
	return n, err
}

// openCounting opens dsn with every connection counting its round trips
// in rt.
func openCounting(tb testing.TB, dsn string, rt *roundTrips) *DB {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, r: rt}, nil
	}
	db, err := open(context.Background(), cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// TerminateLease ends the backend of the connection holding st's lease, as
// a server restart or an administrator would, and waits for it to exit.
func TerminateLease(tb testing.TB, dsn string, st *Store) {
	tb.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close(context.Background())
	terminate(tb, c, st.lease.pid)
}

// The store interfaces this package implements. Accounts is the interface
// of store.Accounts.
var (
	_ store.Store = (*Store)(nil)
	_ interface {
		Account(ctx context.Context, name string) (store.Store, error)
		Close() error
	} = (*DB)(nil)
)
