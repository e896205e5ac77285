package session_test

// Benchmarks of the session manager on established sessions, with the
// in-memory store and with the persistent store (real fsync), next to the
// backend's own per-device cost measured in the same run:
//
//	go test -run '^$' -bench . -benchmem ./session/
//
// Every benchmark reports ns/device (ns/op divided by the number of
// recipient devices), x-backend (ns/device over the twomemo backend's
// EncryptKeyMaterial, or DecryptKeyMaterial for decryption, measured once
// per run) and commits/op (durable store commits per call).

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// peer is one device of an account, with a store of its own.
type peer struct {
	jid string
	st  store.Store
	m   *session.Manager
}

type statser interface{ Stats() store.Stats }

// commits is the number of committed Update transactions of p's store.
func (p *peer) commits() uint64 { return p.st.(statser).Stats().Commits }

// storeKinds are the stores the benchmarks and commit tests run with.
var storeKinds = []struct {
	name string
	open func(testing.TB) store.Store
}{
	{"memory", func(testing.TB) store.Store { return store.NewMemory() }},
	// A store holding 10000 other keys, as one with many contacts would.
	{"memory10k", func(tb testing.TB) store.Store {
		st := store.NewMemory()
		err := st.Update(context.Background(), func(tx store.Tx) error {
			for i := range 10000 {
				if err := tx.Put(fmt.Sprintf("other/%05d", i), make([]byte, 200)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		return st
	}},
	{"bolt", func(tb testing.TB) store.Store {
		st, err := store.Open(filepath.Join(tb.TempDir(), "omemo.db"), nil)
		if err != nil {
			tb.Fatal(err)
		}
		return st
	}},
}

// newPeer starts an OMEMO 2 device of jid on st (a new in-memory store if
// nil). The manager and the store are closed at the end of the test.
func newPeer(tb testing.TB, srv *sessiontest.Server, jid string, st store.Store) *peer {
	tb.Helper()
	if st == nil {
		st = store.NewMemory()
	}
	m, err := session.New(context.Background(), st, srv.Network(jid), session.Config{
		JID: jid, Backends: []backends.Factory{twomemo.Factory}, StartSynced: true,
		OnError: func(err error) { tb.Errorf("background error of %s: %v", jid, err) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		m.Close()
		st.Close()
	})
	return &peer{jid: jid, st: st, m: m}
}

func pt2(s string) map[string][]byte { return map[string][]byte{twomemo.Namespace: []byte(s)} }

// addr is a device address.
type addr struct {
	jid string
	dev uint32
}

// inbound is a message waiting for one receiving device.
type inbound struct {
	from string
	msg  *encrypted.Encrypted
	want string // expected plaintext; "" for empty messages
	id   int    // message number, -1 for empty messages
}

// route calls f for every device an encrypted result has a key for.
func route(r *session.EncryptResult, f func(addr, *encrypted.Encrypted)) {
	for _, msg := range r.Messages {
		for _, k := range msg.Keys {
			f(addr{k.JID, k.RID}, msg)
		}
	}
}

// network is a set of devices sharing one fake server.
type network struct {
	srv  *sessiontest.Server
	devs []*peer
	by   map[addr]*peer
}

func newNetwork() *network {
	return &network{srv: sessiontest.NewServer(), by: map[addr]*peer{}}
}

func (n *network) add(tb testing.TB, jid string, st store.Store) *peer {
	tb.Helper()
	p := newPeer(tb, n.srv, jid, st)
	n.devs = append(n.devs, p)
	n.by[addr{jid, p.m.DeviceID()}] = p
	return p
}

func (n *network) jids() []string {
	var out []string
	seen := map[string]bool{}
	for _, d := range n.devs {
		if !seen[d.jid] {
			seen[d.jid] = true
			out = append(out, d.jid)
		}
	}
	return out
}

// learnLists makes every device fetch the device lists of every account.
func (n *network) learnLists(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	for _, d := range n.devs {
		for _, j := range n.jids() {
			if err := d.m.RefreshDeviceLists(ctx, j); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

// encryptTo encrypts text from d to the accounts to and queues the result
// for every device it has a key for.
func (n *network) encryptTo(tb testing.TB, d *peer, text string, pending map[addr][]inbound, to ...string) *session.EncryptResult {
	tb.Helper()
	res, err := d.m.Encrypt(context.Background(), to, pt2(text), func(r *session.EncryptResult) error {
		route(r, func(a addr, msg *encrypted.Encrypted) {
			pending[a] = append(pending[a], inbound{from: d.jid, msg: msg, want: text})
		})
		return nil
	})
	if err != nil {
		tb.Fatalf("%s/%d encrypting %q: %v", d.jid, d.m.DeviceID(), text, err)
	}
	return res
}

// exchange decrypts every pending message in order, then the empty messages
// the managers sent in the background, until nothing is left. It fails on
// any error or wrong plaintext.
func (n *network) exchange(tb testing.TB, pending map[addr][]inbound) {
	tb.Helper()
	ctx := context.Background()
	for {
		addrs := make([]addr, 0, len(pending))
		for a := range pending {
			addrs = append(addrs, a)
		}
		sort.Slice(addrs, func(i, j int) bool {
			if addrs[i].jid != addrs[j].jid {
				return addrs[i].jid < addrs[j].jid
			}
			return addrs[i].dev < addrs[j].dev
		})
		for _, a := range addrs {
			d := n.by[a]
			if d == nil {
				tb.Fatalf("message for unknown device %v", a)
			}
			for _, in := range pending[a] {
				dec, err := d.m.Decrypt(ctx, in.from, in.msg)
				if err != nil {
					tb.Fatalf("%s/%d decrypting from %s: %v", a.jid, a.dev, in.from, err)
				}
				if in.want != "" && string(dec.Plaintext) != in.want {
					tb.Fatalf("%s/%d got %q, want %q", a.jid, a.dev, dec.Plaintext, in.want)
				}
			}
		}
		clear(pending)
		for _, d := range n.devs {
			if err := d.m.Flush(ctx); err != nil {
				tb.Fatal(err)
			}
		}
		for _, j := range n.jids() {
			for _, dl := range n.srv.Inbox(j) {
				for _, k := range dl.Message.Keys {
					if k.JID == j {
						a := addr{k.JID, k.RID}
						pending[a] = append(pending[a], inbound{from: dl.From, msg: dl.Message, id: -1})
					}
				}
			}
		}
		if len(pending) == 0 {
			return
		}
	}
}

// establish makes every device send a message to every other account (and
// so to its own other devices), with the replies, so that every pair of
// devices has a confirmed session.
func (n *network) establish(tb testing.TB) {
	tb.Helper()
	n.learnLists(tb)
	pending := map[addr][]inbound{}
	for _, d := range n.devs {
		var to []string
		for _, j := range n.jids() {
			if j != d.jid {
				to = append(to, j)
			}
		}
		n.encryptTo(tb, d, fmt.Sprintf("hello from %s/%d", d.jid, d.m.DeviceID()), pending, to...)
		n.exchange(tb, pending)
	}
}

const devicesPerAccount = 5

// encryptSetup returns a sender device on st and n recipient devices (5
// per account) with confirmed sessions, and the recipients' JIDs.
func encryptSetup(tb testing.TB, st store.Store, n int) (*network, *peer, []string) {
	return encryptSetupSpread(tb, st, n, devicesPerAccount)
}

// encryptSetupSpread is encryptSetup with perAccount devices per account.
func encryptSetupSpread(tb testing.TB, st store.Store, n, perAccount int) (*network, *peer, []string) {
	tb.Helper()
	net := newNetwork()
	alice := net.add(tb, "alice@example.org", st)
	var to []string
	for i := range n {
		jid := fmt.Sprintf("peer%d@example.org", i/perAccount)
		if i%perAccount == 0 {
			to = append(to, jid)
		}
		net.add(tb, jid, nil)
	}
	ctx := context.Background()
	for _, j := range to {
		if err := alice.m.RefreshDeviceLists(ctx, j); err != nil {
			tb.Fatal(err)
		}
	}
	pending := map[addr][]inbound{}
	res := net.encryptTo(tb, alice, "hello", pending, to...)
	if len(res.Recipients) != n {
		tb.Fatalf("first message reached %d devices, want %d", len(res.Recipients), n)
	}
	net.exchange(tb, pending)
	// The sessions are confirmed: no key exchange any more.
	res, err := alice.m.Encrypt(ctx, to, pt2("check"), nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, k := range res.Messages[0].Keys {
		if k.KeyExchange {
			tb.Fatalf("session with %s/%d not confirmed", k.JID, k.RID)
		}
	}
	return net, alice, to
}

// Reference per-device costs of the backend, measured once per run (by
// hand: testing.Benchmark cannot run inside a benchmark), the best of
// five rounds of 10000 operations.
var (
	refOnce             sync.Once
	refEncrypt, refDecr float64
)

func backendRefs(tb testing.TB) (enc, dec float64) {
	refOnce.Do(func() {
		const rounds, n = 5, 10000
		a, bk, as, bs := backendPair(tb)
		km := make([]byte, 48)
		refEncrypt, refDecr = math.Inf(1), math.Inf(1)
		msgs := make([][]byte, n)
		for range rounds {
			start := time.Now()
			for i := range n {
				ke, err := a.EncryptKeyMaterial(as, km)
				if err != nil {
					tb.Fatal(err)
				}
				msgs[i] = ke.Data
			}
			refEncrypt = min(refEncrypt, float64(time.Since(start).Nanoseconds())/n)
			start = time.Now()
			for _, m := range msgs {
				if _, err := bk.DecryptKeyMaterial(bs, m); err != nil {
					tb.Fatal(err)
				}
			}
			refDecr = min(refDecr, float64(time.Since(start).Nanoseconds())/n)
		}
	})
	return refEncrypt, refDecr
}

func reportPerDevice(b *testing.B, devices int, ref float64, commits uint64) {
	perOp := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	perDev := perOp / float64(devices)
	b.ReportMetric(perDev, "ns/device")
	if ref > 0 {
		b.ReportMetric(perDev/ref, "x-backend")
	}
	b.ReportMetric(float64(commits)/float64(b.N), "commits/op")
}

// BenchmarkEncrypt encrypts a message for 1, 10 and 50 devices (spread
// over accounts of 5 devices) on established sessions, without delivery.
func BenchmarkEncrypt(b *testing.B) {
	ref, _ := backendRefs(b)
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("%ddevices", n), func(b *testing.B) {
			for _, sk := range storeKinds {
				b.Run(sk.name, func(b *testing.B) {
					_, alice, to := encryptSetup(b, sk.open(b), n)
					ctx := context.Background()
					pts := pt2("a message of ordinary length, about a line of text")
					var commits uint64
					b.ReportAllocs()
					for b.Loop() {
						c := alice.commits()
						res, err := alice.m.Encrypt(ctx, to, pts, nil)
						if err != nil {
							b.Fatal(err)
						}
						commits += alice.commits() - c
						if len(res.Recipients) != n {
							b.Fatalf("reached %d devices, want %d", len(res.Recipients), n)
						}
					}
					reportPerDevice(b, n, ref, commits)
				})
			}
		})
	}
}

// BenchmarkEncryptRoom encrypts a room message for 10 and 50 member
// devices, one per member account (the shape of a room), on established
// sessions, in memory, and, interleaved with it so that both see the same
// machine, a one-to-one message to one account with as many devices. It
// reports both per-device costs and their ratio (x-1to1; the target is
// 1.2 at most).
func BenchmarkEncryptRoom(b *testing.B) {
	for _, n := range []int{10, 50} {
		b.Run(fmt.Sprintf("%ddevices", n), func(b *testing.B) {
			_, one, oneTo := encryptSetupSpread(b, store.NewMemory(), n, n)
			_, room, roomTo := encryptSetupSpread(b, store.NewMemory(), n, 1)
			ctx := context.Background()
			pts := pt2("a message of ordinary length, about a line of text")
			var tOne, tRoom time.Duration
			for b.Loop() {
				start := time.Now()
				if _, err := one.m.Encrypt(ctx, oneTo, pts, nil); err != nil {
					b.Fatal(err)
				}
				mid := time.Now()
				res, err := room.m.Encrypt(ctx, roomTo, pts, nil)
				if err != nil {
					b.Fatal(err)
				}
				tOne, tRoom = tOne+mid.Sub(start), tRoom+time.Since(mid)
				if len(res.Recipients) != n {
					b.Fatalf("reached %d devices, want %d", len(res.Recipients), n)
				}
			}
			perDev := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) / float64(n) }
			b.ReportMetric(perDev(tRoom), "room-ns/device")
			b.ReportMetric(perDev(tOne), "1to1-ns/device")
			b.ReportMetric(perDev(tRoom)/perDev(tOne), "x-1to1")
		})
	}
}

// BenchmarkFirstMessage encrypts the first message to a device: the
// bundle download, the identity key discovery, the trust decision and the
// active session build.
func BenchmarkFirstMessage(b *testing.B) {
	ref, _ := backendRefs(b)
	for _, sk := range storeKinds {
		b.Run(sk.name, func(b *testing.B) {
			net := newNetwork()
			alice := net.add(b, "alice@example.org", sk.open(b))
			// One published bundle serves every new device: alice cannot
			// tell, and building a session never changes it.
			src := net.add(b, "source@example.org", nil)
			bndl, ok := net.srv.Bundle(twomemo.Namespace, src.jid, src.m.DeviceID())
			if !ok {
				b.Fatal("no bundle published")
			}
			ctx := context.Background()
			pts := pt2("hello, new device")
			var commits uint64
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				i++
				jid := fmt.Sprintf("new%d@example.org", i)
				if err := net.srv.Network(jid).UploadBundle(ctx, 1, bndl); err != nil {
					b.Fatal(err)
				}
				l := devicelist.List{Namespace: twomemo.Namespace, Devices: []devicelist.Device{{ID: 1}}}
				if err := alice.m.UpdateDeviceList(ctx, jid, l); err != nil {
					b.Fatal(err)
				}
				c := alice.commits()
				b.StartTimer()
				res, err := alice.m.Encrypt(ctx, []string{jid}, pts, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				commits += alice.commits() - c
				if len(res.Recipients) != 1 || !res.Messages[0].Keys[0].KeyExchange {
					b.Fatalf("first message: %+v", res)
				}
				b.StartTimer()
			}
			reportPerDevice(b, 1, ref, commits)
		})
	}
}

// BenchmarkDecryptSteady decrypts in-order messages of an established
// session. Every 50 messages (below the heartbeat threshold) the receiver
// answers, untimed, and the first message of the sender's next chain (a DH
// ratchet step) is decrypted untimed too, so only steady-state decryption
// is measured.
//
// Modes: "plain" decrypts only (before the durable inbox); "inbox" stores
// each message in the inbox in the decryption's transaction and
// acknowledges it after "handing it over", as the plugin does: the
// acknowledgement rides on the next decryption's commit, so a steady
// stream costs one commit per message; "inbox-flush" commits every
// acknowledgement at once (FlushAcks), the worst case.
func BenchmarkDecryptSteady(b *testing.B) {
	_, ref := backendRefs(b)
	for _, sk := range storeKinds {
		for _, mode := range []string{"plain", "inbox", "inbox-flush"} {
			b.Run(sk.name+"/"+mode, func(b *testing.B) {
				benchDecryptSteady(b, sk.open(b), mode, ref)
			})
		}
	}
}

func benchDecryptSteady(b *testing.B, st store.Store, mode string, ref float64) {
	net := newNetwork()
	alice := net.add(b, "alice@example.org", st)
	bob := net.add(b, "bob@example.org", nil)
	net.establish(b)
	ctx := context.Background()
	var queue []*encrypted.Encrypted
	refill := func() {
		pending := map[addr][]inbound{}
		net.encryptTo(b, alice, "ack", pending, bob.jid)
		net.exchange(b, pending)
		for range 50 {
			res, err := bob.m.Encrypt(ctx, []string{alice.jid}, pt2("a message of ordinary length"), nil)
			if err != nil {
				b.Fatal(err)
			}
			queue = append(queue, res.Messages[0])
		}
		if _, err := alice.m.Decrypt(ctx, bob.jid, queue[0]); err != nil {
			b.Fatal(err)
		}
		queue = queue[1:]
	}
	var opts []session.DecryptOption
	if mode != "plain" {
		opts = append(opts, session.Keep(func(dec *session.Decrypted) ([]byte, error) {
			return append([]byte("record of "), dec.Plaintext...), nil
		}))
	}
	var commits uint64
	b.ReportAllocs()
	for b.Loop() {
		if len(queue) == 0 {
			b.StopTimer()
			refill()
			b.StartTimer()
		}
		c := alice.commits()
		dec, err := alice.m.Decrypt(ctx, bob.jid, queue[0], opts...)
		if err != nil {
			b.Fatal(err)
		}
		if dec.Empty || dec.KeyExchange {
			b.Fatalf("unexpected message: %+v", dec)
		}
		if mode != "plain" {
			if dec.InboxSeq == 0 {
				b.Fatal("not stored in the inbox")
			}
			alice.m.Ack(dec.InboxSeq)
			if mode == "inbox-flush" {
				if err := alice.m.FlushAcks(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
		commits += alice.commits() - c
		queue = queue[1:]
	}
	reportPerDevice(b, 1, ref, commits)
}

// backendPair returns two twomemo backends with a confirmed session.
func backendPair(tb testing.TB) (a, b *twomemo.Backend, as, bs backends.Session) {
	tb.Helper()
	idA, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	idB, err := backends.GenerateIdentityKeyPair(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	if a, err = twomemo.New(idA, nil, nil); err != nil {
		tb.Fatal(err)
	}
	if b, err = twomemo.New(idB, nil, nil); err != nil {
		tb.Fatal(err)
	}
	bb, err := b.Bundle()
	if err != nil {
		tb.Fatal(err)
	}
	km := make([]byte, 48)
	as, ke, err := a.BuildSessionActive("b@example.org", 2, bb, km)
	if err != nil {
		tb.Fatal(err)
	}
	kex, inner, err := b.ParseKeyExchange(ke.Data, idA.PublicKey()[31]&0x80 != 0)
	if err != nil {
		tb.Fatal(err)
	}
	if bs, _, err = b.BuildSessionPassive("a@example.org", 1, kex, inner); err != nil {
		tb.Fatal(err)
	}
	ke, err = b.EncryptKeyMaterial(bs, km)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := a.DecryptKeyMaterial(as, ke.Data); err != nil {
		tb.Fatal(err)
	}
	return a, b, as, bs
}

var sink []byte

// BenchmarkBackendEncryptKeyMaterial is the reference: the twomemo
// backend's cost of encrypting key material for one device on an
// established session (as BenchmarkEncryptKeyMaterial in ./backends).
func BenchmarkBackendEncryptKeyMaterial(b *testing.B) {
	a, _, as, _ := backendPair(b)
	km := make([]byte, 48)
	b.ReportAllocs()
	for b.Loop() {
		ke, err := a.EncryptKeyMaterial(as, km)
		if err != nil {
			b.Fatal(err)
		}
		sink = ke.Data
	}
}

// BenchmarkBackendDecryptKeyMaterial is the reference for decryption:
// in-order key material of an established session.
func BenchmarkBackendDecryptKeyMaterial(b *testing.B) {
	a, bk, as, bs := backendPair(b)
	km := make([]byte, 48)
	var msgs [][]byte
	b.ReportAllocs()
	for b.Loop() {
		if len(msgs) == 0 {
			b.StopTimer()
			for range 1000 {
				ke, err := a.EncryptKeyMaterial(as, km)
				if err != nil {
					b.Fatal(err)
				}
				msgs = append(msgs, ke.Data)
			}
			b.StartTimer()
		}
		out, err := bk.DecryptKeyMaterial(bs, msgs[0])
		if err != nil {
			b.Fatal(err)
		}
		sink = out
		msgs = msgs[1:]
	}
}

// sendingChains returns the sending chain lengths of p's sessions with
// every device of the accounts to.
func sendingChains(tb testing.TB, p *peer, to []string) map[addr]uint32 {
	tb.Helper()
	ctx := context.Background()
	out := map[addr]uint32{}
	for _, j := range to {
		infos, err := p.m.Devices(ctx, j)
		if err != nil {
			tb.Fatal(err)
		}
		for _, d := range infos {
			l, err := p.m.SendingChainLength(ctx, j, d.DeviceID)
			if err != nil {
				tb.Fatal(err)
			}
			out[addr{j, d.DeviceID}] = l[twomemo.Namespace]
		}
	}
	return out
}

// TestCommitsPerOperation checks that an operation on established sessions
// is exactly one durable commit, whatever the number of devices. A failed
// delivery adds one commit (the revert of the committed state). Only first
// contact adds commits: discovering a device's identity key (one commit for
// all devices found in the call) and storing the trust policy's decision on
// undecided devices (one commit); the first message to a new device is
// therefore 3 commits.
func TestCommitsPerOperation(t *testing.T) {
	ctx := context.Background()
	for _, sk := range storeKinds {
		if sk.name == "memory10k" {
			continue // the same store as memory, for the benchmarks
		}
		t.Run(sk.name, func(t *testing.T) {
			for _, n := range []int{1, 10, 50} {
				if testing.Short() && n > 10 {
					continue
				}
				_, alice, to := encryptSetup(t, sk.open(t), n)
				deliverOK := func(*session.EncryptResult) error { return nil }
				for i := range 4 {
					deliver := deliverOK
					if i%2 == 0 {
						deliver = nil
					}
					c := alice.commits()
					if _, err := alice.m.Encrypt(ctx, to, pt2("steady"), deliver); err != nil {
						t.Fatal(err)
					}
					if got := alice.commits() - c; got != 1 {
						t.Fatalf("Encrypt to %d devices (deliver %v): %d commits, want 1", n, deliver != nil, got)
					}
				}
				// A failed delivery is committed, then reverted (the
				// message must not leave before its state is durable): at
				// most two commits, and the sessions are as before.
				before := sendingChains(t, alice, to)
				c := alice.commits()
				errDeliver := fmt.Errorf("refused: %w", session.ErrNotSent)
				_, err := alice.m.Encrypt(ctx, to, pt2("lost"), func(*session.EncryptResult) error { return errDeliver })
				if !errors.Is(err, errDeliver) {
					t.Fatalf("Encrypt with failing delivery: %v", err)
				}
				if got := alice.commits() - c; got > 2 {
					t.Fatalf("Encrypt with failing delivery: %d commits, want at most 2", got)
				}
				if after := sendingChains(t, alice, to); !maps.Equal(before, after) {
					t.Fatalf("failed delivery left the sessions advanced: %v, before %v", after, before)
				}
				// A delivery that failed in a way that may have let the
				// message out (a write that broke half-way) keeps the
				// step used: its message key must never encrypt again.
				errMaybe := errors.New("connection reset")
				_, err = alice.m.Encrypt(ctx, to, pt2("maybe"), func(*session.EncryptResult) error { return errMaybe })
				if !errors.Is(err, errMaybe) {
					t.Fatalf("Encrypt with broken delivery: %v", err)
				}
				for k, v := range sendingChains(t, alice, to) {
					if v != before[k]+1 {
						t.Fatalf("delivery that may have sent: chain of %v at %d, want %d", k, v, before[k]+1)
					}
				}
			}

			// Decryption in the steady state.
			net := newNetwork()
			alice := net.add(t, "alice@example.org", sk.open(t))
			bob := net.add(t, "bob@example.org", nil)
			net.establish(t)
			for i := range 5 {
				res, err := bob.m.Encrypt(ctx, []string{alice.jid}, pt2(fmt.Sprint(i)), nil)
				if err != nil {
					t.Fatal(err)
				}
				c := alice.commits()
				dec, err := alice.m.Decrypt(ctx, bob.jid, res.Messages[0])
				if err != nil {
					t.Fatal(err)
				}
				if got := alice.commits() - c; got != 1 {
					t.Fatalf("Decrypt: %d commits, want 1", got)
				}
				if string(dec.Plaintext) != fmt.Sprint(i) {
					t.Fatalf("Decrypt: got %q", dec.Plaintext)
				}
				// A replay fails and commits nothing.
				c = alice.commits()
				if _, err := alice.m.Decrypt(ctx, bob.jid, res.Messages[0]); !errors.Is(err, backends.ErrDuplicateMessage) {
					t.Fatalf("replay: %v, want ErrDuplicateMessage", err)
				}
				if got := alice.commits() - c; got != 0 {
					t.Fatalf("failed Decrypt: %d commits, want 0", got)
				}
			}
			if err := alice.m.Flush(ctx); err != nil {
				t.Fatal(err)
			}

			// First contact: identity key discovery and trust decision.
			src := net.add(t, "carol@example.org", nil)
			if err := alice.m.RefreshDeviceLists(ctx, src.jid); err != nil {
				t.Fatal(err)
			}
			c := alice.commits()
			res, err := alice.m.Encrypt(ctx, []string{src.jid}, pt2("first"), nil)
			if err != nil {
				t.Fatal(err)
			}
			got := alice.commits() - c
			t.Logf("first message to a new device: %d commits", got)
			if len(res.Recipients) != 1 || got != 3 {
				t.Fatalf("first message: %d recipients, %d commits, want 1 and 3", len(res.Recipients), got)
			}
		})
	}
}
