package postgres

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"mellium.im/omemo/store"
)

func TestSchemaVersion(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	// Processes starting together on an empty database: one creates the
	// schema, the others wait for it and find it current.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := Open(bg, dsn, nil)
			if err == nil {
				err = db.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	admin := adminConn(t, dsn)
	var rows, version int
	if err := admin.QueryRow(bg, `SELECT count(*), max(version) FROM omemo_schema_version`).Scan(&rows, &version); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || version != SchemaVersion {
		t.Fatalf("omemo_schema_version: %d rows, version %d", rows, version)
	}

	// A database written by a newer version is refused.
	if _, err := admin.Exec(bg, `UPDATE omemo_schema_version SET version = version + 1`); err != nil {
		t.Fatal(err)
	}
	if db, err := Open(bg, dsn, nil); !errors.Is(err, store.ErrVersion) {
		if err == nil {
			db.Close()
		}
		t.Fatalf("Open of a newer schema = %v, want ErrVersion", err)
	}
	if _, err := admin.Exec(bg, `UPDATE omemo_schema_version SET version = $1`, SchemaVersion); err != nil {
		t.Fatal(err)
	}
	OpenDB(t, dsn, nil)
}

// TestAccountsIsolated keeps several accounts with the same keys in one
// schema: each sees only its own.
func TestAccountsIsolated(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	db := OpenDB(t, dsn, nil)
	names := []string{"alice@example.org", "bob@example.org", "alice@example.org/x", "Alice@example.org"}
	var sts []*Store
	for _, n := range names {
		st := OpenAccount(t, db, n)
		sts = append(sts, st)
		put(t, st, "omemo/identity", "id of "+n, "omemo/sessions/1", "s1 of "+n, "\xff", "ff of "+n)
	}
	if err := sts[0].Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("") }); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, sts[0]); got != "" {
		t.Fatalf("%s after DeletePrefix(\"\"): %q", names[0], got)
	}
	for i, st := range sts[1:] {
		n := names[i+1]
		want := fmt.Sprintf("%q=%q\n%q=%q\n%q=%q\n", "omemo/identity", "id of "+n, "omemo/sessions/1", "s1 of "+n, "\xff", "ff of "+n)
		if got := dump(t, st); got != want {
			t.Fatalf("%s:\n%s\nwant:\n%s", n, got, want)
		}
	}
	admin := adminConn(t, dsn)
	var n int
	if err := admin.QueryRow(bg, `SELECT count(*) FROM omemo_kv`).Scan(&n); err != nil || n != 3*(len(names)-1) {
		t.Fatalf("%d rows in omemo_kv (%v), want %d", n, err, 3*(len(names)-1))
	}
}

// TestRoundTrips measures the round trips to the server of typical
// transactions once the statements are prepared on the pool's
// connections.
func TestRoundTrips(t *testing.T) {
	var rt roundTrips
	db := openCounting(t, Cluster(t).CreateDatabase(t), &rt)
	st := OpenAccount(t, db, "alice@example.org")
	session, inbox := bytes.Repeat([]byte{1}, 1024), bytes.Repeat([]byte{2}, 2048)
	put(t, st, "session", string(session))
	seq := 0
	cases := []struct {
		name string
		max  int64
		run  func() error
	}{
		{"Update: Get, Put 1 KiB, Put 2 KiB (steady-state decryption)", 2, func() error {
			seq++
			return st.Update(bg, func(tx store.Tx) error {
				if _, err := tx.Get("session"); err != nil {
					return err
				}
				if err := tx.Put("session", session); err != nil {
					return err
				}
				return tx.Put(fmt.Sprintf("inbox/%08d", seq), inbox)
			})
		}},
		{"Update: Put, Delete, DeletePrefix (writes only)", 1, func() error {
			return st.Update(bg, func(tx store.Tx) error {
				if err := tx.Put("session", session); err != nil {
					return err
				}
				if err := tx.Delete(fmt.Sprintf("inbox/%08d", seq)); err != nil {
					return err
				}
				return tx.DeletePrefix("skipped/")
			})
		}},
		{"Update: nothing written", 0, func() error {
			return st.Update(bg, func(store.Tx) error { return nil })
		}},
		{"View: Get", 2, func() error {
			return st.View(bg, func(tx store.Tx) error { _, err := tx.Get("session"); return err })
		}},
		{"View: Get, Get, Scan (one page)", 4, func() error {
			return st.View(bg, func(tx store.Tx) error {
				for _, k := range []string{"session", "missing"} {
					if _, err := tx.Get(k); err != nil && !errors.Is(err, store.ErrNotFound) {
						return err
					}
				}
				return tx.Scan("session", func(string, []byte) error { return nil })
			})
		}},
	}
	for _, c := range cases {
		// Warm up: the first use of a statement on a connection prepares it.
		for range 5 {
			if err := c.run(); err != nil {
				t.Fatal(err)
			}
		}
		const n = 20
		before := rt.Load()
		for range n {
			if err := c.run(); err != nil {
				t.Fatal(err)
			}
		}
		got := float64(rt.Load()-before) / n
		t.Logf("%-62s %.2f round trips", c.name, got)
		if got > float64(c.max) {
			t.Errorf("%s: %.2f round trips, want at most %d", c.name, got, c.max)
		}
	}
}

// BenchmarkUpdate measures a small steady-state write (Get and Put of a
// 1 KiB session, Put of a 2 KiB inbox entry: what decrypting a message
// costs) on the loopback cluster, next to the bbolt store on the local
// disk, both durable (fsync on).
func BenchmarkUpdate(b *testing.B) {
	session, inbox := bytes.Repeat([]byte{1}, 1024), bytes.Repeat([]byte{2}, 2048)
	run := func(b *testing.B, st store.Store) {
		put(b, st, "omemo/sessions/bob@example.org/1", string(session))
		b.ResetTimer()
		for i := range b.N {
			if err := st.Update(bg, func(tx store.Tx) error {
				if _, err := tx.Get("omemo/sessions/bob@example.org/1"); err != nil {
					return err
				}
				if err := tx.Put("omemo/sessions/bob@example.org/1", session); err != nil {
					return err
				}
				return tx.Put(fmt.Sprintf("omemo/inbox/%016d", i), inbox)
			}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The -nosync variants do not wait for the disk (PostgreSQL's
	// synchronous_commit=off, bbolt's NoSync), which shows the cost of
	// the protocol and the round trips apart from fsync.
	for _, sync := range []bool{true, false} {
		suffix := ""
		if !sync {
			suffix = "-nosync"
		}
		b.Run("postgres"+suffix, func(b *testing.B) {
			var rt roundTrips
			dsn := Cluster(b).CreateDatabase(b)
			if !sync {
				dsn += "&synchronous_commit=off"
			}
			db := openCounting(b, dsn, &rt)
			st := OpenAccount(b, db, "alice@example.org")
			before := rt.Load()
			run(b, st)
			b.ReportMetric(float64(rt.Load()-before)/float64(b.N), "roundtrips/op")
		})
		b.Run("bolt"+suffix, func(b *testing.B) {
			st, err := store.Open(filepath.Join(b.TempDir(), "bench.db"), &store.Options{NoSync: !sync})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			run(b, st)
		})
	}
}
