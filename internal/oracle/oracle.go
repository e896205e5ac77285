// Package oracle locates the Python reference implementation that tests use
// as an oracle (Debian's python3-omemo stack, run by /usr/bin/python3).
//
// Tests that need the oracle call Require. Outside CI a missing oracle skips
// the test; with CI=true it fails it, so that a green CI run can never hide a
// missing dependency.
package oracle

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Interpreter is the Python interpreter that has Debian's packages.
const Interpreter = "/usr/bin/python3"

// modules are the Python modules the oracle needs.
var modules = []string{"xeddsa", "x3dh", "doubleratchet", "twomemo", "oldmemo", "omemo"}

// Require returns the interpreter path, or skips (fails with CI=true) the
// test when the interpreter or one of the reference modules is missing.
func Require(tb testing.TB) string {
	tb.Helper()
	if _, err := os.Stat(Interpreter); err != nil {
		missing(tb, "python interpreter "+Interpreter+" not found")
		return ""
	}
	script := "import " + strings.Join(modules, ", ")
	if out, err := exec.Command(Interpreter, "-c", script).CombinedOutput(); err != nil {
		missing(tb, "python reference modules missing: "+string(out))
		return ""
	}
	return Interpreter
}

func missing(tb testing.TB, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("oracle unavailable in CI: %s (install with: bash scripts/test.sh)", why)
	}
	tb.Skipf("oracle unavailable: %s (CI=true turns this into a failure)", why)
}

// RepoRoot returns the repository root, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}
