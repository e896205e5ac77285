package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/store"
)

// errInjected is what the wrapped transactions of testInjectedFailures fail
// with.
var errInjected = errors.New("storetest: injected failure")

// failTx makes its failAt-th write fail with errInjected, without passing
// it to the store.
type failTx struct {
	store.Tx
	writes, failAt int
	failed         bool
}

func (tx *failTx) write() error {
	tx.writes++
	if tx.writes == tx.failAt {
		tx.failed = true
		return errInjected
	}
	return nil
}

func (tx *failTx) Put(k string, v []byte) error {
	if err := tx.write(); err != nil {
		return err
	}
	return tx.Tx.Put(k, v)
}

func (tx *failTx) Delete(k string) error {
	if err := tx.write(); err != nil {
		return err
	}
	return tx.Tx.Delete(k)
}

func (tx *failTx) DeletePrefix(p string) error {
	if err := tx.write(); err != nil {
		return err
	}
	return tx.Tx.DeletePrefix(p)
}

// model is the expected state of a store.
type model map[string]string

func (m model) clone() model {
	c := make(model, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func (m model) dump(prefix string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		if strings.HasPrefix(k, prefix) {
			fmt.Fprintf(&b, "%q=%q\n", k, m[k])
		}
	}
	return b.String()
}

func scanDump(tx store.Tx, prefix string) (string, error) {
	var b strings.Builder
	err := tx.Scan(prefix, func(k string, v []byte) error {
		fmt.Fprintf(&b, "%q=%q\n", k, v)
		return nil
	})
	return b.String(), err
}

// How a transaction of testInjectedFailures ends.
const (
	endCommit     = iota // f returns nil
	endFailWrite         // a write fails and f returns its error
	endFailReturn        // f returns an error after its last write
	endPanic             // f panics after some writes
	endCancel            // ctx is cancelled after some writes, f returns nil
	endKinds
)

// testInjectedFailures runs random transactions that end in random ways
// (commit, a failing write, an error, a panic, a cancelled context) after
// random writes, and checks after every transaction that the store holds
// exactly the state of the transactions that committed, and inside the
// transactions that reads see the transaction's own writes.
func testInjectedFailures(t *testing.T, s store.Store) {
	rng := newRand(3)
	committed := model{}
	before, _ := stats(s)
	var commits, rollbacks uint64
	const txs = 120
	for i := range txs {
		end := endCommit
		if i%2 == 1 { // half of them commit
			end = 1 + rng.IntN(endKinds-1)
		}
		nops := 1 + rng.IntN(12)
		stopAt := 1 + rng.IntN(nops) // the op at which a failure happens
		pending := committed.clone()
		ctx, cancel := context.WithCancel(bg)
		var ftx *failTx
		ran := func() error {
			return s.Update(ctx, func(tx store.Tx) error {
				ftx = &failTx{Tx: tx}
				for op := 1; op <= nops; op++ {
					if op == stopAt {
						switch end {
						case endFailWrite:
							// The next write fails (if there is one).
							ftx.failAt = ftx.writes + 1
						case endPanic:
							panic(errInjected)
						case endCancel:
							cancel()
						}
					}
					var err error
					switch r := rng.IntN(100); {
					case r < 55:
						k := randomKey(rng, 4)
						v := strconv.Itoa(rng.IntN(1000))
						if rng.IntN(10) == 0 {
							v = ""
						}
						if err = ftx.Put(k, []byte(v)); err == nil {
							pending[k] = v
						}
					case r < 80:
						k := randomKey(rng, 4)
						if keys := sortedKeys(pending); len(keys) > 0 && rng.IntN(2) == 0 {
							k = keys[rng.IntN(len(keys))]
						}
						if err = ftx.Delete(k); err == nil {
							delete(pending, k)
						}
					case r < 88:
						p := randomKey(rng, 2)
						if err = ftx.DeletePrefix(p); err == nil {
							for k := range pending {
								if strings.HasPrefix(k, p) {
									delete(pending, k)
								}
							}
						}
					default:
						// Reads see the transaction's own writes.
						p := randomKey(rng, 1)
						got, err := scanDump(ftx, p)
						if err != nil {
							return err
						}
						if w := pending.dump(p); got != w {
							return fmt.Errorf("Scan(%q) inside the transaction = %q, want %q", p, got, w)
						}
						k := randomKey(rng, 3)
						v, err := ftx.Get(k)
						pv, ok := pending[k]
						switch {
						case ok && (err != nil || string(v) != pv):
							return fmt.Errorf("Get(%q) inside the transaction = %q, %v; want %q", k, v, err, pv)
						case !ok && !errors.Is(err, store.ErrNotFound):
							return fmt.Errorf("Get(%q) inside the transaction = %q, %v; want ErrNotFound", k, v, err)
						}
					}
					if err != nil {
						return err
					}
				}
				if end == endFailReturn {
					return fmt.Errorf("wrapped: %w", errInjected)
				}
				return nil
			})
		}
		var err error
		r, panicked := catch(func() { err = ran() })
		cancel()
		if end == endFailWrite && !ftx.failed {
			end = endCommit // only reads after stopAt
		}
		switch {
		case end == endPanic:
			if !panicked || r != errInjected {
				t.Fatalf("transaction %d: panicked %v with %v, want the injected panic", i, panicked, r)
			}
		case panicked:
			panic(r)
		case end == endCommit:
			if err != nil {
				t.Fatalf("transaction %d: %v", i, err)
			}
			committed = pending
		case end == endCancel:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("transaction %d: Update cancelled during f = %v, want context.Canceled", i, err)
			}
		case end == endFailWrite:
			if err != errInjected {
				t.Fatalf("transaction %d: Update = %v, want the failed write's error unchanged", i, err)
			}
		default:
			if !errors.Is(err, errInjected) {
				t.Fatalf("transaction %d: Update = %v, want the function's error", i, err)
			}
		}
		if end == endCommit {
			commits++
		} else {
			rollbacks++
		}
		if got, w := dump(t, s), committed.dump(""); got != w {
			t.Fatalf("transaction %d (end %d after %d of %d ops): store holds\n%s\nwant\n%s", i, end, stopAt, nops, got, w)
		}
	}
	wantStats(t, s, before, commits, rollbacks)
}

// testBackendFaults simulates failures of the store's backend through
// [Injector].
func testBackendFaults(t *testing.T, s store.Store) {
	inj, ok := s.(Injector)
	if !ok {
		t.Skip("the store does not implement storetest.Injector")
	}
	errFault := errors.New("storetest: injected backend fault")
	put(t, s, "k", "v", "p/1", "1", "p/2", "2")
	before := dump(t, s)
	st, _ := stats(s)
	var rollbacks uint64

	// A transaction that cannot start does not call its function.
	inj.Inject(FailBegin, errFault)
	called := false
	err := s.Update(bg, func(tx store.Tx) error { called = true; return tx.Put("k", []byte("changed")) })
	if !errors.Is(err, errFault) || called {
		t.Fatalf("Update with a failing begin = %v (called %v), want the fault", err, called)
	}
	inj.Inject(FailBegin, errFault)
	err = s.View(bg, func(tx store.Tx) error { called = true; return nil })
	if !errors.Is(err, errFault) || called {
		t.Fatalf("View with a failing begin = %v (called %v), want the fault", err, called)
	}
	if got := dump(t, s); got != before {
		t.Fatalf("failed begin changed the store:\n%s", got)
	}
	// Rollbacks only count transactions that started: the fault may or
	// may not count as one.
	if got, ok := stats(s); ok && got.Rollbacks > st.Rollbacks {
		rollbacks = got.Rollbacks - st.Rollbacks
	}

	// A failing commit changes nothing, and the store goes on working.
	inj.Inject(FailCommit, errFault)
	err = s.Update(bg, func(tx store.Tx) error {
		called = true
		for _, op := range []func() error{
			func() error { return tx.Put("k", []byte("changed")) },
			func() error { return tx.Put("new", []byte("1")) },
			func() error { return tx.Delete("p/1") },
			func() error { return tx.DeletePrefix("p/") },
		} {
			if err := op(); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, errFault) || !called {
		t.Fatalf("Update with a failing commit = %v (called %v), want the fault", err, called)
	}
	rollbacks++
	if got := dump(t, s); got != before {
		t.Fatalf("failed commit changed the store:\n%s", got)
	}
	wantStats(t, s, st, 0, rollbacks)
	put(t, s, "after", "commit")
	want(t, s, "after", "commit")
	before = dump(t, s)

	// A failing write returns the fault; if f returns it, nothing changes.
	writes := map[string]func(store.Tx) error{
		"Put":          func(tx store.Tx) error { return tx.Put("k", []byte("changed")) },
		"Put new":      func(tx store.Tx) error { return tx.Put("new", []byte("x")) },
		"Delete":       func(tx store.Tx) error { return tx.Delete("p/1") },
		"DeletePrefix": func(tx store.Tx) error { return tx.DeletePrefix("p/") },
	}
	for name, w := range writes {
		err := s.Update(bg, func(tx store.Tx) error {
			// A write before the failing one is rolled back too.
			if err := tx.Put("first", []byte("1")); err != nil {
				return err
			}
			inj.Inject(FailWrite, errFault)
			err := w(tx)
			if !errors.Is(err, errFault) {
				return fmt.Errorf("%s with a failing backend = %v, want the fault", name, err)
			}
			return err
		})
		if !errors.Is(err, errFault) {
			t.Fatalf("Update with a failing %s = %v", name, err)
		}
		rollbacks++
		if got := dump(t, s); got != before {
			t.Fatalf("failed %s changed the store:\n%s", name, got)
		}
	}
	wantStats(t, s, st, 1, rollbacks)

	// If f ignores the failed write and returns nil, the store either
	// commits the other writes without the failed one, or fails the
	// whole Update (a backend that aborts a transaction on error); it
	// never commits the failed write.
	inj.Inject(FailWrite, errFault)
	err = s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("ignored", []byte("x")); !errors.Is(err, errFault) {
			return fmt.Errorf("Put with a failing backend = %v, want the fault", err)
		}
		return tx.Put("kept", []byte("y"))
	})
	switch {
	case err == nil:
		wantMissing(t, s, "ignored")
		want(t, s, "kept", "y")
	default:
		if got := dump(t, s); got != before {
			t.Fatalf("failed Update (%v) changed the store:\n%s", err, got)
		}
	}
	// The store goes on working.
	put(t, s, "final", "1")
	want(t, s, "final", "1")
}
