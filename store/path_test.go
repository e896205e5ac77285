package store

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestDefaultPath(t *testing.T) {
	home := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv("HOME", home)
	t.Setenv("AppData", filepath.Join(home, "appdata"))
	base, err := os.UserConfigDir()
	if err != nil {
		t.Skip("no user configuration directory:", err)
	}
	dir := filepath.Join(base, "omemo")

	p, err := DefaultPath("alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "alice@example.org.db"); p != want {
		t.Fatalf("DefaultPath = %q, want %q", p, want)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", fi.Mode().Perm())
	}
	// The same account, denormalised and with a resource, maps to the
	// same file.
	if p2, err := DefaultPath("Alice@EXAMPLE.org/phone"); err != nil || p2 != p {
		t.Errorf("DefaultPath(full JID) = %q, %v; want %q", p2, err, p)
	}
	// The path is usable.
	s, err := Open(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	for _, bad := range []string{"", "../evil", "..", "a@..", "../evil@example.org", "@example.org", "a:b@example.org"} {
		if p, err := DefaultPath(bad); !errors.Is(err, ErrInvalidAccount) {
			t.Errorf("DefaultPath(%q) = %q, %v; want ErrInvalidAccount", bad, p, err)
		}
	}

	seen := map[string]string{}
	for _, acct := range []string{
		"..@example.org", ".@example.org", "a\\b@example.org", "%2e%2e@example.org",
		"con", "nul@example.org", "com1", "lpt9", "ä@example.org", "x@[::1]",
		"example.org", "a.b@example.org", strings.Repeat("x", 1000) + "@example.org",
		strings.Repeat("x", 1000) + "y@example.org",
	} {
		p, err := DefaultPath(acct)
		if err != nil {
			t.Errorf("DefaultPath(%q): %v", acct, err)
			continue
		}
		name := filepath.Base(p)
		if filepath.Dir(p) != dir || filepath.Join(dir, name) != p {
			t.Errorf("DefaultPath(%q) = %q escapes %q", acct, p, dir)
		}
		if strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\:*?"<>|`) || len(name) > 200 {
			t.Errorf("DefaultPath(%q) has unsafe file name %q", acct, name)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("%q and %q share the file %q", acct, other, name)
		}
		seen[name] = acct
	}
}

func TestFileName(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.org": "alice@example.org.db",
		"..@example.org":    "%2E.@example.org.db",
		"con":               "%63on.db",
		"com1":              "%63om1.db",
		"com1@x.org":        "com1@x.org.db",
		"com@x.org":         "com@x.org.db",
		"console@x.org":     "console@x.org.db",
		"a/b":               "a%2Fb.db",
		"A%":                "%41%25.db",
		"ä":                 "%C3%A4.db",
	} {
		if got := fileName(in); got != want {
			t.Errorf("fileName(%q) = %q, want %q", in, got, want)
		}
	}
	// Long names are shortened, stay distinct and never split an escape.
	a := fileName(strings.Repeat("é", 500) + "a")
	b := fileName(strings.Repeat("é", 500) + "b")
	if a == b || len(a) > maxNameLen+3 || !strings.Contains(a, "~") {
		t.Fatalf("long names %q / %q", a, b)
	}
	stem, _, _ := strings.Cut(a, "~")
	for i := 0; i < len(stem); i++ {
		if stem[i] == '%' {
			if i+2 >= len(stem) {
				t.Fatalf("shortened name %q splits an escape", a)
			}
			i += 2
		}
	}
}

// TestDefaultPathSecuresDir checks that DefaultPath restricts an existing
// store directory that others may read or write to 0700, and leaves the
// store in it usable.
func TestDefaultPathSecuresDir(t *testing.T) {
	home := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv("HOME", home)
	t.Setenv("AppData", filepath.Join(home, "appdata"))
	base, err := os.UserConfigDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "omemo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o777, 0o755, 0o750, 0o701} {
		// Chmod, not MkdirAll: the umask would narrow the mode.
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		p, err := DefaultPath("alice@example.org")
		if err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o700)
		if runtime.GOOS == "windows" || runtime.GOOS == "plan9" {
			want = fi.Mode().Perm()
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("directory of mode %v left at %v, want %v", mode, got, want)
		}
		s, err := Open(p, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	}

	// A file where the directory belongs.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := DefaultPath("alice@example.org"); err == nil {
		t.Fatal("DefaultPath accepted a file as the store directory")
	}
}
