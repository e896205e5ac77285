//go:build unix

package store

import (
	"os"
	"syscall"
)

// owner returns the user id of the owner of a file.
func owner(fi os.FileInfo) (uid int, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
