package integration_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	bolt "go.etcd.io/bbolt"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/pgtest"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// The number of gateway accounts (and of peers) of TestIntegrationGateway:
// gatewayAccountsFull, or gatewayAccountsSmall under the race detector (CI
// runs the tests with it) and with -short. Under the race detector an
// account costs about ten times the CPU (a fresh account's keys are most
// of it), and the full scale would take minutes.
const (
	gatewayAccountsFull  = 200
	gatewayAccountsSmall = 16
)

// gatewayLogins bounds the logins (and plugin Starts) running at once,
// as a gateway would pace its reconnections.
const gatewayLogins = 16

// gatewayPairs bounds the round trips running at once.
const gatewayPairs = 32

// The gateway test (issue 16): 200 accounts served by one
// process from one multi-account store, each exchanging messages through
// Prosody with a peer of its own (a separate account with a memory store,
// in the same process): a round trip in each direction, then every
// gateway account is closed, the store closed and opened again (a
// restart) and every account does one more round trip on the sessions it
// had, without a new key exchange.
func TestIntegrationGateway(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "gateway.db")
		runGateway(t, gatewayStore{
			open: func(t *testing.T) store.Accounts {
				a, err := store.OpenAccounts(path, nil)
				if err != nil {
					t.Fatal(err)
				}
				return a
			},
			names: func(t *testing.T) []string { return boltAccountNames(t, path) },
		})
	})
	t.Run("postgres", func(t *testing.T) {
		pg := pgtest.Start(t)
		dsn := pg.CreateDatabase(t)
		runGateway(t, gatewayStore{
			open: func(t *testing.T) store.Accounts {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				db, err := postgres.Open(ctx, dsn, nil)
				if err != nil {
					t.Fatal(err)
				}
				return db
			},
			names: func(t *testing.T) []string { return postgresAccountNames(t, dsn) },
		})
	})
}

// gatewayStore is a multi-account store under test.
type gatewayStore struct {
	// open opens the store (again, after Close).
	open func(t *testing.T) store.Accounts
	// names lists the accounts with state in the closed store, reading
	// the file or database directly.
	names func(t *testing.T) []string
}

// gwClient is one account connected with the plugin.
type gwClient struct {
	name string
	jid  jid.JID

	p     *omemo.Plugin
	msgs  chan omemo.Message
	dev   uint32
	ik    [32]byte
	close func()
}

// gwRecorder collects, across reconnections, every message each account
// got and every error its plugin reported.
type gwRecorder struct {
	mu   sync.Mutex
	got  map[string][]omemo.Message
	errs []string
}

func (r *gwRecorder) add(name string, m omemo.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[name] = append(r.got[name], m)
}

func (r *gwRecorder) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// gwDial logs name in, builds the plugin on st, runs Serve and Starts the
// plugin. close (idempotent) closes the plugin and the session, not st.
func gwDial(srv *prosodytest.Server, name string, st store.Store, rec *gwRecorder, logger *slog.Logger) (*gwClient, error) {
	// Cancelled only after the session is closed (see prosodytest.Dial).
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := srv.DialSession(dctx, name)
	if err != nil {
		dcancel()
		return nil, fmt.Errorf("dial %s: %w", name, err)
	}
	c := &gwClient{name: name, jid: srv.JID(name), msgs: make(chan omemo.Message, 8)}
	p, err := omemo.New(s, omemo.Config{
		Store:        st,
		SendPresence: true,
		Logger:       logger.With("account", name),
		OnError:      func(err error) { rec.fail("%s: OnError: %v", name, err) },
	})
	if err != nil {
		dcancel()
		_ = s.Close()
		return nil, fmt.Errorf("omemo.New %s: %w", name, err)
	}
	c.p = p
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(msg omemo.Message) {
		rec.add(name, msg)
		select {
		case c.msgs <- msg:
		default:
			rec.fail("%s: message channel full, dropped %q", name, msg.Body)
		}
	})))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(m)
	}()
	var once sync.Once
	c.close = func() {
		once.Do(func() {
			defer dcancel()
			_ = p.Close()
			_ = s.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = s.Conn().Close()
				<-done
			}
		})
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer scancel()
	if err := p.Start(sctx); err != nil {
		c.close()
		return nil, fmt.Errorf("%s: Start: %w", name, err)
	}
	mgr := p.Manager()
	c.dev, c.ik = mgr.DeviceID(), mgr.IdentityKey()
	return c, nil
}

// gwParallel runs f(0) … f(n-1), at most workers at a time, and returns
// their errors joined.
func gwParallel(n, workers int, f func(i int) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range min(workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 10 {
		errs = append(errs[:10], fmt.Errorf("… and %d more errors", len(errs)-10))
	}
	return errors.Join(errs...)
}

// gwRoundTrip sends body from one client to the other and checks what
// arrives: the right body from the right account and device, decrypted,
// and a key exchange exactly when kex.
func gwRoundTrip(from, to *gwClient, body string, kex bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := from.p.Send(ctx, to.jid, body)
	if err != nil {
		return fmt.Errorf("%s → %s: Send: %w", from.name, to.name, err)
	}
	if len(res.Recipients) != 1 || res.Recipients[0].JID != to.jid.String() || len(res.Failures) != 0 {
		return fmt.Errorf("%s → %s: recipients %v, failures %v; want the peer's one device", from.name, to.name, res.Recipients, res.Failures)
	}
	select {
	case m := <-to.msgs:
		switch {
		case m.Body != body:
			return fmt.Errorf("%s got %q, want %q", to.name, m.Body, body)
		case !m.From.Bare().Equal(from.jid) || m.SenderDevice != from.dev || m.IdentityKey != from.ik:
			return fmt.Errorf("%s: %q from %v device %d key %x, want %v device %d key %x",
				to.name, body, m.From, m.SenderDevice, m.IdentityKey[:4], from.jid, from.dev, from.ik[:4])
		case m.KeyExchange != kex:
			return fmt.Errorf("%s: %q key exchange %v, want %v", to.name, body, m.KeyExchange, kex)
		case m.ID != res.ID || m.Carbon || m.Sent || m.Archived:
			return fmt.Errorf("%s: %q id %q (sent %q), carbon %v, sent %v, archived %v", to.name, body, m.ID, res.ID, m.Carbon, m.Sent, m.Archived)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %q from %s did not arrive within a minute", to.name, body, from.name)
	}
}

// gwFigures are the process's goroutines and live heap once garbage has
// been collected.
type gwFigures struct {
	goroutines int
	heap       uint64
}

// gwMeasure measures once the clients are idle: their background work
// (bundle uploads, empty messages) done and the number of goroutines
// steady for half a second.
func gwMeasure(t *testing.T, clients ...[]*gwClient) gwFigures {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, cs := range clients {
		for _, c := range cs {
			if err := c.p.Manager().Flush(ctx); err != nil {
				t.Fatalf("%s: Flush: %v", c.name, err)
			}
		}
	}
	for last, deadline := -1, time.Now().Add(10*time.Second); time.Now().Before(deadline); {
		n := runtime.NumGoroutine()
		if n == last {
			break
		}
		last = n
		time.Sleep(500 * time.Millisecond)
	}
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return gwFigures{goroutines: runtime.NumGoroutine(), heap: ms.HeapAlloc}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func runGateway(t *testing.T, gs gatewayStore) {
	began := time.Now()
	n := gatewayAccountsFull
	if gatewayRaceDetector || testing.Short() {
		n = gatewayAccountsSmall
		t.Logf("race detector or -short: %d accounts (%d otherwise)", n, gatewayAccountsFull)
	}
	gwName := func(i int) string { return fmt.Sprintf("gw%d", i) }
	peerName := func(i int) string { return fmt.Sprintf("peer%d", i) }
	users := make([]prosodytest.User, 0, 2*n)
	for i := range n {
		users = append(users, prosodytest.User{Name: gwName(i), Contacts: []string{peerName(i)}}, prosodytest.User{Name: peerName(i)})
	}
	srv := prosodytest.Start(t, users...)
	t.Logf("Prosody with %d accounts ready after %v", len(users), time.Since(began))

	rec := &gwRecorder{got: map[string][]omemo.Message{}}
	logger := slog.New(slog.NewTextHandler(testWriter{t, "gateway"}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	idle := gwMeasure(t)
	cpu0 := gatewayProsodyCPU(srv)

	// The peers: one account each, with a memory store.
	peers := make([]*gwClient, n)
	t.Cleanup(func() {
		for _, c := range peers {
			if c != nil {
				c.close()
			}
		}
	})
	start := time.Now()
	if err := gwParallel(n, gatewayLogins, func(i int) (err error) {
		peers[i], err = gwDial(srv, peerName(i), store.NewMemory(), rec, logger)
		return err
	}); err != nil {
		t.Fatalf("starting the peers: %v", err)
	}
	d, cpu1 := time.Since(start), gatewayProsodyCPU(srv)
	t.Logf("%d peers started in %v (Prosody CPU %v)", n, d, cpu1-cpu0)
	withPeers := gwMeasure(t, peers)

	// The gateway: every account on a Store of the one store.
	accts := gs.open(t)
	acctsOpen := true
	closeAccts := func() {
		if acctsOpen {
			acctsOpen = false
			if err := accts.Close(); err != nil {
				t.Errorf("closing the store: %v", err)
			}
		}
	}
	t.Cleanup(func() { closeAccts() })
	gws := make([]*gwClient, n)
	stores := make([]store.Store, n)
	closeGateway := func() {
		_ = gwParallel(n, gatewayLogins, func(i int) error {
			if gws[i] != nil {
				gws[i].close()
			}
			if stores[i] != nil {
				if err := stores[i].Close(); err != nil {
					return fmt.Errorf("closing the store of %s: %w", gwName(i), err)
				}
			}
			return nil
		})
	}
	t.Cleanup(closeGateway)
	startGateway := func() time.Duration {
		t.Helper()
		start := time.Now()
		if err := gwParallel(n, gatewayLogins, func(i int) error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := accts.Account(ctx, srv.JID(gwName(i)).String())
			if err != nil {
				return fmt.Errorf("account %s: %w", gwName(i), err)
			}
			stores[i] = st
			gws[i], err = gwDial(srv, gwName(i), st, rec, logger)
			return err
		}); err != nil {
			t.Fatalf("starting the gateway accounts: %v", err)
		}
		return time.Since(start)
	}
	cpu1 = gatewayProsodyCPU(srv)
	d = startGateway()
	cpu2 := gatewayProsodyCPU(srv)
	t.Logf("%d gateway accounts started (store opened, logged in, keys generated and published) in %v: %.1f accounts/s (Prosody CPU %v)",
		n, d, float64(n)/d.Seconds(), cpu2-cpu1)

	// Each account has its own identity: no two of them share one.
	identities := map[[32]byte]string{}
	for i, c := range gws {
		if other, dup := identities[c.ik]; dup {
			t.Fatalf("%s and %s have the same identity key %x", gwName(i), other, c.ik)
		}
		identities[c.ik] = gwName(i)
	}
	type device struct {
		id uint32
		ik [32]byte
	}
	before := make([]device, n)
	for i, c := range gws {
		before[i] = device{c.dev, c.ik}
	}

	exchange := func(round int, gwKex bool) {
		t.Helper()
		start, cpu := time.Now(), gatewayProsodyCPU(srv)
		err := gwParallel(n, gatewayPairs, func(i int) error {
			gw, peer := gws[i], peers[i]
			if err := gwRoundTrip(gw, peer, fmt.Sprintf("round %d: %s to %s", round, gw.name, peer.name), gwKex); err != nil {
				return err
			}
			return gwRoundTrip(peer, gw, fmt.Sprintf("round %d: %s to %s", round, peer.name, gw.name), false)
		})
		d := time.Since(start)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t.Logf("round %d: %d messages (%d round trips, %d at a time) in %v: %.0f messages/s (Prosody CPU %v)",
			round, 2*n, n, gatewayPairs, d, float64(2*n)/d.Seconds(), gatewayProsodyCPU(srv)-cpu)
	}
	// The first message of each pair starts the session (a key
	// exchange); the answer continues it.
	exchange(1, true)

	// Restart: every gateway account and the store closed, then opened
	// again from the same file or database.
	start = time.Now()
	closeGateway()
	closeAccts()
	t.Logf("%d gateway accounts and the store closed in %v", n, time.Since(start))
	names := gs.names(t)
	want := make([]string, n)
	for i := range n {
		want[i] = srv.JID(gwName(i)).String()
	}
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Fatalf("the store holds %d accounts (%.3q…), want the %d gateway accounts", len(names), names[:min(len(names), 3)], n)
	}

	accts, acctsOpen = gs.open(t), true
	clear(gws)
	clear(stores)
	cpu1 = gatewayProsodyCPU(srv)
	d = startGateway()
	t.Logf("%d gateway accounts restarted from the store in %v: %.1f accounts/s (Prosody CPU %v)",
		n, d, float64(n)/d.Seconds(), gatewayProsodyCPU(srv)-cpu1)
	for i, c := range gws {
		if c.ik != before[i].ik || c.dev != before[i].id {
			t.Fatalf("%s came back as device %d key %x, was device %d key %x", c.name, c.dev, c.ik[:4], before[i].id, before[i].ik[:4])
		}
	}

	// The sessions go on: no key exchange either way.
	exchange(2, false)
	if c, ok := accts.(interface{ Check(context.Context) error }); ok {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := c.Check(ctx)
		cancel()
		if err != nil {
			t.Errorf("Check of the store: %v", err)
		}
	}

	// Exactly once: nothing else arrives.
	time.Sleep(time.Second)
	for _, c := range append(slices.Clone(gws), peers...) {
		select {
		case m := <-c.msgs:
			t.Errorf("%s: unexpected message %q from %v", c.name, m.Body, m.From)
		default:
		}
	}
	rec.mu.Lock()
	for i := range n {
		for _, name := range []string{gwName(i), peerName(i)} {
			other := peerName(i)
			if name == other {
				other = gwName(i)
			}
			var bodies []string
			for _, m := range rec.got[name] {
				bodies = append(bodies, m.Body)
			}
			wantBodies := []string{
				fmt.Sprintf("round 1: %s to %s", other, name),
				fmt.Sprintf("round 2: %s to %s", other, name),
			}
			if !slices.Equal(bodies, wantBodies) {
				t.Errorf("%s got %q, want %q", name, bodies, wantBodies)
			}
		}
	}
	for _, e := range rec.errs {
		t.Error(e)
	}
	rec.mu.Unlock()

	all := gwMeasure(t, gws, peers)
	t.Logf("idle: %d goroutines, heap %.1f MiB with nothing connected; %d goroutines, %.1f MiB with the %d peers; %d goroutines, %.1f MiB with the gateway accounts too",
		idle.goroutines, mib(idle.heap), withPeers.goroutines, mib(withPeers.heap), n, all.goroutines, mib(all.heap))
	t.Logf("per gateway account: %.1f goroutines, %.0f KiB of heap (peers: %.1f goroutines, %.0f KiB each)",
		float64(all.goroutines-withPeers.goroutines)/float64(n), float64(int64(all.heap)-int64(withPeers.heap))/1024/float64(n),
		float64(withPeers.goroutines-idle.goroutines)/float64(n), float64(int64(withPeers.heap)-int64(idle.heap))/1024/float64(n))
	t.Logf("took %v; Prosody used %v of CPU in all", time.Since(began), gatewayProsodyCPU(srv))
}

// boltAccountNames lists the account buckets of a closed multi-account
// bbolt file.
func boltAccountNames(t *testing.T, path string) []string {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var names []string
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("accounts"))
		if b == nil {
			return errors.New("no accounts bucket")
		}
		return b.ForEachBucket(func(k []byte) error {
			names = append(names, string(k))
			return nil
		})
	})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	sort.Strings(names)
	return names
}

// postgresAccountNames lists the accounts of the database that have
// state, checking that every account with state has a row.
func postgresAccountNames(t *testing.T, dsn string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var orphans int
	if err := c.QueryRow(ctx, `SELECT count(DISTINCT account_id) FROM omemo_kv WHERE account_id NOT IN (SELECT id FROM omemo_accounts)`).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	if orphans != 0 {
		t.Errorf("%d accounts with keys but no account row", orphans)
	}
	rows, err := c.Query(ctx, `SELECT name FROM omemo_accounts a WHERE EXISTS (SELECT 1 FROM omemo_kv k WHERE k.account_id = a.id) ORDER BY name COLLATE "C"`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var total int
	if err := c.QueryRow(ctx, `SELECT count(*) FROM omemo_accounts`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != len(names) {
		t.Errorf("%d account rows, %d of them with keys", total, len(names))
	}
	return names
}
