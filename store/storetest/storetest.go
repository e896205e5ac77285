// Package storetest is a conformance suite for implementations of
// [store.Store] and [store.Accounts].
//
// [Run] checks, as subtests, everything the Store contract of package store
// promises: the semantics of Get, Put, Delete, Scan and DeletePrefix, the
// atomicity and isolation of transactions, the key and value limits, the
// life cycle (ErrTxDone, ErrClosed) and context handling, and the
// behaviour under injected failures. [RunAccounts] checks the leases and the
// isolation of the accounts of a [store.Accounts], and runs Run on its
// account stores. Every implementation in this module runs the same suite
// from its tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			return mystore.New(...)
//		})
//	}
//
// The suite only uses the public API of package store and the standard
// library. It takes a few seconds, most of it in the concurrency tests,
// and is clean under the race detector.
//
// # Injected failures
//
// Two kinds of failure are injected. The first needs nothing from the
// store: the suite wraps its transactions so that a write fails, the
// transaction function returns an error half-way or panics, or its context
// is cancelled, at random points of random transactions, and compares the
// store after each transaction with a model. The second simulates failures
// of the store's backend (starting a transaction, a write, the commit), and
// only runs if the store under test implements [Injector]; stores usually
// do so through a test-only wrapper.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/store"
)

// Fault is a failure of a store's backend that an [Injector] can simulate.
type Fault int

const (
	// FailBegin makes starting a transaction fail: View or Update returns
	// the error without calling its function.
	FailBegin Fault = iota + 1
	// FailWrite makes a Put, Delete or DeletePrefix fail in the backend
	// (after the checks of its arguments, which still return their own
	// errors).
	FailWrite
	// FailCommit makes the commit of an Update fail after its function
	// returned nil: Update returns the error and nothing is changed.
	FailCommit
)

// String names the fault.
func (f Fault) String() string {
	switch f {
	case FailBegin:
		return "begin"
	case FailWrite:
		return "write"
	case FailCommit:
		return "commit"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// Injector is an optional interface of the stores given to [Run]: a store
// that implements it can simulate failures of its backend, and Run then
// checks that each failure is reported (wrapping the injected error) and
// leaves the store unchanged and usable.
type Injector interface {
	// Inject makes the next occurrence of fault in this store fail with
	// err (an error wrapping it); later occurrences succeed again. Run
	// calls it while no other goroutine uses the store, sometimes from
	// inside a transaction function (to make a later write of the same
	// transaction fail).
	Inject(fault Fault, err error)
}

// Statser is the optional Stats method of the stores of package store.
// If the store under test has it, Run checks the counters too.
type Statser interface {
	Stats() store.Stats
}

var bg = context.Background()

// Run runs the conformance suite on stores returned by open. open is
// called once by each subtest, possibly from parallel subtests, and must
// return a new, empty store; the subtests close their store (closing is
// part of what they test), and open may register further clean-up with
// t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	run(t, open, true)
}

// test is a subtest of Run.
type test struct {
	name string
	f    func(t *testing.T, s store.Store)
}

var tests = []test{
	{"GetPutDelete", testGetPutDelete},
	{"EmptyValues", testEmptyValues},
	{"Copies", testCopies},
	{"ScanOrder", testScanOrder},
	{"ScanRandom", testScanRandom},
	{"ScanControl", testScanControl},
	{"ScanInUpdate", testScanInUpdate},
	{"DeletePrefix", testDeletePrefix},
	{"ReadOnlyView", testReadOnlyView},
	{"Atomicity", testAtomicity},
	{"PanicInView", testPanicInView},
	{"Context", testContext},
	{"Isolation", testIsolation},
	{"Serialised", testSerialised},
	{"Concurrent", testConcurrent},
	{"TxDone", testTxDone},
	{"KeyLimits", testKeyLimits},
	{"LargeValues", testLargeValues},
	{"Close", testClose},
	{"InjectedFailures", testInjectedFailures},
	{"BackendFaults", testBackendFaults},
}

// run is Run, with the subtests in parallel or one after the other (for
// stores that share a backend, where a test that holds a transaction open
// on purpose could stall another one).
func run(t *testing.T, open func(t *testing.T) store.Store, parallel bool) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if parallel {
				t.Parallel()
			}
			s := open(t)
			t.Cleanup(func() { s.Close() })
			tc.f(t, s)
		})
	}
}

// Helpers. They fail the test on unexpected errors.

func put(t testing.TB, s store.Store, kv ...string) {
	t.Helper()
	if err := s.Update(bg, func(tx store.Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Put(kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// dump returns the whole committed state as "k=v" lines.
func dump(t testing.TB, s store.Store) string {
	t.Helper()
	var d string
	if err := s.View(bg, func(tx store.Tx) error {
		var err error
		d, err = dumpTx(tx)
		return err
	}); err != nil {
		t.Fatalf("View: %v", err)
	}
	return d
}

func dumpTx(tx store.Tx) (string, error) {
	var b strings.Builder
	err := tx.Scan("", func(k string, v []byte) error {
		fmt.Fprintf(&b, "%q=%q\n", k, v)
		return nil
	})
	return b.String(), err
}

func get(t testing.TB, s store.Store, key string) (string, error) {
	t.Helper()
	var v []byte
	err := s.View(bg, func(tx store.Tx) error {
		var err error
		v, err = tx.Get(key)
		return err
	})
	return string(v), err
}

// want fails the test unless key holds value.
func want(t testing.TB, s store.Store, key, value string) {
	t.Helper()
	if v, err := get(t, s, key); err != nil || v != value {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, v, err, value)
	}
}

// wantMissing fails the test unless key is absent.
func wantMissing(t testing.TB, s store.Store, key string) {
	t.Helper()
	if v, err := get(t, s, key); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, %v; want ErrNotFound", key, v, err)
	}
}

func stats(s store.Store) (store.Stats, bool) {
	if st, ok := s.(Statser); ok {
		return st.Stats(), true
	}
	return store.Stats{}, false
}

// wantStats checks that the counters grew by commits and rollbacks since
// before, if the store has counters.
func wantStats(t testing.TB, s store.Store, before store.Stats, commits, rollbacks uint64) {
	t.Helper()
	got, ok := stats(s)
	if !ok {
		return
	}
	if got.Commits != before.Commits+commits || got.Rollbacks != before.Rollbacks+rollbacks {
		t.Errorf("Stats = %+v, before %+v; want +%d commits, +%d rollbacks", got, before, commits, rollbacks)
	}
}

// catch runs f and returns what it panicked with, if it did.
func catch(f func()) (r any, panicked bool) {
	defer func() {
		if panicked {
			r = recover()
		}
	}()
	panicked = true
	f()
	panicked = false
	return nil, false
}

func testGetPutDelete(t *testing.T, s store.Store) {
	_, err := get(t, s, "missing")
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get of a missing key = %v, want ErrNotFound", err)
	}
	err = s.Update(bg, func(tx store.Tx) error {
		if _, err := tx.Get("k"); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("Get of a missing key in Update = %v, want ErrNotFound", err)
		}
		if err := tx.Put("k", []byte("v1")); err != nil {
			return err
		}
		// Reads see the transaction's own writes.
		if v, err := tx.Get("k"); err != nil || string(v) != "v1" {
			return fmt.Errorf("Get in tx = %q, %v", v, err)
		}
		if err := tx.Put("k", []byte("v2")); err != nil {
			return err
		}
		if v, err := tx.Get("k"); err != nil || string(v) != "v2" {
			return fmt.Errorf("Get after overwrite in tx = %q, %v", v, err)
		}
		if err := tx.Put("gone", []byte("x")); err != nil {
			return err
		}
		if err := tx.Delete("gone"); err != nil {
			return err
		}
		if _, err := tx.Get("gone"); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("Get of a key deleted in the tx = %v", err)
		}
		// Deleting a missing key is not an error, twice neither.
		if err := tx.Delete("gone"); err != nil {
			return fmt.Errorf("second Delete = %v", err)
		}
		return tx.Delete("never-existed")
	})
	if err != nil {
		t.Fatal(err)
	}
	want(t, s, "k", "v2")
	wantMissing(t, s, "gone")
	if got, w := dump(t, s), "\"k\"=\"v2\"\n"; got != w {
		t.Fatalf("state = %q, want %q", got, w)
	}

	// Overwrite and delete in later transactions.
	put(t, s, "k", "v3", "k2", "x")
	want(t, s, "k", "v3")
	if err := s.Update(bg, func(tx store.Tx) error { return tx.Delete("k") }); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, "k")
	want(t, s, "k2", "x")
	// A deleted key can be stored again.
	put(t, s, "k", "v4")
	want(t, s, "k", "v4")
}

func testEmptyValues(t *testing.T, s store.Store) {
	put(t, s, "a", "x")
	if err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("nil", nil); err != nil {
			return err
		}
		if err := tx.Put("empty", []byte{}); err != nil {
			return err
		}
		// A key overwritten with an empty value exists.
		if err := tx.Put("a", nil); err != nil {
			return err
		}
		for _, k := range []string{"nil", "empty", "a"} {
			if v, err := tx.Get(k); err != nil || v == nil || len(v) != 0 {
				return fmt.Errorf("Get(%q) in tx = %#v, %v; want non-nil empty", k, v, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.View(bg, func(tx store.Tx) error {
		for _, k := range []string{"nil", "empty", "a"} {
			v, err := tx.Get(k)
			if err != nil {
				return fmt.Errorf("Get(%q): %w", k, err)
			}
			if v == nil || len(v) != 0 {
				return fmt.Errorf("Get(%q) = %#v, want non-nil empty", k, v)
			}
		}
		n := 0
		if err := tx.Scan("", func(k string, v []byte) error {
			n++
			if len(v) != 0 {
				return fmt.Errorf("Scan: %q has %d bytes, want 0", k, len(v))
			}
			return nil
		}); err != nil {
			return err
		}
		if n != 3 {
			return fmt.Errorf("Scan visited %d keys with empty values, want 3", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func testCopies(t *testing.T, s store.Store) {
	buf := []byte("secret")
	var kept [][]byte
	err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("k", buf); err != nil {
			return err
		}
		buf[0] = 'X' // after Put, before commit
		v, err := tx.Get("k")
		if err != nil {
			return err
		}
		v[1] = 'X'
		kept = append(kept, v)
		v, err = tx.Get("k")
		if err != nil {
			return err
		}
		if string(v) != "secret" {
			return fmt.Errorf("value in tx %q was aliased", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	buf[2] = 'X'
	err = s.View(bg, func(tx store.Tx) error {
		v, err := tx.Get("k")
		if err != nil {
			return err
		}
		if string(v) != "secret" {
			return fmt.Errorf("stored value %q was aliased", v)
		}
		v[0] = 'Y'
		kept = append(kept, v)
		return tx.Scan("k", func(_ string, v []byte) error {
			v[0] = 'Z'
			kept = append(kept, v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	want(t, s, "k", "secret")
	// Slices kept from finished transactions stay valid and are not
	// changed by later writes (for a memory-mapped store, they must not
	// point into the map).
	for i := range 100 {
		put(t, s, "k", strings.Repeat(strconv.Itoa(i), 100), fmt.Sprintf("fill/%d", i), strings.Repeat("f", 500))
	}
	if err := s.Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("") }); err != nil {
		t.Fatal(err)
	}
	for i, w := range []string{"sXcret", "Yecret", "Zecret"} {
		if string(kept[i]) != w {
			t.Errorf("kept[%d] = %q, want %q", i, kept[i], w)
		}
	}
}

// scanKeys returns the keys (and values) Scan visits with prefix as
// "k=v,k=v".
func scanKeys(tx store.Tx, prefix string) (string, error) {
	var got []string
	err := tx.Scan(prefix, func(k string, v []byte) error {
		got = append(got, k+"="+string(v))
		return nil
	})
	return strings.Join(got, ","), err
}

func testScanOrder(t *testing.T, s store.Store) {
	// Prefixes of each other, bytes >= 0x80 (which sort after ASCII as
	// bytes, unlike in some collations), NUL, and numbers (which sort as
	// text).
	put(t, s, "a/2", "2", "a/10", "10", "b", "b", "a/1", "1", "a", "a", "ab", "ab",
		"a/\xff", "ff", "a/z", "z", "a/é", "e", "a/\x00", "0", "a/\x7f", "7f", "\xff\xff", "ffff", "\x00", "nul")
	err := s.View(bg, func(tx store.Tx) error {
		for _, c := range []struct{ prefix, want string }{
			{"", "\x00=nul,a=a,a/\x00=0,a/1=1,a/10=10,a/2=2,a/z=z,a/\x7f=7f,a/é=e,a/\xff=ff,ab=ab,b=b,\xff\xff=ffff"},
			{"a/", "a/\x00=0,a/1=1,a/10=10,a/2=2,a/z=z,a/\x7f=7f,a/é=e,a/\xff=ff"},
			{"a", "a=a,a/\x00=0,a/1=1,a/10=10,a/2=2,a/z=z,a/\x7f=7f,a/é=e,a/\xff=ff,ab=ab"},
			{"a/1", "a/1=1,a/10=10"},
			{"a/10", "a/10=10"},
			{"a/100", ""},
			{"a/\xc3", "a/é=e"},
			{"a/\xff", "a/\xff=ff"},
			{"\xff", "\xff\xff=ffff"},
			{"\xff\xff\xff", ""},
			{"\x00", "\x00=nul"},
			{"c", ""},
			{"a/3", ""},
			{"0", ""},
		} {
			got, err := scanKeys(tx, c.prefix)
			if err != nil {
				return err
			}
			if got != c.want {
				return fmt.Errorf("Scan(%q) = %q, want %q", c.prefix, got, c.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Keys compare as bytes, not as runes or with locale rules (which
	// would put "Z" after "a", or "é" next to "e").
	put(t, s, "p/Z", "p/Z", "p/a", "p/a", "p/\x00", "p/\x00", "p/é", "p/é", "p/\x7f", "p/\x7f", "p/~", "p/~")
	if err := s.View(bg, func(tx store.Tx) error {
		got, err := scanKeys(tx, "p/")
		if w := "p/\x00=p/\x00,p/Z=p/Z,p/a=p/a,p/~=p/~,p/\x7f=p/\x7f,p/é=p/é"; err == nil && got != w {
			err = fmt.Errorf("Scan(p/) = %q, want %q", got, w)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// keyAlphabet makes keys that are prefixes of each other and contain the
// bytes where orderings differ (NUL, '/', DEL, 0x80, 0xff, a two-byte
// UTF-8 sequence).
var keyAlphabet = []string{"a", "b", "/", "\x00", "\x7f", "\x80", "\xff", "é", "ab", "a/"}

func randomKey(rng *rand.Rand, maxParts int) string {
	var b strings.Builder
	for range 1 + rng.IntN(maxParts) {
		b.WriteString(keyAlphabet[rng.IntN(len(keyAlphabet))])
	}
	return b.String()
}

// testScanRandom compares Scan with a sorted model on random keys and
// prefixes.
func testScanRandom(t *testing.T, s store.Store) {
	rng := newRand(1)
	model := map[string]string{}
	if err := s.Update(bg, func(tx store.Tx) error {
		for i := range 400 {
			k := randomKey(rng, 5)
			v := strconv.Itoa(i)
			model[k] = v
			if err := tx.Put(k, []byte(v)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	keys := sortedKeys(model)
	if err := s.View(bg, func(tx store.Tx) error {
		for i := range 300 {
			prefix := ""
			if i > 0 {
				prefix = randomKey(rng, 3)
			}
			var w []string
			for _, k := range keys {
				if strings.HasPrefix(k, prefix) {
					w = append(w, k+"="+model[k])
				}
			}
			got, err := scanKeys(tx, prefix)
			if err != nil {
				return err
			}
			if got != strings.Join(w, ",") {
				return fmt.Errorf("Scan(%q) = %q, want %q", prefix, got, strings.Join(w, ","))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys) // Go compares strings byte-wise
	return keys
}

func testScanControl(t *testing.T, s store.Store) {
	put(t, s, "a/1", "1", "a/2", "2", "a/3", "3", "b", "b")
	sentinel := errors.New("sentinel")
	err := s.View(bg, func(tx store.Tx) error {
		n := 0
		if err := tx.Scan("a/", func(k string, v []byte) error {
			n++
			if n == 2 {
				return store.ErrStopScan
			}
			return nil
		}); err != nil || n != 2 {
			return fmt.Errorf("ErrStopScan: err %v after %d keys, want nil after 2", err, n)
		}
		n = 0
		if err := tx.Scan("a/", func(string, []byte) error { n++; return sentinel }); err != sentinel || n != 1 {
			return fmt.Errorf("callback error came back as %v after %d keys, want it unchanged after 1", err, n)
		}
		wrapped := fmt.Errorf("wrapped: %w", sentinel)
		if err := tx.Scan("a/", func(string, []byte) error { return wrapped }); err != wrapped {
			return fmt.Errorf("wrapped callback error came back as %v", err)
		}
		// Get and Scan work inside the callback.
		return tx.Scan("a/", func(k string, v []byte) error {
			got, err := tx.Get("b")
			if err != nil || string(got) != "b" {
				return fmt.Errorf("Get inside Scan = %q, %v", got, err)
			}
			inner, err := scanKeys(tx, "a/")
			if err != nil || inner != "a/1=1,a/2=2,a/3=3" {
				return fmt.Errorf("Scan inside Scan = %q, %v", inner, err)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}

	// Writes fail with ErrReadOnly while a Scan runs (also a nested one),
	// and work again once it has returned, however it returned.
	err = s.Update(bg, func(tx store.Tx) error {
		checkWrites := func(k string) error {
			if err := tx.Put("x", nil); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("Put during Scan = %v, want ErrReadOnly", err)
			}
			if err := tx.Delete(k); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("Delete during Scan = %v, want ErrReadOnly", err)
			}
			if err := tx.DeletePrefix("a"); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("DeletePrefix during Scan = %v, want ErrReadOnly", err)
			}
			return nil
		}
		if err := tx.Scan("a/", func(k string, v []byte) error {
			if err := checkWrites(k); err != nil {
				return err
			}
			return tx.Scan("b", func(string, []byte) error { return checkWrites(k) })
		}); err != nil {
			return err
		}
		if err := tx.Put("after/1", []byte("1")); err != nil {
			return fmt.Errorf("Put after Scan = %v", err)
		}
		if err := tx.Scan("a/", func(string, []byte) error { return store.ErrStopScan }); err != nil {
			return err
		}
		if err := tx.Put("after/2", []byte("2")); err != nil {
			return fmt.Errorf("Put after a stopped Scan = %v", err)
		}
		if err := tx.Scan("a/", func(string, []byte) error { return sentinel }); err != sentinel {
			return fmt.Errorf("Scan = %v, want sentinel", err)
		}
		if err := tx.Put("after/3", []byte("3")); err != nil {
			return fmt.Errorf("Put after a failed Scan = %v", err)
		}
		// A Scan over nothing also leaves the transaction writable.
		if err := tx.Scan("zzz", func(string, []byte) error { return sentinel }); err != nil {
			return fmt.Errorf("Scan of no keys = %v", err)
		}
		return tx.Delete("b")
	})
	if err != nil {
		t.Fatal(err)
	}
	wantMissing(t, s, "x")
	wantMissing(t, s, "b")
	want(t, s, "after/3", "3")
	want(t, s, "a/1", "1")
}

func testScanInUpdate(t *testing.T, s store.Store) {
	put(t, s, "a/1", "1", "a/2", "2", "a/z", "z", "b", "b")
	err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("a/0", []byte("0")); err != nil {
			return err
		}
		if err := tx.Put("a/2", []byte("two")); err != nil {
			return err
		}
		if err := tx.Delete("a/z"); err != nil {
			return err
		}
		got, err := scanKeys(tx, "a/")
		if err != nil {
			return err
		}
		if w := "a/0=0,a/1=1,a/2=two"; got != w {
			return fmt.Errorf("Scan in Update = %q, want %q", got, w)
		}
		if err := tx.DeletePrefix("a/"); err != nil {
			return err
		}
		if err := tx.Put("a/9", []byte("9")); err != nil {
			return err
		}
		got, err = scanKeys(tx, "")
		if err != nil {
			return err
		}
		if w := "a/9=9,b=b"; got != w {
			return fmt.Errorf("Scan after DeletePrefix in Update = %q, want %q", got, w)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, w := dump(t, s), "\"a/9\"=\"9\"\n\"b\"=\"b\"\n"; got != w {
		t.Fatalf("state = %q, want %q", got, w)
	}
}

func testDeletePrefix(t *testing.T, s store.Store) {
	var kv []string
	for i := range 300 {
		kv = append(kv, fmt.Sprintf("sessions/alice/%03d", i), "s")
	}
	kv = append(kv, "sessions/alice", "exact", "sessions/alicex/1", "other", "sessions/bob/1", "bob",
		"trust/alice/1", "t", "sessions/alice/\xff", "ff", "sessions/alice0", "zero")
	put(t, s, kv...)

	// A rolled-back DeletePrefix changes nothing.
	before := dump(t, s)
	errAbort := errors.New("abort")
	if err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.DeletePrefix(""); err != nil {
			return err
		}
		if err := tx.Scan("", func(string, []byte) error { return errors.New("a key is left") }); err != nil {
			return err
		}
		return errAbort
	}); err != errAbort {
		t.Fatalf("Update = %v, want errAbort", err)
	}
	if got := dump(t, s); got != before {
		t.Fatal("a rolled-back DeletePrefix changed the store")
	}

	if err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.DeletePrefix("sessions/alice/"); err != nil {
			return err
		}
		if _, err := tx.Get("sessions/alice/007"); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("Get after DeletePrefix in tx: %v", err)
		}
		// A key written after the DeletePrefix stays.
		if err := tx.Put("sessions/alice/new", []byte("n")); err != nil {
			return err
		}
		return tx.DeletePrefix("nothing/")
	}); err != nil {
		t.Fatal(err)
	}
	w := strings.Join([]string{
		`"sessions/alice"="exact"`,
		`"sessions/alice/new"="n"`,
		`"sessions/alice0"="zero"`,
		`"sessions/alicex/1"="other"`,
		`"sessions/bob/1"="bob"`,
		`"trust/alice/1"="t"`,
	}, "\n") + "\n"
	if got := dump(t, s); got != w {
		t.Fatalf("after DeletePrefix:\n%s\nwant:\n%s", got, w)
	}
	// A prefix equal to a whole key deletes it and the keys it prefixes.
	if err := s.Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("sessions/alice") }); err != nil {
		t.Fatal(err)
	}
	if got, w := dump(t, s), "\"sessions/bob/1\"=\"bob\"\n\"trust/alice/1\"=\"t\"\n"; got != w {
		t.Fatalf("after DeletePrefix(sessions/alice): %q, want %q", got, w)
	}
	if err := s.Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("") }); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, s); got != "" {
		t.Fatalf("DeletePrefix(\"\") left %q", got)
	}
	// The store is usable after being emptied.
	put(t, s, "k", "v")
	want(t, s, "k", "v")
}

func testReadOnlyView(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	errView := errors.New("from view")
	err := s.View(bg, func(tx store.Tx) error {
		if err := tx.Put("k", []byte("w")); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Put in View = %v, want ErrReadOnly", err)
		}
		if err := tx.Put("new", []byte("w")); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Put of a new key in View = %v, want ErrReadOnly", err)
		}
		if err := tx.Delete("k"); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("Delete in View = %v, want ErrReadOnly", err)
		}
		if err := tx.DeletePrefix(""); !errors.Is(err, store.ErrReadOnly) {
			return fmt.Errorf("DeletePrefix in View = %v, want ErrReadOnly", err)
		}
		if v, err := tx.Get("k"); err != nil || string(v) != "v" {
			return fmt.Errorf("Get after refused writes = %q, %v", v, err)
		}
		return errView
	})
	if err != errView {
		t.Fatalf("View = %v, want its function's error unchanged", err)
	}
	if got, w := dump(t, s), "\"k\"=\"v\"\n"; got != w {
		t.Fatalf("state = %q, want %q", got, w)
	}
}

func testAtomicity(t *testing.T, s store.Store) {
	put(t, s, "a", "1", "b", "1", "c/1", "1", "c/2", "2")
	before := dump(t, s)
	st, _ := stats(s)

	mutate := func(tx store.Tx) {
		for _, op := range []func() error{
			func() error { return tx.Put("a", []byte("2")) },
			func() error { return tx.Put("new", []byte("2")) },
			func() error { return tx.Delete("b") },
			func() error { return tx.DeletePrefix("c/") },
			func() error { return tx.Put("c/3", []byte("3")) },
		} {
			if err := op(); err != nil {
				t.Errorf("op: %v", err)
			}
		}
	}

	// f returns an error: it comes back unchanged, nothing is written.
	type myErr struct{ error }
	errBoom := &myErr{errors.New("boom")}
	err := s.Update(bg, func(tx store.Tx) error {
		mutate(tx)
		return fmt.Errorf("wrapped: %w", errBoom)
	})
	var me *myErr
	if !errors.As(err, &me) || me != errBoom || err.Error() != "wrapped: boom" {
		t.Fatalf("Update error = %v, want the function's error", err)
	}
	if got := dump(t, s); got != before {
		t.Fatalf("failed Update changed the store:\n%s", got)
	}

	// f panics: the panic propagates with its value, nothing is written.
	type panicValue struct{ n int }
	pv := &panicValue{42}
	r, panicked := catch(func() {
		s.Update(bg, func(tx store.Tx) error {
			mutate(tx)
			panic(pv)
		})
	})
	if !panicked || r != pv {
		t.Fatalf("Update of a panicking function: panicked %v with %v, want the panic value", panicked, r)
	}
	if got := dump(t, s); got != before {
		t.Fatalf("panicking Update changed the store:\n%s", got)
	}
	// The store is still usable (locks were released).
	put(t, s, "after", "panic")
	want(t, s, "after", "panic")

	// ctx done before commit: nothing is written.
	before = dump(t, s)
	ctx, cancel := context.WithCancel(bg)
	err = s.Update(ctx, func(tx store.Tx) error {
		mutate(tx)
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Update whose ctx was cancelled during f = %v, want context.Canceled", err)
	}
	if got := dump(t, s); got != before {
		t.Fatalf("cancelled Update changed the store:\n%s", got)
	}
	wantStats(t, s, st, 1, 3)
}

func testPanicInView(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	r, panicked := catch(func() {
		s.View(bg, func(tx store.Tx) error {
			if _, err := tx.Get("k"); err != nil {
				t.Error(err)
			}
			panic("in view")
		})
	})
	if !panicked || r != "in view" {
		t.Fatalf("View of a panicking function: panicked %v with %v", panicked, r)
	}
	// A panic inside a Scan callback propagates too.
	r, panicked = catch(func() {
		s.Update(bg, func(tx store.Tx) error {
			if err := tx.Put("k", []byte("changed")); err != nil {
				t.Error(err)
			}
			return tx.Scan("", func(string, []byte) error { panic("in scan") })
		})
	})
	if !panicked || r != "in scan" {
		t.Fatalf("Scan with a panicking callback: panicked %v with %v", panicked, r)
	}
	// Nothing leaked: both kinds of transaction still work, and Close does
	// not wait for a transaction that is gone.
	put(t, s, "k2", "v2")
	want(t, s, "k", "v")
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs after panicking transactions")
	}
}

func testContext(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	ctx, cancel := context.WithCancel(bg)
	cancel()
	called := false
	f := func(tx store.Tx) error { called = true; return tx.Put("k", []byte("changed")) }
	if err := s.Update(ctx, f); !errors.Is(err, context.Canceled) || called {
		t.Fatalf("Update(cancelled ctx) = %v, called %v; want context.Canceled, not called", err, called)
	}
	if err := s.View(ctx, func(store.Tx) error { called = true; return nil }); !errors.Is(err, context.Canceled) || called {
		t.Fatalf("View(cancelled ctx) = %v, called %v; want context.Canceled, not called", err, called)
	}
	ctx, cancel = context.WithDeadline(bg, time.Now().Add(-time.Second))
	defer cancel()
	if err := s.Update(ctx, f); !errors.Is(err, context.DeadlineExceeded) || called {
		t.Fatalf("Update(expired ctx) = %v, called %v; want context.DeadlineExceeded", err, called)
	}
	if err := s.View(ctx, func(store.Tx) error { called = true; return nil }); !errors.Is(err, context.DeadlineExceeded) || called {
		t.Fatalf("View(expired ctx) = %v, called %v; want context.DeadlineExceeded", err, called)
	}

	// Cancelled while f runs: no commit.
	ctx, cancel = context.WithCancel(bg)
	err := s.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put("k", []byte("changed")); err != nil {
			return err
		}
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Update cancelled during f = %v", err)
	}
	want(t, s, "k", "v")
	// A View whose ctx is cancelled while it runs completes: ctx only
	// matters before it starts.
	ctx, cancel = context.WithCancel(bg)
	if err := s.View(ctx, func(tx store.Tx) error {
		cancel()
		_, err := tx.Get("k")
		return err
	}); err != nil {
		t.Fatalf("View cancelled during f = %v", err)
	}

	// A writer waiting for its turn gives up when ctx is done.
	hold := make(chan struct{})
	holding := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.Update(bg, func(tx store.Tx) error { close(holding); <-hold; return nil })
	}()
	<-holding
	ctx, cancel = context.WithTimeout(bg, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	called = false
	err = s.Update(ctx, f)
	if !errors.Is(err, context.DeadlineExceeded) || called {
		t.Errorf("waiting Update = %v, called %v; want DeadlineExceeded", err, called)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("waiting Update took %v to notice its deadline", el)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want(t, s, "k", "v")
}

func testIsolation(t *testing.T, s store.Store) {
	put(t, s, "a", "1", "b", "1")

	// A View that started before an Update committed keeps seeing the
	// old state; an Update's uncommitted writes are invisible to Views.
	inView := make(chan struct{})
	updated := make(chan struct{})
	viewErr := make(chan error, 1)
	go func() {
		viewErr <- s.View(bg, func(tx store.Tx) error {
			a, err := tx.Get("a")
			if err != nil {
				return err
			}
			close(inView)
			select {
			case <-updated:
			case <-time.After(10 * time.Second):
				return errors.New("an Update did not complete while a View was open")
			}
			b, err := tx.Get("b")
			if err != nil {
				return err
			}
			if _, err := tx.Get("c"); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("View sees key c committed later: %v", err)
			}
			if string(a) != "1" || string(b) != "1" {
				return fmt.Errorf("View saw a=%s b=%s, want the snapshot 1/1", a, b)
			}
			if d, err := dumpTx(tx); err != nil || d != "\"a\"=\"1\"\n\"b\"=\"1\"\n" {
				return fmt.Errorf("Scan in the View saw %q (%v), want the snapshot", d, err)
			}
			return nil
		})
	}()
	<-inView

	inUpdate := make(chan struct{})
	release := make(chan struct{})
	updErr := make(chan error, 1)
	go func() {
		updErr <- s.Update(bg, func(tx store.Tx) error {
			for _, k := range []string{"a", "b", "c"} {
				if err := tx.Put(k, []byte("2")); err != nil {
					return err
				}
			}
			close(inUpdate)
			<-release
			return nil
		})
	}()
	<-inUpdate
	// While the Update is uncommitted, a new View sees the old state.
	if v, err := get(t, s, "a"); err != nil || v != "1" {
		t.Errorf("View during Update saw a=%q (%v), want 1", v, err)
	}
	wantMissing(t, s, "c")
	close(release)
	if err := <-updErr; err != nil {
		t.Fatal(err)
	}
	close(updated)
	if err := <-viewErr; err != nil {
		t.Fatal(err)
	}
	if got, w := dump(t, s), "\"a\"=\"2\"\n\"b\"=\"2\"\n\"c\"=\"2\"\n"; got != w {
		t.Fatalf("state = %q, want %q", got, w)
	}

	// A rolled-back Update is never visible, not even to a View that runs
	// while it is in progress.
	inUpdate = make(chan struct{})
	release = make(chan struct{})
	errAbort := errors.New("abort")
	go func() {
		updErr <- s.Update(bg, func(tx store.Tx) error {
			if err := tx.Put("a", []byte("3")); err != nil {
				return err
			}
			close(inUpdate)
			<-release
			return errAbort
		})
	}()
	<-inUpdate
	want(t, s, "a", "2")
	close(release)
	if err := <-updErr; err != errAbort {
		t.Fatalf("Update = %v, want errAbort", err)
	}
	want(t, s, "a", "2")
}

// testSerialised checks that the functions of concurrent Updates never
// overlap.
func testSerialised(t *testing.T, s store.Store) {
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Update(bg, func(tx store.Tx) error {
				in := inside.Add(1)
				defer inside.Add(-1)
				for {
					m := maxInside.Load()
					if in <= m || maxInside.CompareAndSwap(m, in) {
						break
					}
				}
				time.Sleep(2 * time.Millisecond) // give another Update the chance to overlap
				return tx.Put(fmt.Sprintf("w/%d", i), nil)
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if m := maxInside.Load(); m != 1 {
		t.Fatalf("%d Update functions ran at the same time", m)
	}
	var keys int
	if err := s.View(bg, func(tx store.Tx) error {
		return tx.Scan("w/", func(string, []byte) error { keys++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if keys != n {
		t.Fatalf("%d of %d Updates were committed", keys, n)
	}
}

func counter(tx store.Tx, key string) (int, error) {
	v, err := tx.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(v))
}

func increment(tx store.Tx, key string) (int, error) {
	n, err := counter(tx, key)
	if err != nil {
		return 0, err
	}
	return n + 1, tx.Put(key, []byte(strconv.Itoa(n+1)))
}

// testConcurrent runs read-modify-write Updates from many goroutines while
// Views check invariants that hold in every committed state: the counters
// of the buckets add up to the total, and two keys always written together
// are equal. No increment may be lost.
func testConcurrent(t *testing.T, s store.Store) {
	const (
		workers = 12
		rounds  = 40
		buckets = 4
	)
	check := func(tx store.Tx) error {
		total, err := counter(tx, "total")
		if err != nil {
			return err
		}
		sum := 0
		if err := tx.Scan("c/", func(_ string, v []byte) error {
			n, err := strconv.Atoi(string(v))
			sum += n
			return err
		}); err != nil {
			return err
		}
		if sum != total {
			return fmt.Errorf("inconsistent snapshot: buckets sum to %d, total %d", sum, total)
		}
		a, err := tx.Get("pair/a")
		if errors.Is(err, store.ErrNotFound) {
			a = nil
		} else if err != nil {
			return err
		}
		b, err := tx.Get("pair/b")
		if errors.Is(err, store.ErrNotFound) {
			b = nil
		} else if err != nil {
			return err
		}
		if string(a) != string(b) {
			return fmt.Errorf("inconsistent snapshot: pair/a=%q pair/b=%q", a, b)
		}
		return nil
	}
	stop := make(chan struct{})
	var readers, writers sync.WaitGroup
	errs := make(chan error, workers+4)
	for range 3 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := s.View(bg, check); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	before, _ := stats(s)
	for w := range workers {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := range rounds {
				err := s.Update(bg, func(tx store.Tx) error {
					if _, err := increment(tx, fmt.Sprintf("c/%d", (w+i)%buckets)); err != nil {
						return err
					}
					n, err := increment(tx, "total")
					if err != nil {
						return err
					}
					v := fmt.Appendf(nil, "%d by %d", n, w)
					if err := tx.Put("pair/a", v); err != nil {
						return err
					}
					// Checked by the readers in every committed state.
					return tx.Put("pair/b", v)
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	want(t, s, "total", strconv.Itoa(workers*rounds))
	for b := range buckets {
		want(t, s, fmt.Sprintf("c/%d", b), strconv.Itoa(workers*rounds/buckets))
	}
	wantStats(t, s, before, workers*rounds, 0)
}

func testTxDone(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	check := func(what string, tx store.Tx) {
		t.Helper()
		if _, err := tx.Get("k"); !errors.Is(err, store.ErrTxDone) {
			t.Errorf("Get on a finished %s = %v, want ErrTxDone", what, err)
		}
		if err := tx.Put("k", []byte("leaked")); !errors.Is(err, store.ErrTxDone) {
			t.Errorf("Put on a finished %s = %v, want ErrTxDone", what, err)
		}
		if err := tx.Delete("k"); !errors.Is(err, store.ErrTxDone) {
			t.Errorf("Delete on a finished %s = %v, want ErrTxDone", what, err)
		}
		if err := tx.DeletePrefix(""); !errors.Is(err, store.ErrTxDone) {
			t.Errorf("DeletePrefix on a finished %s = %v, want ErrTxDone", what, err)
		}
		called := false
		if err := tx.Scan("", func(string, []byte) error { called = true; return nil }); !errors.Is(err, store.ErrTxDone) || called {
			t.Errorf("Scan on a finished %s = %v (callback called: %v), want ErrTxDone", what, err, called)
		}
	}
	var leaked store.Tx
	if err := s.Update(bg, func(tx store.Tx) error { leaked = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	check("Update", leaked)
	if err := s.Update(bg, func(tx store.Tx) error { leaked = tx; return errors.New("fail") }); err == nil {
		t.Fatal("Update did not return its function's error")
	}
	check("failed Update", leaked)
	catch(func() {
		s.Update(bg, func(tx store.Tx) error { leaked = tx; panic("p") })
	})
	check("panicked Update", leaked)
	if err := s.View(bg, func(tx store.Tx) error { leaked = tx; return nil }); err != nil {
		t.Fatal(err)
	}
	check("View", leaked)
	want(t, s, "k", "v")
	s.Close()
	check("View after Close", leaked)
}

func testKeyLimits(t *testing.T, s store.Store) {
	long := strings.Repeat("x", store.MaxKeySize+1)
	max := "k" + long[:store.MaxKeySize-1]
	err := s.Update(bg, func(tx store.Tx) error {
		for _, k := range []string{"", long} {
			if err := tx.Put(k, []byte("v")); !errors.Is(err, store.ErrInvalidKey) {
				return fmt.Errorf("Put(%d-byte key) = %v, want ErrInvalidKey", len(k), err)
			}
			if _, err := tx.Get(k); !errors.Is(err, store.ErrInvalidKey) {
				return fmt.Errorf("Get(%d-byte key) = %v, want ErrInvalidKey", len(k), err)
			}
			if err := tx.Delete(k); !errors.Is(err, store.ErrInvalidKey) {
				return fmt.Errorf("Delete(%d-byte key) = %v, want ErrInvalidKey", len(k), err)
			}
		}
		// The longest allowed key works, and is a prefix of nothing else.
		return tx.Put(max, []byte("max"))
	})
	if err != nil {
		t.Fatal(err)
	}
	want(t, s, max, "max")
	if err := s.View(bg, func(tx store.Tx) error {
		// A too long key is invalid in a View too.
		if _, err := tx.Get(long); !errors.Is(err, store.ErrInvalidKey) {
			return fmt.Errorf("Get(%d-byte key) in View = %v, want ErrInvalidKey", len(long), err)
		}
		got, err := scanKeys(tx, max[:1000])
		if err != nil {
			return err
		}
		if got != max+"=max" {
			return fmt.Errorf("Scan of the longest key returned %d bytes", len(got))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Keys are bytes, not text: invalid UTF-8 and NUL bytes are keys.
	for _, k := range []string{"\x00", "\xff\xfe", "a\x00b", "\xc3"} {
		put(t, s, k, "bin")
		want(t, s, k, "bin")
	}
	// ErrInvalidKey does not break the transaction: the writes around the
	// refused one commit.
	err = s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("before", nil); err != nil {
			return err
		}
		if err := tx.Put("", nil); !errors.Is(err, store.ErrInvalidKey) {
			return fmt.Errorf("Put(empty key) = %v", err)
		}
		return tx.Put("after", nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	want(t, s, "before", "")
	want(t, s, "after", "")
}

func testLargeValues(t *testing.T, s store.Store) {
	const size = 4 << 20
	big := make([]byte, size)
	rng := newRand(2)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	big2 := make([]byte, size/2+1)
	for i := range big2 {
		big2[i] = byte(i * 31)
	}
	if err := s.Update(bg, func(tx store.Tx) error {
		if err := tx.Put("big/1", big); err != nil {
			return err
		}
		if err := tx.Put("big/2", big2); err != nil {
			return err
		}
		return tx.Put("small", []byte("s"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.View(bg, func(tx store.Tx) error {
		v, err := tx.Get("big/1")
		if err != nil {
			return err
		}
		if string(v) != string(big) {
			return fmt.Errorf("a %d-byte value came back as %d different bytes", len(big), len(v))
		}
		n := 0
		return tx.Scan("big/", func(k string, v []byte) error {
			n++
			w := big
			if n == 2 {
				w = big2
			}
			if string(v) != string(w) {
				return fmt.Errorf("Scan: %s has %d different bytes, want %d", k, len(v), len(w))
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	// Overwrite with a small value, then delete.
	put(t, s, "big/1", "now small")
	want(t, s, "big/1", "now small")
	if err := s.Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("big/") }); err != nil {
		t.Fatal(err)
	}
	if got, w := dump(t, s), "\"small\"=\"s\"\n"; got != w {
		t.Fatalf("state = %q, want %q", got, w)
	}
}

func testClose(t *testing.T, s store.Store) {
	put(t, s, "k", "v")
	st, _ := stats(s)

	// Close waits for a running Update, which commits; a writer queued
	// behind it either runs before Close returns or is turned away with
	// ErrClosed.
	hold := make(chan struct{})
	holding := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Update(bg, func(tx store.Tx) error {
			close(holding)
			<-hold
			return tx.Put("k", []byte("last"))
		})
	}()
	<-holding
	queued := make(chan error, 1)
	go func() {
		queued <- s.Update(bg, func(tx store.Tx) error { return tx.Put("k", []byte("queued")) })
	}()
	inView := make(chan struct{})
	releaseView := make(chan struct{})
	view := make(chan error, 1)
	go func() {
		view <- s.View(bg, func(tx store.Tx) error {
			close(inView)
			<-releaseView
			_, err := tx.Get("k")
			return err
		})
	}()
	<-inView
	time.Sleep(20 * time.Millisecond) // let the writer queue
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while transactions were running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(hold)
	if err := <-first; err != nil {
		t.Fatalf("running Update = %v", err)
	}
	// The View still works until its function returns.
	close(releaseView)
	if err := <-view; err != nil {
		t.Fatalf("running View = %v", err)
	}
	var queuedErr error
	select {
	case queuedErr = <-queued:
	case <-time.After(10 * time.Second):
		t.Fatal("queued Update hangs after Close")
	}
	if queuedErr != nil && !errors.Is(queuedErr, store.ErrClosed) {
		t.Errorf("queued Update = %v, want nil or ErrClosed", queuedErr)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}

	called := false
	if err := s.View(bg, func(store.Tx) error { called = true; return nil }); !errors.Is(err, store.ErrClosed) || called {
		t.Errorf("View after Close = %v (called %v), want ErrClosed", err, called)
	}
	if err := s.Update(bg, func(store.Tx) error { called = true; return nil }); !errors.Is(err, store.ErrClosed) || called {
		t.Errorf("Update after Close = %v (called %v), want ErrClosed", err, called)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	commits := uint64(1)
	if queuedErr == nil {
		commits++
	}
	wantStats(t, s, st, commits, 0)

	// Concurrent Closes of a closed store all return.
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); s.Close() }()
	}
	wg.Wait()
}

// newRand returns a deterministic generator: a failing run can be
// repeated.
func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5eed)) }
