//go:build (linux && !android) || darwin || dragonfly || freebsd || netbsd || openbsd

package store

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestOpenLocksBeforeValidating checks that Open waits for the lock before
// it reads the file: a file that another process holds (and may be in the
// middle of writing) is reported locked, never corrupt.
func TestOpenLocksBeforeValidating(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	if err := os.WriteFile(path, []byte("being written by someone else"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, how := range []int{syscall.LOCK_EX, syscall.LOCK_SH} {
		if err := syscall.Flock(int(f.Fd()), how); err != nil {
			t.Fatal(err)
		}
		for _, ro := range []bool{false, true} {
			if how == syscall.LOCK_SH && ro {
				continue // shared locks coexist
			}
			_, err := Open(path, &Options{ReadOnly: ro, LockTimeout: 100 * time.Millisecond})
			if !errors.Is(err, ErrLocked) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open (read-only %v) of a file locked with %d = %v, want ErrLocked", ro, how, err)
			}
		}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open of the unlocked file = %v, want ErrCorrupt", err)
	}
}
