package postgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/store"
)

// These tests check the store.Store contract. They run on the PostgreSQL
// Store (one fresh account of the shared database per test) and, to check
// the tests themselves, on store.Memory.

type testStore interface {
	store.Store
	Stats() store.Stats
}

var factories = []struct {
	name string
	open func(t testing.TB) testStore
}{
	{"Memory", func(t testing.TB) testStore {
		s := store.NewMemory()
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"Postgres", func(t testing.TB) testStore { return NewAccount(t) }},
}

func forEach(t *testing.T, test func(t *testing.T, s testStore)) {
	for _, f := range factories {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			test(t, f.open(t))
		})
	}
}

var bg = context.Background()

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

// dump returns the whole committed state as "k=v" lines, quoted.
func dump(t testing.TB, s store.Store) string {
	t.Helper()
	var b strings.Builder
	if err := s.View(bg, func(tx store.Tx) error {
		return tx.Scan("", func(k string, v []byte) error {
			fmt.Fprintf(&b, "%q=%q\n", k, v)
			return nil
		})
	}); err != nil {
		t.Fatalf("View: %v", err)
	}
	return b.String()
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

func scanString(tx store.Tx, prefix string) (string, error) {
	var got []string
	err := tx.Scan(prefix, func(k string, v []byte) error {
		got = append(got, k+"="+string(v))
		return nil
	})
	return strings.Join(got, ","), err
}

func TestGetPutDelete(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		if _, err := get(t, s, "missing"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get missing: %v, want ErrNotFound", err)
		}
		err := s.Update(bg, func(tx store.Tx) error {
			if err := tx.Put("k", []byte("v1")); err != nil {
				return err
			}
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
			if _, err := tx.Get("gone"); !errors.Is(err, store.ErrNotFound) {
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
		if err := s.View(bg, func(tx store.Tx) error {
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
		// A committed key deleted and re-read in one Update.
		if err := s.Update(bg, func(tx store.Tx) error {
			if err := tx.Delete("k"); err != nil {
				return err
			}
			if _, err := tx.Get("k"); !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("Get of a deleted committed key: %v", err)
			}
			return tx.Put("k", []byte("v3"))
		}); err != nil {
			t.Fatal(err)
		}
		if got, want := dump(t, s), "\"empty\"=\"\"\n\"k\"=\"v3\"\n"; got != want {
			t.Fatalf("state = %q, want %q", got, want)
		}
	})
}

func TestCopies(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		v := []byte("original")
		if err := s.Update(bg, func(tx store.Tx) error {
			if err := tx.Put("k", v); err != nil {
				return err
			}
			v[0] = 'X' // after Put: must not change what is stored
			got, err := tx.Get("k")
			if err != nil || string(got) != "original" {
				return fmt.Errorf("Get after modifying the Put slice = %q, %v", got, err)
			}
			got[0] = 'Y'
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.View(bg, func(tx store.Tx) error {
			got, _ := tx.Get("k")
			got[0] = 'Z'
			return tx.Scan("k", func(_ string, v []byte) error {
				if string(v) != "original" {
					return fmt.Errorf("value changed through a returned slice: %q", v)
				}
				v[0] = 'W'
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		if got, _ := get(t, s, "k"); got != "original" {
			t.Fatalf("k = %q", got)
		}
	})
}

func TestKeysAndReadOnly(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		long := strings.Repeat("x", store.MaxKeySize+1)
		// The longest keys, incompressible, and sharing long prefixes.
		random := make([]byte, store.MaxKeySize)
		rand.Read(random)
		max1 := string(random)
		random[len(random)-1] ^= 1
		max2 := string(random)
		err := s.Update(bg, func(tx store.Tx) error {
			for _, k := range []string{"", long} {
				if err := tx.Put(k, []byte("v")); !errors.Is(err, store.ErrInvalidKey) {
					return fmt.Errorf("Put(%d-byte key) = %v", len(k), err)
				}
				if _, err := tx.Get(k); !errors.Is(err, store.ErrInvalidKey) {
					return fmt.Errorf("Get(%d-byte key) = %v", len(k), err)
				}
				if err := tx.Delete(k); !errors.Is(err, store.ErrInvalidKey) {
					return fmt.Errorf("Delete(%d-byte key) = %v", len(k), err)
				}
			}
			if err := tx.Put(long[:store.MaxKeySize], []byte("x")); err != nil {
				return err
			}
			if err := tx.Put(max1, []byte("1")); err != nil {
				return err
			}
			return tx.Put(max2, []byte("2"))
		})
		if err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]string{long[:store.MaxKeySize]: "x", max1: "1", max2: "2"} {
			if v, err := get(t, s, k); err != nil || v != want {
				t.Fatalf("Get(long key) = %q, %v; want %q", v, err, want)
			}
		}
		if err := s.View(bg, func(tx store.Tx) error {
			got, err := scanString(tx, max1[:2000])
			if err != nil {
				return err
			}
			want := []string{max1 + "=1", max2 + "=2"}
			if max2 < max1 {
				slices.Reverse(want)
			}
			if got != strings.Join(want, ",") {
				return errors.New("Scan of the longest keys out of order")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}

		err = s.View(bg, func(tx store.Tx) error {
			if err := tx.Put("k", []byte("w")); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("Put in View = %v", err)
			}
			if err := tx.Delete("k"); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("Delete in View = %v", err)
			}
			if err := tx.DeletePrefix(""); !errors.Is(err, store.ErrReadOnly) {
				return fmt.Errorf("DeletePrefix in View = %v", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// byteKeys are keys with bytes that LIKE patterns, collations or signed
// comparisons would get wrong.
var byteKeys = []string{
	"a", "a%", "a%b", "a_", "a_b", "ab", "a\x00", "a\x00b", "a\x7f", "a\x80", "a\xc3\xa9", "a\xfe",
	"a\xff", "a\xff\xff", "a\xff\xff\x00", "b", "\x80", "\xff", "\xff\xff", "%", "_", "\\", "A", "a/1", "a/10", "a/2",
}

func TestByteOrder(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		var kv []string
		for _, k := range byteKeys {
			kv = append(kv, k, fmt.Sprintf("%x", k))
		}
		put(t, s, kv...)
		sorted := slices.Clone(byteKeys)
		slices.Sort(sorted) // Go compares strings bytewise
		want := func(prefix string) string {
			var w []string
			for _, k := range sorted {
				if strings.HasPrefix(k, prefix) {
					w = append(w, k+"="+fmt.Sprintf("%x", k))
				}
			}
			return strings.Join(w, ",")
		}
		prefixes := []string{"", "a", "a%", "a_", "%", "_", "\\", "a\x00", "a\xff", "a\xff\xff", "\xff", "\xff\xff", "\x80", "a\x7f", "A", "a/1", "c"}
		check := func(tx store.Tx) error {
			for _, p := range prefixes {
				got, err := scanString(tx, p)
				if err != nil {
					return err
				}
				if w := want(p); got != w {
					return fmt.Errorf("Scan(%q) = %q, want %q", p, got, w)
				}
			}
			return nil
		}
		if err := s.View(bg, check); err != nil {
			t.Fatal(err)
		}
		// The same through an Update.
		if err := s.Update(bg, func(tx store.Tx) error { return check(tx) }); err != nil {
			t.Fatal(err)
		}

		// DeletePrefix with the same bytes.
		for _, p := range []string{"a%", "a_", "a\xff", "\xff"} {
			if err := s.Update(bg, func(tx store.Tx) error { return tx.DeletePrefix(p) }); err != nil {
				t.Fatal(err)
			}
			sorted = slices.DeleteFunc(sorted, func(k string) bool { return strings.HasPrefix(k, p) })
			if err := s.View(bg, func(tx store.Tx) error {
				got, err := scanString(tx, "")
				if err != nil {
					return err
				}
				if w := want(""); got != w {
					return fmt.Errorf("after DeletePrefix(%q): %q, want %q", p, got, w)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestScan(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "a/2", "2", "a/10", "10", "b", "b", "a/1", "1", "a", "a", "ab", "ab", "a/\xff", "ff", "a/z", "z")
		sentinel := errors.New("sentinel")
		err := s.View(bg, func(tx store.Tx) error {
			n := 0
			if err := tx.Scan("a/", func(k string, v []byte) error {
				n++
				if n == 2 {
					return fmt.Errorf("done: %w", store.ErrStopScan)
				}
				return nil
			}); err != nil || n != 2 {
				return fmt.Errorf("ErrStopScan: err %v after %d keys", err, n)
			}
			if err := tx.Scan("a/", func(string, []byte) error { return sentinel }); err != sentinel {
				return fmt.Errorf("callback error came back as %v", err)
			}
			// Reads and nested scans inside the callback.
			var nested []string
			if err := tx.Scan("a/1", func(k string, v []byte) error {
				got, err := tx.Get("b")
				if err != nil || string(got) != "b" {
					return fmt.Errorf("Get inside Scan = %q, %v", got, err)
				}
				inner, err := scanString(tx, "a")
				nested = append(nested, inner)
				return err
			}); err != nil {
				return err
			}
			if len(nested) != 2 || nested[0] != "a=a,a/1=1,a/10=10,a/2=2,a/z=z,a/\xff=ff,ab=ab" {
				return fmt.Errorf("nested scans = %q", nested)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}

		// Scan in an Update merges the transaction's writes and forbids
		// changes while it runs.
		err = s.Update(bg, func(tx store.Tx) error {
			for _, op := range []error{
				tx.Put("a/0", []byte("0")),
				tx.Delete("a/z"),
				tx.Put("a/2", []byte("two")),
				tx.Put("a/3", []byte("3")),
				tx.Put("a/\xff\xff", []byte("ffff")),
			} {
				if op != nil {
					return op
				}
			}
			got, err := scanString(tx, "a/")
			if err != nil {
				return err
			}
			if want := "a/0=0,a/1=1,a/10=10,a/2=two,a/3=3,a/\xff=ff,a/\xff\xff=ffff"; got != want {
				return fmt.Errorf("Scan in Update = %q, want %q", got, want)
			}
			if err := tx.DeletePrefix("a/1"); err != nil {
				return err
			}
			if err := tx.Put("a/11", []byte("11")); err != nil {
				return err
			}
			got, err = scanString(tx, "a")
			if err != nil {
				return err
			}
			if want := "a=a,a/0=0,a/11=11,a/2=two,a/3=3,a/\xff=ff,a/\xff\xff=ffff,ab=ab"; got != want {
				return fmt.Errorf("Scan after DeletePrefix in Update = %q, want %q", got, want)
			}
			return tx.Scan("a/", func(k string, v []byte) error {
				if err := tx.Put("x", nil); !errors.Is(err, store.ErrReadOnly) {
					return fmt.Errorf("Put during Scan = %v", err)
				}
				if err := tx.Delete(k); !errors.Is(err, store.ErrReadOnly) {
					return fmt.Errorf("Delete during Scan = %v", err)
				}
				if err := tx.DeletePrefix("a"); !errors.Is(err, store.ErrReadOnly) {
					return fmt.Errorf("DeletePrefix during Scan = %v", err)
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		want := "\"a\"=\"a\"\n\"a/0\"=\"0\"\n\"a/11\"=\"11\"\n\"a/2\"=\"two\"\n\"a/3\"=\"3\"\n\"a/\\xff\"=\"ff\"\n\"a/\\xff\\xff\"=\"ffff\"\n\"ab\"=\"ab\"\n\"b\"=\"b\"\n"
		if got := dump(t, s); got != want {
			t.Fatalf("state:\n%s\nwant:\n%s", got, want)
		}
	})
}

func TestScanPages(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		// More keys than several pages, some long ones sharing their first
		// 1024 bytes (a run the PostgreSQL store sorts itself) across a
		// page boundary.
		var kv []string
		var keys []string
		for i := range 700 {
			k := fmt.Sprintf("p/%04d", i)
			keys = append(keys, k)
			kv = append(kv, k, "v")
		}
		common := "p/0500/" + strings.Repeat("L", 1100)
		for i := range 40 {
			k := common + fmt.Sprintf("/%02d", 39-i)
			keys = append(keys, k)
			kv = append(kv, k, "long")
		}
		keys = append(keys, common[:1024], common[:1025])
		kv = append(kv, common[:1024], "h", common[:1025], "h1")
		put(t, s, kv...)
		slices.Sort(keys)
		for _, writable := range []bool{false, true} {
			run := s.View
			if writable {
				run = s.Update
			}
			if err := run(bg, func(tx store.Tx) error {
				var got []string
				if err := tx.Scan("p/", func(k string, _ []byte) error {
					got = append(got, k)
					return nil
				}); err != nil {
					return err
				}
				if !slices.Equal(got, keys) {
					return fmt.Errorf("Scan returned %d keys, out of order or missing (want %d)", len(got), len(keys))
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func TestAtomicity(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "a", "1", "b", "1", "c/1", "1")
		before := dump(t, s)
		stats := s.Stats()
		mutate := func(tx store.Tx) {
			for _, err := range []error{
				tx.Put("a", []byte("2")),
				tx.Put("new", []byte("2")),
				tx.Delete("b"),
				tx.DeletePrefix("c/"),
			} {
				if err != nil {
					t.Errorf("op: %v", err)
				}
			}
		}

		errBoom := errors.New("boom")
		if err := s.Update(bg, func(tx store.Tx) error {
			mutate(tx)
			return fmt.Errorf("wrapped: %w", errBoom)
		}); !errors.Is(err, errBoom) {
			t.Fatalf("Update error = %v, want wrapped errBoom", err)
		}
		if got := dump(t, s); got != before {
			t.Fatalf("failed Update changed the store:\n%s", got)
		}

		func() {
			defer func() {
				if r := recover(); r != "panic value" {
					t.Fatalf("recovered %v, want the panic value", r)
				}
			}()
			s.Update(bg, func(tx store.Tx) error {
				mutate(tx)
				if _, err := tx.Get("a"); err != nil {
					t.Error(err)
				}
				panic("panic value")
			})
			t.Fatal("Update returned after a panic")
		}()
		if got := dump(t, s); got != before {
			t.Fatalf("panicking Update changed the store:\n%s", got)
		}

		// ctx canceled in the middle of f: f's reads fail or f returns
		// nil, and nothing is written either way.
		ctx, cancel := context.WithCancel(bg)
		err := s.Update(ctx, func(tx store.Tx) error {
			mutate(tx)
			cancel()
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Update with ctx canceled in f = %v", err)
		}
		ctx, cancel = context.WithCancel(bg)
		err = s.Update(ctx, func(tx store.Tx) error {
			mutate(tx)
			cancel()
			if _, err := tx.Get("zzz"); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Update whose read saw ctx canceled = %v", err)
		}
		if err := s.Update(ctx, func(store.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("Update with a canceled ctx = %v", err)
		}
		if err := s.View(ctx, func(store.Tx) error { return nil }); !errors.Is(err, context.Canceled) {
			t.Fatalf("View with a canceled ctx = %v", err)
		}
		if got := dump(t, s); got != before {
			t.Fatalf("canceled Update changed the store:\n%s", got)
		}

		put(t, s, "after", "panic")
		got := s.Stats()
		if got.Commits != stats.Commits+1 || got.Rollbacks != stats.Rollbacks+4 {
			t.Fatalf("Stats = %+v, before %+v; want +1 commit, +4 rollbacks", got, stats)
		}
	})
}

func TestTxDone(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		var kept store.Tx
		put(t, s, "k", "v")
		if err := s.Update(bg, func(tx store.Tx) error { kept = tx; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := kept.Get("k"); !errors.Is(err, store.ErrTxDone) {
			t.Fatalf("Get after the Update = %v", err)
		}
		if err := kept.Put("k", nil); !errors.Is(err, store.ErrTxDone) {
			t.Fatalf("Put after the Update = %v", err)
		}
		if err := kept.Scan("", func(string, []byte) error { return nil }); !errors.Is(err, store.ErrTxDone) {
			t.Fatalf("Scan after the Update = %v", err)
		}
		if err := s.View(bg, func(tx store.Tx) error { kept = tx; return nil }); err != nil {
			t.Fatal(err)
		}
		if _, err := kept.Get("k"); !errors.Is(err, store.ErrTxDone) {
			t.Fatalf("Get after the View = %v", err)
		}
	})
}

func TestClose(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "k", "v")
		// Close waits for a running transaction.
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- s.Update(bg, func(tx store.Tx) error {
				close(started)
				<-release
				return tx.Put("k", []byte("w"))
			})
		}()
		<-started
		closed := make(chan struct{})
		go func() { s.Close(); close(closed) }()
		select {
		case <-closed:
			t.Fatal("Close returned while an Update was running")
		case <-time.After(50 * time.Millisecond):
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatalf("Update running at Close: %v", err)
		}
		<-closed
		if err := s.Update(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Fatalf("Update after Close = %v", err)
		}
		if err := s.View(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Fatalf("View after Close = %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close = %v", err)
		}
	})
}

func TestSerialisedUpdates(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		put(t, s, "n", "0", "m", "0")
		const workers, each = 4, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					if err := s.Update(bg, func(tx store.Tx) error {
						for _, k := range []string{"n", "m"} {
							v, err := tx.Get(k)
							if err != nil {
								return err
							}
							var n int
							fmt.Sscan(string(v), &n)
							if err := tx.Put(k, []byte(fmt.Sprint(n+1))); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		// Views running meanwhile see n == m: a consistent snapshot.
		stop := make(chan struct{})
		viewErr := make(chan error, 1)
		go func() {
			for {
				select {
				case <-stop:
					viewErr <- nil
					return
				default:
				}
				if err := s.View(bg, func(tx store.Tx) error {
					n, err := tx.Get("n")
					if err != nil {
						return err
					}
					time.Sleep(time.Millisecond)
					m, err := tx.Get("m")
					if err != nil {
						return err
					}
					if !bytes.Equal(n, m) {
						return fmt.Errorf("View saw n=%s m=%s", n, m)
					}
					return nil
				}); err != nil {
					viewErr <- err
					return
				}
			}
		}()
		wg.Wait()
		close(stop)
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if err := <-viewErr; err != nil {
			t.Fatal(err)
		}
		if v, _ := get(t, s, "n"); v != fmt.Sprint(workers*each) {
			t.Fatalf("n = %s, want %d", v, workers*each)
		}

		// A writer waiting for its turn gives up with ctx.Err().
		hold, release := make(chan struct{}), make(chan struct{})
		go s.Update(bg, func(store.Tx) error { close(hold); <-release; return nil })
		<-hold
		ctx, cancel := context.WithTimeout(bg, 50*time.Millisecond)
		defer cancel()
		if err := s.Update(ctx, func(store.Tx) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiting Update = %v", err)
		}
		close(release)
	})
}

func TestLargeValues(t *testing.T) {
	forEach(t, func(t *testing.T, s testStore) {
		big := make([]byte, 4<<20)
		rand.Read(big)
		other := bytes.Repeat([]byte("compressible "), 300_000)
		if err := s.Update(bg, func(tx store.Tx) error {
			if err := tx.Put("big/1", big); err != nil {
				return err
			}
			return tx.Put("big/2", other)
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.View(bg, func(tx store.Tx) error {
			v, err := tx.Get("big/1")
			if err != nil || !bytes.Equal(v, big) {
				return fmt.Errorf("Get big: %d bytes, %v", len(v), err)
			}
			n := 0
			err = tx.Scan("big/", func(k string, v []byte) error {
				n++
				if want := map[string][]byte{"big/1": big, "big/2": other}[k]; !bytes.Equal(v, want) {
					return fmt.Errorf("Scan %s: %d bytes", k, len(v))
				}
				return nil
			})
			if err == nil && n != 2 {
				err = fmt.Errorf("Scan visited %d keys", n)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRandomAgainstMemory runs random transactions on the store and on
// store.Memory and compares their states and every read.
func TestRandomAgainstMemory(t *testing.T) {
	s := NewAccount(t)
	m := store.NewMemory()
	defer m.Close()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 1))
	alphabet := []string{"a", "b", "/", "%", "_", "\x00", "\x7f", "\x80", "\xff"}
	long := strings.Repeat("h", 1020)
	key := func() string {
		var b strings.Builder
		if rng.IntN(8) == 0 {
			b.WriteString(long) // keys around the 1024-byte index head
		}
		for range 1 + rng.IntN(6) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return b.String()
	}
	prefix := func() string { k := key(); return k[:rng.IntN(len(k)+1)] }
	errAbort := errors.New("abort")
	for round := range 150 {
		// The same random operations on both; reads are logged and
		// compared.
		opSeed := rng.Uint64()
		abort := rng.IntN(5) == 0
		run := func(st store.Store) (log []string, err error) {
			r := mrand.New(mrand.NewPCG(opSeed, 2))
			saved := rng
			rng = r
			defer func() { rng = saved }()
			err = st.Update(bg, func(tx store.Tx) error {
				for range 1 + r.IntN(12) {
					switch r.IntN(10) {
					case 0, 1, 2, 3:
						k := key()
						v := make([]byte, r.IntN(40))
						for i := range v {
							v[i] = byte(r.Uint32())
						}
						if err := tx.Put(k, v); err != nil {
							return err
						}
					case 4, 5:
						if err := tx.Delete(key()); err != nil {
							return err
						}
					case 6:
						if err := tx.DeletePrefix(prefix()); err != nil {
							return err
						}
					case 7, 8:
						k := key()
						v, err := tx.Get(k)
						log = append(log, fmt.Sprintf("get %q = %q %v", k, v, errors.Is(err, store.ErrNotFound)))
						if err != nil && !errors.Is(err, store.ErrNotFound) {
							return err
						}
					case 9:
						p := prefix()
						got, err := scanString(tx, p)
						if err != nil {
							return err
						}
						log = append(log, fmt.Sprintf("scan %q = %q", p, got))
					}
				}
				if abort {
					return errAbort
				}
				return nil
			})
			if errors.Is(err, errAbort) {
				err = nil
			}
			return log, err
		}
		lm, err := run(m)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := run(s)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(lm, ls) {
			for i := range min(len(lm), len(ls)) {
				if lm[i] != ls[i] {
					t.Fatalf("round %d: read %d differs:\nmemory:   %s\npostgres: %s", round, i, lm[i], ls[i])
				}
			}
			t.Fatalf("round %d: reads differ in number", round)
		}
		if dm, ds := dump(t, m), dump(t, s); dm != ds {
			t.Fatalf("round %d: states differ:\nmemory:\n%s\npostgres:\n%s", round, dm, ds)
		}
	}
}
