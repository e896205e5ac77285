package main

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// factories are the backends of every Manager (-backends): by default
// both, OMEMO 2 first, as the plugin configures them.
var factories = []backends.Factory{twomemo.Factory, oldmemo.Factory}

// setBackends sets factories from a list of names.
func setBackends(list string) error {
	var fs []backends.Factory
	for _, name := range splitList(list) {
		switch name {
		case "twomemo":
			fs = append(fs, twomemo.Factory)
		case "oldmemo":
			fs = append(fs, oldmemo.Factory)
		default:
			return fmt.Errorf("unknown backend %q (twomemo, oldmemo)", name)
		}
	}
	if len(fs) == 0 || fs[0].Namespace != twomemo.Namespace {
		return fmt.Errorf("-backends must start with twomemo (the synthetic peers are OMEMO 2 devices)")
	}
	factories = fs
	return nil
}

// backendNames is the -backends value of factories.
func backendNames() string {
	var names []string
	for _, f := range factories {
		if f.Namespace == twomemo.Namespace {
			names = append(names, "twomemo")
		} else {
			names = append(names, "oldmemo")
		}
	}
	return strings.Join(names, ",")
}

// plaintext is a message of ordinary length in both namespaces.
var plaintext = map[string][]byte{
	twomemo.Namespace: []byte("a message of ordinary length, about a line of text"),
	oldmemo.Namespace: []byte("a message of ordinary length, about a line of text"),
}

// errorSink collects the background errors of the Managers of a case.
type errorSink struct {
	n     atomic.Int64
	first atomic.Value
}

func (e *errorSink) report(err error) {
	if e.n.Add(1) <= 5 {
		fmt.Fprintln(os.Stderr, "scale: background error:", err)
	}
	e.first.CompareAndSwap(nil, err)
}

func (e *errorSink) err() error {
	if n := e.n.Load(); n > 0 {
		return fmt.Errorf("%d background errors, the first: %v", n, e.first.Load())
	}
	return nil
}

// config is the Manager configuration of every case: defaults, except
// that history synchronisation is over.
func config(jid string, errs *errorSink) session.Config {
	return session.Config{JID: jid, Backends: factories, StartSynced: true, OnError: errs.report}
}

// runDevices is the one-account case: n peer devices, each messaged once,
// then start-up and steady-state Encrypt on the full store.
func runDevices(ctx context.Context, o *options, b backing, n int) (*result, error) {
	r := &result{Kind: "devices", Store: b.name(), N: n, Backends: len(factories), CacheBudget: session.DefaultCacheBudget}
	errs := &errorSink{}
	srv := sessiontest.NewServer()
	c, err := newCrowd(srv.Network(ownJID), n, o.perJID)
	if err != nil {
		return nil, err
	}
	cfg := config(ownJID, errs)
	r.BaseHeap = liveHeap()

	// Setup: message every device once. Commits need not be durable here.
	st, err := b.single(ctx, true)
	if err != nil {
		return nil, err
	}
	m, err := session.New(ctx, st, c, cfg)
	if err != nil {
		st.Close()
		return nil, err
	}
	start := time.Now()
	if err := messageAll(ctx, o, m, c); err != nil {
		m.Close()
		st.Close()
		return nil, err
	}
	r.Setup = time.Since(start)
	if err := m.Flush(ctx); err != nil {
		return nil, err
	}
	r.Heap = liveHeap()
	r.RSS, r.PeakRSS = rss()
	o.progress("%d devices messaged in %v: live heap %s, RSS %s", n, r.Setup.Round(time.Millisecond), mib(r.Heap), mib(r.RSS))
	if o.heapProf != "" {
		if err := writeHeapProfile(o.heapProf); err != nil {
			return nil, err
		}
	}
	m.Close()
	if err := st.Close(); err != nil {
		return nil, err
	}
	if r.Size, err = b.size(ctx); err != nil {
		return nil, err
	}
	r.FreePages = -1
	if bb, ok := b.(*boltBacking); ok {
		if r.FreePages, err = bb.freePages(); err != nil {
			return nil, err
		}
	}

	// Start-up on the existing store, durable from here on.
	if err := o.startProfile(); err != nil {
		return nil, err
	}
	var opens, starts samples
	var startCommits uint64
	for i := range o.restarts {
		if err := opens.measure(func() (err error) {
			st, err = b.single(ctx, false)
			return err
		}); err != nil {
			return nil, err
		}
		c0 := commits(st)
		if err := starts.measure(func() (err error) {
			m, err = session.New(ctx, st, c, cfg)
			return err
		}); err != nil {
			st.Close()
			return nil, err
		}
		startCommits += commits(st) - c0
		if i < o.restarts-1 {
			m.Close()
			if err := st.Close(); err != nil {
				return nil, err
			}
		}
	}
	defer func() {
		m.Close()
		st.Close()
	}()
	r.Open, r.Start = opens.stat(), starts.stat()
	r.StartCommits = float64(startCommits) / float64(o.restarts)
	o.progress("start %v (CPU %v), store open %v", r.Start.Median, r.Start.CPU, r.Open.Median)

	// Steady Encrypt, durable, then again on the store reopened without
	// durable commits (bbolt without fsync, PostgreSQL with
	// synchronous_commit off), which takes the disk's noise out of the
	// comparison between sizes.
	if err := steadyEncrypt(ctx, o, m, st, c, r.N, &r.EncWarm, &r.EncAny, &r.Floor, &r.EncCommits); err != nil {
		return nil, err
	}
	m.Close()
	if err := st.Close(); err != nil {
		return nil, err
	}
	if st, err = b.single(ctx, true); err != nil {
		return nil, err
	}
	if m, err = session.New(ctx, st, c, cfg); err != nil {
		return nil, err
	}
	var nc float64
	if err := steadyEncrypt(ctx, o, m, st, c, r.N, &r.EncWarmNoSync, &r.EncAnyNoSync, &r.FloorNoSync, &nc); err != nil {
		return nil, err
	}

	// The round trips of a start (PostgreSQL), through the counting proxy:
	// the account's lease, then New and the start-up work it leaves to
	// the background.
	m.Close()
	if err := st.Close(); err != nil {
		return nil, err
	}
	r.OpenTrips, r.StartTrips = -1, -1
	cs, err := b.counted(ctx)
	if err != nil || cs == nil {
		return r, errors.Join(err, errs.err())
	}
	defer cs.Close()
	t0 := cs.trips()
	cm, err := session.New(ctx, cs, c, cfg)
	if err != nil {
		return nil, err
	}
	defer cm.Close()
	if err := cm.Flush(ctx); err != nil {
		return nil, err
	}
	r.OpenTrips, r.StartTrips = float64(cs.openTrips), float64(cs.trips()-t0)
	return r, errs.err()
}

// steadyEncrypt measures Encrypt to one account (one device unless
// -per-jid) per message: to the accounts of a working set (their sessions
// in the cache), and to any account (with many devices, mostly read from
// the store), interleaved with each other and with the commit floor so
// that all three see the same disk.
func steadyEncrypt(ctx context.Context, o *options, m *session.Manager, st store.Store, c *crowd, n int, warmT, anyT, floorT *timing, perOp *float64) error {
	accounts := c.accounts()
	encrypt := func(account int) error {
		res, err := m.Encrypt(ctx, []string{c.jid(account)}, plaintext, nil)
		if err != nil {
			return err
		}
		if want := len(c.list(account).Devices); len(res.Recipients) != want {
			return fmt.Errorf("Encrypt reached %d devices of %d", len(res.Recipients), want)
		}
		return nil
	}
	ws := min(o.workSet, accounts)
	for i := range ws {
		if err := encrypt(i); err != nil {
			return err
		}
	}
	rng := mathrand.New(mathrand.NewPCG(uint64(n), 16))
	var warm, anyDev, floor samples
	var encCommits uint64
	for i := range o.messages {
		c0 := commits(st)
		if err := warm.measure(func() error { return encrypt(i % ws) }); err != nil {
			return err
		}
		a := rng.IntN(accounts)
		if err := anyDev.measure(func() error { return encrypt(a) }); err != nil {
			return err
		}
		encCommits += commits(st) - c0
		if err := floor.measure(func() error { return floorCommit(ctx, st) }); err != nil {
			return err
		}
	}
	*perOp = float64(encCommits) / float64(2*o.messages)
	*warmT, *anyT, *floorT = warm.stat(), anyDev.stat(), floor.stat()
	o.progress("Encrypt: working set %v (CPU %v), any device %v (CPU %v), floor %v (CPU %v)",
		warmT.Median, warmT.CPU, anyT.Median, anyT.CPU, floorT.Median, floorT.CPU)
	return nil
}

// messageAll makes m learn the device list of every account of c and send
// a message to every device, o.batch accounts per Encrypt, on o.workers
// goroutines.
func messageAll(ctx context.Context, o *options, m *session.Manager, c *crowd) error {
	accounts := c.accounts()
	batches := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	var done atomic.Int64
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	start := time.Now()
	for range max(o.workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := range batches {
				mu.Lock()
				failed := firstErr != nil
				mu.Unlock()
				if failed {
					continue // drain the channel
				}
				hi := min(lo+o.batch, accounts)
				jids := make([]string, 0, hi-lo)
				want := 0
				for a := lo; a < hi; a++ {
					l := c.list(a)
					if err := m.UpdateDeviceList(ctx, c.jid(a), l); err != nil {
						fail(err)
						break
					}
					jids = append(jids, c.jid(a))
					want += len(l.Devices)
				}
				if len(jids) < hi-lo {
					continue
				}
				res, err := m.Encrypt(ctx, jids, plaintext, nil)
				if err != nil {
					fail(err)
					continue
				}
				if len(res.Recipients) != want {
					fail(fmt.Errorf("a first message reached %d devices of %d", len(res.Recipients), want))
					continue
				}
				if d := done.Add(int64(hi - lo)); d*10/int64(accounts) != (d-int64(hi-lo))*10/int64(accounts) {
					o.progress("messaged %d of %d accounts in %v", d, accounts, time.Since(start).Round(time.Second))
				}
			}
		}()
	}
	for lo := 0; lo < accounts; lo += o.batch {
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			break
		}
		batches <- lo
	}
	close(batches)
	wg.Wait()
	return firstErr
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}
