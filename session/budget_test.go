package session_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// crowd is a Network with many peer accounts that exist only as published
// OMEMO 2 device lists and bundles, so that a test can talk to thousands
// of devices without running a Manager for each. Every device has an
// identity of its own; the bundles share one set of pre keys (building a
// session never changes a bundle, and one device cannot tell). The own
// account's calls go to an in-memory server.
type crowd struct {
	session.Network
	tmpl    bundle.Bundle // the pre keys and signed pre key of every bundle
	mu      sync.Mutex
	jids    []string
	lists   map[string][]uint32
	bundles map[addr]bundle.Bundle
	ids     map[addr][32]byte // identity keys
}

// newCrowd makes accounts peer accounts of perJID devices each (ids 1 to
// perJID), own being the own account's Network.
func newCrowd(tb testing.TB, own session.Network, accounts, perJID int) *crowd {
	tb.Helper()
	c := &crowd{Network: own, lists: map[string][]uint32{}, bundles: map[addr]bundle.Bundle{}, ids: map[addr][32]byte{}}
	id, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	be, err := twomemo.New(id, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl, err := be.Bundle()
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.PreKeys = tmpl.PreKeys[:4:4]
	c.tmpl = tmpl
	for i := range accounts {
		jid := fmt.Sprintf("peer%d@crowd.example", i)
		c.jids = append(c.jids, jid)
		for d := range perJID {
			c.addDevice(tb, jid, uint32(d+1))
		}
	}
	return c
}

// addDevice publishes a device of jid with an identity of its own.
func (c *crowd) addDevice(tb testing.TB, jid string, dev uint32) {
	tb.Helper()
	id, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	b := c.tmpl
	b.IdentityKey = id.PublicKey()
	if b.SignedPreKeySignature, err = id.Sign(b.SignedPreKey[:], rand.Reader); err != nil {
		tb.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bundles[addr{jid, dev}] = b
	c.ids[addr{jid, dev}] = b.IdentityKey
	c.lists[jid] = append(c.lists[jid], dev)
}

// list is the device list of jid.
func (c *crowd) list(jid string) devicelist.List {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := devicelist.List{Namespace: twomemo.Namespace}
	for _, id := range c.lists[jid] {
		l.Devices = append(l.Devices, devicelist.Device{ID: id})
	}
	return l
}

func (c *crowd) setList(jid string, ids []uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lists[jid] = slices.Clone(ids)
}

func (c *crowd) identity(jid string, dev uint32) [32]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[addr{jid, dev}]
}

func (c *crowd) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	c.mu.Lock()
	b, ok := c.bundles[addr{jid, id}]
	c.mu.Unlock()
	if !ok {
		return c.Network.DownloadBundle(ctx, ns, jid, id)
	}
	if ns != twomemo.Namespace {
		return bundle.Bundle{}, session.ErrBundleNotFound
	}
	b.PreKeys = slices.Clone(b.PreKeys)
	return b, nil
}

func (c *crowd) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	c.mu.Lock()
	_, ok := c.lists[jid]
	c.mu.Unlock()
	if !ok {
		return c.Network.DownloadDeviceList(ctx, ns, jid)
	}
	if ns != twomemo.Namespace {
		return devicelist.List{Namespace: ns}, nil
	}
	return c.list(jid), nil
}

// openCrowd starts alice on st with the given cache budget, talking to
// the crowd net.
func openCrowd(tb testing.TB, st store.Store, net session.Network, budget int64) *session.Manager {
	tb.Helper()
	m, err := session.New(context.Background(), st, net, session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true,
		CacheBudget: budget,
		OnError:     func(err error) { tb.Errorf("background error: %v", err) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// liveHeap is the live heap after a collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// messageEach makes m learn the device list of each account of c and
// encrypt a message to it, checking after each that the cache keeps its
// budget (if budget > 0).
func messageEach(tb testing.TB, m *session.Manager, c *crowd, jids []string, budget int64) {
	tb.Helper()
	ctx := context.Background()
	for _, jid := range jids {
		if err := m.UpdateDeviceList(ctx, jid, c.list(jid)); err != nil {
			tb.Fatal(err)
		}
		res, err := m.Encrypt(ctx, []string{jid}, pt2("hello"), nil)
		if err != nil {
			tb.Fatal(err)
		}
		if len(res.Recipients) != len(c.list(jid).Devices) {
			tb.Fatalf("%s: reached %d devices", jid, len(res.Recipients))
		}
		if used := session.CacheUsed(m); budget > 0 && used > budget {
			tb.Fatalf("the cache uses %d bytes, over its budget of %d", used, budget)
		}
	}
}

// The cache keeps its budget with many peers, however they are used, and
// after the peers were pushed out of it they are served from the store.
func TestCacheStaysWithinBudget(t *testing.T) {
	const budget = 64 << 10
	srv := sessiontest.NewServer()
	c := newCrowd(t, srv.Network("alice@example.org"), 200, 5)
	m := openCrowd(t, store.NewMemory(), c, budget)
	defer m.Close()
	messageEach(t, m, c, c.jids, budget)
	ctx := context.Background()
	// Again, in another order, several accounts at once, and reading
	// their devices.
	for i := len(c.jids) - 1; i >= 0; i -= 3 {
		to := c.jids[max(i-2, 0) : i+1]
		res, err := m.Encrypt(ctx, to, pt2("again"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Recipients) != 5*len(to) {
			t.Fatalf("reached %d devices of %d accounts", len(res.Recipients), len(to))
		}
		for _, k := range res.Messages[0].Keys {
			if !k.KeyExchange {
				t.Fatal("a peer that never answered got a message without the key exchange")
			}
		}
		devs, err := m.Devices(ctx, to[0])
		if err != nil || len(devs) != 5 {
			t.Fatalf("devices of %s: %d, %v", to[0], len(devs), err)
		}
		if used := session.CacheUsed(m); used > budget {
			t.Fatalf("the cache uses %d bytes, over its budget of %d", used, budget)
		}
	}
	if used := session.CacheUsed(m); used < budget/2 {
		t.Fatalf("the cache uses %d bytes of %d: hardly used", used, budget)
	}
}

// heapSlack is what the live heap of a Manager may grow beyond its cache
// budget, whatever the number of peers: the store's own memory (bbolt's
// free page lists) and the Manager's fixed buffers.
const heapSlack = 2 << 20

// With a small budget, the live heap of a Manager that messaged 20000 peer
// devices (on bbolt, whose data is outside the Go heap) grows by at most
// the budget plus a constant.
func TestCacheBoundsHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("messages 20000 devices")
	}
	devices := 20000
	if raceEnabled {
		devices = 2000
	}
	const budget = 1 << 20
	st, err := store.Open(filepath.Join(t.TempDir(), "omemo.db"), &store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv := sessiontest.NewServer()
	c := newCrowd(t, srv.Network("alice@example.org"), devices/5, 5)
	m := openCrowd(t, st, c, budget)
	defer m.Close()
	before := liveHeap()
	messageEach(t, m, c, c.jids, budget)
	growth := int64(liveHeap()) - int64(before)
	t.Logf("%d devices: live heap grew by %.1f KiB (%.0f B per device); the cache accounts for %.1f KiB of its %d KiB",
		devices, float64(growth)/1024, float64(growth)/float64(devices), float64(session.CacheUsed(m))/1024, budget>>10)
	if growth > budget+heapSlack {
		t.Fatalf("the live heap grew by %d bytes, more than the budget %d and %d", growth, budget, heapSlack)
	}
}

// Under constant eviction, the cache never serves what a later write
// changed: device lists, trust decisions and forgotten accounts are seen
// at once by Devices and Encrypt, whatever the budget.
func TestEvictionNeverStale(t *testing.T) {
	for _, budget := range []int64{1, 8 << 10, 24 << 10, session.DefaultCacheBudget} {
		t.Run(fmt.Sprint(budget), func(t *testing.T) { testEvictionNeverStale(t, budget) })
	}
}

func testEvictionNeverStale(t *testing.T, budget int64) {
	const accounts, maxDev = 10, 4
	ctx := context.Background()
	srv := sessiontest.NewServer()
	c := newCrowd(t, srv.Network("alice@example.org"), accounts, maxDev)
	m := openCrowd(t, store.NewMemory(), c, budget)
	defer m.Close()

	// The model: per account, the devices ever listed, those listed now,
	// and each device's trust.
	type account struct {
		known, listed map[uint32]bool
		trust         map[uint32]string
	}
	model := map[string]*account{}
	for _, jid := range c.jids {
		model[jid] = &account{known: map[uint32]bool{}, listed: map[uint32]bool{}, trust: map[uint32]string{}}
	}
	rng := mathrand.New(mathrand.NewPCG(5, uint64(budget)))
	levels := []string{trust.LevelTrusted, trust.LevelDistrusted, trust.LevelBlindlyTrusted}
	setTrust := func(jid string, dev uint32) {
		level := levels[rng.IntN(len(levels))]
		if err := m.SetTrust(ctx, jid, c.identity(jid, dev), level); err != nil {
			t.Fatal(err)
		}
		model[jid].trust[dev] = level
	}
	relist := func(jid string) {
		var ids []uint32
		a := model[jid]
		clear(a.listed)
		for d := range uint32(maxDev) {
			if rng.IntN(2) == 0 {
				ids = append(ids, d+1)
				a.listed[d+1], a.known[d+1] = true, true
			}
		}
		c.setList(jid, ids)
		if err := m.UpdateDeviceList(ctx, jid, c.list(jid)); err != nil {
			t.Fatal(err)
		}
		for _, d := range ids {
			if _, ok := a.trust[d]; !ok {
				setTrust(jid, d)
			}
		}
	}
	check := func(step int, jid string) {
		devs, err := m.Devices(ctx, jid)
		if err != nil {
			t.Fatal(err)
		}
		a := model[jid]
		if len(devs) != len(a.known) {
			t.Fatalf("step %d: %s has %d devices, want %d", step, jid, len(devs), len(a.known))
		}
		for _, d := range devs {
			wantActive := []string(nil)
			if a.listed[d.DeviceID] {
				wantActive = []string{twomemo.Namespace}
			}
			if !a.known[d.DeviceID] || !slices.Equal(d.Active, wantActive) || d.Trust != a.trust[d.DeviceID] {
				t.Fatalf("step %d: device %d of %s: active %v trust %q, want %v %q", step, d.DeviceID, jid, d.Active, d.Trust, wantActive, a.trust[d.DeviceID])
			}
		}
	}
	for _, jid := range c.jids {
		relist(jid)
	}
	for step := range 400 {
		jid := c.jids[rng.IntN(accounts)]
		switch op := rng.IntN(10); {
		case op < 2:
			relist(jid)
		case op < 4:
			if ids := slices.Sorted(mapKeys(model[jid].known)); len(ids) > 0 {
				setTrust(jid, ids[rng.IntN(len(ids))])
			}
		case op < 5:
			if step%5 == 0 {
				if err := m.PurgeJID(ctx, jid); err != nil {
					t.Fatal(err)
				}
				model[jid] = &account{known: map[uint32]bool{}, listed: map[uint32]bool{}, trust: map[uint32]string{}}
				relist(jid)
			}
		case op < 7:
			check(step, jid)
		default:
			to := []string{jid, c.jids[rng.IntN(accounts)]}
			want := map[addr]bool{}
			for _, j := range to {
				for d := range model[j].listed {
					if l := model[j].trust[d]; l == trust.LevelTrusted || l == trust.LevelBlindlyTrusted {
						want[addr{j, d}] = true
					}
				}
			}
			res, err := m.Encrypt(ctx, to, pt2("x"), nil, session.AllowUnreached())
			var ne *session.NoEligibleDevicesError
			if len(want) == 0 {
				if !errors.As(err, &ne) {
					t.Fatalf("step %d: nobody to reach, Encrypt: %v", step, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("step %d: %v", step, err)
			}
			got := map[addr]bool{}
			for _, r := range res.Recipients {
				got[addr{r.JID, r.DeviceID}] = true
			}
			if len(got) != len(want) {
				t.Fatalf("step %d: reached %v, want %v", step, got, want)
			}
			for a := range want {
				if !got[a] {
					t.Fatalf("step %d: reached %v, want %v", step, got, want)
				}
			}
		}
		if used := session.CacheUsed(m); used > budget {
			t.Fatalf("step %d: the cache uses %d bytes of %d", step, used, budget)
		}
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Sessions, device information and trust that were evicted are read again
// from the store as they were: with a budget far too small for them, a
// device keeps messaging a dozen peers, in both directions, on the same
// sessions (no ratchet forks, no new key exchange once confirmed).
func TestEvictedStateReadBack(t *testing.T) {
	const budget = 12 << 10
	ctx := context.Background()
	net := newNetwork()
	st := store.NewMemory()
	m, err := session.New(ctx, st, net.srv.Network("alice@example.org"), session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true,
		CacheBudget: budget,
		OnError:     func(err error) { t.Errorf("background error: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	alice := &peer{jid: "alice@example.org", st: st, m: m}
	t.Cleanup(func() { m.Close() })
	net.devs = append(net.devs, alice)
	net.by[addr{alice.jid, m.DeviceID()}] = alice
	var peers []*peer
	for i := range 12 {
		peers = append(peers, net.add(t, fmt.Sprintf("peer%d@example.org", i), nil))
	}
	net.learnLists(t)
	pending := map[addr][]inbound{}
	for round := range 4 {
		for _, p := range peers {
			res := net.encryptTo(t, alice, fmt.Sprintf("round %d to %s", round, p.jid), pending, p.jid)
			if round > 0 && res.Messages[0].Keys[0].KeyExchange {
				t.Fatalf("round %d: a new key exchange with %s", round, p.jid)
			}
			net.encryptTo(t, p, fmt.Sprintf("round %d from %s", round, p.jid), pending, alice.jid)
			if used := session.CacheUsed(m); used > budget {
				t.Fatalf("the cache uses %d bytes of %d", used, budget)
			}
		}
		net.exchange(t, pending)
	}
}
