package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testStore is what both implementations offer.
type testStore interface {
	Store
	Stats() Stats
}

type factory struct {
	name string
	open func(t testing.TB) testStore
}

var factories = []factory{
	{"Memory", func(t testing.TB) testStore {
		s := NewMemory()
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"Bolt", func(t testing.TB) testStore {
		s, err := Open(filepath.Join(t.TempDir(), "test.db"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}},
}

// forEach runs test against every implementation.
func forEach(t *testing.T, test func(t *testing.T, s testStore)) {
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			test(t, f.open(t))
		})
	}
}

var bg = context.Background()

func put(t testing.TB, s Store, kv ...string) {
	t.Helper()
	if err := s.Update(bg, func(tx Tx) error {
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
func dump(t testing.TB, s Store) string {
	t.Helper()
	var b strings.Builder
	if err := s.View(bg, func(tx Tx) error {
		return tx.Scan("", func(k string, v []byte) error {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
			return nil
		})
	}); err != nil {
		t.Fatalf("View: %v", err)
	}
	return b.String()
}

func get(t testing.TB, s Store, key string) (string, error) {
	t.Helper()
	var v []byte
	err := s.View(bg, func(tx Tx) error {
		var err error
		v, err = tx.Get(key)
		return err
	})
	return string(v), err
}

func TestGetPutDelete(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		if _, err := get(t, s, "missing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get missing: %v, want ErrNotFound", err)
		}
		err := s.Update(bg, func(tx Tx) error {
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
			if err := tx.Put("empty", nil); err != nil {
				return err
			}
			if err := tx.Put("gone", []byte("x")); err != nil {
				return err
			}
			if err := tx.Delete("gone"); err != nil {
				return err
			}
			if _, err := tx.Get("gone"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("Get deleted in tx: %v", err)
			}
			return tx.Delete("never-existed")
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := get(t, s, "k"); err != nil || v != "v2" {
			t.Fatalf("Get k = %q, %v; want v2", v, err)
		}
		if err := s.View(bg, func(tx Tx) error {
			v, err := tx.Get("empty")
			if err != nil {
				return err
			}
			if v == nil || len(v) != 0 {
				return fmt.Errorf("empty value = %#v, want non-nil empty", v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := get(t, s, "gone"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get gone: %v", err)
		}
		if got, want := dump(t, s), "empty=\nk=v2\n"; got != want {
			t.Fatalf("state = %q, want %q", got, want)
		}
	})
}

func TestInvalidKeysAndReadOnly(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		long := strings.Repeat("x", MaxKeySize+1)
		err := s.Update(bg, func(tx Tx) error {
			for _, k := range []string{"", long} {
				if err := tx.Put(k, []byte("v")); !errors.Is(err, ErrInvalidKey) {
					return fmt.Errorf("Put(%d-byte key) = %v", len(k), err)
				}
				if _, err := tx.Get(k); !errors.Is(err, ErrInvalidKey) {
					return fmt.Errorf("Get(%d-byte key) = %v", len(k), err)
				}
				if err := tx.Delete(k); !errors.Is(err, ErrInvalidKey) {
					return fmt.Errorf("Delete(%d-byte key) = %v", len(k), err)
				}
			}
			// The longest allowed key works.
			return tx.Put(long[:MaxKeySize], []byte("v"))
		})
		if err != nil {
			t.Fatal(err)
		}
		put(t, s, "k", "v")
		err = s.View(bg, func(tx Tx) error {
			if err := tx.Put("k", []byte("w")); !errors.Is(err, ErrReadOnly) {
				return fmt.Errorf("Put in View = %v", err)
			}
			if err := tx.Delete("k"); !errors.Is(err, ErrReadOnly) {
				return fmt.Errorf("Delete in View = %v", err)
			}
			if err := tx.DeletePrefix(""); !errors.Is(err, ErrReadOnly) {
				return fmt.Errorf("DeletePrefix in View = %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if v, err := get(t, s, "k"); err != nil || v != "v" {
			t.Fatalf("k = %q, %v", v, err)
		}
	})
}

func TestScan(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "a/2", "2", "a/10", "10", "b", "b", "a/1", "1", "a", "a", "ab", "ab", "a/\xff", "ff", "a/z", "z")
		scan := func(tx Tx, prefix string) (string, error) {
			var got []string
			err := tx.Scan(prefix, func(k string, v []byte) error {
				got = append(got, k+"="+string(v))
				return nil
			})
			return strings.Join(got, ","), err
		}
		err := s.View(bg, func(tx Tx) error {
			for prefix, want := range map[string]string{
				"a/":   "a/1=1,a/10=10,a/2=2,a/z=z,a/\xff=ff",
				"":     "a=a,a/1=1,a/10=10,a/2=2,a/z=z,a/\xff=ff,ab=ab,b=b",
				"a":    "a=a,a/1=1,a/10=10,a/2=2,a/z=z,a/\xff=ff,ab=ab",
				"a/1":  "a/1=1,a/10=10",
				"c":    "",
				"a/3":  "",
				"\xff": "",
			} {
				got, err := scan(tx, prefix)
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("Scan(%q) = %q, want %q", prefix, got, want)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// Early stop, error propagation, reads inside the callback.
		sentinel := errors.New("sentinel")
		err = s.View(bg, func(tx Tx) error {
			n := 0
			if err := tx.Scan("a/", func(k string, v []byte) error {
				n++
				if n == 2 {
					return ErrStopScan
				}
				return nil
			}); err != nil || n != 2 {
				return fmt.Errorf("ErrStopScan: err %v after %d keys", err, n)
			}
			if err := tx.Scan("a/", func(string, []byte) error { return sentinel }); err != sentinel {
				return fmt.Errorf("callback error came back as %v", err)
			}
			return tx.Scan("a/1", func(k string, v []byte) error {
				got, err := tx.Get("b")
				if err != nil || string(got) != "b" {
					return fmt.Errorf("Get inside Scan = %q, %v", got, err)
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}

		// Scan in an Update sees uncommitted writes and forbids changes.
		err = s.Update(bg, func(tx Tx) error {
			if err := tx.Put("a/0", []byte("0")); err != nil {
				return err
			}
			if err := tx.Delete("a/z"); err != nil {
				return err
			}
			got, err := scan(tx, "a/")
			if err != nil {
				return err
			}
			if want := "a/0=0,a/1=1,a/10=10,a/2=2,a/\xff=ff"; got != want {
				return fmt.Errorf("Scan in Update = %q, want %q", got, want)
			}
			return tx.Scan("a/", func(k string, v []byte) error {
				if err := tx.Put("x", nil); !errors.Is(err, ErrReadOnly) {
					return fmt.Errorf("Put during Scan = %v", err)
				}
				if err := tx.Delete(k); !errors.Is(err, ErrReadOnly) {
					return fmt.Errorf("Delete during Scan = %v", err)
				}
				if err := tx.DeletePrefix("a"); !errors.Is(err, ErrReadOnly) {
					return fmt.Errorf("DeletePrefix during Scan = %v", err)
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		// After the Scan the transaction is writable again (checked by
		// the commit above having happened with a/0).
		if v, err := get(t, s, "a/0"); err != nil || v != "0" {
			t.Fatalf("a/0 = %q, %v", v, err)
		}
		if _, err := get(t, s, "x"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("x written during Scan: %v", err)
		}
	})
}

func TestDeletePrefix(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		var kv []string
		for i := range 300 {
			kv = append(kv, fmt.Sprintf("sessions/alice/%03d", i), "s")
		}
		kv = append(kv, "sessions/alice", "exact", "sessions/alicex/1", "other", "sessions/bob/1", "bob", "trust/alice/1", "t")
		put(t, s, kv...)

		// A rolled-back DeletePrefix changes nothing.
		before := dump(t, s)
		errAbort := errors.New("abort")
		if err := s.Update(bg, func(tx Tx) error {
			if err := tx.DeletePrefix(""); err != nil {
				return err
			}
			if err := tx.Scan("", func(string, []byte) error { return errors.New("key left") }); err != nil {
				return err
			}
			return errAbort
		}); err != errAbort {
			t.Fatalf("Update = %v", err)
		}
		if got := dump(t, s); got != before {
			t.Fatal("rolled-back DeletePrefix changed the store")
		}

		if err := s.Update(bg, func(tx Tx) error {
			if err := tx.DeletePrefix("sessions/alice/"); err != nil {
				return err
			}
			if _, err := tx.Get("sessions/alice/007"); !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("Get after DeletePrefix in tx: %v", err)
			}
			return tx.DeletePrefix("nothing/")
		}); err != nil {
			t.Fatal(err)
		}
		want := "sessions/alice=exact\nsessions/alicex/1=other\nsessions/bob/1=bob\ntrust/alice/1=t\n"
		if got := dump(t, s); got != want {
			t.Fatalf("after DeletePrefix:\n%s\nwant:\n%s", got, want)
		}
		if err := s.Update(bg, func(tx Tx) error { return tx.DeletePrefix("") }); err != nil {
			t.Fatal(err)
		}
		if got := dump(t, s); got != "" {
			t.Fatalf("DeletePrefix(\"\") left %q", got)
		}
	})
}

func TestAtomicity(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "a", "1", "b", "1", "c/1", "1")
		before := dump(t, s)
		stats := s.Stats()

		mutate := func(tx Tx) {
			for _, op := range []func() error{
				func() error { return tx.Put("a", []byte("2")) },
				func() error { return tx.Put("new", []byte("2")) },
				func() error { return tx.Delete("b") },
				func() error { return tx.DeletePrefix("c/") },
			} {
				if err := op(); err != nil {
					t.Errorf("op: %v", err)
				}
			}
		}

		// f returns an error: it comes back unchanged, nothing is written.
		type myErr struct{ error }
		errBoom := &myErr{errors.New("boom")}
		err := s.Update(bg, func(tx Tx) error {
			mutate(tx)
			return fmt.Errorf("wrapped: %w", errBoom)
		})
		var me *myErr
		if !errors.As(err, &me) || me != errBoom {
			t.Fatalf("Update error = %v, want wrapped errBoom", err)
		}
		if got := dump(t, s); got != before {
			t.Fatalf("failed Update changed the store:\n%s", got)
		}

		// f panics: the panic propagates with its value, nothing is written.
		func() {
			defer func() {
				if r := recover(); r != "panic value" {
					t.Fatalf("recovered %v, want the panic value", r)
				}
			}()
			s.Update(bg, func(tx Tx) error {
				mutate(tx)
				panic("panic value")
			})
			t.Fatal("Update returned after a panic")
		}()
		if got := dump(t, s); got != before {
			t.Fatalf("panicking Update changed the store:\n%s", got)
		}
		// The store is still usable (locks released).
		put(t, s, "after", "panic")

		got := s.Stats()
		if got.Commits != stats.Commits+1 || got.Rollbacks != stats.Rollbacks+2 {
			t.Fatalf("Stats = %+v, before %+v; want +1 commit, +2 rollbacks", got, stats)
		}
	})
}

func TestIsolation(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "a", "1", "b", "1")

		// A View that started before an Update committed keeps seeing the
		// old state; an Update's uncommitted writes are invisible to Views.
		inView := make(chan struct{})
		updated := make(chan struct{})
		viewErr := make(chan error, 1)
		go func() {
			viewErr <- s.View(bg, func(tx Tx) error {
				a, err := tx.Get("a")
				if err != nil {
					return err
				}
				close(inView)
				select {
				case <-updated:
				case <-time.After(10 * time.Second):
					return errors.New("Update did not complete while a View was open")
				}
				b, err := tx.Get("b")
				if err != nil {
					return err
				}
				if _, err := tx.Get("c"); !errors.Is(err, ErrNotFound) {
					return fmt.Errorf("View sees key c committed later: %v", err)
				}
				if string(a) != "1" || string(b) != "1" {
					return fmt.Errorf("View saw a=%s b=%s, want the snapshot 1/1", a, b)
				}
				return nil
			})
		}()
		<-inView

		inUpdate := make(chan struct{})
		release := make(chan struct{})
		updErr := make(chan error, 1)
		go func() {
			updErr <- s.Update(bg, func(tx Tx) error {
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
		// While the Update is uncommitted a new View sees the old state.
		if v, err := get(t, s, "a"); err != nil || v != "1" {
			t.Errorf("View during Update saw a=%q (%v), want 1", v, err)
		}
		close(release)
		if err := <-updErr; err != nil {
			t.Fatal(err)
		}
		close(updated)
		if err := <-viewErr; err != nil {
			t.Fatal(err)
		}
		if got, want := dump(t, s), "a=2\nb=2\nc=2\n"; got != want {
			t.Fatalf("state = %q, want %q", got, want)
		}
	})
}

func TestValuesAreCopies(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		buf := []byte("secret")
		var kept [][]byte
		err := s.Update(bg, func(tx Tx) error {
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
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		buf[2] = 'X'
		err = s.View(bg, func(tx Tx) error {
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
		if v, err := get(t, s, "k"); err != nil || v != "secret" {
			t.Fatalf("k = %q, %v; mutation of a returned slice leaked into the store", v, err)
		}
		// Slices kept from finished transactions stay valid and unchanged
		// by later writes (for bbolt they must not point into the mmap).
		for i := range 200 {
			put(t, s, "k", strings.Repeat(strconv.Itoa(i), 100), fmt.Sprintf("fill/%d", i), strings.Repeat("f", 500))
		}
		for i, want := range []string{"sXcret", "Yecret", "Zecret"} {
			if string(kept[i]) != want {
				t.Errorf("kept[%d] = %q, want %q", i, kept[i], want)
			}
		}
	})
}

func TestContext(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "k", "v")
		ctx, cancel := context.WithCancel(bg)
		cancel()
		called := false
		f := func(tx Tx) error { called = true; return tx.Put("k", []byte("changed")) }
		if err := s.Update(ctx, f); !errors.Is(err, context.Canceled) || called {
			t.Fatalf("Update(cancelled) = %v, called %v", err, called)
		}
		if err := s.View(ctx, func(Tx) error { called = true; return nil }); !errors.Is(err, context.Canceled) || called {
			t.Fatalf("View(cancelled) = %v, called %v", err, called)
		}

		// Cancelled while f runs: no commit.
		ctx, cancel = context.WithCancel(bg)
		err := s.Update(ctx, func(tx Tx) error {
			if err := tx.Put("k", []byte("changed")); err != nil {
				return err
			}
			cancel()
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Update cancelled during f = %v", err)
		}
		if v, err := get(t, s, "k"); err != nil || v != "v" {
			t.Fatalf("k = %q, %v after a cancelled Update", v, err)
		}

		// A writer waiting for the write lock gives up when ctx is done.
		hold := make(chan struct{})
		holding := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- s.Update(bg, func(tx Tx) error { close(holding); <-hold; return nil })
		}()
		<-holding
		ctx, cancel = context.WithTimeout(bg, 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		err = s.Update(ctx, func(tx Tx) error { return tx.Put("k", []byte("late")) })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiting Update = %v, want DeadlineExceeded", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Fatalf("waiting Update took %v to notice its deadline", el)
		}
		close(hold)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v, _ := get(t, s, "k"); v != "v" {
			t.Fatalf("k = %q", v)
		}
	})
}

func TestClose(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "k", "v")

		// A Tx used after its function returned fails cleanly.
		var leaked Tx
		if err := s.Update(bg, func(tx Tx) error { leaked = tx; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := leaked.Get("k"); !errors.Is(err, ErrTxDone) {
			t.Errorf("Get on finished tx = %v", err)
		}
		if err := leaked.Put("k", nil); !errors.Is(err, ErrTxDone) {
			t.Errorf("Put on finished tx = %v", err)
		}
		if err := leaked.Scan("", func(string, []byte) error { return nil }); !errors.Is(err, ErrTxDone) {
			t.Errorf("Scan on finished tx = %v", err)
		}
		if err := s.View(bg, func(tx Tx) error { leaked = tx; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := leaked.Get("k"); !errors.Is(err, ErrTxDone) {
			t.Errorf("Get on finished view = %v", err)
		}

		// Close waits for a running Update, which commits; a writer queued
		// behind it is turned away with ErrClosed.
		hold := make(chan struct{})
		holding := make(chan struct{})
		first := make(chan error, 1)
		go func() {
			first <- s.Update(bg, func(tx Tx) error {
				close(holding)
				<-hold
				return tx.Put("k", []byte("last"))
			})
		}()
		<-holding
		queued := make(chan error, 1)
		go func() {
			queued <- s.Update(bg, func(tx Tx) error { return tx.Put("k", []byte("queued")) })
		}()
		time.Sleep(20 * time.Millisecond) // let it queue on the write lock
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		if err := <-queued; !errors.Is(err, ErrClosed) {
			t.Errorf("queued Update = %v, want ErrClosed", err)
		}
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while an Update was running", err)
		case <-time.After(20 * time.Millisecond):
		}
		close(hold)
		if err := <-first; err != nil {
			t.Fatalf("running Update = %v", err)
		}
		if err := <-closed; err != nil {
			t.Fatalf("Close = %v", err)
		}

		if err := s.View(bg, func(Tx) error { return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("View after Close = %v", err)
		}
		if err := s.Update(bg, func(Tx) error { return nil }); !errors.Is(err, ErrClosed) {
			t.Errorf("Update after Close = %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		if st := s.Stats(); st.Commits != 3 || st.Rollbacks != 0 {
			t.Errorf("Stats = %+v, want 3 commits, 0 rollbacks", st)
		}
	})
}

func TestConcurrentCounters(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		const (
			workers = 12
			rounds  = 40
			buckets = 4
		)
		inc := func(tx Tx, key string) error {
			n := 0
			v, err := tx.Get(key)
			switch {
			case errors.Is(err, ErrNotFound):
			case err != nil:
				return err
			default:
				if n, err = strconv.Atoi(string(v)); err != nil {
					return err
				}
			}
			return tx.Put(key, []byte(strconv.Itoa(n+1)))
		}
		// Invariant checked by concurrent readers: the bucket counters
		// always add up to the total.
		check := func(tx Tx) error {
			total, sum := 0, 0
			if v, err := tx.Get("total"); err == nil {
				total, _ = strconv.Atoi(string(v))
			}
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
		before := s.Stats().Commits
		for w := range workers {
			writers.Add(1)
			go func() {
				defer writers.Done()
				for i := range rounds {
					err := s.Update(bg, func(tx Tx) error {
						if err := inc(tx, fmt.Sprintf("c/%d", (w+i)%buckets)); err != nil {
							return err
						}
						return inc(tx, "total")
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
		if v, err := get(t, s, "total"); err != nil || v != strconv.Itoa(workers*rounds) {
			t.Fatalf("total = %q, %v; want %d", v, err, workers*rounds)
		}
		for b := range buckets {
			if v, err := get(t, s, fmt.Sprintf("c/%d", b)); err != nil || v != strconv.Itoa(workers*rounds/buckets) {
				t.Fatalf("c/%d = %q, %v; want %d", b, v, err, workers*rounds/buckets)
			}
		}
		if got := s.Stats().Commits - before; got != workers*rounds {
			t.Fatalf("Commits grew by %d, want %d", got, workers*rounds)
		}
	})
}

func TestBytesKeysOrder(t *testing.T) {
	// Keys compare as bytes, not as runes or with locale rules.
	forEach(t, func(t *testing.T, s testStore) {
		keys := []string{"p/Z", "p/a", "p/\x00", "p/é", "p/\x7f", "p/~"}
		var kv []string
		for _, k := range keys {
			kv = append(kv, k, k)
		}
		put(t, s, kv...)
		var got []string
		if err := s.View(bg, func(tx Tx) error {
			return tx.Scan("p/", func(k string, v []byte) error {
				if k != string(v) {
					return fmt.Errorf("key %q has value %q", k, v)
				}
				got = append(got, k)
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(got); i++ {
			if bytes.Compare([]byte(got[i-1]), []byte(got[i])) >= 0 {
				t.Fatalf("Scan order %q is not byte order", got)
			}
		}
		if len(got) != len(keys) {
			t.Fatalf("Scan returned %d keys, want %d", len(got), len(keys))
		}
	})
}

func benchmarkUpdate(b *testing.B, s Store) {
	value := bytes.Repeat([]byte{0xA5}, 256)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := s.Update(bg, func(tx Tx) error {
			return tx.Put("omemo/sessions/alice@example.org/"+strconv.Itoa(i%64), value)
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBoltUpdate measures one small durable (fsync'd) commit.
func BenchmarkBoltUpdate(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "bench.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchmarkUpdate(b, s)
}

func BenchmarkMemoryUpdate(b *testing.B) {
	s := NewMemory()
	defer s.Close()
	put(b, s, "other/1", "x", "other/2", "y")
	benchmarkUpdate(b, s)
}
