package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// manyEnv, if set to a number, overrides the number of accounts of
// TestManyAccounts; manySyncEnv=1 makes it fsync its commits (the default
// is NoSync, to keep the test fast: each commit costs one fsync, a few ms
// on a typical disk).
const (
	manyEnv     = "OMEMO_STORE_MANY_ACCOUNTS"
	manySyncEnv = "OMEMO_STORE_MANY_SYNC"
)

// firstUpdate writes what the first Update of a session manager roughly
// writes for an account, minus the one-time pre-keys: an identity key, a
// signed pre-key and a device list (about 300 bytes).
func firstUpdate(i int) func(Tx) error {
	return func(tx Tx) error {
		ns := "omemo/ns/urn:xmpp:omemo:2/"
		if err := tx.Put(ns+"identity", bytes.Repeat([]byte{byte(i)}, 64)); err != nil {
			return err
		}
		if err := tx.Put(ns+"spk/1", bytes.Repeat([]byte{byte(i >> 8)}, 160)); err != nil {
			return err
		}
		return tx.Put(ns+"devices/self", []byte(strconv.Itoa(100000+i)))
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestManyAccounts opens many accounts of one file at once (as a gateway
// does), makes each of them do one Update from a pool of goroutines, and
// reports the time, the size of the file and the memory an open account
// costs.
func TestManyAccounts(t *testing.T) {
	n := 10000
	if testing.Short() || raceBuild {
		n = 2000
	}
	if v := os.Getenv(manyEnv); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	opts := &Options{NoSync: os.Getenv(manySyncEnv) != "1"}
	path := filepath.Join(t.TempDir(), "accounts.db")
	a := openAccountsT(t, path, opts)
	defer a.Close()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("user%05d@gateway.example.org", i)
	}

	stores := make([]Store, n)
	before := heapInUse()
	start := time.Now()
	for i, name := range names {
		stores[i] = accountT(t, a, name)
	}
	openTime := time.Since(start)
	perAccount := float64(heapInUse()-before) / float64(n)

	const workers = 32
	start = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := stores[i].Update(bg, firstUpdate(i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	updateTime := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, s := range stores {
		s.Close()
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	// Reopen (which validates the whole file), check, and read every
	// account back.
	start = time.Now()
	a = openAccountsT(t, path, nil)
	reopenTime := time.Since(start)
	start = time.Now()
	if err := a.Check(bg); err != nil {
		t.Fatal(err)
	}
	checkTime := time.Since(start)
	for i, name := range names {
		s := accountT(t, a, name)
		if err := s.View(bg, func(tx Tx) error {
			v, err := tx.Get("omemo/ns/urn:xmpp:omemo:2/devices/self")
			if err != nil {
				return err
			}
			if string(v) != strconv.Itoa(100000+i) {
				return fmt.Errorf("account %d has device %s", i, v)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	a.Close()
	var used int64
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil })
	db.Close()

	t.Logf("%d accounts (NoSync %v, race %v): Account for all %v (%.0f bytes of heap per open account); "+
		"one Update each from %d goroutines %v (%.0f µs per Update, %.0f Updates/s); "+
		"file %d bytes (%d in use, %.0f per account); reopen %v; Check %v",
		n, opts.NoSync, raceBuild, openTime.Round(time.Millisecond), perAccount,
		workers, updateTime.Round(time.Millisecond), float64(updateTime.Microseconds())/float64(n), float64(n)/updateTime.Seconds(),
		fi.Size(), used, float64(used)/float64(n), reopenTime.Round(time.Millisecond), checkTime.Round(time.Millisecond))
}

// TestManyMemoryAccounts reports the memory an open account of a
// MemoryAccounts costs, and checks that released empty accounts cost
// nothing.
func TestManyMemoryAccounts(t *testing.T) {
	const n = 10000
	a := NewMemoryAccounts()
	defer a.Close()
	stores := make([]Store, n)
	before := heapInUse()
	for i := range stores {
		stores[i] = accountT(t, a, fmt.Sprintf("user%05d@gateway.example.org", i))
	}
	perAccount := float64(heapInUse()-before) / float64(n)
	start := time.Now()
	for i, s := range stores {
		if err := s.Update(bg, firstUpdate(i)); err != nil {
			t.Fatal(err)
		}
	}
	updateTime := time.Since(start)
	for _, s := range stores {
		s.Close()
	}
	a.mu.Lock()
	held, idle := len(a.held), len(a.idle)
	a.mu.Unlock()
	if held != 0 || idle != n {
		t.Fatalf("after Close: %d held, %d idle accounts, want 0 and %d", held, idle, n)
	}
	// Emptied accounts are forgotten.
	for i := range n {
		s := accountT(t, a, fmt.Sprintf("user%05d@gateway.example.org", i))
		if err := s.Update(bg, func(tx Tx) error { return tx.DeletePrefix("") }); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	a.mu.Lock()
	idle = len(a.idle)
	a.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d emptied accounts are kept", idle)
	}
	t.Logf("%d memory accounts: %.0f bytes of heap per open account; one Update each %v", n, perAccount, updateTime.Round(time.Millisecond))
}
