package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"mellium.im/omemo/store"
)

// adminConn is a connection to dsn for inspecting and sabotaging the
// database behind the stores' back.
func adminConn(tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	c, err := pgx.Connect(bg, dsn)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(bg) })
	return c
}

// leaseHolder returns the backend holding the advisory lock of the named
// account, or 0.
func leaseHolder(tb testing.TB, admin *pgx.Conn, name string) int32 {
	tb.Helper()
	var pid int32
	err := admin.QueryRow(bg, `SELECT l.pid FROM pg_locks l, omemo_accounts a, omemo_schema_version v
WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
AND l.classid = v.lock_class::oid AND l.objid = a.id::oid AND l.objsubid = 2 AND l.granted AND a.name = $1`, name).Scan(&pid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		tb.Fatal(err)
	}
	return pid
}

// terminate ends a backend and waits for it to exit.
func terminate(tb testing.TB, admin *pgx.Conn, pid int32) {
	tb.Helper()
	var ok bool
	if err := admin.QueryRow(bg, `SELECT pg_terminate_backend($1, 10000)`, pid).Scan(&ok); err != nil || !ok {
		tb.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
}

// rawValue reads a value of an account directly from the table.
func rawValue(tb testing.TB, admin *pgx.Conn, account, key string) (string, bool) {
	tb.Helper()
	var v []byte
	err := admin.QueryRow(bg, `SELECT value FROM omemo_kv k JOIN omemo_accounts a ON a.id = k.account_id WHERE a.name = $1 AND k.key = $2`,
		account, []byte(key)).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false
	}
	if err != nil {
		tb.Fatal(err)
	}
	return string(v), true
}

func TestLeaseInProcess(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	const name = "alice@example.org"
	db := OpenDB(t, dsn, &Options{LockTimeout: -1})
	st := OpenAccount(t, db, name)
	if pid := leaseHolder(t, adminConn(t, dsn), name); pid == 0 || pid != st.lease.pid {
		t.Fatalf("advisory lock held by backend %d, want the lease connection %d", pid, st.lease.pid)
	}

	// The same DB: refused at once (LockTimeout < 0).
	start := time.Now()
	if _, err := db.Account(bg, name); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Account in the same DB = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("refusal with LockTimeout < 0 took %v", d)
	}
	// Another DB (another lease connection): the advisory lock refuses,
	// after LockTimeout.
	db2 := OpenDB(t, dsn, &Options{LockTimeout: 200 * time.Millisecond})
	start = time.Now()
	if _, err := db2.Account(bg, name); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Account in another DB = %v, want ErrLocked", err)
	} else if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("gave up after %v, before LockTimeout", d)
	}
	// Other accounts are not affected.
	OpenAccount(t, db2, "bob@example.org")

	// A waiter gets the account when its holder closes it, in another DB
	// and in the same one.
	db3 := OpenDB(t, dsn, &Options{LockTimeout: 10 * time.Second})
	for _, waiterDB := range []*DB{db3, db3} {
		got := make(chan error, 1)
		var next store.Store
		go func() {
			s, err := waiterDB.Account(bg, name)
			next = s
			got <- err
		}()
		time.Sleep(100 * time.Millisecond)
		select {
		case err := <-got:
			t.Fatalf("Account returned %v while the account was held", err)
		default:
		}
		st.Close()
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the waiter did not get the account after Close")
		}
		st = next.(*Store)
		t.Cleanup(func() { st.Close() })
	}

	// A waiter gives up when its ctx is done.
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	if _, err := db.Account(ctx, name); !errors.Is(err, store.ErrLocked) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Account with a short ctx = %v", err)
	}
	if _, err := db2.Account(ctx, name); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Account with an expired ctx = %v", err)
	}
}

func TestAccountNames(t *testing.T) {
	db := OpenDB(t, SharedDSN(t), nil)
	for _, name := range []string{"", strings.Repeat("a", store.MaxAccountNameSize+1), "bad\xffutf8", "nul\x00"} {
		if _, err := db.Account(bg, name); !errors.Is(err, store.ErrInvalidAccount) {
			t.Errorf("Account(%q) = %v, want ErrInvalidAccount", name, err)
		}
	}
	// The longest name, incompressible.
	b := make([]rune, 0, store.MaxAccountNameSize)
	for i := 0; len(string(b)) < store.MaxAccountNameSize-3; i++ {
		b = append(b, rune(0x4e00+(i*7919)%20000))
	}
	st := OpenAccount(t, db, string(b))
	put(t, st, "k", "v")
}

func TestDBClose(t *testing.T) {
	db := OpenDB(t, Cluster(t).CreateDatabase(t), nil)
	st, err := db.Account(bg, "alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	put(t, st, "k", "v")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := st.Update(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Update after DB.Close = %v", err)
	}
	if _, err := db.Account(bg, "bob@example.org"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Account after DB.Close = %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
}

const (
	leaseChildEnv  = "OMEMO_PG_LEASE_CHILD_DSN"
	leaseChildName = "shared@example.org"
)

// TestLeaseChild is the child process of TestLeaseAcrossProcesses: it takes
// the account, writes to it, says so and waits to be killed.
func TestLeaseChild(t *testing.T) {
	dsn := os.Getenv(leaseChildEnv)
	if dsn == "" {
		t.Skip("the child process of TestLeaseAcrossProcesses")
	}
	fail := func(err error) {
		fmt.Println("omemo-lease: FAIL", err)
		os.Exit(3)
	}
	db, err := Open(bg, dsn, nil)
	if err != nil {
		fail(err)
	}
	st, err := db.Account(bg, leaseChildName)
	if err != nil {
		fail(err)
	}
	if err := st.Update(bg, func(tx store.Tx) error { return tx.Put("owner", []byte("child")) }); err != nil {
		fail(err)
	}
	fmt.Println("omemo-lease: held")
	time.Sleep(time.Minute) // killed long before
	fail(errors.New("not killed"))
}

// TestLeaseAcrossProcesses takes an account in a child process, checks
// that this process cannot take it while the child lives, kills the child
// (SIGKILL: no Close, no unlock) and takes the account over.
func TestLeaseAcrossProcesses(t *testing.T) {
	if os.Getenv(leaseChildEnv) != "" {
		t.Skip("in the child process")
	}
	dsn := Cluster(t).CreateDatabase(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLeaseChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), leaseChildEnv+"="+dsn)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case l := <-lines:
		if l != "omemo-lease: held" {
			t.Fatalf("child: %s\n%s", l, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the child did not take the account\n%s", stderr.String())
	}

	db := OpenDB(t, dsn, &Options{LockTimeout: 300 * time.Millisecond})
	if _, err := db.Account(bg, leaseChildName); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Account while the child holds it = %v, want ErrLocked", err)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed := time.Now()
	db2 := OpenDB(t, dsn, &Options{LockTimeout: 10 * time.Second})
	st, err := db2.Account(bg, leaseChildName)
	if err != nil {
		t.Fatalf("Account after the child was killed: %v", err)
	}
	defer st.Close()
	took := time.Since(killed)
	t.Logf("account taken over %v after the holder was killed", took)
	if took > 5*time.Second {
		t.Errorf("taking the account over took %v", took)
	}
	if v, err := get(t, st, "owner"); err != nil || v != "child" {
		t.Fatalf("owner = %q, %v; want the child's committed write", v, err)
	}
	put(t, st, "owner", "parent")
}

// TestFenceLeaseLost ends the lease connection's backend: the Store must
// refuse to write from then on, with ErrLeaseLost (and store.ErrLocked),
// and the account can be opened again.
func TestFenceLeaseLost(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	const name = "alice@example.org"
	db := OpenDB(t, dsn, &Options{LockTimeout: 100 * time.Millisecond})
	st := OpenAccount(t, db, name)
	other := OpenAccount(t, db, "bob@example.org") // shares the lease connection
	put(t, st, "k", "before")
	put(t, other, "k", "bob")
	admin := adminConn(t, dsn)
	terminate(t, admin, leaseHolder(t, admin, name))

	err := st.Update(bg, func(tx store.Tx) error { return tx.Put("k", []byte("after")) })
	if !errors.Is(err, ErrLeaseLost) || !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Update after the lease connection died = %v, want ErrLeaseLost", err)
	}
	t.Logf("Update: %v", err)
	for _, s := range []*Store{st, other} {
		if err := s.Update(bg, func(tx store.Tx) error { return tx.Put("k", []byte("later")) }); !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("%s: later Update = %v, want ErrLeaseLost", s.Name(), err)
		}
	}
	if err := st.View(bg, func(store.Tx) error { return nil }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("View of a fenced Store = %v", err)
	}
	for acct, want := range map[string]string{name: "before", "bob@example.org": "bob"} {
		if v, _ := rawValue(t, admin, acct, "k"); v != want {
			t.Fatalf("%s: k = %q after the lease was lost, want %q", acct, v, want)
		}
	}
	// The account opens again once the fenced Store is closed, on a new
	// lease connection.
	if _, err := db.Account(bg, name); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Account while the fenced Store is open = %v", err)
	}
	st.Close()
	st2 := OpenAccount(t, db, name)
	if v, err := get(t, st2, "k"); err != nil || v != "before" {
		t.Fatalf("k = %q, %v", v, err)
	}
	put(t, st2, "k", "again")
}

// TestFenceTakeover: a holder whose lease was taken over (its epoch is no
// longer current) cannot commit, even if its own connection is alive.
func TestFenceTakeover(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	const name = "alice@example.org"
	db := OpenDB(t, dsn, nil)
	st := OpenAccount(t, db, name)
	put(t, st, "k", "old holder")
	admin := adminConn(t, dsn)

	// What a new holder does first, with the lock: increment the epoch.
	if _, err := admin.Exec(bg, `UPDATE omemo_accounts SET epoch = epoch + 1 WHERE name = $1`, name); err != nil {
		t.Fatal(err)
	}
	err := st.Update(bg, func(tx store.Tx) error { return tx.Put("k", []byte("stale write")) })
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Update after a takeover = %v, want ErrLeaseLost", err)
	}
	if v, _ := rawValue(t, admin, name, "k"); v != "old holder" {
		t.Fatalf("k = %q", v)
	}

	// The real thing: the lease connection dies, another DB takes the
	// account over and writes; the old Store cannot.
	st2 := OpenAccount(t, db, "carol@example.org")
	put(t, st2, "k", "carol 1")
	terminate(t, admin, leaseHolder(t, admin, "carol@example.org"))
	db2 := OpenDB(t, dsn, &Options{LockTimeout: 5 * time.Second})
	st3 := OpenAccount(t, db2, "carol@example.org")
	put(t, st3, "k", "carol 2")
	if err := st2.Update(bg, func(tx store.Tx) error { return tx.Put("k", []byte("stale")) }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("Update of the old holder = %v", err)
	}
	if v, err := get(t, st3, "k"); err != nil || v != "carol 2" {
		t.Fatalf("k = %q, %v", v, err)
	}
}

// TestConnectionKilledDuringUpdate ends the backend an Update reads and
// commits on, in the middle of the Update: the Update fails, nothing is
// written, and the account goes on working (reopened if the Store fenced
// itself off because it could not tell whether the commit happened).
func TestConnectionKilledDuringUpdate(t *testing.T) {
	dsn := Cluster(t).CreateDatabase(t)
	const name = "alice@example.org"
	db := OpenDB(t, dsn, nil)
	st := OpenAccount(t, db, name)
	put(t, st, "k", "v0", "other", "x")
	admin := adminConn(t, dsn)
	for round := range 3 {
		err := st.Update(bg, func(txn store.Tx) error {
			if _, err := txn.Get("k"); err != nil {
				return err
			}
			if err := txn.Put("k", []byte("v1")); err != nil {
				return err
			}
			if err := txn.Delete("other"); err != nil {
				return err
			}
			terminate(t, admin, int32(txn.(*tx).conn.Conn().PgConn().PID()))
			if round == 1 {
				// A read on the dead connection fails.
				_, err := txn.Get("missing")
				return err
			}
			return nil
		})
		if err == nil {
			t.Fatal("Update on a killed connection succeeded")
		}
		t.Logf("round %d: %v", round, err)
		if errors.Is(err, ErrLeaseLost) {
			st.Close()
			st = OpenAccount(t, db, name)
		}
		if got := dump(t, st); got != "\"k\"=\"v0\"\n\"other\"=\"x\"\n" {
			t.Fatalf("state after the failed Update:\n%s", got)
		}
	}
	put(t, st, "k", "v2")
}

// TestCancelRunningQuery cancels ctx while statements run: the Update
// returns ctx's error, and neither the Store nor its lease suffers.
func TestCancelRunningQuery(t *testing.T) {
	st := NewAccount(t)
	put(t, st, "k", "v")
	for range 3 {
		ctx, cancel := context.WithCancel(bg)
		time.AfterFunc(20*time.Millisecond, cancel)
		err := st.Update(ctx, func(tx store.Tx) error {
			for {
				if _, err := tx.Get("k"); err != nil {
					return err
				}
				if err := tx.Scan("", func(string, []byte) error { return nil }); err != nil {
					return err
				}
			}
		})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Update = %v, want context.Canceled", err)
		}
	}
	put(t, st, "k", "w")
	if v, err := get(t, st, "k"); err != nil || v != "w" {
		t.Fatalf("k = %q, %v", v, err)
	}
}
