package sessiontest

import (
	"context"
	"sync"

	"mellium.im/omemo/store"
)

// HookStore is a store.Store wrapper that calls a hook before every read
// and write inside transactions, so that a test can force an interleaving
// that is otherwise a matter of luck: pause a read transaction after its
// snapshot was taken while another goroutine commits, fail or slow one
// particular write, count what an operation reads. Everything else passes
// through to the wrapped store. The hooks run in the goroutine of the
// transaction; they must be safe for concurrent use.
type HookStore struct {
	store.Store
	// OnBegin, if set, is called at the start of every transaction
	// function (after a read transaction's snapshot was taken), with
	// whether it is a write transaction.
	OnBegin func(write bool)
	// OnGet, if set, is called before each Get, with whether the
	// transaction is a write transaction (Update) and the key.
	OnGet func(write bool, key string)
	// OnPut, if set, is called before each Put, Delete and DeletePrefix
	// with the key (or prefix). A non-nil error is returned instead of
	// performing it.
	OnPut func(key string) error
}

// View implements store.Store.
func (s *HookStore) View(ctx context.Context, f func(store.Tx) error) error {
	return s.Store.View(ctx, func(tx store.Tx) error {
		if s.OnBegin != nil {
			s.OnBegin(false)
		}
		return f(&hookTx{Tx: tx, s: s})
	})
}

// Update implements store.Store.
func (s *HookStore) Update(ctx context.Context, f func(store.Tx) error) error {
	return s.Store.Update(ctx, func(tx store.Tx) error {
		if s.OnBegin != nil {
			s.OnBegin(true)
		}
		return f(&hookTx{Tx: tx, s: s, write: true})
	})
}

type hookTx struct {
	store.Tx
	s     *HookStore
	write bool
}

func (t *hookTx) Get(key string) ([]byte, error) {
	if t.s.OnGet != nil {
		t.s.OnGet(t.write, key)
	}
	return t.Tx.Get(key)
}

func (t *hookTx) Put(key string, value []byte) error {
	if err := t.before(key); err != nil {
		return err
	}
	return t.Tx.Put(key, value)
}

func (t *hookTx) Delete(key string) error {
	if err := t.before(key); err != nil {
		return err
	}
	return t.Tx.Delete(key)
}

func (t *hookTx) DeletePrefix(prefix string) error {
	if err := t.before(prefix); err != nil {
		return err
	}
	return t.Tx.DeletePrefix(prefix)
}

func (t *hookTx) before(key string) error {
	if t.s.OnPut != nil {
		return t.s.OnPut(key)
	}
	return nil
}

// Pause is a one-shot rendezvous for hooks: the first call of Wait blocks
// (and closes Paused) until Resume is called; later calls return at once.
// A test arms it in a hook, waits for Paused, does what must happen in the
// middle, then calls Resume.
type Pause struct {
	once    sync.Once
	paused  chan struct{}
	resumed chan struct{}
	resume  sync.Once
}

// NewPause returns an armed Pause.
func NewPause() *Pause {
	return &Pause{paused: make(chan struct{}), resumed: make(chan struct{})}
}

// Wait blocks the first caller until Resume.
func (p *Pause) Wait() {
	first := false
	p.once.Do(func() { first = true })
	if !first {
		return
	}
	close(p.paused)
	<-p.resumed
}

// Paused is closed once the first caller waits.
func (p *Pause) Paused() <-chan struct{} { return p.paused }

// Resume lets the waiting caller (and every later one) go on.
func (p *Pause) Resume() { p.resume.Do(func() { close(p.resumed) }) }
