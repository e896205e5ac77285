//go:build (linux && !android) || darwin || dragonfly || freebsd || netbsd || openbsd

package store

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// lockRetry is how often a busy lock is retried (bbolt's flockRetryTimeout).
const lockRetry = 50 * time.Millisecond

// lockFile takes, on f's descriptor, the flock bbolt takes (exclusive for a
// read-write open, shared for a read-only one), so that the file can be
// validated while no writer can change it. bbolt's own flock on the same
// descriptor then succeeds at once, and bbolt releases it on Close (closing
// the descriptor releases it in any case). A negative timeout fails at once
// if the file is locked.
func lockFile(f *os.File, exclusive bool, timeout time.Duration) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	start := time.Now()
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("store: locking the store file: %w", err)
		}
		if timeout < 0 || time.Since(start) > timeout-lockRetry {
			return fmt.Errorf("%w (waited %v)", ErrLocked, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(lockRetry)
	}
}
