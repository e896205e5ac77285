package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openAccountsT(t *testing.T, path string, opts *Options) *BoltAccounts {
	t.Helper()
	a, err := OpenAccounts(path, opts)
	if err != nil {
		t.Fatalf("OpenAccounts: %v", err)
	}
	return a
}

func accountT(t testing.TB, a Accounts, name string) Store {
	t.Helper()
	s, err := a.Account(bg, name)
	if err != nil {
		t.Fatalf("Account(%q): %v", name, err)
	}
	return s
}

// rawBuckets returns the names of the account buckets of a multi-account
// file, read with bbolt directly.
func rawBuckets(t *testing.T, path string) []string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var names []string
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(accountsBucket).ForEachBucket(func(k []byte) error {
			names = append(names, string(k))
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

func TestBoltAccountsReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.db")
	a := openAccountsT(t, path, nil)
	if a.Path() != path {
		t.Errorf("Path = %q, want %q", a.Path(), path)
	}
	alice := accountT(t, a, "alice@example.org")
	bob := accountT(t, a, "bob@example.org")
	carol := accountT(t, a, "carol@example.org")
	put(t, alice, "omemo/identity", "alice-key", "omemo/sessions/bob@example.org/1", "s")
	put(t, bob, "omemo/identity", "bob-key")
	put(t, carol, "omemo/identity", "carol-key")
	// An account that is emptied, by DeletePrefix or by Delete, and one
	// that was opened but never written, leave no bucket.
	if err := carol.Update(bg, func(tx Tx) error { return tx.DeletePrefix("") }); err != nil {
		t.Fatal(err)
	}
	dave := accountT(t, a, "dave@example.org")
	put(t, dave, "k", "v")
	if err := dave.Update(bg, func(tx Tx) error { return tx.Delete("k") }); err != nil {
		t.Fatal(err)
	}
	// A transaction that deletes some keys and keeps others keeps it.
	if err := alice.Update(bg, func(tx Tx) error { return tx.Delete("omemo/sessions/bob@example.org/1") }); err != nil {
		t.Fatal(err)
	}
	accountT(t, a, "erin@example.org")
	// A View of an account without a bucket works.
	if got := dump(t, carol); got != "" {
		t.Fatalf("emptied account holds %q", got)
	}
	if err := a.Check(bg); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rawBuckets(t, path)); got != "[alice@example.org bob@example.org]" {
		t.Fatalf("account buckets %s, want alice and bob only", got)
	}

	a = openAccountsT(t, path, nil)
	defer a.Close()
	for name, want := range map[string]string{
		"alice@example.org": "omemo/identity=alice-key\n",
		"bob@example.org":   "omemo/identity=bob-key\n",
		"carol@example.org": "",
		"dave@example.org":  "",
	} {
		s := accountT(t, a, name)
		if got := dump(t, s); got != want {
			t.Errorf("after reopen, %s holds %q, want %q", name, got, want)
		}
		s.Close()
	}
	if err := a.Check(bg); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

func TestBoltAccountsStats(t *testing.T) {
	a := openAccountsT(t, filepath.Join(t.TempDir(), "accounts.db"), &Options{NoSync: true})
	defer a.Close()
	alice := accountT(t, a, "alice@example.org")
	bob := accountT(t, a, "bob@example.org")
	put(t, alice, "k", "v")
	put(t, alice, "k", "w")
	alice.Update(bg, func(Tx) error { return errors.New("no") })
	put(t, bob, "k", "v")
	type statser interface{ Stats() Stats }
	if st := alice.(statser).Stats(); st != (Stats{Commits: 2, Rollbacks: 1}) {
		t.Errorf("alice's Stats = %+v", st)
	}
	if st := bob.(statser).Stats(); st != (Stats{Commits: 1}) {
		t.Errorf("bob's Stats = %+v", st)
	}
	// A new Store of the account counts from zero.
	alice.Close()
	alice = accountT(t, a, "alice@example.org")
	if st := alice.(statser).Stats(); st != (Stats{}) {
		t.Errorf("new Store's Stats = %+v", st)
	}
}

// goldenSingle is a single-account file written by the version of this
// package that preceded multi-account files (FormatVersion 1), trimmed to
// the end of its last page. It holds goldenContents.
const goldenSingle = "testdata/v1-single.db"

const goldenContents = "omemo/ns/urn:xmpp:omemo:2/identity=identity-key\n" +
	"omemo/ns/urn:xmpp:omemo:2/sessions/bob@example.org/1234=session\n" +
	"omemo/ns/urn:xmpp:omemo:2/trust/bob@example.org/1234=\n" +
	"omemo/\xff=high\n"

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestBoltFormatsCompat(t *testing.T) {
	dir := t.TempDir()

	// A file written before multi-account files existed opens with Open,
	// read-only and read-write, and is refused by OpenAccounts without
	// being changed.
	single := filepath.Join(dir, "single.db")
	copyFile(t, goldenSingle, single)
	orig := fileBytes(t, single)
	for _, opts := range []*Options{{ReadOnly: true}, nil} {
		s := openT(t, single, opts)
		if got := dump(t, s); got != goldenContents {
			t.Fatalf("old file holds %q, want %q", got, goldenContents)
		}
		if err := s.Check(bg); err != nil {
			t.Fatalf("Check of the old file: %v", err)
		}
		s.Close()
	}
	if !bytes.Equal(fileBytes(t, single), orig) {
		t.Fatal("opening the old file changed it")
	}
	for _, ro := range []bool{false, true} {
		_, err := OpenAccounts(single, &Options{ReadOnly: ro})
		if !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("OpenAccounts(ReadOnly=%v) of a single-account file = %v, want ErrVersion", ro, err)
		}
	}
	if !bytes.Equal(fileBytes(t, single), orig) {
		t.Fatal("a refused OpenAccounts changed the file")
	}
	// It is still a working store.
	s := openT(t, single, nil)
	put(t, s, "new", "1")
	if got := dump(t, s); got != "new=1\n"+goldenContents {
		t.Fatalf("old file after a write holds %q", got)
	}
	s.Close()
	if v := readVersion(t, single); v != FormatVersion {
		t.Fatalf("old file has version %d after use, want %d", v, FormatVersion)
	}

	// A multi-account file is refused by Open without being changed.
	multi := filepath.Join(dir, "multi.db")
	a := openAccountsT(t, multi, nil)
	put(t, accountT(t, a, "alice@example.org"), "k", "v")
	a.Close()
	orig = fileBytes(t, multi)
	for _, ro := range []bool{false, true} {
		_, err := Open(multi, &Options{ReadOnly: ro})
		if !errors.Is(err, ErrVersion) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open(ReadOnly=%v) of a multi-account file = %v, want ErrVersion", ro, err)
		}
	}
	if !bytes.Equal(fileBytes(t, multi), orig) {
		t.Fatal("a refused Open changed the file")
	}
	if v := readVersion(t, multi); v != AccountsFormatVersion {
		t.Fatalf("multi-account file has version %d, want %d", v, AccountsFormatVersion)
	}

	// An empty file becomes a multi-account store.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a = openAccountsT(t, empty, nil)
	put(t, accountT(t, a, "alice@example.org"), "k", "v")
	a.Close()
	if _, err := OpenAccounts(filepath.Join(dir, "missing.db"), &Options{ReadOnly: true}); err == nil {
		t.Fatal("read-only OpenAccounts of a missing file succeeded")
	}
}

func TestBoltAccountsLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.db")
	a := openAccountsT(t, path, nil)
	start := time.Now()
	if _, err := OpenAccounts(path, &Options{LockTimeout: 100 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second OpenAccounts = %v, want ErrLocked", err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("second OpenAccounts waited %v", el)
	}
	// The lock is taken before the format is looked at.
	if _, err := Open(path, &Options{LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open of a locked multi-account file = %v, want ErrLocked", err)
	}
	if _, err := OpenAccounts(path, &Options{ReadOnly: true, LockTimeout: -1}); !errors.Is(err, ErrLocked) {
		t.Fatalf("read-only OpenAccounts of a locked file = %v, want ErrLocked", err)
	}
	put(t, accountT(t, a, "alice@example.org"), "k", "v")
	a.Close()
	a = openAccountsT(t, path, &Options{LockTimeout: -1})
	a.Close()
}

func TestBoltAccountsReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.db")
	a := openAccountsT(t, path, nil)
	put(t, accountT(t, a, "alice@example.org"), "k", "v")
	a.Close()

	r1 := openAccountsT(t, path, &Options{ReadOnly: true})
	defer r1.Close()
	r2 := openAccountsT(t, path, &Options{ReadOnly: true}) // shared lock
	defer r2.Close()
	s := accountT(t, r1, "alice@example.org")
	if v, err := get(t, s, "k"); err != nil || v != "v" {
		t.Fatalf("k = %q, %v", v, err)
	}
	if err := s.Update(bg, func(tx Tx) error { return tx.Put("k", []byte("w")) }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Update of a read-only account = %v, want ErrReadOnly", err)
	}
	if err := accountT(t, r2, "new@example.org").Update(bg, func(tx Tx) error { return nil }); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Update of a new account in a read-only file = %v, want ErrReadOnly", err)
	}
	if err := r1.Check(bg); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// TestBoltAccountsMigrations checks that the migration machinery works for
// the multi-account format, separately from the single-account one.
func TestBoltAccountsMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.db")
	a := openAccountsT(t, path, nil)
	put(t, accountT(t, a, "alice@example.org"), "old", "1")
	put(t, accountT(t, a, "bob@example.org"), "old", "2")
	a.Close()

	// Pretend AccountsFormatVersion is 2, with a migration that renames a
	// key in every account.
	table := map[uint64]migration{
		1: func(tx *bolt.Tx) error {
			return tx.Bucket(accountsBucket).ForEachBucket(func(name []byte) error {
				b := tx.Bucket(accountsBucket).Bucket(name)
				v := bytes.Clone(b.Get([]byte("old")))
				if err := b.Put([]byte("new"), v); err != nil {
					return err
				}
				return b.Delete([]byte("old"))
			})
		},
	}
	open := func(ro bool) *bolt.DB {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: ro})
		if err != nil {
			t.Fatal(err)
		}
		return db
	}
	db := open(true)
	if err := prepare(db, true, withVersion(accountsLayout, 2, table)); !errors.Is(err, ErrVersion) {
		t.Fatalf("read-only migration = %v, want ErrVersion", err)
	}
	db.Close()
	// The single-account layout's version line is another one: its
	// migrations do not apply.
	db = open(false)
	if err := prepare(db, false, withVersion(singleLayout, 2, table)); !errors.Is(err, ErrVersion) {
		t.Fatalf("single-account migration of a multi-account file = %v, want ErrVersion", err)
	}
	if err := prepare(db, false, withVersion(accountsLayout, 2, table)); err != nil {
		t.Fatalf("migration: %v", err)
	}
	db.Close()
	if v := readVersion(t, path); v != 2 {
		t.Fatalf("version after migration = %d, want 2", v)
	}
	db = open(true)
	if err := db.View(func(tx *bolt.Tx) error {
		for _, name := range []string{"alice@example.org", "bob@example.org"} {
			b := tx.Bucket(accountsBucket).Bucket([]byte(name))
			if b.Get([]byte("old")) != nil || b.Get([]byte("new")) == nil {
				return fmt.Errorf("%s was not migrated", name)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// This package's real OpenAccounts now sees a newer file.
	if _, err := OpenAccounts(path, nil); !errors.Is(err, ErrVersion) {
		t.Fatalf("OpenAccounts of a migrated file = %v, want ErrVersion", err)
	}
}

// TestBoltAccountsCheck damages the layout of a multi-account file in ways
// that bbolt's own check does not see.
func TestBoltAccountsCheck(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(tx *bolt.Tx) error
	}{
		{"value in accounts bucket", func(tx *bolt.Tx) error {
			return tx.Bucket(accountsBucket).Put([]byte("mallory@example.org"), []byte("not a bucket"))
		}},
		{"bucket in account", func(tx *bolt.Tx) error {
			_, err := tx.Bucket(accountsBucket).Bucket([]byte("alice@example.org")).CreateBucket([]byte("nested"))
			return err
		}},
		{"invalid name", func(tx *bolt.Tx) error {
			b, err := tx.Bucket(accountsBucket).CreateBucket([]byte("bad\xff"))
			if err != nil {
				return err
			}
			return b.Put([]byte("k"), []byte("v"))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "accounts.db")
			a := openAccountsT(t, path, nil)
			put(t, accountT(t, a, "alice@example.org"), "k", "v")
			a.Close()
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(c.damage); err != nil {
				t.Fatal(err)
			}
			db.Close()
			a = openAccountsT(t, path, nil)
			defer a.Close()
			err = a.Check(bg)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Check = %v, want ErrCorrupt", err)
			}
			if bytes.Contains([]byte(err.Error()), []byte("example.org")) {
				t.Errorf("Check's error names an account: %v", err)
			}
			// The healthy account still works.
			if v, err := get(t, accountT(t, a, "alice@example.org"), "k"); err != nil || v != "v" {
				t.Errorf("alice's k = %q, %v", v, err)
			}
		})
	}
	// An account whose entry is not a bucket cannot be used.
	path := filepath.Join(t.TempDir(), "accounts.db")
	openAccountsT(t, path, nil).Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(accountsBucket).Put([]byte("mallory@example.org"), []byte("x"))
	})
	db.Close()
	a := openAccountsT(t, path, nil)
	defer a.Close()
	s := accountT(t, a, "mallory@example.org")
	if _, err := get(t, s, "k"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get in an account that is not a bucket = %v, want ErrCorrupt", err)
	}
	if err := s.Update(bg, func(tx Tx) error { return tx.Put("k", nil) }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Update of an account that is not a bucket = %v, want ErrCorrupt", err)
	}

	// A file without its accounts bucket is refused.
	path = filepath.Join(t.TempDir(), "accounts.db")
	openAccountsT(t, path, nil).Close()
	db, err = bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(accountsBucket) })
	db.Close()
	if _, err := OpenAccounts(path, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenAccounts without an accounts bucket = %v, want ErrCorrupt", err)
	}
}
