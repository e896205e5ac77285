//go:build unix

package store

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestSecureDirOwner checks that a store directory that belongs to another
// user is refused, unchanged: its owner could replace the store files.
func TestSecureDirOwner(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Pretend to be another user than the directory's owner.
	err := secureDir(dir, os.Geteuid()+1)
	if !errors.Is(err, ErrInsecureDir) || !strings.Contains(err.Error(), "belongs to another user") {
		t.Fatalf("secureDir of another user's directory = %v, want ErrInsecureDir", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("refused directory changed: %v, %v", fi.Mode(), err)
	}
	if err := secureDir(dir, os.Geteuid()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("own directory left at %v, %v", fi.Mode(), err)
	}
}
