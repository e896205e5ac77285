package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
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

// The behaviour every Store promises is checked by the conformance suite
// (package storetest, run by conformance_test.go). The tests here check
// what is specific to this package's stores.

// TestClose checks, beyond the suite, that a writer queued on the write
// lock is turned away with ErrClosed (the suite also accepts that it
// runs) and the exact counters.
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
