// Package lifecycle tracks whether a store is closed and how many of its
// transactions are running, so that closing it can refuse new
// transactions, wake the ones waiting for their turn (Closing) and wait for
// the running ones. The stores of package store and store/postgres share
// it.
package lifecycle // import "mellium.im/omemo/internal/lifecycle"

import "sync"

// L is the lifecycle of one store. Call Init before use.
type L struct {
	mu      sync.Mutex
	cond    sync.Cond
	closed  bool
	active  int
	closing chan struct{}
}

// Init prepares l.
func (l *L) Init() {
	l.cond.L = &l.mu
	l.closing = make(chan struct{})
}

// Enter registers a running transaction. It reports false, registering
// nothing, once Close was called.
func (l *L) Enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.active++
	return true
}

// Leave ends a transaction registered by Enter.
func (l *L) Leave() {
	l.mu.Lock()
	l.active--
	if l.active == 0 {
		l.cond.Broadcast()
	}
	l.mu.Unlock()
}

// Closing is closed by the first Close: a transaction waiting for its turn
// gives up when it is.
func (l *L) Closing() <-chan struct{} { return l.closing }

// Close marks the store closed and waits for the running transactions,
// also when it is not the first call, so that every Close returns only once
// the store is idle. It reports whether this was the first call.
func (l *L) Close() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	first := !l.closed
	if first {
		l.closed = true
		close(l.closing)
	}
	for l.active > 0 {
		l.cond.Wait()
	}
	return first
}
