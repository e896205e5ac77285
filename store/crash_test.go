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
