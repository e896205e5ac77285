//go:build !unix

package pgtest

import "syscall"

// credential returns no process attributes: the server runs as the current
// user.
func credential(string) (*syscall.SysProcAttr, error) { return nil, nil }
