package session_test

// The cost of idle accounts: thousands of Managers of one multi-account
// store, started and left idle. To see what holds their memory, write a
// heap profile of the idle accounts (with every allocation sampled):
//
//	IDLE_HEAP_PROFILE=/tmp/idle.heap go test -run TestIdleAccounts/memory -memprofilerate 1 ./session/
//	go tool pprof -sample_index=inuse_space -top /tmp/idle.heap

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// fleet is many accounts of one multi-account store, on one server.
type fleet struct {
	accts store.Accounts
	srv   *sessiontest.Server
	names []string
	fs    []backends.Factory
	sched *session.Scheduler
	// seed is the own state that every account got a copy of.
	seed map[string][]byte
}

func (f *fleet) config(jid string, tb testing.TB) session.Config {
	return session.Config{
		JID: jid, Backends: f.fs, StartSynced: true, Scheduler: f.sched,
		OnError: func(err error) { tb.Errorf("background error of %s: %v", jid, err) },
	}
}

// seedKeys are the keys of an account's own state that do not name its
// JID: copied into every account of a fleet, they spare each account the
// generation of its keys (some 100 key pairs per backend) and leave a
// valid account that a start completes.
var seedKeys = []string{"omemo/identity", "omemo/device-id", "omemo/own-label", "omemo/namespaces", "omemo/ns/"}

// newFleet creates n accounts, all with the own key material of one
// (cloned: identities are shared, which nothing here looks at), their
// bundles published, and starts each once, so that they publish their
// device lists and complete their state.
func newFleet(tb testing.TB, accts store.Accounts, n int, fs []backends.Factory, sched *session.Scheduler) *fleet {
	tb.Helper()
	ctx := context.Background()
	f := &fleet{accts: accts, srv: sessiontest.NewServer(), fs: fs, sched: sched, seed: map[string][]byte{}}
	for i := range n {
		f.names = append(f.names, fmt.Sprintf("user%05d@fleet.example", i))
	}
	st, err := accts.Account(ctx, f.names[0])
	if err != nil {
		tb.Fatal(err)
	}
	m, err := session.New(ctx, st, f.srv.Network(f.names[0]), f.config(f.names[0], tb))
	if err != nil {
		tb.Fatal(err)
	}
	devID := m.DeviceID()
	m.Close()
	if err := st.View(ctx, func(tx store.Tx) error {
		return tx.Scan("", func(k string, v []byte) error {
			for _, p := range seedKeys {
				if k == p || (strings.HasSuffix(p, "/") && strings.HasPrefix(k, p)) {
					f.seed[k] = append([]byte(nil), v...)
				}
			}
			return nil
		})
	}); err != nil {
		tb.Fatal(err)
	}
	st.Close()
	f.each(tb, func(i int, name string) {
		if i == 0 {
			return
		}
		// The bundles are published as the seed's are, so that the first
		// start need not publish (and check) them again.
		for _, be := range fs {
			b, ok := f.srv.Bundle(be.Namespace, f.names[0], devID)
			if !ok {
				tb.Errorf("no %s bundle published", be.Namespace)
				return
			}
			f.srv.SetBundle(name, devID, b)
		}
		st, err := accts.Account(ctx, name)
		if err != nil {
			tb.Error(err)
			return
		}
		defer st.Close()
		if err := st.Update(ctx, func(tx store.Tx) error {
			for k, v := range f.seed {
				if err := tx.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			tb.Error(err)
		}
	})
	if tb.Failed() {
		tb.FailNow()
	}
	return f
}

// each runs fn for every account, on GOMAXPROCS goroutines, until the
// test fails.
func (f *fleet) each(tb testing.TB, fn func(i int, name string)) {
	f.eachAlways(func(i int, name string) {
		if !tb.Failed() {
			fn(i, name)
		}
	})
}

// eachAlways runs fn for every account, on GOMAXPROCS goroutines.
func (f *fleet) eachAlways(fn func(i int, name string)) {
	var wg sync.WaitGroup
	procs := runtime.GOMAXPROCS(0)
	for w := range procs {
		wg.Go(func() {
			for i := w; i < len(f.names); i += procs {
				fn(i, f.names[i])
			}
		})
	}
	wg.Wait()
}

// account is the open Manager of an account, and its store.
type account struct {
	m  *session.Manager
	st store.Store
}

// startAll starts the Manager of every account.
func (f *fleet) startAll(tb testing.TB) []account {
	tb.Helper()
	ctx := context.Background()
	ms := make([]account, len(f.names))
	f.each(tb, func(i int, name string) {
		st, err := f.accts.Account(ctx, name)
		if err != nil {
			tb.Error(err)
			return
		}
		m, err := session.New(ctx, st, f.srv.Network(name), f.config(name, tb))
		if err != nil {
			st.Close()
			tb.Errorf("starting %s: %v", name, err)
			return
		}
		ms[i] = account{m, st}
	})
	if tb.Failed() {
		f.closeAll(ms)
		tb.FailNow()
	}
	return ms
}

// flush waits until the queued background work of every account is
// done.
func (f *fleet) flush(tb testing.TB, ms []account) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f.each(tb, func(i int, _ string) {
		if err := ms[i].m.Flush(ctx); err != nil {
			tb.Error(err)
		}
	})
}

// settle waits until every account is idle: no background work queued,
// no own device list to check.
func (f *fleet) settle(tb testing.TB, ms []account) {
	f.flush(tb, ms)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f.each(tb, func(i int, _ string) {
		if err := ms[i].m.WaitOwnList(ctx); err != nil {
			tb.Error(err)
		}
	})
}

// closeAll closes the Managers and their account stores.
func (f *fleet) closeAll(ms []account) {
	f.eachAlways(func(i int, _ string) {
		if ms[i].m != nil {
			ms[i].m.Close()
			ms[i].st.Close()
		}
	})
}

// keyMaterial is the live heap that the backends of an account take for
// its own key material (its pre keys above all), measured on n copies
// loaded from the seed.
func (f *fleet) keyMaterial(tb testing.TB, n int) int64 {
	tb.Helper()
	var id backends.IdentityKeyPair
	if err := id.UnmarshalBinary(f.seed["omemo/identity"]); err != nil {
		tb.Fatal(err)
	}
	before := liveHeap()
	held := make([]backends.Backend, 0, n*len(f.fs))
	for range n {
		for _, be := range f.fs {
			raw, ok := f.seed["omemo/ns/"+url.PathEscape(be.Namespace)+"/keys"]
			if !ok {
				tb.Fatalf("no keys of %s in the seed", be.Namespace)
			}
			b, err := be.New(&id, raw, &backends.Options{})
			if err != nil {
				tb.Fatal(err)
			}
			held = append(held, b)
		}
	}
	per := (int64(liveHeap()) - int64(before)) / int64(n)
	runtime.KeepAlive(held)
	return per
}

// cpuTime is the CPU time (user and system) the process used so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// settledGoroutines waits (a while) for the number of goroutines to fall
// to at most want, and returns it.
func settledGoroutines(want int) int {
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); n > want && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(5 * time.Millisecond)
	}
	return n
}

// Limits of idle accounts.
const (
	// maxIdleGoroutines bounds the goroutines of any number of idle
	// accounts (and of accounts waiting to check their own device lists).
	maxIdleGoroutines = 100
	// maxIdleOverhead bounds the live heap of an idle account beyond its
	// own key material (about 10 KiB per backend, most of it 100 pre key
	// pairs): the Manager, its queue, timers and cache, and the store's
	// handle of the account.
	maxIdleOverhead = 4 << 10
	// maxRestartCPU bounds the CPU time of the start of an account that
	// is in order (100 µs is the aim; the margin is for loaded machines).
	maxRestartCPU = 300 * time.Microsecond
)

// TestIdleAccounts opens thousands of accounts of one multi-account store,
// lets them go idle, and checks what they cost: a bounded number of
// goroutines whatever their number, and little live heap beyond their key
// material. It restarts them all (Close, then New again) and checks the
// CPU time of the restart.
func TestIdleAccounts(t *testing.T) {
	// The first start publishes the device lists, and checks them again
	// after a while: here after an hour, so that all are pending.
	defer session.SetOwnListChecks(time.Hour)()
	for _, tc := range []struct {
		name string
		n    int
		fs   []backends.Factory
		open func(t *testing.T) store.Accounts
	}{
		{"memory", 10000, []backends.Factory{twomemo.Factory}, func(*testing.T) store.Accounts { return store.NewMemoryAccounts() }},
		{"bolt", 10000, []backends.Factory{twomemo.Factory}, func(t *testing.T) store.Accounts {
			a, err := store.OpenAccounts(filepath.Join(t.TempDir(), "accounts.db"), &store.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			return a
		}},
		{"memory-2backends", 2000, []backends.Factory{twomemo.Factory, oldmemo.Factory}, func(*testing.T) store.Accounts { return store.NewMemoryAccounts() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.n
			switch {
			case raceEnabled:
				n /= 20
			case testing.Short():
				n /= 10
			}
			accts := tc.open(t)
			defer accts.Close()
			testIdleAccounts(t, accts, n, tc.fs)
		})
	}
}

func testIdleAccounts(t *testing.T, accts store.Accounts, n int, fs []backends.Factory) {
	base := runtime.NumGoroutine()
	sched := session.NewScheduler(0)
	start := time.Now()
	f := newFleet(t, accts, n, fs, sched)

	// The first start publishes every device list, and checks it again
	// after a while: waiting for these checks, accounts hold no goroutine
	// either. Close ends the checks.
	cpu0 := cpuTime(t)
	ms := f.startAll(t)
	cpu := cpuTime(t) - cpu0
	watching := 0
	for _, a := range ms {
		watching += session.OwnListWatches(a.m)
	}
	g := settledGoroutines(base + maxIdleGoroutines)
	t.Logf("%d accounts created in %v; first start %v CPU; then %d goroutines (%d before) with %d own lists to check",
		n, time.Since(start).Round(time.Millisecond), cpu.Round(time.Millisecond), g, base, watching)
	if want := (n - 1) * len(fs); watching != want { // the seed published its lists before
		t.Errorf("%d own device lists to check after the first start of %d accounts, want %d", watching, n, want)
	}
	if g-base > maxIdleGoroutines {
		t.Errorf("%d accounts waiting to check their own device lists run %d goroutines, more than %d", n, g-base, maxIdleGoroutines)
	}
	f.flush(t, ms)
	f.closeAll(ms)

	// The restart: every account is in order.
	heap0 := liveHeap()
	cpu0, wall0 := cpuTime(t), time.Now()
	ms = f.startAll(t)
	f.settle(t, ms)
	cpu, wall := cpuTime(t)-cpu0, time.Since(wall0)
	if p := os.Getenv("IDLE_HEAP_PROFILE"); p != "" {
		writeHeapProfile(t, p)
	}
	heap := (int64(liveHeap()) - int64(heap0)) / int64(n)
	g = settledGoroutines(base + maxIdleGoroutines)
	keys := f.keyMaterial(t, min(n, 1000))
	t.Logf("%d idle accounts: %d goroutines (%d before); live heap %d B per account, of which %d B key material; restart %v CPU (%d µs per account), %v wall",
		n, g, base, heap, keys, cpu.Round(time.Millisecond), cpu.Microseconds()/int64(n), wall.Round(time.Millisecond))
	if g-base > maxIdleGoroutines {
		t.Errorf("%d idle accounts run %d goroutines, more than %d", n, g-base, maxIdleGoroutines)
	}
	if heap-keys > maxIdleOverhead {
		t.Errorf("an idle account holds %d B of live heap beyond its %d B of key material, more than %d", heap-keys, keys, maxIdleOverhead)
	}
	if per := cpu / time.Duration(n); !raceEnabled && per > maxRestartCPU {
		t.Errorf("the restart took %v of CPU per account, more than %v", per, maxRestartCPU)
	}
	f.closeAll(ms)
	if g := settledGoroutines(base); g > base {
		t.Errorf("%d goroutines left after closing every account, %d before", g, base)
	}
}

func writeHeapProfile(t *testing.T, path string) {
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(out, 0); err != nil {
		t.Fatal(err)
	}
}
