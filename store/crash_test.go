package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

const crashEnv = "OMEMO_STORE_CRASH_CHILD"

// TestCrashChild is the child half of TestCrash: it is skipped unless the
// environment variable names a store file. It runs Updates forever, each
// writing the counter to two keys (plus some churn that splits and frees
// pages), and prints every counter value after its Update has returned nil,
// i.e. after the commit was fsync'd.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashEnv)
	if path == "" {
		t.Skip("helper process for TestCrash")
	}
	s, err := Open(path, &Options{LockTimeout: 5 * time.Second})
	if err != nil {
		fmt.Printf("ERROR open: %v\n", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(60 * time.Second) // never outlive a dead parent
	for time.Now().Before(deadline) {
		var n int
		err := s.Update(bg, func(tx Tx) error {
			a, err := counter(tx, "crash/a")
			if err != nil {
				return err
			}
			n = a + 1
			v := []byte(strconv.Itoa(n))
			if err := tx.Put("crash/a", v); err != nil {
				return err
			}
			// Churn: values of varying size, and deletions.
			churn := make([]byte, (n*397)%5000)
			for i := range churn {
				churn[i] = byte(n)
			}
			if err := tx.Put(fmt.Sprintf("crash/churn/%03d", n%150), churn); err != nil {
				return err
			}
			if n%7 == 0 {
				if err := tx.DeletePrefix(fmt.Sprintf("crash/churn/%02d", n%15)); err != nil {
					return err
				}
			}
			return tx.Put("crash/z", v)
		})
		if err != nil {
			fmt.Printf("ERROR update: %v\n", err)
			os.Exit(2)
		}
		fmt.Printf("COMMITTED %d\n", n)
	}
	os.Exit(0)
}

func counter(tx Tx, key string) (int, error) {
	v, err := tx.Get(key)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(v))
}

// TestCrash kills a writing child process with SIGKILL in the middle of its
// work, several times, and checks after each kill that the store opens, is
// consistent, and contains every transaction the child saw committed.
func TestCrash(t *testing.T) {
	switch runtime.GOOS {
	case "js", "wasip1", "ios", "android", "plan9":
		t.Skip("cannot re-execute the test binary here")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	last := 0
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+path)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill after a varying number of commits seen in this round.
		target := 20 + round*37
		seen, reported := 0, last
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ERROR") {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child: %s", round, line)
			}
			v, ok := strings.CutPrefix(line, "COMMITTED ")
			if !ok {
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("bad child line %q", line)
			}
			if n != reported+1 {
				t.Fatalf("round %d: child committed %d after %d", round, n, reported)
			}
			reported = n
			if seen++; seen == target {
				break
			}
		}
		// Let the child run on for a varying moment so that the kill lands
		// at different points of a transaction or commit.
		time.Sleep(time.Duration(round*round) * 3 * time.Millisecond / 2)
		// SIGKILL on Unix: no deferred code, no Close, mid-transaction.
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if seen < target {
			t.Fatalf("round %d: child stopped after %d commits", round, seen)
		}

		s, err := Open(path, nil)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		if err := s.Check(bg); err != nil {
			t.Fatalf("round %d: consistency check: %v", round, err)
		}
		var a, z int
		if err := s.View(bg, func(tx Tx) error {
			var err error
			if a, err = counter(tx, "crash/a"); err != nil {
				return err
			}
			z, err = counter(tx, "crash/z")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if a != z {
			t.Fatalf("round %d: torn transaction: crash/a=%d crash/z=%d", round, a, z)
		}
		if a < reported {
			t.Fatalf("round %d: lost committed transactions: store has %d, child reported %d", round, a, reported)
		}
		t.Logf("round %d: child reported %d, store has %d", round, reported, a)
		last = a
	}
}

const crashAccountsEnv = "OMEMO_STORE_CRASH_ACCOUNTS_CHILD"

// crashAccounts is the number of accounts TestCrashAccountsChild writes
// to, in turn; a further "scratch" account is emptied and refilled all the
// time, so that its bucket is created and deleted.
const crashAccounts = 6

// TestCrashAccountsChild is the child half of TestCrashAccounts: as
// TestCrashChild, on the accounts of a multi-account file. It prints
// "COMMITTED account counter" after each Update returned nil.
func TestCrashAccountsChild(t *testing.T) {
	path := os.Getenv(crashAccountsEnv)
	if path == "" {
		t.Skip("helper process for TestCrashAccounts")
	}
	a, err := OpenAccounts(path, &Options{LockTimeout: 5 * time.Second})
	if err != nil {
		fmt.Printf("ERROR open: %v\n", err)
		os.Exit(2)
	}
	stores := make([]Store, crashAccounts)
	for i := range stores {
		if stores[i], err = a.Account(bg, fmt.Sprintf("user%d@example.org", i)); err != nil {
			fmt.Printf("ERROR account: %v\n", err)
			os.Exit(2)
		}
	}
	scratch, err := a.Account(bg, "scratch@example.org")
	if err != nil {
		fmt.Printf("ERROR account: %v\n", err)
		os.Exit(2)
	}
	deadline := time.Now().Add(60 * time.Second) // never outlive a dead parent
	for i := 0; time.Now().Before(deadline); i++ {
		acct := i % crashAccounts
		var n int
		err := stores[acct].Update(bg, func(tx Tx) error {
			c, err := counter(tx, "crash/a")
			if err != nil {
				return err
			}
			n = c + 1
			v := []byte(strconv.Itoa(n))
			if err := tx.Put("crash/a", v); err != nil {
				return err
			}
			churn := make([]byte, (n*397+acct*1000)%5000)
			if err := tx.Put(fmt.Sprintf("crash/churn/%03d", n%40), churn); err != nil {
				return err
			}
			if n%7 == 0 {
				if err := tx.DeletePrefix(fmt.Sprintf("crash/churn/%d", n%4)); err != nil {
					return err
				}
			}
			return tx.Put("crash/z", v)
		})
		if err != nil {
			fmt.Printf("ERROR update: %v\n", err)
			os.Exit(2)
		}
		fmt.Printf("COMMITTED %d %d\n", acct, n)
		if err := scratch.Update(bg, func(tx Tx) error {
			if i%2 == 0 {
				return tx.DeletePrefix("")
			}
			return tx.Put("k", make([]byte, 100*(i%30)))
		}); err != nil {
			fmt.Printf("ERROR scratch: %v\n", err)
			os.Exit(2)
		}
	}
	os.Exit(0)
}

// TestCrashAccounts is TestCrash for a multi-account file: after each
// SIGKILL, the file opens, is consistent, and every account holds every
// transaction the child saw committed for it, and no torn one.
func TestCrashAccounts(t *testing.T) {
	switch runtime.GOOS {
	case "js", "wasip1", "ios", "android", "plan9":
		t.Skip("cannot re-execute the test binary here")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	reported := make([]int, crashAccounts)
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashAccountsChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashAccountsEnv+"="+path)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		target := 30 + round*41
		seen := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ERROR") {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: child: %s", round, line)
			}
			var acct, n int
			if _, err := fmt.Sscanf(line, "COMMITTED %d %d", &acct, &n); err != nil {
				continue
			}
			if acct < 0 || acct >= crashAccounts || n != reported[acct]+1 {
				t.Fatalf("round %d: child committed %d for account %d after %v", round, n, acct, reported)
			}
			reported[acct] = n
			if seen++; seen == target {
				break
			}
		}
		time.Sleep(time.Duration(round*round) * 3 * time.Millisecond / 2)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if seen < target {
			t.Fatalf("round %d: child stopped after %d commits", round, seen)
		}

		a, err := OpenAccounts(path, nil)
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		if err := a.Check(bg); err != nil {
			t.Fatalf("round %d: consistency check: %v", round, err)
		}
		for acct := range crashAccounts {
			s, err := a.Account(bg, fmt.Sprintf("user%d@example.org", acct))
			if err != nil {
				t.Fatal(err)
			}
			var x, z int
			if err := s.View(bg, func(tx Tx) error {
				var err error
				if x, err = counter(tx, "crash/a"); err != nil {
					return err
				}
				z, err = counter(tx, "crash/z")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if x != z {
				t.Fatalf("round %d: account %d: torn transaction: crash/a=%d crash/z=%d", round, acct, x, z)
			}
			if x < reported[acct] {
				t.Fatalf("round %d: account %d: lost committed transactions: store has %d, child reported %d", round, acct, x, reported[acct])
			}
			// The child may have committed one more than it reported.
			reported[acct] = x
		}
		a.Close()
		t.Logf("round %d: accounts at %v", round, reported)
	}
}
