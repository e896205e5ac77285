package integration_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"mellium.im/omemo/internal/prosodytest"
)

// gatewayProsodyCPU returns the CPU time (user and system) the server's
// Prosody process has used, or -1 where /proc cannot tell (not Linux): the
// share of the server in the figures of TestIntegrationGateway.
func gatewayProsodyCPU(srv *prosodytest.Server) time.Duration {
	cfg := []byte(filepath.Join(srv.Dir, "prosody.cfg.lua"))
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return -1
	}
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, cfg) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			return -1
		}
		// The fields after the command name (which may hold spaces):
		// utime and stime are the 14th and 15th fields of the line.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			return -1
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			return -1
		}
		ut, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return -1
		}
		// USER_HZ is 100 on every Linux platform Go supports.
		return time.Duration(ut+st) * 10 * time.Millisecond
	}
	return -1
}
