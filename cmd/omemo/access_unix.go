//go:build unix

package main

import (
	"os"
	"syscall"
)

// dirWritable reports, as access(2) tells it, whether a file can be
// created in dir. It is a check before connecting, for a clear early
// error: creating the file decides in the end.
func dirWritable(dir string) error {
	const wOK, xOK = 0x2, 0x1 // POSIX W_OK, X_OK
	if err := syscall.Access(dir, wOK|xOK); err != nil {
		return &os.PathError{Op: "access", Path: dir, Err: err}
	}
	return nil
}
