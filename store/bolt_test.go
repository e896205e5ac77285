package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openT(t *testing.T, path string, opts *Options) *Bolt {
	t.Helper()
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestBoltReopenPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, nil)
	put(t, s, "omemo/identity", "key", "omemo/sessions/alice@example.org/1", "session")
	if err := s.Update(bg, func(tx Tx) error { return tx.Delete("omemo/identity") }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path, nil)
	defer s.Close()
	if got, want := dump(t, s), "omemo/sessions/alice@example.org/1=session\n"; got != want {
		t.Fatalf("after reopen: %q, want %q", got, want)
	}
	if err := s.Check(bg); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if s.Path() != path {
		t.Errorf("Path = %q, want %q", s.Path(), path)
	}
	if st := s.Stats(); st != (Stats{}) {
		t.Errorf("Stats of a freshly opened store = %+v", st)
	}
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, nil)
	const timeout = 300 * time.Millisecond
	start := time.Now()
	_, err := Open(path, &Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if elapsed < timeout-100*time.Millisecond || elapsed > timeout+2*time.Second {
		t.Errorf("second Open gave up after %v, LockTimeout %v", elapsed, timeout)
	}
	start = time.Now()
	if _, err := Open(path, &Options{LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open with negative LockTimeout = %v, want ErrLocked", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("negative LockTimeout waited %v", el)
	}
	// A read-only open needs a shared lock, which the writer excludes.
	if _, err := Open(path, &Options{ReadOnly: true, LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only Open of a locked store = %v, want ErrLocked", err)
	}
	// The writer is unaffected, and the lock is released by Close.
	put(t, s, "k", "v")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, path, &Options{LockTimeout: timeout})
	defer s2.Close()
	if v, err := get(t, s2, "k"); err != nil || v != "v" {
		t.Fatalf("k = %q, %v", v, err)
	}
}

func TestBoltReadOnly(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.db")
	if _, err := Open(filepath.Join(dir, "missing.db"), &Options{ReadOnly: true}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only Open of a missing file = %v, want ErrNotExist", err)
	}
	s := openT(t, path, nil)
	put(t, s, "k", "v")
	s.Close()

	r1 := openT(t, path, &Options{ReadOnly: true})
	defer r1.Close()
	r2 := openT(t, path, &Options{ReadOnly: true}) // shared lock
	defer r2.Close()
	if v, err := get(t, r2, "k"); err != nil || v != "v" {
		t.Fatalf("k = %q, %v", v, err)
	}
	if err := r1.Update(bg, func(tx Tx) error { return tx.Put("k", []byte("w")) }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Update on read-only store = %v", err)
	}
	if _, err := Open(path, &Options{LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-write Open while read-only opens exist = %v, want ErrLocked", err)
	}
}

func setVersion(t *testing.T, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return putVersion(tx.Bucket(metaBucket), v)
	}); err != nil {
		t.Fatal(err)
	}
}

func readVersion(t *testing.T, path string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v uint64
	db.View(func(tx *bolt.Tx) error {
		v = binary.BigEndian.Uint64(tx.Bucket(metaBucket).Get(versionKey))
		return nil
	})
	return v
}

func TestBoltVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, nil)
	put(t, s, "k", "v")
	s.Close()
	if v := readVersion(t, path); v != FormatVersion {
		t.Fatalf("stored version %d, want %d", v, FormatVersion)
	}

	setVersion(t, path, FormatVersion+1)
	for _, ro := range []bool{false, true} {
		if _, err := Open(path, &Options{ReadOnly: ro}); !errors.Is(err, ErrVersion) {
			t.Fatalf("Open(ReadOnly=%v) of a newer file = %v, want ErrVersion", ro, err)
		}
	}
	// The refused file was not modified.
	if v := readVersion(t, path); v != FormatVersion+1 {
		t.Fatalf("version changed to %d by a refused Open", v)
	}
	setVersion(t, path, 0)
	if _, err := Open(path, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of version 0 = %v, want ErrCorrupt", err)
	}
}

// withVersion returns l as if its current version were v, with the
// migrations in table.
func withVersion(l layout, v uint64, table map[uint64]migration) layout {
	l.version, l.migrations = v, table
	return l
}

func TestBoltMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, nil)
	put(t, s, "old", "1")
	s.Close()

	open := func() *bolt.DB {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	// Pretend the current format is 3: migrations 1→2 and 2→3 run in
	// order, in one transaction with the version update.
	var ran []uint64
	table := map[uint64]migration{
		1: func(tx *bolt.Tx) error {
			ran = append(ran, 1)
			b := tx.Bucket(dataBucket)
			v := b.Get([]byte("old"))
			if err := b.Put([]byte("new"), append([]byte(nil), v...)); err != nil {
				return err
			}
			return b.Delete([]byte("old"))
		},
		2: func(tx *bolt.Tx) error {
			ran = append(ran, 2)
			return tx.Bucket(dataBucket).Put([]byte("v3"), []byte("yes"))
		},
	}

	// A read-only open cannot migrate.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := prepare(db, true, withVersion(singleLayout, 3, table)); !errors.Is(err, ErrVersion) {
		t.Fatalf("read-only migration = %v, want ErrVersion", err)
	}
	db.Close()

	// A failing migration leaves the file untouched at its old version.
	errFail := errors.New("fail")
	failing := map[uint64]migration{1: table[1], 2: func(*bolt.Tx) error { return errFail }}
	db = open()
	if err := prepare(db, false, withVersion(singleLayout, 3, failing)); !errors.Is(err, errFail) {
		t.Fatalf("failing migration = %v", err)
	}
	// A missing step is refused.
	if err := prepare(db, false, withVersion(singleLayout, 4, table)); !errors.Is(err, ErrVersion) {
		t.Fatalf("migration with a missing step = %v, want ErrVersion", err)
	}
	db.Close()
	if v := readVersion(t, path); v != 1 {
		t.Fatalf("version after failed migrations = %d, want 1", v)
	}
	s = openT(t, path, nil)
	if got := dump(t, s); got != "old=1\n" {
		t.Fatalf("failed migration left %q", got)
	}
	s.Close()

	ran = nil
	db = open()
	if err := prepare(db, false, withVersion(singleLayout, 3, table)); err != nil {
		t.Fatalf("migration: %v", err)
	}
	db.Close()
	if len(ran) != 2 || ran[0] != 1 || ran[1] != 2 {
		t.Fatalf("migrations ran %v, want [1 2]", ran)
	}
	if v := readVersion(t, path); v != 3 {
		t.Fatalf("version after migration = %d, want 3", v)
	}
	// Already current: nothing runs.
	ran = nil
	db = open()
	if err := prepare(db, false, withVersion(singleLayout, 3, table)); err != nil || len(ran) != 0 {
		t.Fatalf("prepare at current version: %v, ran %v", err, ran)
	}
	db.Close()
	// This package's real Open now sees a newer file.
	if _, err := Open(path, nil); !errors.Is(err, ErrVersion) {
		t.Fatalf("Open of migrated file = %v, want ErrVersion", err)
	}
}

func TestBoltCorrupt(t *testing.T) {
	dir := t.TempDir()

	garbage := filepath.Join(dir, "garbage.db")
	junk := make([]byte, 3*4096)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(garbage, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(garbage, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of garbage = %v, want ErrCorrupt", err)
	}

	short := filepath.Join(dir, "short.db")
	if err := os.WriteFile(short, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(short, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a short non-database file = %v, want ErrCorrupt", err)
	}

	// A bbolt file that belongs to someone else.
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("widgets"))
		return err
	})
	db.Close()
	if _, err := Open(foreign, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a foreign bbolt file = %v, want ErrCorrupt", err)
	}

	// An empty file is initialised as a new store.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openT(t, empty, nil)
	put(t, s, "k", "v")
	s.Close()
}

func TestBoltFileMode(t *testing.T) {
	if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
		t.Skip("no Unix permissions")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "s.db")
	s := openT(t, path, nil)
	put(t, s, "k", "v")
	s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("new store has mode %v, want 0600", fi.Mode().Perm())
	}
	// An existing world-readable file is tightened on a read-write open.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path, nil)
	s.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("reopened store has mode %v, want 0600", fi.Mode().Perm())
	}
	if _, err := Open(dir, nil); err == nil {
		t.Fatal("Open of a directory succeeded")
	}
	// A refused file is left entirely as it was, permissions included.
	bad := filepath.Join(dir, "bad.db")
	if err := os.WriteFile(bad, []byte("not a store"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bad, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of a bad file = %v, want ErrCorrupt", err)
	}
	if fi, _ := os.Stat(bad); fi.Mode().Perm() != 0o644 {
		t.Fatalf("refused file has mode %v, want it left at 0644", fi.Mode().Perm())
	}
}

func TestBoltLargeValues(t *testing.T) {
	// Values spanning several pages survive a reopen intact.
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, nil)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 31)
	}
	if err := s.Update(bg, func(tx Tx) error { return tx.Put("big", big) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, path, nil)
	defer s.Close()
	v, err := get(t, s, "big")
	if err != nil || v != string(big) {
		t.Fatalf("big value differs after reopen (%v)", err)
	}
}

// TestBoltCheckConcurrent runs Check while Updates commit. bbolt's
// Tx.Check reads the freelist, which a committing writer changes, so Check
// must not run at the same time as a commit (a data race on a map, which
// can crash the process, and spurious reports of unreachable pages).
func TestBoltCheckConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, &Options{NoSync: true})
	defer s.Close()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			// Rewrites and deletions free pages on every commit.
			if err := s.Update(bg, func(tx Tx) error {
				if err := tx.Put(fmt.Sprintf("k/%d", i%50), make([]byte, 100+i%3000)); err != nil {
					return err
				}
				return tx.Delete(fmt.Sprintf("k/%d", (i+25)%50))
			}); err != nil {
				done <- err
				return
			}
		}
	}()
	for range 200 {
		if err := s.Check(bg); err != nil {
			t.Error(err)
			break
		}
	}
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
