package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"mellium.im/omemo/store"
)

// closedAddr returns a local address where nothing listens: a command that
// got as far as connecting would fail there with a connection error.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// runCLI runs one command line in this process.
func runCLI(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, env{
		stdin:  strings.NewReader(""),
		stdout: &out,
		stderr: &errOut,
		getenv: func(string) string { return "" },
	})
	return out.String(), errOut.String(), code
}

// writeStore writes a real state file with some data at path.
func writeStore(t *testing.T, path string) []byte {
	t.Helper()
	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Update(context.Background(), func(tx store.Tx) error {
		for i := range 200 {
			if err := tx.Put(fmt.Sprintf("omemo/test/%03d", i), bytes.Repeat([]byte{byte(i)}, 500)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCorruptStore runs a command on damaged state files: it must fail
// with exit status 1 and a message that names the file, says it is
// corrupt and what to do, before connecting, and leave the file as it was.
func TestCorruptStore(t *testing.T) {
	dir := t.TempDir()
	good := writeStore(t, filepath.Join(dir, "good.db"))
	ps := os.Getpagesize()
	addr := closedAddr(t)

	damaged := map[string][]byte{
		// The file is 1 MiB, mostly unused space; its data take about
		// 40 pages.
		"truncated": good[:5*ps],
		"garbage": func() []byte {
			b := make([]byte, 4*ps)
			for i := range b {
				b[i] = byte(i*31 + 7)
			}
			return b
		}(),
		"both meta pages": func() []byte {
			b := bytes.Clone(good)
			b[20] ^= 1
			b[ps+20] ^= 1
			return b
		}(),
		"short": []byte("not a state file"),
	}
	for name, content := range damaged {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "alice.db")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runCLI("-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint")
			checkCorruptMessage(t, errOut, code, path)
			if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, content) {
				t.Fatalf("the command changed the damaged state file (%v)", err)
			}
		})
	}
}

func checkCorruptMessage(t *testing.T, errOut string, code int, path string) {
	t.Helper()
	if code != exitError {
		t.Errorf("exit status %d, want %d", code, exitError)
	}
	for _, want := range []string{
		"omemo: state file " + path + " is corrupt",
		"left unchanged",
		"move it away",
		"new device",
		store.ErrCorrupt.Error(),
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not say %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "connecting") || strings.Contains(errOut, "logging in") {
		t.Errorf("the command connected with a damaged state file:\n%s", errOut)
	}
	if strings.Contains(errOut, "secret") {
		t.Errorf("stderr shows the password:\n%s", errOut)
	}
}

// TestCorruptDefaultStore does the same with the default state file, which
// the command must not recreate either.
func TestCorruptDefaultStore(t *testing.T) {
	home := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
	t.Setenv("HOME", home)
	t.Setenv("AppData", filepath.Join(home, "appdata"))
	path, err := store.DefaultPath("bob@example.org")
	if err != nil {
		t.Fatal(err)
	}
	good := writeStore(t, path)
	cut := good[:3*os.Getpagesize()]
	if err := os.WriteFile(path, cut, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI("-jid", "bob@example.org/laptop", "-password", "secret", "-addr", closedAddr(t), "fingerprint")
	checkCorruptMessage(t, errOut, code, path)
	if !strings.Contains(errOut, "truncated") {
		t.Errorf("stderr does not say what is wrong:\n%s", errOut)
	}
	if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, cut) {
		t.Fatalf("the command changed or recreated the default state file (%v)", err)
	}
}

// TestStoreInUse checks the message for a state file that another process
// holds, which is not corrupt.
func TestStoreInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "carol.db")
	writeStore(t, path)
	s, err := store.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, errOut, code := runCLI("-jid", "carol@example.org", "-password", "secret", "-addr", closedAddr(t), "-store", path, "fingerprint")
	if code != exitError || !strings.Contains(errOut, "is in use by another omemo process") || strings.Contains(errOut, "corrupt") {
		t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
	}
}

// TestNoStateFileWithoutLogin checks that a command that cannot log in
// (here: nothing listens at the address) creates no state file, neither
// at -store nor at the default path, and that a new state file that could
// not be created is reported before connecting.
func TestNoStateFileWithoutLogin(t *testing.T) {
	addr := closedAddr(t)
	path := filepath.Join(t.TempDir(), "alice.db")
	_, errOut, code := runCLI("-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint")
	if code != exitError || !strings.Contains(errOut, "connecting to "+addr) {
		t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed connection left the state file %s (%v)", path, err)
	}

	t.Run("default path", func(t *testing.T) {
		home := t.TempDir()
		t.Setenv("XDG_CONFIG_HOME", filepath.Join(home, "config"))
		t.Setenv("HOME", home)
		t.Setenv("AppData", filepath.Join(home, "appdata"))
		_, errOut, code := runCLI("-jid", "bob@example.org/laptop", "-password", "secret", "-addr", addr, "fingerprint")
		if code != exitError || !strings.Contains(errOut, "connecting to "+addr) {
			t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
		}
		path, err := store.DefaultPath("bob@example.org")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a failed connection left the default state file %s (%v)", path, err)
		}
	})

	t.Run("missing directory", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "missing", "alice.db")
		_, errOut, code := runCLI("-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint")
		if code != exitError || !strings.Contains(errOut, "state file "+path+" cannot be created") ||
			strings.Contains(errOut, "connecting") {
			t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
		}
	})

	t.Run("file in place of the directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(file, "alice.db")
		_, errOut, code := runCLI("-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint")
		if code != exitError || !strings.Contains(errOut, "state file "+path) || strings.Contains(errOut, "connecting") {
			t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
		}
	})

	t.Run("directory as state file", func(t *testing.T) {
		path := t.TempDir()
		_, errOut, code := runCLI("-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint")
		if code != exitError || !strings.Contains(errOut, "state file "+path) || strings.Contains(errOut, "connecting") {
			t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
		}
	})

	t.Run("read-only directory", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("needs Unix permissions")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o700) })
		path := filepath.Join(dir, "alice.db")
		args := []string{"-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path, "fingerprint"}
		var (
			errOut string
			code   int
		)
		if os.Geteuid() == 0 {
			// Permissions do not stop root: the command runs as nobody.
			errOut, code = runAsNobody(t, dir, args)
		} else {
			_, errOut, code = runCLI(args...)
		}
		if code != exitError || !strings.Contains(errOut, "state file "+path+" cannot be created") ||
			!strings.Contains(errOut, "permission denied") || strings.Contains(errOut, "connecting") {
			t.Fatalf("exit status %d, stderr:\n%s", code, errOut)
		}
	})
}
