package postgres

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/store"
)

// The SIGKILL crash test of the bbolt store (store.TestCrashAccounts), on
// PostgreSQL: a child process writes to several accounts at once, each
// commit in flight on its own connection, and is killed in the middle of
// it; the parent takes the accounts over at once and finds every commit
// the child saw succeed, and no torn one.

const crashChildEnv = "OMEMO_PG_CRASH_CHILD_DSN"

// crashAccounts is the number of accounts the child writes to in parallel;
// a further scratch account is emptied and refilled all the time.
const crashAccounts = 4

func crashAccount(i int) string { return fmt.Sprintf("crash%d@example.org", i) }

func crashCounter(tx store.Tx, key string) (int, error) {
	v, err := tx.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(v))
}

// TestCrashChild is the child half of TestCrash: it writes to the accounts
// in parallel until it is killed, each Update incrementing a counter in
// two keys (first and last in the batch) with churn in between (upserts of
// varying size, deletions, prefix deletions), and prints "COMMITTED
// account counter" once an Update returned nil.
func TestCrashChild(t *testing.T) {
	dsn := os.Getenv(crashChildEnv)
	if dsn == "" {
		t.Skip("the child process of TestCrash")
	}
	fail := func(err error) {
		fmt.Println("ERROR", err)
		os.Exit(3)
	}
	db, err := Open(bg, dsn, &Options{LockTimeout: 10 * time.Second})
	if err != nil {
		fail(err)
	}
	var out sync.Mutex
	deadline := time.Now().Add(60 * time.Second) // never outlive a dead parent
	var wg sync.WaitGroup
	for acct := range crashAccounts {
		st, err := db.Account(bg, crashAccount(acct))
		if err != nil {
			fail(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				var n int
				err := st.Update(bg, func(tx store.Tx) error {
					c, err := crashCounter(tx, "crash/a")
					if err != nil {
						return err
					}
					n = c + 1
					v := []byte(strconv.Itoa(n))
					if err := tx.Put("crash/a", v); err != nil {
						return err
					}
					for i := range 1 + n%4 {
						churn := make([]byte, (n*397+i*1000+acct*77)%20000)
						if err := tx.Put(fmt.Sprintf("crash/churn/%03d", (n+i)%60), churn); err != nil {
							return err
						}
					}
					if n%5 == 0 {
						if err := tx.Delete(fmt.Sprintf("crash/churn/%03d", (n*7)%60)); err != nil {
							return err
						}
					}
					if n%7 == 0 {
						if err := tx.DeletePrefix(fmt.Sprintf("crash/churn/%02d", n%6)); err != nil {
							return err
						}
					}
					return tx.Put("crash/z", v)
				})
				if err != nil {
					fail(err)
				}
				out.Lock()
				fmt.Printf("COMMITTED %d %d\n", acct, n)
				out.Unlock()
			}
		}()
	}
	scratch, err := db.Account(bg, "scratch@example.org")
	if err != nil {
		fail(err)
	}
	for i := 0; time.Now().Before(deadline); i++ {
		if err := scratch.Update(bg, func(tx store.Tx) error {
			if i%2 == 0 {
				return tx.DeletePrefix("")
			}
			for j := range 20 {
				if err := tx.Put(fmt.Sprint("k", j), make([]byte, 100*(i%30))); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			fail(err)
		}
	}
	wg.Wait()
	os.Exit(0)
}

// TestCrash kills the writing child with SIGKILL several times, at varying
// moments (with commits of every account in flight), and checks after each
// kill that the accounts can be taken over at once, that each holds every
// transaction the child saw committed and at most the one it was
// committing, and no torn one; and that the taken-over Stores write.
func TestCrash(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the child process")
	}
	dsn := Cluster(t).CreateDatabase(t)
	reported := make([]int, crashAccounts)
	var takeovers []time.Duration
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dsn)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		target := 40 + round*53
		seen := 0
		sc := bufio.NewScanner(out)
		// read handles a line of the child; it reports whether the
		// line was a commit.
		read := func(line string) bool {
			if strings.HasPrefix(line, "ERROR") {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child: %s\n%s", round, line, stderr.String())
			}
			var acct, n int
			if _, err := fmt.Sscanf(line, "COMMITTED %d %d", &acct, &n); err != nil {
				return false
			}
			if acct < 0 || acct >= crashAccounts || n != reported[acct]+1 {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child committed %d for account %d after %v", round, n, acct, reported)
			}
			reported[acct] = n
			return true
		}
		for seen < target && sc.Scan() {
			if read(sc.Text()) {
				seen++
			}
		}
		time.Sleep(time.Duration(round*round) * 3 * time.Millisecond / 2)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// What the child printed before it died.
		for sc.Scan() {
			read(sc.Text())
		}
		cmd.Wait()
		if seen < target {
			t.Fatalf("round %d: child stopped after %d commits\n%s", round, seen, stderr.String())
		}

		db, err := Open(bg, dsn, &Options{LockTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("round %d: open after SIGKILL: %v", round, err)
		}
		for acct := range crashAccounts {
			st, err := db.Account(bg, crashAccount(acct))
			if err != nil {
				db.Close()
				t.Fatalf("round %d: taking account %d over: %v", round, acct, err)
			}
			if acct == 0 {
				takeovers = append(takeovers, time.Since(killed))
			}
			var a, z int
			if err := st.View(bg, func(tx store.Tx) error {
				var err error
				if a, err = crashCounter(tx, "crash/a"); err != nil {
					return err
				}
				z, err = crashCounter(tx, "crash/z")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if a != z {
				t.Fatalf("round %d: account %d: torn transaction: crash/a=%d crash/z=%d", round, acct, a, z)
			}
			if a < reported[acct] || a > reported[acct]+1 {
				t.Fatalf("round %d: account %d holds %d, the child reported %d committed (and one more may have been in flight)", round, acct, a, reported[acct])
			}
			// The new holder writes.
			if round == 3 {
				put(t, st, "crash/after", "parent")
			}
			reported[acct] = a
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
		}
		db.Close()
		t.Logf("round %d: accounts at %v, taken over %v after the kill", round, reported, takeovers[round])
	}
	for _, d := range takeovers {
		if d > 5*time.Second {
			t.Errorf("taking the accounts over after a kill took %v", takeovers)
			break
		}
	}
}
