package store

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Memory is an in-memory [Store] with the same transactional semantics as
// the persistent store, except durability: its contents are lost when the
// process exits. It is meant for tests and ephemeral clients.
//
// Each committed state is an immutable map. A read-only transaction works on
// the map that was current when it started (a consistent snapshot, without
// holding any lock); a read-write transaction copies the map on its first
// write and publishes the copy on commit, so a rolled-back transaction leaves
// no trace. Commits cost O(number of keys).
type Memory struct {
	lc    lifecycle
	wlock writeLock

	mu   sync.RWMutex      // guards data
	data map[string][]byte // current committed state; never mutated

	commits   atomic.Uint64
	rollbacks atomic.Uint64
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	m := &Memory{
		wlock: make(writeLock, 1),
		data:  map[string][]byte{},
	}
	m.lc.init()
	return m
}

func (s *Memory) snapshot() map[string][]byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.data
}

// View implements [Store.View].
func (s *Memory) View(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.lc.enter(); err != nil {
		return err
	}
	defer s.lc.leave()
	tx := &memTx{base: s.snapshot()}
	defer func() { tx.done = true }()
	return f(tx)
}

// Update implements [Store.Update].
func (s *Memory) Update(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.lc.enter(); err != nil {
		return err
	}
	defer s.lc.leave()
	if err := s.wlock.acquire(ctx, s.lc.closing); err != nil {
		return err
	}
	defer s.wlock.release()

	tx := &memTx{base: s.snapshot(), writable: true}
	committed := false
	defer func() {
		tx.done = true
		if !committed {
			s.rollbacks.Add(1)
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if tx.m != nil {
		s.mu.Lock()
		s.data = tx.m
		s.mu.Unlock()
	}
	committed = true
	s.commits.Add(1)
	return nil
}

// Close implements [Store.Close]. It waits for running transactions and
// drops the contents.
func (s *Memory) Close() error {
	if s.lc.close() {
		s.mu.Lock()
		s.data = nil
		s.mu.Unlock()
	}
	return nil
}

// Stats returns the store's counters.
func (s *Memory) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Rollbacks: s.rollbacks.Load()}
}

type memTx struct {
	base     map[string][]byte // snapshot the transaction started from
	m        map[string][]byte // private copy after the first write, else nil
	writable bool
	scanning int
	done     bool
}

func (tx *memTx) cur() map[string][]byte {
	if tx.m != nil {
		return tx.m
	}
	return tx.base
}

func (tx *memTx) writeable() error {
	switch {
	case tx.done:
		return ErrTxDone
	case !tx.writable:
		return ErrReadOnly
	case tx.scanning > 0:
		return errModifyDuringScan
	}
	if tx.m == nil {
		tx.m = maps.Clone(tx.base)
		if tx.m == nil {
			tx.m = map[string][]byte{}
		}
	}
	return nil
}

func (tx *memTx) Get(key string) ([]byte, error) {
	if tx.done {
		return nil, ErrTxDone
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	v, ok := tx.cur()[key]
	if !ok {
		return nil, notFound(key)
	}
	return clone(v), nil
}

func (tx *memTx) Put(key string, value []byte) error {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if err := checkValue(value); err != nil {
		return err
	}
	tx.m[key] = clone(value)
	return nil
}

func (tx *memTx) Delete(key string) error {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	delete(tx.m, key)
	return nil
}

func (tx *memTx) Scan(prefix string, f func(key string, value []byte) error) error {
	if tx.done {
		return ErrTxDone
	}
	m := tx.cur()
	var keys []string
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	tx.scanning++
	defer func() { tx.scanning-- }()
	for _, k := range keys {
		if err := f(k, clone(m[k])); err != nil {
			if errors.Is(err, ErrStopScan) {
				return nil
			}
			return err
		}
	}
	return nil
}

func (tx *memTx) DeletePrefix(prefix string) error {
	if err := tx.writeable(); err != nil {
		return err
	}
	for k := range tx.m {
		if strings.HasPrefix(k, prefix) {
			delete(tx.m, k)
		}
	}
	return nil
}
