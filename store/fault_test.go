//go:build linux || darwin || dragonfly || freebsd || netbsd || openbsd

package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestFaultAfterOpen truncates the file of an open store behind its back
// (as a process that ignores the lock could): reading the pages that are
// gone from the memory map raises SIGBUS, which must come back as
// ErrCorrupt instead of killing the process.
func TestFaultAfterOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	want := buildStore(t, path, 100, 8000)
	s := openT(t, path, &Options{ReadOnly: true})
	defer s.Close()
	if got := exercise(t, "before", s, want); !equalContents(got, want) {
		t.Fatal("store differs before the truncation")
	}
	if err := os.Truncate(path, int64(2*os.Getpagesize())); err != nil {
		t.Fatal(err)
	}
	err := s.View(bg, func(tx Tx) error {
		return tx.Scan("", func(string, []byte) error { return nil })
	})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Scan of a truncated mapping = %v, want ErrCorrupt", err)
	}
	faults := 0
	for k := range want {
		err := s.View(bg, func(tx Tx) error {
			_, err := tx.Get(k)
			return err
		})
		switch {
		case errors.Is(err, ErrCorrupt):
			faults++
		case err != nil:
			t.Fatalf("Get of a truncated mapping = %v, want ErrCorrupt", err)
		}
	}
	if faults == 0 {
		t.Fatal("no Get hit the truncated part of the mapping")
	}
}
