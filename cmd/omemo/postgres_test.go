package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"mellium.im/omemo/internal/pgtest"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
)

// The PostgreSQL tests of the command share one throw-away cluster,
// started on first use and stopped by TestMain.
var pgShared struct {
	once sync.Once
	srv  *pgtest.Server
	err  error
}

// pgCluster returns the shared cluster. It skips the test (fails it with
// CI=true) if PostgreSQL is unavailable.
func pgCluster(t *testing.T) *pgtest.Server {
	t.Helper()
	pgtest.Require(t)
	pgShared.once.Do(func() { pgShared.srv, pgShared.err = pgtest.Launch() })
	if pgShared.err != nil {
		t.Fatalf("pgtest: %v", pgShared.err)
	}
	return pgShared.srv
}

// stopPostgres stops the shared cluster, if it was started.
func stopPostgres() {
	if pgShared.srv != nil {
		if err := pgShared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest:", err)
		}
	}
}

// pgSecret is the password put in the DSNs of the tests. The test clusters
// use trust authentication, so it is never checked, but the command gets
// it like any password, and must never show it.
const pgSecret = "pg-Secret-4711"

// secretDSN returns a new database of the shared cluster, with pgSecret
// as the password in its URL and the scheme given (postgres or
// postgresql).
func secretDSN(t *testing.T, scheme string) string {
	t.Helper()
	u, err := url.Parse(pgCluster(t).CreateDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Scheme = scheme
	u.User = url.UserPassword(u.User.Username(), pgSecret)
	return u.String()
}

// pgArgs returns the global flags of the named test account with its state
// in the database dsn ("": no -store flag, for OMEMO_STORE).
func (c *cli) pgArgs(dsn, name string, extra ...string) []string {
	a := []string{
		"-jid", name + "@" + c.srv.Domain,
		"-password", c.srv.Password(name),
		"-addr", c.srv.Addr,
		"-insecure-skip-verify",
	}
	if dsn != "" {
		a = append(a, "-store", dsn)
	}
	return append(a, extra...)
}

// pgFingerprint is fingerprint with the state in the database dsn.
func (c *cli) pgFingerprint(t *testing.T, dsn, name string) fingerprintJSON {
	t.Helper()
	out := c.mustRun(t, c.pgArgs(dsn, name, "-json", "fingerprint")...)
	fp := decode[fingerprintJSON](t, out)
	if fp.Device == 0 || !fpRE.MatchString(fp.Fingerprint) || fp.JID != name+"@localhost" {
		t.Fatalf("fingerprint of %s: %+v", name, fp)
	}
	return fp
}

// runEnv runs the binary to completion with the environment variables env
// added.
func (c *cli) runEnv(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	p := c.startIn(t, "", env, args...)
	_ = p.stdin.Close()
	code = p.wait(40 * time.Second)
	return strings.Join(p.stdout(), "\n"), p.stderr.String(), code
}

// accountKeys returns the number of keys the account holds in the database
// dsn, opening it as another process would (waiting for the lease).
func accountKeys(t *testing.T, dsn, name string) int {
	t.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn, &postgres.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Account(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n := 0
	if err := st.View(ctx, func(tx store.Tx) error {
		return tx.Scan("", func(string, []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// noSecret fails the test if s shows the DSN's password.
func noSecret(t *testing.T, what, s string) {
	t.Helper()
	if strings.Contains(s, pgSecret) {
		t.Errorf("%s shows the database password:\n%s", what, s)
	}
}

func TestRedactDSN(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:pw@h:5432/db?sslmode=disable", "postgres://u:xxxxx@h:5432/db?sslmode=disable"},
		{"postgresql://u@h/db", "postgresql://u@h/db"},
		{"postgres://h/db", "postgres://h/db"},
		{"postgres://u:p%40ss@h/db", "postgres://u:xxxxx@h/db"},
		{"postgres://u:p@ss@h/db", "postgres://u:xxxxx@h/db"},
		{"postgres://u:pw@h1:5432,h2:5433/db", "postgres://u:xxxxx@h1:5432,h2:5433/db"},
		{"postgres://u@h/db?password=pw&sslmode=disable", "postgres://u@h/db?password=xxxxx&sslmode=disable"},
		{"postgres://u@h/db?PassWord=pw", "postgres://u@h/db?PassWord=xxxxx"},
		{"postgres://u@h/db?pass%77ord=pw", "postgres://u@h/db?pass%77ord=xxxxx"},
		{"postgres://u@h/db?%zz=pw", "postgres://u@h/db?%zz=xxxxx"},
		{"postgres://u:pw@h", "postgres://u:xxxxx@h"},
		{"postgres://u:pw@h?x=1#frag", "postgres://u:xxxxx@h?x=1#frag"},
	} {
		if got := redactDSN(tc.in); got != tc.want {
			t.Errorf("redactDSN(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	secrets := dsnSecrets("postgres://u:p%40ss@h/db?password=second")
	for _, want := range []string{"p%40ss", "p@ss", "second"} {
		if !slices.Contains(secrets, want) {
			t.Errorf("dsnSecrets = %q, want %q among them", secrets, want)
		}
	}
	err := &dbError{Op: "opening postgres://u:xxxxx@h/db", DB: "postgres://u:xxxxx@h/db", Err: errors.New("the driver said p@ss and second"), secrets: secrets}
	if msg := err.Error(); strings.Contains(msg, "p@ss") || strings.Contains(msg, "second") || !strings.Contains(msg, "postgres://u:xxxxx@h/db") {
		t.Errorf("dbError = %q", msg)
	}
	for s, want := range map[string]bool{
		"postgres://h/db": true, "postgresql://h/db": true, "POSTGRES://h/db": true,
		"/var/lib/omemo/alice.db": false, "postgres.db": false, "http://h": false, "": false,
	} {
		if isPostgres(s) != want {
			t.Errorf("isPostgres(%q) = %v", s, !want)
		}
	}
}

// TestPostgresStoreErrors checks the errors of a database that cannot be
// reached, without a server: they come before any login, name the
// database without its password and never show the password, also where
// the driver's message would; and that OMEMO_STORE is read when -store is
// not given, and -store wins over it.
func TestPostgresStoreErrors(t *testing.T) {
	addr := closedAddr(t)
	dead := "postgres://omemo:" + pgSecret + "@" + addr + "/omemo?sslmode=disable&password=" + pgSecret
	runWith := func(storeEnvValue string, args ...string) (string, int) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), args, env{
			stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
			getenv: func(name string) string {
				if name == storeEnv {
					return storeEnvValue
				}
				return ""
			},
		})
		if out.Len() != 0 {
			t.Errorf("stdout: %s", out.String())
		}
		return errOut.String(), code
	}
	xmpp := closedAddr(t)
	for _, tc := range []struct {
		name, env string
		args      []string
		want      string
	}{
		{"flag", "", []string{"-store", dead}, "omemo: opening the state database postgres://omemo:xxxxx@" + addr + "/omemo?sslmode=disable&password=xxxxx: "},
		{"env", dead, nil, "omemo: opening the state database postgres://omemo:xxxxx@"},
		{"postgresql scheme", "", []string{"-store", "postgresql" + strings.TrimPrefix(dead, "postgres")}, "omemo: opening the state database postgresql://omemo:xxxxx@"},
		{"bad URL", "", []string{"-store", "postgres://omemo:" + pgSecret + "@host:port:x/db"}, "omemo: opening the state database postgres://omemo:xxxxx@host:port:x/db: "},
		// -store wins: the file's directory is missing, which is
		// reported before connecting, and the database is not tried.
		{"flag wins", dead, []string{"-store", filepath.Join(t.TempDir(), "missing", "a.db")}, "cannot be created"},
		{"env file", filepath.Join(t.TempDir(), "missing", "a.db"), nil, "cannot be created"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-jid", "alice@example.org", "-password", "secret", "-addr", xmpp}, tc.args...)
			errOut, code := runWith(tc.env, append(args, "fingerprint")...)
			if code != exitError || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr:\n%s\nwant %q", code, errOut, tc.want)
			}
			if strings.Contains(errOut, "connecting") || strings.Contains(errOut, "logging in") {
				t.Errorf("the command connected to the XMPP server:\n%s", errOut)
			}
			if tc.name == "flag wins" && strings.Contains(errOut, "database") {
				t.Errorf("the database of OMEMO_STORE was used despite -store:\n%s", errOut)
			}
			noSecret(t, "stderr", errOut)
		})
	}
}

// TestCLIPostgres runs the command with its state in PostgreSQL (-store and
// OMEMO_STORE): a failed first login leaves no state; fingerprint, send
// and listen work and keep the device across runs; the state is in the
// database; a second process on an account in use fails promptly with the
// "in use" error; the password of the URL is never shown.
func TestCLIPostgres(t *testing.T) {
	began := time.Now()
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	c := &cli{bin: buildCLI(t), srv: srv}
	dsn := secretDSN(t, "postgres")
	// Bob's state is named by OMEMO_STORE, with the other scheme.
	bobEnv := []string{storeEnv + "=" + strings.Replace(dsn, "postgres://", "postgresql://", 1)}
	t.Logf("built and started after %v", time.Since(began))
	var stderrs []string
	defer func() {
		for _, s := range stderrs {
			noSecret(t, "stderr", s)
		}
	}()

	// A failed first login leaves no state (and no device).
	wrong := c.pgArgs(dsn, "alice", "fingerprint")
	wrong[slices.Index(wrong, "-password")+1] = "wrong"
	out, errOut, code := c.run(t, wrong...)
	stderrs = append(stderrs, errOut)
	if code != exitError || out != "" || !strings.Contains(errOut, "logging in to "+srv.Addr) {
		t.Fatalf("wrong password: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if n := accountKeys(t, dsn, "alice@localhost"); n != 0 {
		t.Fatalf("a failed login left %d keys in the database", n)
	}

	// The device is created once, in the database, and reused.
	fp := c.pgFingerprint(t, dsn, "alice")
	if again := c.pgFingerprint(t, dsn, "alice"); again != fp {
		t.Fatalf("second run %+v, first %+v: the state in the database was not reused", again, fp)
	}
	out, errOut, code = c.runEnv(t, bobEnv, c.pgArgs("", "bob", "-json", "fingerprint")...)
	stderrs = append(stderrs, errOut)
	if code != 0 {
		t.Fatalf("bob fingerprint (OMEMO_STORE): exit %d\n%s", code, errOut)
	}
	bobFP := decode[fingerprintJSON](t, out)
	if n := accountKeys(t, dsn, "bob@localhost"); n == 0 {
		t.Fatal("OMEMO_STORE: bob's state is not in the database")
	}
	// -store wins over OMEMO_STORE: a state file is a new device.
	dir := t.TempDir()
	out, errOut, code = c.runEnv(t, bobEnv, append(c.args(dir, "bob"), "-json", "fingerprint")...)
	if code != 0 || decode[fingerprintJSON](t, out).Device == bobFP.Device {
		t.Fatalf("-store FILE with OMEMO_STORE set: exit %d, %s (database device %d)\n%s", code, out, bobFP.Device, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "bob.db")); err != nil {
		t.Fatalf("-store FILE with OMEMO_STORE set: %v", err)
	}

	// send and listen, both on the database.
	l := c.startIn(t, "", bobEnv, c.pgArgs("", "bob", "listen", "-for", "60s")...)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(l.stderr.String(), "listening") {
		if time.Now().After(deadline) {
			t.Fatalf("listener not ready; stderr:\n%s", l.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A second process on bob's account fails promptly, before logging
	// in, with the "in use" error (the listener is not disturbed).
	start := time.Now()
	out, errOut, code = c.runEnv(t, bobEnv, c.pgArgs("", "bob", "fingerprint")...)
	took := time.Since(start)
	stderrs = append(stderrs, errOut)
	if code != exitError || out != "" || !strings.Contains(errOut, "omemo: account bob@localhost in the state database postgresql://postgres:xxxxx@") ||
		!strings.Contains(errOut, " is in use by another omemo process (waited 3s): ") || !strings.Contains(errOut, store.ErrLocked.Error()) {
		t.Fatalf("second process on an account in use: exit %d after %v\nstdout: %s\nstderr: %s", code, took, out, errOut)
	}
	if strings.Contains(errOut, "logging in") || strings.Contains(errOut, "connecting") {
		t.Errorf("the second process logged in:\n%s", errOut)
	}
	if took < pgLockTimeout || took > pgLockTimeout+10*time.Second {
		t.Errorf("the second process failed after %v, want about %v", took, pgLockTimeout)
	}
	t.Logf("in use: failed after %v", took)

	out = c.mustRun(t, c.pgArgs(dsn, "alice", "-json", "send", "-to", "bob@localhost", "hello over postgres")...)
	// Bob has two devices: the database's and the state file's.
	if res := decode[sendJSON](t, out); len(res.Devices) != 2 || !slices.ContainsFunc(res.Devices, func(r recipientJSON) bool { return r.Device == bobFP.Device }) {
		t.Fatalf("send result %s, want bob's device %d among two", out, bobFP.Device)
	}
	waitLine(t, l, "]: hello over postgres", 20*time.Second)
	if !strings.HasPrefix(l.stdout()[0], fmt.Sprintf("alice@localhost [device %d, OMEMO 2, ", fp.Device)) {
		t.Errorf("listen printed %q", l.stdout())
	}
	if err := l.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := l.wait(10 * time.Second); code != 0 {
		t.Fatalf("listen after SIGINT: exit %d; stderr:\n%s", code, l.stderr)
	}
	stderrs = append(stderrs, l.stderr.String())
	// Released: the next process opens the account at once, and the
	// message was acknowledged (a listen prints only what is new).
	l = c.startIn(t, "", bobEnv, c.pgArgs("", "bob", "-json", "listen", "-count", "1", "-for", "30s")...)
	c.mustRun(t, c.pgArgs(dsn, "alice", "send", "-to", "bob@localhost", "second")...)
	if code := l.wait(30 * time.Second); code != 0 {
		t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
	}
	if lines := l.stdout(); len(lines) != 1 || decode[messageJSON](t, lines[0]).Body != "second" {
		t.Fatalf("the next listen printed %q, want only the new message", lines)
	}
	stderrs = append(stderrs, l.stderr.String())

	// The database ends the listener's connections (as a restart of the
	// server would): listen stores nothing from then on, so it ends with
	// an error; the next run prints what it missed.
	l = c.startIn(t, "", bobEnv, c.pgArgs("", "bob", "-json", "listen", "-for", "60s")...)
	c.mustRun(t, c.pgArgs(dsn, "alice", "send", "-to", "bob@localhost", "before the cut")...)
	waitLine(t, l, `"body":"before the cut"`, 20*time.Second)
	// Its acknowledgement is committed within 200 ms.
	time.Sleep(time.Second)
	terminateBackends(t, dsn)
	var cut []string
	for i := 0; ; i++ {
		body := fmt.Sprint("after the cut ", i)
		c.mustRun(t, c.pgArgs(dsn, "alice", "send", "-to", "bob@localhost", body)...)
		cut = append(cut, body)
		select {
		case <-l.done:
		case <-time.After(2 * time.Second):
			if i < 5 {
				continue
			}
			t.Fatalf("listen goes on after its database connections ended; stdout:\n%s\nstderr:\n%s", strings.Join(l.stdout(), "\n"), l.stderr)
		}
		break
	}
	errOut = l.stderr.String()
	stderrs = append(stderrs, errOut)
	if code := l.wait(time.Second); code != exitError || !strings.Contains(errOut, "omemo: lost the account in the state database") ||
		!strings.Contains(errOut, "start the command again") || !strings.Contains(errOut, postgres.ErrLeaseLost.Error()) {
		t.Fatalf("listen after its database connections ended: exit %d; stderr:\n%s", code, errOut)
	}
	printedCut := map[string]bool{}
	for _, line := range l.stdout() {
		printedCut[decode[messageJSON](t, line).Body] = true
	}
	l = c.startIn(t, "", bobEnv, c.pgArgs("", "bob", "-json", "listen", "-for", "30s")...)
	for _, body := range cut {
		if !printedCut[body] {
			waitLine(t, l, `"body":"`+body+`"`, 20*time.Second)
		}
	}
	time.Sleep(500 * time.Millisecond)
	// Each message once; one that the cut listen printed (but could
	// not acknowledge any more) may come again, under its delivery id.
	again := map[string]int{}
	for _, line := range l.stdout() {
		body := decode[messageJSON](t, line).Body
		if again[body]++; again[body] > 1 || !slices.Contains(cut, body) {
			t.Errorf("the listen after the cut printed %q (%d times)", body, again[body])
		}
	}
	n := 0
	for _, body := range cut {
		if printedCut[body] {
			n++
		}
	}
	t.Logf("cut: listen ended after %d messages, printed %d of them, the next listen %d; the error: %s", len(cut), n, len(again),
		errOut[strings.LastIndex(strings.TrimSuffix(errOut, "\n"), "\n")+1:])
	if err := l.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := l.wait(10 * time.Second); code != 0 {
		t.Fatalf("listen after SIGINT: exit %d; stderr:\n%s", code, l.stderr)
	}
	stderrs = append(stderrs, l.stderr.String())
	t.Logf("took %v", time.Since(began))
}

// terminateBackends ends every other connection to the database of dsn, as
// a restart of the server would.
func terminateBackends(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no connection to end")
	}
}

// inboxBodies returns the bodies of the messages the account's durable
// inbox holds in the database dsn: those decrypted but not acknowledged
// (not printed yet, or printed by a process that was killed before its
// acknowledgement was committed), which the next start hands over again
// under the same delivery id. It opens the account as another process
// would, so it waits for a killed holder's lease to go, and sees every
// commit that holder made.
func inboxBodies(t *testing.T, dsn, name string) map[string]uint64 {
	t.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn, &postgres.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := db.Account(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	out := map[string]uint64{}
	// The inbox entries of package session (omemo/inbox/SEQ), each a
	// message record of package omemo (JSON).
	const prefix = "omemo/inbox/"
	err = st.View(ctx, func(tx store.Tx) error {
		return tx.Scan(prefix, func(k string, v []byte) error {
			var rec struct{ Body string }
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("inbox entry %s: %w", k, err)
			}
			seq, err := strconv.ParseUint(strings.TrimLeft(strings.TrimPrefix(k, prefix), "0"), 10, 64)
			if err != nil {
				return fmt.Errorf("inbox entry %s: %w", k, err)
			}
			out[rec.Body] = seq
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCLIPostgresTakeover runs two command processes on one PostgreSQL
// database for the same account. Process 1 runs listen -echo -json while a
// peer keeps sending; process 2, started meanwhile, fails with the "in
// use" error. Process 1 is killed with SIGKILL, and process 2, started
// again, takes the account over within a few seconds. The conversation
// goes on: every message the server accepted is printed, and exactly once
// by delivery id: a message printed by both processes is one that process
// 1 printed but was killed before acknowledging (its inbox entry was still
// in the database), which process 2 hands over again; every such entry is
// printed by process 2. No ratchet forked: process 2 decrypts every
// message of the peer, and the peer every echo of process 2.
func TestCLIPostgresTakeover(t *testing.T) {
	began := time.Now()
	srv := prosodytest.Start(t, prosodytest.User{Name: "lis"}, prosodytest.User{Name: "peer"})
	c := &cli{bin: buildCLI(t), srv: srv}
	dsn := secretDSN(t, "postgres")
	c.pgFingerprint(t, dsn, "lis")
	pe := startPeer(t, srv, "peer")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lis := srv.JID("lis")
	args := c.pgArgs(dsn, "lis", "-json", "listen", "-echo", "-for", "3m")
	// No race detector pause at exit (atexit_sleep_ms) in the timings.
	quick := []string{"GORACE=atexit_sleep_ms=0"}

	p1 := c.startIn(t, "", quick, args...)
	if _, _, err := pe.send(ctx, lis, "hello", "hello"); err != nil {
		t.Fatal(err)
	}
	pe.waitBody("echo: hello", 30*time.Second)
	t.Logf("process 1 listening after %v", time.Since(began))

	// The peer sends continuously, each message again while it fails.
	var (
		mu       sync.Mutex
		ids      = []string{"hello"}
		sentBody = []string{"hello"}
	)
	stopSending := make(chan struct{})
	sent := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stopSending:
				sent <- nil
				return
			default:
			}
			id, b, err := pe.send(ctx, lis, fmt.Sprint("m", i), fmt.Sprint("msg ", i))
			mu.Lock()
			ids, sentBody = append(ids, id...), append(sentBody, b...)
			mu.Unlock()
			if err != nil {
				sent <- fmt.Errorf("message %d: %w", i, err)
				return
			}
			time.Sleep(30 * time.Millisecond)
		}
	}()

	// Process 2 on the same account: in use.
	start := time.Now()
	out, errOut, code := c.runEnv(t, quick, args...)
	if code != exitError || out != "" || !strings.Contains(errOut, "omemo: account lis@localhost in the state database postgres://postgres:xxxxx@") ||
		!strings.Contains(errOut, " is in use by another omemo process (waited 3s): ") || time.Since(start) > pgLockTimeout+10*time.Second {
		t.Fatalf("process 2 while process 1 holds the account: exit %d after %v\nstdout: %s\nstderr: %s", code, time.Since(start), out, errOut)
	}
	noSecret(t, "process 2's stderr", errOut)
	t.Logf("process 2 refused after %v", time.Since(start))

	// Process 1 dies mid-conversation, just after it printed a message:
	// its acknowledgement is likely not committed yet (acknowledgements
	// ride on the next write, or are committed after 200 ms).
	for drained := false; !drained; {
		select {
		case <-p1.lines:
		default:
			drained = true
		}
	}
	p1.next(10 * time.Second)
	killed := time.Now()
	if err := p1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p1.done
	// What process 1 left unacknowledged, read as the next holder sees
	// it (this waits for the lease to go, a few milliseconds).
	pending := inboxBodies(t, dsn, "lis@localhost")
	snapshot := time.Since(killed)

	p2 := c.startIn(t, "", quick, args...)
	restarted := time.Now()
	first := p2.next(30 * time.Second)
	takeover := time.Since(killed)
	t.Logf("takeover: process 2 printed its first message %v after the kill (%v after its start; the account was free and its inbox read %v after the kill): %s",
		takeover, time.Since(restarted), snapshot, first)
	// The lease goes with the killed process's connections: another
	// holder has the account at once. Process 2 then logs in, starts
	// OMEMO and catches up (slower with the race detector).
	limit := 5 * time.Second
	if raceBuild {
		limit = 10 * time.Second
	}
	if snapshot > 2*time.Second || takeover > limit {
		t.Errorf("the account was free %v after the kill (want < 2s), and process 2 printed its first message after %v (want < %v)", snapshot, takeover, limit)
	}
	// The conversation goes on for a while with process 2.
	time.Sleep(2 * time.Second)
	close(stopSending)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}

	mu.Lock()
	allIDs, allBodies := slices.Clone(ids), slices.Clone(sentBody)
	mu.Unlock()
	var want []string
	for i, id := range allIDs {
		if srv.Archived(t, "lis", id) {
			want = append(want, allBodies[i])
		}
	}
	if len(want) < len(allIDs)/2 || len(want) < 40 {
		t.Fatalf("only %d of %d attempts accepted by the server", len(want), len(allIDs))
	}
	printed := func() (b1, b2 map[string]int) {
		b1, _ = listenLines(t, p1.stdout(), "peer@localhost")
		b2, _ = listenLines(t, p2.stdout(), "peer@localhost")
		return b1, b2
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b1, b2 := printed()
		var missing []string
		for _, w := range want {
			if b1[w]+b2[w] == 0 {
				missing = append(missing, w)
			}
		}
		for w := range pending {
			if b2[w] == 0 {
				missing = append(missing, w+" (redelivered)")
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not printed: %q\nprocess 1:\n%s\nprocess 2:\n%s\nstderr:\n%s", missing,
				strings.Join(p1.stdout(), "\n"), strings.Join(p2.stdout(), "\n"), p2.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Watch for duplicates a little longer.
	time.Sleep(time.Second)
	b1, b2 := printed()
	again := 0
	for body, n := range b1 {
		if n != 1 {
			t.Errorf("process 1 printed %q %d times", body, n)
		}
		if b2[body] > 0 {
			// Printed by both: only a message process 1 had not
			// acknowledged when it was killed, handed over again.
			if _, ok := pending[body]; !ok {
				t.Errorf("%q printed by both processes, but process 1 had acknowledged it", body)
			}
			again++
		}
	}
	for body, n := range b2 {
		if n != 1 {
			t.Errorf("process 2 printed %q %d times", body, n)
		}
	}
	for body := range mergeCounts(b1, b2) {
		if !slices.Contains(allBodies, body) {
			t.Errorf("%q printed, never sent", body)
		}
	}
	t.Logf("%d attempts, %d accepted; process 1 printed %d, process 2 %d; %d left unacknowledged at the kill, %d of them printed by both",
		len(allIDs), len(want), len(b1), len(b2), len(pending), again)

	// Process 2 answers everything it printed, and the peer decrypts
	// every answer: no ratchet forked.
	for body := range b2 {
		deadline := time.Now().Add(15 * time.Second)
		for pe.count("echo: "+body) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the peer did not get the echo of %q from process 2; stderr:\n%s", body, p2.stderr)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, line := range strings.Split(p2.stderr.String(), "\n") {
		if strings.Contains(line, "rejected") {
			t.Errorf("process 2: %s", line)
		}
	}
	noSecret(t, "process 2's stderr", p2.stderr.String())

	if err := p2.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := p2.wait(10 * time.Second); code != 0 {
		t.Fatalf("process 2 after SIGINT: exit %d; stderr:\n%s", code, p2.stderr)
	}
	if left := inboxBodies(t, dsn, "lis@localhost"); len(left) != 0 {
		t.Errorf("after a clean stop the inbox still holds %d messages", len(left))
	}
	t.Logf("took %v", time.Since(began))
}

func mergeCounts(a, b map[string]int) map[string]int {
	out := maps.Clone(a)
	for k, v := range b {
		out[k] += v
	}
	return out
}
