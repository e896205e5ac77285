// Package pgtest starts throw-away PostgreSQL clusters for tests.
//
// Start runs initdb in a fresh temporary directory, launches Debian's
// PostgreSQL 15 server (from BinDir) in the foreground on 127.0.0.1 (a free
// TCP port, with its Unix socket in the same directory), waits until it
// accepts connections and stops it again (fast shutdown, then SIGKILL) and
// removes the directory in t.Cleanup. Launch and Stop do the same for a
// cluster shared by a whole test binary (from TestMain).
//
// The cluster uses trust authentication for the superuser "postgres" on the
// loopback interface only, the C locale and UTF-8. fsync and
// synchronous_commit keep their defaults (on), so that commit latencies
// measured against it are those of a durable server.
//
// PostgreSQL refuses to run as root: when the tests run as root, initdb and
// the server run as the "postgres" system user (created by Debian's
// postgresql package), which is given the temporary directory.
//
// When PostgreSQL is not installed the test is skipped, unless the
// environment variable CI is "true", in which case it fails, so that a green
// CI run can never hide a missing dependency (install it with `apt-get
// install -y postgresql`). This is the rule of internal/prosodytest.
package pgtest // import "mellium.im/omemo/internal/pgtest"

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// BinDir holds Debian's PostgreSQL 15 binaries.
const BinDir = "/usr/lib/postgresql/15/bin"

// User is the superuser of the test clusters (trust authentication).
const User = "postgres"

// Require skips the test (fails it with CI=true) when PostgreSQL cannot be
// run: its binaries are missing, or the tests run as root and there is no
// postgres system user to run them as.
func Require(tb testing.TB) {
	tb.Helper()
	if why := missing(); why != "" {
		unavailable(tb, "postgresql", why)
	}
}

func missing() string {
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir, b)); err != nil {
			return filepath.Join(BinDir, b) + " not found (apt-get install -y postgresql)"
		}
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return "running as root and there is no postgres user to run the server as"
		}
	}
	return ""
}

// unavailable skips the test because server cannot run, or fails it when
// CI is "true", so that a green CI run never hides a missing dependency.
func unavailable(tb testing.TB, server, why string) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("%s unavailable in CI: %s", server, why)
	}
	tb.Skipf("%s unavailable: %s (CI=true turns this into a failure)", server, why)
}

// Server is a running throw-away cluster.
type Server struct {
	// Dir is the temporary directory: the data directory (Dir/data), the
	// Unix socket and the server log (Dir/postgres.log).
	Dir string
	// Host and Port are where the server listens (127.0.0.1 and a free
	// port).
	Host string
	Port int

	cmd    *exec.Cmd
	exited chan struct{}
	stop   sync.Once
	dbs    atomic.Int64
}

// Start launches a cluster for the test and stops it in tb.Cleanup. It
// skips the test (fails it with CI=true) when PostgreSQL is unavailable.
func Start(tb testing.TB) *Server {
	tb.Helper()
	Require(tb)
	s, err := Launch()
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: server log (tail):\n%s", s.LogTail(8<<10))
		}
		if err := s.Stop(); err != nil {
			tb.Logf("pgtest: %v", err)
		}
	})
	return s
}

// Launch is Start without a test: the caller must call Stop. It fails if
// PostgreSQL is unavailable (see Require).
func Launch() (*Server, error) {
	if why := missing(); why != "" {
		return nil, errors.New(why)
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	cred, err := credential(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	data := filepath.Join(dir, "data")
	// -N: the cluster is thrown away, so initdb need not fsync its files;
	// the server itself runs with fsync on.
	initdb := exec.Command(filepath.Join(BinDir, "initdb"), "-D", data, "-U", User, "-A", "trust",
		"-E", "UTF8", "--locale=C", "-N")
	initdb.Dir = dir
	initdb.Env = cleanEnv()
	initdb.SysProcAttr = cred
	if out, err := initdb.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// A free port can be taken by someone else before the server binds it:
	// try a few.
	var lastErr error
	for range 3 {
		s, err := launch(dir, data, cred)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

func launch(dir, data string, cred *syscall.SysProcAttr) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	s := &Server{Dir: dir, Host: "127.0.0.1", Port: port, exited: make(chan struct{})}
	s.cmd = exec.Command(filepath.Join(BinDir, "postgres"), "-D", data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(port),
		"-c", "unix_socket_directories="+dir,
		"-c", "max_connections=100",
		"-c", "shared_buffers=32MB",
		"-c", "logging_collector=off",
		"-c", "log_min_messages=warning",
		"-c", "log_connections=off",
		// Locks of the lease tests are many advisory locks on one session.
		"-c", "max_locks_per_transaction=256",
	)
	s.cmd.Dir = dir
	s.cmd.Env = cleanEnv()
	s.cmd.Stdout = logf
	s.cmd.Stderr = logf
	s.cmd.SysProcAttr = cred
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	go func() {
		_ = s.cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(30 * time.Second); err != nil {
		s.kill()
		return nil, fmt.Errorf("postgres did not start: %w\n%s", err, s.LogTail(4<<10))
	}
	return s, nil
}

// cleanEnv is the environment of the server processes, without the PG*
// variables of the caller, which could point initdb or the server at
// another cluster.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

func (s *Server) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgconn.Connect(ctx, s.DSN("postgres"))
		cancel()
		if err == nil {
			return c.Close(context.Background())
		}
		select {
		case <-s.exited:
			return errors.New("exited during start-up")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not accepting connections after %v: %w", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop shuts the server down (fast shutdown: clients are disconnected,
// SIGKILL after 10 s) and removes its directory. Calling it again is
// harmless.
func (s *Server) Stop() error {
	var err error
	s.stop.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			err = errors.New("postgres did not stop within 10s; killed")
			s.kill()
		}
		if rerr := os.RemoveAll(s.Dir); rerr != nil && err == nil {
			err = rerr
		}
	})
	return err
}

func (s *Server) kill() {
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// DSN returns the URL of a database of the cluster, for the superuser.
func (s *Server) DSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(User),
		Host:     net.JoinHostPort(s.Host, strconv.Itoa(s.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates a new, empty database in the cluster and returns
// its DSN.
func (s *Server) CreateDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), s.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	return s.DSN(name)
}

// LogTail returns up to the last max bytes of the server log.
func (s *Server) LogTail(max int) string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "postgres.log"))
	if err != nil {
		return ""
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, err
	}
	return port, nil
}
