//go:build !((linux && !android) || darwin || dragonfly || freebsd || netbsd || openbsd)

package store

import (
	"os"
	"time"
)

// lockFile does nothing where bbolt does not lock with flock (Windows,
// Solaris, AIX, Android, …): another kind of lock on the descriptor could
// conflict with bbolt's own. The file is then validated before bbolt locks
// it, so a store in use by another process may be reported corrupt (if a
// commit changes it during the check) rather than locked.
func lockFile(*os.File, bool, time.Duration) error { return nil }
