package session_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/internal/pgtest"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
)

// The crash tests of crash_test.go (a failing N-th write transaction, and
// SIGKILL during work) on the PostgreSQL store.
//
// Besides the failure modes of sessiontest.FailStore, which fail a
// transaction before it reaches the store, the PostgreSQL variant has a
// failure on the server: the N-th write transaction is committed with one
// more row, which a trigger of the test database refuses, so that the
// server receives the transaction's whole commit batch (the lease check,
// the deletions and upserts) and rolls it back.

// pgFaultKey is the row that makes a commit fail on the server, and
// pgFaultCode the SQLSTATE the trigger raises.
const (
	pgFaultKey  = "test/fail-commit"
	pgFaultCode = "OMT01"
)

// pgCrashDB is the database of a PostgreSQL crash test: one throw-away
// cluster per test, one DB (a pool and a lease connection, as in one
// process) whose accounts the runs use, each run its own.
type pgCrashDB struct {
	dsn  string
	db   *postgres.DB
	runs atomic.Int64
}

func newPGCrashDB(t *testing.T) *pgCrashDB {
	t.Helper()
	dsn := pgtest.Start(t).CreateDatabase(t)
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn, &postgres.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	// The server-side fault: the tables exist now.
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, `
CREATE FUNCTION omemo_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'injected commit failure' USING ERRCODE = '`+pgFaultCode+`';
END
$$;
CREATE TRIGGER omemo_test_fault BEFORE INSERT OR UPDATE ON omemo_kv FOR EACH ROW
	WHEN (NEW.key = '\x`+fmt.Sprintf("%x", pgFaultKey)+`'::bytea) EXECUTE FUNCTION omemo_test_fault();`); err != nil {
		t.Fatal(err)
	}
	return &pgCrashDB{dsn: dsn, db: db}
}

// serverFault is a store.Store that makes its N-th write transaction fail
// on the PostgreSQL server (see pgFaultKey), reported as
// sessiontest.ErrInjected wrapping the server's error.
type serverFault struct {
	store.Store

	mu      sync.Mutex
	updates int
	failAt  int
	fails   int
}

// failNth makes the n-th Update from now on fail on the server.
func (f *serverFault) failNth(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = f.updates + n
}

func (f *serverFault) heal() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failAt = 0
}

func (f *serverFault) failures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fails
}

func (f *serverFault) Update(ctx context.Context, fn func(store.Tx) error) error {
	f.mu.Lock()
	f.updates++
	fail := f.updates == f.failAt
	f.mu.Unlock()
	if !fail {
		return f.Store.Update(ctx, fn)
	}
	ran := false
	err := f.Store.Update(ctx, func(tx store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		ran = true
		return tx.Put(pgFaultKey, nil)
	})
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == pgFaultCode:
		f.mu.Lock()
		f.fails++
		f.mu.Unlock()
		return fmt.Errorf("%w: %w", sessiontest.ErrInjected, err)
	case err == nil && ran:
		return errors.New("serverFault: the commit with the fault row succeeded")
	}
	return err
}

// pgMode is a failure mode of the PostgreSQL crash script: one of
// sessiontest's, or the server's.
type pgMode struct {
	name   string
	client sessiontest.FailMode
	server bool
}

// runCrashScriptPG is runCrashScript on accounts of db: the parties'
// stores are a sessiontest.FailStore over a serverFault over a PostgreSQL
// account.
func runCrashScriptPG(t *testing.T, pdb *pgCrashDB, jid string, n int, mode pgMode) crashResult {
	t.Helper()
	w := newCrashWorld(t)
	run := pdb.runs.Add(1)
	faults := map[string]*serverFault{}
	defer func() {
		w.close()
		for _, f := range faults {
			if err := f.Store.Close(); err != nil {
				t.Error(err)
			}
		}
	}()
	for pj, p := range w.ps {
		st, err := pdb.db.Account(w.ctx, fmt.Sprintf("run%d-%s", run, pj))
		if err != nil {
			t.Fatal(err)
		}
		faults[pj] = &serverFault{Store: st}
		p.fs = sessiontest.NewFailStore(faults[pj])
	}
	if n > 0 {
		if mode.server {
			faults[jid].failNth(n)
		} else {
			w.ps[jid].fs.FailNth(n, mode.client)
		}
	}
	w.script()
	r := crashResult{updates: map[string]int{}, noStorage: w.noStorage}
	for pj, p := range w.ps {
		r.fails += p.fs.Failures() + faults[pj].failures()
		r.updates[pj] = p.fs.Updates()
		faults[pj].heal()
	}
	w.verify()
	return r
}

// TestFailNthWritePostgres is TestFailNthWrite on PostgreSQL: each write
// transaction of the scripted conversation fails in turn, on the server
// (the commit batch rolled back by PostgreSQL) for every N and party, and
// in sessiontest's modes (before the store) for a sample of them; the
// parties recover by retrying the failed operation, no message is lost or
// delivered twice, no pre key serves two sessions, and the committed state
// in the database alone carries on. OMEMO_CRASH_FULL runs every N in every
// mode.
func TestFailNthWritePostgres(t *testing.T) {
	pdb := newPGCrashDB(t)
	began := time.Now()
	counts := runCrashScriptPG(t, pdb, "", 0, pgMode{}).updates
	t.Logf("write transactions in a clean run: %v (%v)", counts, time.Since(began))

	modes := []pgMode{
		{name: "server", server: true},
		{name: "commit", client: sessiontest.FailCommit},
		{name: "write", client: sessiontest.FailWrite},
		{name: "begin", client: sessiontest.FailBegin},
	}
	full := os.Getenv("OMEMO_CRASH_FULL") != ""
	var mu sync.Mutex
	var runs, hit, serverHit int
	var noStorage []string
	t.Cleanup(func() {
		t.Logf("%d runs, %d hit an injected failure (%d on the server) in %v", runs, hit, serverHit, time.Since(began))
		if len(noStorage) > 0 {
			t.Errorf("%d failed operations did not report ErrStorage, e.g. %q", len(noStorage), noStorage[:min(5, len(noStorage))])
		}
	})
	// The server's failure for every N; sessiontest's modes (which
	// crash_test.go runs on every N with the memory store) for every
	// eighth, staggered. The race detector makes a run about 6 times
	// slower: a quarter of them, then.
	serverEvery, clientEvery := 1, 8
	if raceEnabled {
		serverEvery, clientEvery = 4, 32
	}
	for _, jid := range []string{alice, bob, charlie} {
		for i, mode := range modes {
			for n := 1; n <= counts[jid]+2; n++ {
				switch {
				case full:
				case mode.server && n%serverEvery != 0:
					continue
				case !mode.server && n%clientEvery != (2*i)%clientEvery:
					continue
				}
				name := fmt.Sprintf("%s/%s/%d", strings.SplitN(jid, "@", 2)[0], mode.name, n)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					r := runCrashScriptPG(t, pdb, jid, n, mode)
					mu.Lock()
					defer mu.Unlock()
					runs++
					if r.fails > 0 {
						hit++
						if mode.server {
							serverHit++
						}
					}
					noStorage = append(noStorage, r.noStorage...)
				})
			}
		}
	}
}

// pgKillEnv names the database when the test binary runs as the child of
// TestKillDuringWorkPostgres (killEnv names the directory of the
// application's record, as for TestKillDuringWork).
const pgKillEnv = "OMEMO_SESSION_KILL_CHILD_PG_DSN"

// killPairPG is killPair on the accounts of the database dsn: it takes
// Alice's and Bob's accounts (waiting for a killed holder's lease to go)
// and starts their Managers on a fresh in-memory server.
func killPairPG(ctx context.Context, db *postgres.DB, srv *sessiontest.Server, onError func(error)) (ms [2]*session.Manager, sts [2]store.Store, err error) {
	for i, jid := range []string{alice, bob} {
		st, err := db.Account(ctx, jid)
		if err != nil {
			return ms, sts, err
		}
		sts[i] = st
		m, err := session.New(ctx, st, srv.Network(jid), session.Config{
			JID: jid, Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory}, StartSynced: true, OnError: onError,
		})
		if err != nil {
			return ms, sts, err
		}
		ms[i] = m
	}
	for _, m := range ms {
		for _, jid := range []string{alice, bob} {
			if err := m.RefreshDeviceLists(ctx, jid); err != nil {
				return ms, sts, err
			}
		}
	}
	return ms, sts, nil
}

// TestKillChildPostgres is the child process of TestKillDuringWorkPostgres:
// TestKillChild with Alice's and Bob's state in PostgreSQL.
func TestKillChildPostgres(t *testing.T) {
	dsn := os.Getenv(pgKillEnv)
	if dsn == "" {
		t.Skip("the child process of TestKillDuringWorkPostgres")
	}
	fail := func(err error) {
		fmt.Println(killPrefix+"FAIL", err)
		os.Exit(3)
	}
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn, &postgres.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		fail(err)
	}
	srv := sessiontest.NewServer()
	if killHandled, err = openHandledLog(os.Getenv(killEnv)); err != nil {
		fail(err)
	}
	ms, _, err := killPairPG(ctx, db, srv, func(err error) { fail(fmt.Errorf("background: %w", err)) })
	if err != nil {
		fail(err)
	}
	if err := redeliverInbox(ctx, ms); err != nil {
		fail(err)
	}
	a, b := ms[0], ms[1]
	tag := fmt.Sprint(" #", time.Now().UnixNano())
	n, err := killResync(ctx, srv, ms, tag)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%sready %d\n", killPrefix, n)
	for i := range 10000 {
		var err error
		switch i % 5 {
		case 0, 3:
			err = killSend(ctx, srv, a, b, false, fmt.Sprint("a", i, tag))
		case 1:
			err = killSend(ctx, srv, b, a, i%2 == 0, fmt.Sprint("b", i, tag), fmt.Sprint("b", i, "'", tag), fmt.Sprint("b", i, "''", tag))
		case 2:
			err = killSend(ctx, srv, a, b, true, fmt.Sprint("a", i, tag), fmt.Sprint("a", i, "'", tag))
		case 4:
			from, to := a, b
			if i%2 == 0 {
				from, to = b, a
			}
			for _, err := range from.ReplaceSession(ctx, to.JID(), to.DeviceID()) {
				fail(err)
			}
			if err = killDrain(ctx, srv, to); err == nil {
				err = killSend(ctx, srv, to, from, false, fmt.Sprint("answer", i, tag))
			}
		}
		if err != nil {
			fail(fmt.Errorf("step %d: %w", i, err))
		}
		fmt.Printf("%sstep %d\n", killPrefix, i)
	}
}

// TestKillDuringWorkPostgres is TestKillDuringWork on PostgreSQL: a process
// running Alice's and Bob's Managers on accounts of one database is killed
// at random moments (during start-up, or inside a step, with a commit
// possibly in flight on the server); after each kill the next process
// takes the accounts over (PostgreSQL released the dead one's leases), both
// Managers start from the committed state and the conversation goes on in
// both directions without any session repair, every message handed to the
// application exactly once by inbox sequence number.
func TestKillDuringWorkPostgres(t *testing.T) {
	if os.Getenv(pgKillEnv) != "" || os.Getenv(killEnv) != "" {
		t.Skip("in a child process")
	}
	dsn := pgtest.Start(t).CreateDatabase(t)
	dir := t.TempDir()
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 0))
	const rounds = 6
	recoveries := 0
	decrypted := map[string]bool{}
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChildPostgres$", "-test.count=1")
		cmd.Env = append(os.Environ(), pgKillEnv+"="+dsn, killEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		var killAt <-chan time.Time
		steps := -1
		if rng.IntN(4) == 0 {
			killAt = time.After(time.Duration(rng.IntN(300)) * time.Millisecond)
		}
		wantSteps := 1 + rng.IntN(8)
		var log []string
		read := func(l string) {
			log = append(log, l)
			if h, ok := strings.CutPrefix(l, killPrefix+"handled "); ok {
				decrypted[h] = true
			}
			if strings.HasPrefix(l, killPrefix+"FAIL") {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: %s\n%s", round, l, stderr.String())
			}
		}
	wait:
		for {
			select {
			case <-killAt:
				break wait
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("round %d: child exited before it was killed: %v\n%s\n%s", round, cmd.Wait(), strings.Join(log, "\n"), stderr.String())
				}
				read(l)
				if n, ok := strings.CutPrefix(l, killPrefix+"ready "); ok {
					steps = 0
					if n != "0" {
						recoveries++
					}
				} else if strings.HasPrefix(l, killPrefix+"step") {
					steps++
				}
				if killAt == nil && steps >= wantSteps {
					killAt = time.After(time.Duration(rng.IntN(20)) * time.Millisecond)
				}
			}
		}
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		for l := range lines {
			read(l)
		}
		cmd.Wait()
		t.Logf("round %d: killed after %d steps (-1: during start-up)", round, steps)
	}

	// The parent takes the accounts over once more, hands the inboxes
	// over and checks the record.
	ctx := context.Background()
	db, err := postgres.Open(ctx, dsn, &postgres.Options{LockTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srv := sessiontest.NewServer()
	if killHandled, err = openHandledLog(dir); err != nil {
		t.Fatal(err)
	}
	defer func() { killHandled.f.Close(); killHandled = nil }()
	ms, sts, err := killPairPG(ctx, db, srv, func(err error) { t.Errorf("background: %v", err) })
	for _, m := range ms {
		if m != nil {
			defer m.Close()
		}
	}
	for _, st := range sts {
		if st != nil {
			defer st.Close()
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := redeliverInbox(ctx, ms); err != nil {
		t.Fatal(err)
	}
	checkHandled(t, dir, decrypted)
	n, err := killResync(ctx, srv, ms, " #parent")
	if err != nil {
		t.Fatal(err)
	}
	if n > 0 {
		recoveries++
	}
	if recoveries > 0 {
		t.Errorf("%d of %d restarts needed a session recovery", recoveries, rounds+1)
	}
	for i := range 3 {
		if err := killSend(ctx, srv, ms[0], ms[1], i == 1, fmt.Sprint("final a", i), fmt.Sprint("final a", i, "'")); err != nil {
			t.Fatal(err)
		}
		if err := killSend(ctx, srv, ms[1], ms[0], i == 2, fmt.Sprint("final b", i)); err != nil {
			t.Fatal(err)
		}
	}
}
