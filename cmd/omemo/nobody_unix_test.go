//go:build unix

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// runAsNobody runs the command's binary with args as the user nobody and
// returns its stderr and exit status. dir (and the binary) are made
// reachable for that user; dir keeps its permission bits for others.
func runAsNobody(t *testing.T, dir string, args []string) (string, int) {
	t.Helper()
	bin := buildCLI(t)
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if d != dir {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
				mode := fi.Mode().Perm()
				if err := os.Chmod(d, mode|0o001); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.Chmod(d, mode) })
			}
		}
	}
	if err := os.Chmod(dir, 0o505); err != nil {
		t.Fatal(err)
	}
	binDir := filepath.Dir(bin)
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running %s as nobody: %v", bin, err)
	}
	return errOut.String(), cmd.ProcessState.ExitCode()
}
