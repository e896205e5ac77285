package store

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
)

// Memory is an in-memory [Store] with the same transactional semantics as
// the persistent store, except durability: its contents are lost when the
// process exits. It is meant for tests and ephemeral clients.
//
// Each committed state is an immutable, persistent (path-copying) treap,
// ordered by key. A read-only transaction works on the tree that was
// current when it started (a consistent snapshot, without holding any
// lock). A read-write transaction copies only the nodes on the paths to the
// keys it changes (each node at most once per transaction) and publishes
// its new root on commit, so a rolled-back transaction leaves no trace and
// nothing it built is reachable from a committed state. A write costs
// O(log n) and a commit O(1), whatever the number n of keys; a Scan costs
// O(log n) plus the keys it visits.
type Memory struct {
	lc    lifecycle
	wlock writeLock
	seed  maphash.Seed // treap priorities; random, so that keys chosen by a peer cannot unbalance the tree

	mu   sync.RWMutex // guards root
	root *node        // current committed state; its nodes are never mutated

	gen uint64 // generation of the last read-write transaction; guarded by wlock

	counters
	faults

	// owner and name are set for the store of an account of a
	// MemoryAccounts, to which Close hands the state back.
	owner *MemoryAccounts
	name  string
}

// node is a treap node: a binary search tree by key and a max-heap by prio.
// A node belongs to the transaction whose generation it carries and may be
// modified in place by that transaction only; once committed (or reachable
// from a committed root) it is immutable.
type node struct {
	key         string
	val         []byte // never modified or handed out; Get and Scan copy it
	prio        uint64
	gen         uint64
	left, right *node
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return newMemory(maphash.MakeSeed()) }

func newMemory(seed maphash.Seed) *Memory {
	m := &Memory{
		wlock: make(writeLock, 1),
		seed:  seed,
	}
	m.lc.init()
	return m
}

func (s *Memory) snapshot() *node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.root
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
	if err := s.at(faultBegin); err != nil {
		return err
	}
	tx := &memTx{root: s.snapshot()}
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
	if err := s.at(faultBegin); err != nil {
		return err
	}

	s.gen++
	base := s.snapshot()
	tx := &memTx{txState: txState{writable: true}, root: base, gen: s.gen, seed: s.seed, faults: &s.faults}
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
	if err := s.at(faultCommit); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	if tx.root != base {
		s.mu.Lock()
		s.root = tx.root
		s.mu.Unlock()
	}
	committed = true
	s.commits.Add(1)
	return nil
}

// Close implements [Store.Close]. It waits for running transactions and
// drops the contents (for the store of an account of a [MemoryAccounts],
// it releases the account, whose contents are kept).
func (s *Memory) Close() error {
	if !s.lc.close() {
		return nil
	}
	s.mu.Lock()
	root := s.root
	s.root = nil
	s.mu.Unlock()
	if s.owner != nil {
		s.owner.release(s, root)
	}
	return nil
}

// Stats returns the store's counters.
func (s *Memory) Stats() Stats { return s.stats() }

type memTx struct {
	txState
	root   *node  // the transaction's current state
	gen    uint64 // generation of a read-write transaction, 0 for a View
	seed   maphash.Seed
	faults *faults // nil for a View
}

func (tx *memTx) Get(key string) ([]byte, error) {
	if tx.done {
		return nil, ErrTxDone
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	for n := tx.root; n != nil; {
		switch {
		case key < n.key:
			n = n.left
		case key > n.key:
			n = n.right
		default:
			return clone(n.val), nil
		}
	}
	return nil, notFound(key)
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
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	tx.root = tx.insert(tx.root, key, clone(value), maphash.String(tx.seed, key))
	return nil
}

func (tx *memTx) Delete(key string) error {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	tx.root, _ = tx.remove(tx.root, key)
	return nil
}

func (tx *memTx) Scan(prefix string, f func(key string, value []byte) error) error {
	if tx.done {
		return ErrTxDone
	}
	// The tree cannot change while the scan runs: writes fail meanwhile.
	tx.scanning++
	defer func() { tx.scanning-- }()
	_, err := walk(tx.root, prefix, func(n *node) error { return f(n.key, clone(n.val)) })
	if errors.Is(err, ErrStopScan) {
		return nil
	}
	return err
}

func (tx *memTx) DeletePrefix(prefix string) error {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	if prefix == "" {
		tx.root = nil
		return nil
	}
	var keys []string
	_, _ = walk(tx.root, prefix, func(n *node) error {
		keys = append(keys, n.key)
		return nil
	})
	for _, k := range keys {
		tx.root, _ = tx.remove(tx.root, k)
	}
	return nil
}

// own returns n itself if the transaction may modify it, else a copy that
// it may modify.
func (tx *memTx) own(n *node) *node {
	if n.gen == tx.gen {
		return n
	}
	c := *n
	c.gen = tx.gen
	return &c
}

// insert stores val under key in the subtree n and returns the new subtree
// root, which the transaction owns.
func (tx *memTx) insert(n *node, key string, val []byte, prio uint64) *node {
	if n == nil {
		return &node{key: key, val: val, prio: prio, gen: tx.gen}
	}
	switch {
	case key < n.key:
		l := tx.insert(n.left, key, val, prio)
		n = tx.own(n)
		n.left = l
		if l.prio > n.prio { // rotate right; both nodes are owned
			n.left, l.right = l.right, n
			return l
		}
	case key > n.key:
		r := tx.insert(n.right, key, val, prio)
		n = tx.own(n)
		n.right = r
		if r.prio > n.prio { // rotate left
			n.right, r.left = r.left, n
			return r
		}
	default:
		n = tx.own(n)
		n.val = val
	}
	return n
}

// remove deletes key from the subtree n; it reports whether key was there
// (if not, n is returned unchanged and nothing is copied).
func (tx *memTx) remove(n *node, key string) (*node, bool) {
	if n == nil {
		return nil, false
	}
	switch {
	case key < n.key:
		l, ok := tx.remove(n.left, key)
		if !ok {
			return n, false
		}
		n = tx.own(n)
		n.left = l
	case key > n.key:
		r, ok := tx.remove(n.right, key)
		if !ok {
			return n, false
		}
		n = tx.own(n)
		n.right = r
	default:
		return tx.merge(n.left, n.right), true
	}
	return n, true
}

// merge joins two subtrees whose keys are all smaller in a than in b.
func (tx *memTx) merge(a, b *node) *node {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a = tx.own(a)
		a.right = tx.merge(a.right, b)
		return a
	default:
		b = tx.own(b)
		b.left = tx.merge(a, b.left)
		return b
	}
}

// walk calls f, in key order, for every node of the subtree n whose key
// has the prefix. It stops at the first error, and reports whether the
// range of the prefix was left (so that callers stop too).
func walk(n *node, prefix string, f func(*node) error) (bool, error) {
	for n != nil {
		if n.key >= prefix {
			// Keys with the prefix are a contiguous range starting at
			// prefix: the left subtree may hold some of them.
			if stop, err := walk(n.left, prefix, f); stop || err != nil {
				return stop, err
			}
			if !strings.HasPrefix(n.key, prefix) {
				return true, nil // past the range
			}
			if err := f(n); err != nil {
				return true, err
			}
		}
		n = n.right
	}
	return false, nil
}

// MemoryAccounts is an in-memory [Accounts]: the state of each account is
// kept in memory like a [Memory] store's, and lost when the process exits.
// It is meant for tests and for gateways that keep no state.
//
// The Store of an account is a *Memory, whose Close releases the account
// and keeps its state for the next Account. Accounts are independent
// stores: transactions of different accounts run concurrently. An
// account that is open costs a few hundred bytes besides its keys; one
// that is not costs its keys and a map entry, and an empty one nothing.
type MemoryAccounts struct {
	seed maphash.Seed // shared by the accounts' trees

	mu     sync.Mutex
	closed bool
	held   map[string]*Memory   // the open accounts
	idle   map[string]memRecord // the state of the other non-empty accounts
}

// memRecord is the state of an account that is not open: its tree, and
// the generation of its last transaction, which the next transaction on
// the tree must exceed (nodes of the current generation are modified in
// place).
type memRecord struct {
	root *node
	gen  uint64
}

// NewMemoryAccounts returns an empty in-memory Accounts.
func NewMemoryAccounts() *MemoryAccounts {
	return &MemoryAccounts{
		seed: maphash.MakeSeed(),
		held: map[string]*Memory{},
		idle: map[string]memRecord{},
	}
}

// Account implements [Accounts.Account]. It never waits: an account that
// is open fails at once with ErrLocked.
func (a *MemoryAccounts) Account(ctx context.Context, name string) (Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckAccountName(name); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	if _, ok := a.held[name]; ok {
		return nil, fmt.Errorf("%w: the account is open", ErrLocked)
	}
	r := a.idle[name]
	delete(a.idle, name)
	m := newMemory(a.seed)
	m.root, m.gen = r.root, r.gen
	m.owner, m.name = a, name
	a.held[name] = m
	return m, nil
}

// release takes back the state of an account whose store was closed.
func (a *MemoryAccounts) release(m *Memory, root *node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held[m.name] == m {
		delete(a.held, m.name)
	}
	if !a.closed && root != nil {
		a.idle[m.name] = memRecord{root: root, gen: m.gen}
	}
}

// Close implements [Accounts.Close]: it closes the open accounts and drops
// the state of all of them.
func (a *MemoryAccounts) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	open := make([]*Memory, 0, len(a.held))
	for _, m := range a.held {
		open = append(open, m)
	}
	a.idle = nil
	a.mu.Unlock()
	for _, m := range open {
		m.Close()
	}
	return nil
}
