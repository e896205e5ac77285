package main

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"

	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// seedPrefixes are the keys of an account's own state that do not name
// its JID: the identity, the record of namespaces and the backends' key
// state (pre keys, signed pre keys). Copied from one template account into
// every account, they spare each account the generation of some 200 key
// pairs; its first start completes the account (a device id, the own
// device record, the published device lists and bundles). The accounts
// then share their identity and pre keys, which costs a start nothing
// more or less than distinct ones: loading a key state reads its stored
// public keys, it does not depend on their values.
var seedPrefixes = []string{"omemo/identity", "omemo/namespaces", "omemo/ns/"}

// seedState returns the seed keys of a freshly created account.
func seedState(ctx context.Context, srv *sessiontest.Server, errs *errorSink) (map[string][]byte, error) {
	mem := store.NewMemory()
	m, err := session.New(ctx, mem, srv.Network("template@scale.example"), config("template@scale.example", errs))
	if err != nil {
		return nil, err
	}
	m.Close()
	seed := map[string][]byte{}
	err = mem.View(ctx, func(tx store.Tx) error {
		return tx.Scan("omemo/", func(k string, v []byte) error {
			for _, p := range seedPrefixes {
				if strings.HasPrefix(k, p) {
					seed[k] = append([]byte(nil), v...)
				}
			}
			return nil
		})
	})
	return seed, err
}

// fleet is the open accounts of one process.
type fleet struct {
	accts  store.Accounts
	stores []store.Store
	ms     []*session.Manager
}

func (f *fleet) close() error {
	for _, m := range f.ms {
		m.Close()
	}
	for _, st := range f.stores {
		if err := st.Close(); err != nil {
			return err
		}
	}
	f.ms, f.stores = f.ms[:0], f.stores[:0]
	return f.accts.Close()
}

// runAccounts is the many-accounts case: n accounts in one process on
// one store, started, idle, restarted.
func runAccounts(ctx context.Context, o *options, b backing, n int) (*result, error) {
	r := &result{Kind: "accounts", Store: b.name(), N: n, Backends: len(factories)}
	errs := &errorSink{}
	srv := sessiontest.NewServer()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("user%05d@scale.example", i)
	}
	seed, err := seedState(ctx, srv, errs)
	if err != nil {
		return nil, err
	}

	// Setup: create the accounts and start each once, so that the server
	// holds their device lists and bundles.
	accts, err := b.accounts(ctx, true)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	for i, name := range names {
		st, err := accts.Account(ctx, name)
		if err != nil {
			return nil, err
		}
		err = st.Update(ctx, func(tx store.Tx) error {
			for k, v := range seed {
				if err := tx.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		m, err := session.New(ctx, st, srv.Network(name), config(name, errs))
		if err != nil {
			return nil, err
		}
		m.Close()
		if err := st.Close(); err != nil {
			return nil, err
		}
		if (i+1)%max(n/10, 1) == 0 {
			o.progress("created %d of %d accounts in %v", i+1, n, time.Since(t).Round(time.Second))
		}
	}
	if err := accts.Close(); err != nil {
		return nil, err
	}

	startAll := func() (*fleet, time.Duration, time.Duration, error) {
		t0, c0 := time.Now(), cpuTime()
		accts, err := b.accounts(ctx, false)
		if err != nil {
			return nil, 0, 0, err
		}
		f := &fleet{accts: accts}
		for _, name := range names {
			st, err := accts.Account(ctx, name)
			if err != nil {
				f.close()
				return nil, 0, 0, err
			}
			f.stores = append(f.stores, st)
			m, err := session.New(ctx, st, srv.Network(name), config(name, errs))
			if err != nil {
				f.close()
				return nil, 0, 0, err
			}
			f.ms = append(f.ms, m)
		}
		return f, time.Since(t0), cpuTime() - c0, nil
	}

	base := liveHeap()
	r.BaseGoroutines = runtime.NumGoroutine()
	f, wall, cpu, err := startAll()
	if err != nil {
		return nil, err
	}
	r.StartAll, r.StartAllCPU = wall, cpu
	o.progress("started %d accounts in %v (CPU %v)", n, wall, cpu)
	for _, m := range f.ms {
		if err := m.Flush(ctx); err != nil {
			return nil, err
		}
	}
	time.Sleep(500 * time.Millisecond) // let the start-up work settle
	heap := liveHeap()
	r.Goroutines = runtime.NumGoroutine()
	r.HeapPerAccount = (float64(heap) - float64(base)) / float64(n)
	o.progress("idle: %d goroutines, %.1f KiB per account", r.Goroutines, r.HeapPerAccount/1024)
	if o.heapProf != "" {
		if err := writeHeapProfile(o.heapProf); err != nil {
			return nil, err
		}
	}

	// Restart all: close every Manager, every Store and the database, then
	// open and start everything again.
	var walls, cpus []time.Duration
	if err := o.startProfile(); err != nil {
		return nil, err
	}
	for range max(min(o.restarts, 3), 1) {
		t0, c0 := time.Now(), cpuTime()
		if err := f.close(); err != nil {
			return nil, err
		}
		f, _, _, err = startAll()
		if err != nil {
			return nil, err
		}
		walls, cpus = append(walls, time.Since(t0)), append(cpus, cpuTime()-c0)
		o.progress("restarted %d accounts in %v (CPU %v)", n, walls[len(walls)-1], cpus[len(cpus)-1])
	}
	r.Restart, r.RestartCPU = median(walls), median(cpus)
	if err := f.close(); err != nil {
		return nil, err
	}
	return r, errs.err()
}
