package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
)

// backing is where a case keeps its state: a bbolt file in a directory of
// its own, or a database of its own in a PostgreSQL cluster.
type backing interface {
	name() string
	// single opens the store of one account. With setup, commits need not
	// be durable (the setup is not measured).
	single(ctx context.Context, setup bool) (store.Store, error)
	// accounts opens the multi-account store.
	accounts(ctx context.Context, setup bool) (store.Accounts, error)
	// size is the size of the stored data in bytes.
	size(ctx context.Context) (int64, error)
	// counted opens the store of the one account (closed first) through
	// a proxy that counts round trips to the server; nil for bbolt.
	counted(ctx context.Context) (*countedStore, error)
	// cleanup removes the state.
	cleanup(ctx context.Context) error
}

func newBacking(ctx context.Context, kind, dir, adminDSN, tag string) (backing, error) {
	switch kind {
	case "bolt":
		d, err := os.MkdirTemp(dir, "scale-"+tag+"-")
		if err != nil {
			return nil, err
		}
		return &boltBacking{dir: d}, nil
	case "postgres":
		if adminDSN == "" {
			return nil, fmt.Errorf("postgres: no -dsn")
		}
		return newPGBacking(ctx, adminDSN, tag)
	}
	return nil, fmt.Errorf("unknown store %q (bolt or postgres)", kind)
}

// statser is a store that counts its commits.
type statser interface{ Stats() store.Stats }

// commits is the number of committed Update transactions of st.
func commits(st store.Store) uint64 {
	if s, ok := st.(statser); ok {
		return s.Stats().Commits
	}
	return 0
}

type boltBacking struct{ dir string }

func (b *boltBacking) name() string { return "bbolt" }

func (b *boltBacking) single(ctx context.Context, setup bool) (store.Store, error) {
	return store.Open(filepath.Join(b.dir, "omemo.db"), &store.Options{NoSync: setup})
}

func (b *boltBacking) accounts(ctx context.Context, setup bool) (store.Accounts, error) {
	return store.OpenAccounts(filepath.Join(b.dir, "accounts.db"), &store.Options{NoSync: setup})
}

func (b *boltBacking) size(ctx context.Context) (int64, error) {
	var total int64
	ents, err := os.ReadDir(b.dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return 0, err
		}
		total += fi.Size()
	}
	return total, nil
}

func (b *boltBacking) counted(ctx context.Context) (*countedStore, error) { return nil, nil }

// freePages is the number of free pages on bbolt's freelist of the
// one-account file (closed), which every commit writes out.
func (b *boltBacking) freePages() (int, error) {
	db, err := bolt.Open(filepath.Join(b.dir, "omemo.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	s := db.Stats()
	return s.FreePageN + s.PendingPageN, nil
}

func (b *boltBacking) cleanup(ctx context.Context) error { return os.RemoveAll(b.dir) }

// pgBacking is a database created for one case.
type pgBacking struct {
	admin, dsn, db string
	// open is the DB of the one-account stores, kept open across
	// restarts of the account as a process serving many accounts keeps
	// it (setup tells which DSN it was opened with).
	open  *postgres.DB
	setup bool
}

func newPGBacking(ctx context.Context, adminDSN, tag string) (*pgBacking, error) {
	name := fmt.Sprintf("scale_%s_%d_%d", strings.ReplaceAll(tag, "-", "_"), os.Getpid(), time.Now().UnixNano()%1e6)
	c, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return nil, err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(adminDSN)
	if err != nil {
		return nil, err
	}
	u.Path = "/" + name
	return &pgBacking{admin: adminDSN, dsn: u.String(), db: name}, nil
}

func (p *pgBacking) name() string { return "PostgreSQL" }

// dsnFor is the DSN of the database; with setup, commits do not wait for
// the WAL flush (synchronous_commit=off, passed as a startup parameter).
func (p *pgBacking) dsnFor(setup bool) string {
	if !setup {
		return p.dsn
	}
	u, _ := url.Parse(p.dsn)
	q := u.Query()
	q.Set("synchronous_commit", "off")
	u.RawQuery = q.Encode()
	return u.String()
}

// single opens the account on the DB kept open, which it opens first if
// needed (not measured as part of the account's opening).
func (p *pgBacking) single(ctx context.Context, setup bool) (store.Store, error) {
	if p.open != nil && p.setup != setup {
		if err := p.open.Close(); err != nil {
			return nil, err
		}
		p.open = nil
	}
	if p.open == nil {
		db, err := postgres.Open(ctx, p.dsnFor(setup), nil)
		if err != nil {
			return nil, err
		}
		p.open, p.setup = db, setup
	}
	return p.open.Account(ctx, ownJID)
}

func (p *pgBacking) accounts(ctx context.Context, setup bool) (store.Accounts, error) {
	return postgres.Open(ctx, p.dsnFor(setup), nil)
}

func (p *pgBacking) query(ctx context.Context, sql string) (int64, error) {
	c, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx)
	var n int64
	err = c.QueryRow(ctx, sql).Scan(&n)
	return n, err
}

func (p *pgBacking) size(ctx context.Context) (int64, error) {
	return p.query(ctx, "SELECT pg_total_relation_size('omemo_kv') + pg_total_relation_size('omemo_accounts')")
}

// countedStore is a store whose round trips to its server are counted.
type countedStore struct {
	store.Store
	db        *postgres.DB
	proxy     *rtProxy
	openTrips int64 // round trips of DB.Account
}

// trips is the number of round trips so far.
func (c *countedStore) trips() int64 { return c.proxy.trips.Load() }

func (c *countedStore) Stats() store.Stats { return c.Store.(statser).Stats() }

func (c *countedStore) Close() error {
	err := c.Store.Close()
	c.db.Close()
	c.proxy.close()
	return err
}

func (p *pgBacking) counted(ctx context.Context) (*countedStore, error) {
	u, err := url.Parse(p.dsn)
	if err != nil {
		return nil, err
	}
	proxy, err := newRTProxy(u.Host)
	if err != nil {
		return nil, err
	}
	u.Host = proxy.addr()
	db, err := postgres.Open(ctx, u.String(), nil)
	if err != nil {
		proxy.close()
		return nil, err
	}
	t0 := proxy.trips.Load()
	st, err := db.Account(ctx, ownJID)
	if err != nil {
		db.Close()
		proxy.close()
		return nil, err
	}
	return &countedStore{Store: st, db: db, proxy: proxy, openTrips: proxy.trips.Load() - t0}, nil
}

func (p *pgBacking) cleanup(ctx context.Context) error {
	if p.open != nil {
		p.open.Close()
	}
	c, err := pgx.Connect(ctx, p.admin)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{p.db}.Sanitize()+" WITH (FORCE)")
	return err
}
