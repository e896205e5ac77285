package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"mellium.im/omemo/store"
)

// sqlBeginView starts a View's transaction, in the same round trip as its
// first read.
const sqlBeginView = `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`

// Scan pages: the first is small (many scans stop early or are short), the
// next ones grow up to maxPage rows or about pageBytes of data.
const (
	firstPage = 16
	maxPage   = 256
	pageBytes = 8 << 20
	// upsertBytes bounds the values sent in one INSERT (one protocol
	// message, which PostgreSQL limits to 1 GiB); larger batches are split
	// into several statements of the same round trip.
	upsertBytes = 64 << 20
)

// write is a buffered change of a key: a new value, or a deletion.
type write struct {
	val []byte
	del bool
}

// tx is the transaction of a View or an Update. A View's reads run in a
// REPEATABLE READ transaction on one connection of the pool. An Update's
// reads run as single statements on one connection of the pool, and its
// writes are buffered (writes, cleared) and sent by commit.
type tx struct {
	s        *Store
	ctx      context.Context
	writable bool
	scanning int  // nesting depth of running Scan callbacks
	done     bool // the transaction function returned

	conn  *pgxpool.Conn // acquired by the first statement
	begun bool          // a View's transaction was started

	writes  map[string]write
	cleared []string // DeletePrefix prefixes, none a prefix of another
}

var errModifyDuringScan = fmt.Errorf("%w: transaction modified during Scan", store.ErrReadOnly)

func (t *tx) writeable() error {
	switch {
	case t.done:
		return store.ErrTxDone
	case !t.writable:
		return store.ErrReadOnly
	case t.scanning > 0:
		return errModifyDuringScan
	}
	return nil
}

func checkKey(key string) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", store.ErrInvalidKey)
	}
	if len(key) > store.MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes exceeds %d", store.ErrInvalidKey, len(key), store.MaxKeySize)
	}
	return nil
}

func notFound(key string) error {
	return fmt.Errorf("%w (key of %d bytes)", store.ErrNotFound, len(key))
}

func clone(b []byte) []byte {
	c := make([]byte, len(b))
	copy(c, b)
	return c
}

// isCleared reports whether key was deleted by a DeletePrefix of the
// transaction (and not written since, which writes records).
func (t *tx) isCleared(key string) bool {
	for _, p := range t.cleared {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

func (t *tx) Get(key string) ([]byte, error) {
	if t.done {
		return nil, store.ErrTxDone
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if t.writable {
		if w, ok := t.writes[key]; ok {
			if w.del {
				return nil, notFound(key)
			}
			return clone(w.val), nil
		}
		if t.isCleared(key) {
			return nil, notFound(key)
		}
	}
	var v []byte
	found := false
	err := t.query(sqlGet, []any{t.s.id, []byte(key)}, func(rows pgx.Rows) error {
		found = true
		return rows.Scan(&v)
	})
	if err != nil {
		return nil, wrap(t.ctx, "get", err)
	}
	if !found {
		return nil, notFound(key)
	}
	if v == nil {
		v = []byte{}
	}
	return v, nil
}

func (t *tx) Put(key string, value []byte) error {
	if err := t.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if len(value) > MaxValueSize {
		return fmt.Errorf("%w: %d bytes (PostgreSQL stores at most %d)", store.ErrValueTooLarge, len(value), MaxValueSize)
	}
	if err := t.s.injected(faultWrite); err != nil {
		return err
	}
	t.writes[key] = write{val: clone(value)}
	return nil
}

func (t *tx) Delete(key string) error {
	if err := t.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if err := t.s.injected(faultWrite); err != nil {
		return err
	}
	t.writes[key] = write{del: true}
	return nil
}

func (t *tx) DeletePrefix(prefix string) error {
	if err := t.writeable(); err != nil {
		return err
	}
	if err := t.s.injected(faultWrite); err != nil {
		return err
	}
	for k := range t.writes {
		if strings.HasPrefix(k, prefix) {
			delete(t.writes, k)
		}
	}
	if t.isCleared(prefix) {
		return nil
	}
	t.cleared = slices.DeleteFunc(t.cleared, func(p string) bool { return strings.HasPrefix(p, prefix) })
	t.cleared = append(t.cleared, prefix)
	return nil
}

type kv struct {
	key string
	val []byte
}

func (t *tx) Scan(prefix string, f func(key string, value []byte) error) error {
	if t.done {
		return store.ErrTxDone
	}
	t.scanning++
	defer func() { t.scanning-- }()
	err := t.scan(prefix, f)
	if errors.Is(err, store.ErrStopScan) {
		return nil
	}
	return err
}

func (t *tx) scan(prefix string, f func(key string, value []byte) error) error {
	// The transaction's own writes under the prefix, in key order; they
	// cannot change while the scan runs.
	var own []string
	for k, w := range t.writes {
		if !w.del && strings.HasPrefix(k, prefix) {
			own = append(own, k)
		}
	}
	slices.Sort(own)
	emit := func(k string, v []byte) error {
		for len(own) > 0 && own[0] < k {
			if err := f(own[0], clone(t.writes[own[0]].val)); err != nil {
				return err
			}
			own = own[1:]
		}
		if t.writable {
			if _, ok := t.writes[k]; ok || t.isCleared(k) {
				return nil // written (in own) or deleted by this transaction
			}
		}
		return f(k, v)
	}
	if !t.writable || !t.isCleared(prefix) {
		if err := t.scanStored(prefix, emit); err != nil {
			return err
		}
	}
	for _, k := range own {
		if err := f(k, clone(t.writes[k].val)); err != nil {
			return err
		}
	}
	return nil
}

// scanStored calls f for every stored key with the prefix, in key order.
// It reads pages in index order (by the key's first 1024 bytes, then by its
// hash) and sorts each run of keys sharing their first 1024 bytes by key
// before handing it on. No query is running while f runs, so f may read
// with the same transaction.
func (t *tx) scanStored(prefix string, f func(key string, value []byte) error) error {
	hi, bounded := successor(prefix)
	curHead, curTail := headOf(prefix), []byte{}
	var run []kv // keys with the same head, not handed on yet
	flush := func() error {
		slices.SortFunc(run, func(a, b kv) int { return strings.Compare(a.key, b.key) })
		for i, r := range run {
			run[i] = kv{}
			if err := f(r.key, r.val); err != nil {
				return err
			}
		}
		run = run[:0]
		return nil
	}
	for limit := firstPage; ; {
		args := []any{t.s.id, curHead, curTail, bytesOf(prefix)}
		sql := sqlScan
		if bounded {
			sql = sqlScanTo
			args = append(args, []byte(hi))
		}
		args = append(args, limit)
		var page []kv
		size := 0
		err := t.query(sql, args, func(rows pgx.Rows) error {
			var k, v []byte
			if err := rows.Scan(&k, &v); err != nil {
				return err
			}
			if v == nil {
				v = []byte{}
			}
			page = append(page, kv{string(k), v})
			size += len(k) + len(v)
			return nil
		})
		if err != nil {
			return wrap(t.ctx, "scan", err)
		}
		for _, r := range page {
			if len(run) > 0 && !sameHead(run[0].key, r.key) {
				if err := flush(); err != nil {
					return err
				}
			}
			run = append(run, r)
		}
		if len(page) < limit {
			break
		}
		last := page[len(page)-1].key
		// The next index position: the smallest (head, tail) after the
		// last row's.
		curHead, curTail = headOf(last), append(tailOf(last), 0)
		limit = min(maxPage, 4*limit, max(1, limit*pageBytes/max(size, 1)))
	}
	return flush()
}

func sameHead(a, b string) bool {
	return a[:min(len(a), headLen)] == b[:min(len(b), headLen)]
}

// successor returns the smallest string greater than every string with the
// prefix p, if there is one (not for "" or a run of 0xff bytes).
func successor(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// query runs a statement of the transaction and calls row for each row.
func (t *tx) query(sql string, args []any, row func(pgx.Rows) error) error {
	if err := t.ctx.Err(); err != nil {
		return err
	}
	if t.conn == nil {
		c, err := t.s.db.pool.Acquire(t.ctx)
		if err != nil {
			return err
		}
		t.conn = c
	}
	var (
		rows pgx.Rows
		br   pgx.BatchResults
		err  error
	)
	if !t.writable && !t.begun {
		b := &pgx.Batch{}
		b.Queue(sqlBeginView)
		b.Queue(sql, args...)
		br = t.conn.SendBatch(t.ctx, b)
		t.begun = true
		if _, err = br.Exec(); err == nil {
			rows, err = br.Query()
		}
	} else {
		rows, err = t.conn.Query(t.ctx, sql, args...)
	}
	if err == nil {
		for rows.Next() {
			if err = row(rows); err != nil {
				break
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if br != nil {
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// finish ends the transaction: it ends a View's transaction and returns
// the connection to the pool (which drops it if it is not idle).
func (t *tx) finish() {
	t.done = true
	if t.conn == nil {
		return
	}
	if t.begun && t.ctx.Err() == nil && !t.conn.Conn().IsClosed() {
		_, _ = t.conn.Exec(t.ctx, "ROLLBACK")
	}
	t.conn.Release()
	t.conn = nil
}

// commit sends the buffered writes in one batch: the lease check, then the
// prefix deletions, the key deletions and the upserts, which PostgreSQL
// runs as one implicit transaction committed at the end of the batch. An
// Update that wrote nothing sends nothing.
func (t *tx) commit() error {
	s := t.s
	injected := s.injected(faultCommit)
	if len(t.writes) == 0 && len(t.cleared) == 0 {
		return injected
	}
	if s.lease.dead.Load() {
		return s.fence(fmt.Errorf("postgres: account %q: the connection holding the lease is closed: %w", s.name, ErrLeaseLost))
	}
	b := &pgx.Batch{}
	b.Queue(sqlFence, s.id, s.epoch, s.lease.pid, s.lease.start)
	for _, p := range t.cleared {
		if p == "" {
			b.Queue(sqlDeleteAll, s.id)
		} else if hi, ok := successor(p); ok {
			b.Queue(sqlDeleteRange, s.id, []byte(p), []byte(hi))
		} else {
			b.Queue(sqlDeleteFrom, s.id, []byte(p))
		}
	}
	keys := make([]string, 0, len(t.writes))
	for k := range t.writes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var dels, putKeys, putVals [][]byte
	size := 0
	flushPuts := func() {
		if len(putKeys) > 0 {
			b.Queue(sqlUpsert, s.id, putKeys, putVals)
		}
		putKeys, putVals, size = nil, nil, 0
	}
	for _, k := range keys {
		w := t.writes[k]
		if w.del {
			if !t.isCleared(k) {
				dels = append(dels, []byte(k))
			}
			continue
		}
		if size > 0 && size+len(w.val) > upsertBytes {
			flushPuts()
		}
		putKeys = append(putKeys, []byte(k))
		putVals = append(putVals, w.val)
		size += len(k) + len(w.val)
	}
	if len(dels) > 0 {
		b.Queue(sqlDeleteKeys, s.id, dels)
	}
	flushPuts()
	if injected != nil {
		// A statement that fails after all the writes: the server must
		// roll the whole batch back.
		b.Queue(`SELECT 1/0`)
	}
	if t.conn == nil {
		c, err := s.db.pool.Acquire(t.ctx)
		if err != nil {
			return wrap(t.ctx, "commit", err)
		}
		t.conn = c
	}
	n := b.Len()
	done, err := batchResults(t.conn.SendBatch(t.ctx, b), n)
	if err != nil {
		err = s.commitError(t.ctx, err, done, n)
	}
	if injected != nil {
		return fmt.Errorf("%w (%w)", injected, err)
	}
	return err
}
