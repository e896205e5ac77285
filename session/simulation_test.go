package session_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// This file simulates several accounts with several devices each, all in
// memory on the fake server, and checks every delivery against a model of
// who must receive what.

const (
	simNSTwo    = twomemo.Namespace
	simNSLegacy = oldmemo.Namespace
)

var (
	simBoth        = []backends.Factory{twomemo.Factory, oldmemo.Factory}
	simLegacyFirst = []backends.Factory{oldmemo.Factory, twomemo.Factory}
	simTwo         = []backends.Factory{twomemo.Factory}
	simLegacy      = []backends.Factory{oldmemo.Factory}
	simNamespaces  = []string{simNSTwo, simNSLegacy}
)

// simClock is a controllable clock, safe for concurrent use.
type simClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *simClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type simBundleRef struct {
	ns, jid string
	id      uint32
}

// simNet wraps the Network of one device: it counts calls and can
// serve stale bundles (as a client with an outdated cache would use).
type simNet struct {
	inner session.Network
	mu    sync.Mutex
	calls map[string]int
	stale map[simBundleRef]bundle.Bundle
}

func (n *simNet) count(op string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls[op]++
}

// Calls returns the calls counted since the last reset.
func (n *simNet) Calls() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int{}
	for k, v := range n.calls {
		out[k] = v
	}
	return out
}

func (n *simNet) reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = map[string]int{}
}

func (n *simNet) setStale(ref simBundleRef, b bundle.Bundle) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stale[ref] = b
}

func (n *simNet) UploadBundle(ctx context.Context, id uint32, b bundle.Bundle) error {
	n.count("UploadBundle")
	return n.inner.UploadBundle(ctx, id, b)
}

func (n *simNet) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	n.count("DownloadBundle")
	n.mu.Lock()
	b, ok := n.stale[simBundleRef{ns, jid, id}]
	n.mu.Unlock()
	if ok {
		b.PreKeys = slices.Clone(b.PreKeys)
		return b, nil
	}
	return n.inner.DownloadBundle(ctx, ns, jid, id)
}

func (n *simNet) DeleteBundle(ctx context.Context, ns string, id uint32) error {
	n.count("DeleteBundle")
	return n.inner.DeleteBundle(ctx, ns, id)
}

func (n *simNet) UploadDeviceList(ctx context.Context, l devicelist.List) error {
	n.count("UploadDeviceList")
	return n.inner.UploadDeviceList(ctx, l)
}

func (n *simNet) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	n.count("DownloadDeviceList")
	return n.inner.DownloadDeviceList(ctx, ns, jid)
}

func (n *simNet) SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error {
	n.count("SendMessage")
	return n.inner.SendMessage(ctx, to, msg)
}

// stanza is one message stanza: the <encrypted> elements of all backends.
type simStanza struct {
	from string
	msgs []*encrypted.Encrypted
}

// simReceived is one message a device decrypted (or rejected).
type simReceived struct {
	from     *simDevice
	ns       string
	text     string
	empty    bool
	kex      bool
	rejected bool // ErrSenderDistrusted
}

func (r simReceived) String() string {
	switch {
	case r.rejected:
		return fmt.Sprintf("rejected from %s (%s)", r.from.name, r.ns)
	case r.empty:
		return fmt.Sprintf("empty from %s (%s)", r.from.name, r.ns)
	}
	return fmt.Sprintf("%q from %s (%s, kex=%v)", r.text, r.from.name, r.ns, r.kex)
}

// Session states in the model, per (peer device, namespace).
const (
	simSessNone        = iota
	simSessUnconfirmed // built actively, the peer has not answered yet
	simSessEstablished // built passively or confirmed by an answer
)

type simPeer struct {
	peer *simDevice
	ns   string
}

type simOpts struct {
	trust   trust.Policy
	syncing bool // start in history synchronisation mode
	memory  bool // in-memory store instead of a bbolt file
}

type simDevice struct {
	w    *simWorld
	name string
	jid  string
	fs   []backends.Factory
	opts simOpts
	path string
	st   store.Store
	net  *simNet
	m    *session.Manager
	id   uint32
	ik   [32]byte

	listed   bool // in the account's published device lists (model)
	notified bool // receives device list notifications
	receives bool // receives message stanzas

	seen      map[string]string // ingested device lists: "ns jid" -> fingerprint
	queue     []simStanza
	log       []simReceived
	distrusts map[*simDevice]bool
	sess      map[simPeer]int
}

func (d *simDevice) supports(ns string) bool {
	return slices.ContainsFunc(d.fs, func(f backends.Factory) bool { return f.Namespace == ns })
}

func (d *simDevice) namespaces() []string {
	var out []string
	for _, f := range d.fs {
		out = append(out, f.Namespace)
	}
	return out
}

type simWorld struct {
	t     *testing.T
	ctx   context.Context
	srv   *sessiontest.Server
	clock *simClock
	dir   string
	devs  []*simDevice
	// emptiesDue counts the empty messages (key exchange answers) the
	// model expects, by (sender of the empty, receiver).
	emptiesDue map[[2]*simDevice]int
}

func newSimWorld(t *testing.T) *simWorld {
	return &simWorld{
		t:          t,
		ctx:        context.Background(),
		srv:        sessiontest.NewServer(),
		clock:      &simClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)},
		dir:        t.TempDir(),
		emptiesDue: map[[2]*simDevice]int{},
	}
}

// add creates a device and opens its session manager.
func (w *simWorld) add(name, jid string, fs []backends.Factory, opts simOpts) *simDevice {
	w.t.Helper()
	d := &simDevice{
		w: w, name: name, jid: jid, fs: fs, opts: opts,
		path:   filepath.Join(w.dir, name+".db"),
		net:    &simNet{inner: w.srv.Network(jid), calls: map[string]int{}, stale: map[simBundleRef]bundle.Bundle{}},
		listed: true, notified: true, receives: true,
		seen: map[string]string{}, distrusts: map[*simDevice]bool{}, sess: map[simPeer]int{},
	}
	d.open()
	d.id, d.ik = d.m.DeviceID(), d.m.IdentityKey()
	for _, o := range w.devs {
		if o.id == d.id {
			w.t.Fatalf("device id collision between %s and %s", o.name, name)
		}
	}
	for _, ns := range d.namespaces() {
		if !simListContains(w.srv.DeviceList(ns, jid), d.id) {
			w.t.Fatalf("%s is not in its published %s device list", name, ns)
		}
		if _, ok := w.srv.Bundle(ns, jid, d.id); !ok {
			w.t.Fatalf("%s published no %s bundle", name, ns)
		}
	}
	w.devs = append(w.devs, d)
	w.t.Cleanup(d.close)
	return d
}

// join adds a device mid-conversation and lets everybody learn of it: only
// the new device publishes anything (its device lists and bundles, once
// each); nobody else republishes a device list or a bundle.
func (w *simWorld) join(name, jid string, fs []backends.Factory, opts simOpts) *simDevice {
	w.t.Helper()
	w.settle()
	for _, d := range w.devs {
		d.net.reset()
	}
	d := w.add(name, jid, fs, opts)
	w.settle()
	for _, o := range w.devs {
		c := o.net.Calls()
		want := 0
		if o == d {
			want = len(fs)
		}
		if c["UploadDeviceList"] != want || c["UploadBundle"] != want || c["SendMessage"] != 0 || c["DeleteBundle"] != 0 {
			w.t.Fatalf("%s joining: %s made calls %v", name, o.name, c)
		}
	}
	return d
}

func (d *simDevice) open() {
	t := d.w.t
	t.Helper()
	if d.opts.memory {
		if d.st == nil {
			d.st = store.NewMemory()
		}
	} else {
		st, err := store.Open(d.path, &store.Options{NoSync: true})
		if err != nil {
			t.Fatalf("opening the store of %s: %v", d.name, err)
		}
		d.st = st
	}
	name := d.name
	m, err := session.New(d.w.ctx, d.st, d.net, session.Config{
		JID:         d.jid,
		Backends:    d.fs,
		Trust:       d.opts.trust,
		Now:         d.w.clock.Now,
		StartSynced: !d.opts.syncing,
		OnError:     func(err error) { t.Errorf("background error of %s: %v", name, err) },
	})
	if err != nil {
		t.Fatalf("starting %s: %v", d.name, err)
	}
	d.m = m
}

func (d *simDevice) close() {
	if d.m != nil {
		d.m.Close()
		d.m = nil
	}
	if d.st != nil && !d.opts.memory {
		d.st.Close()
		d.st = nil
	}
}

// restart closes the manager and the store and reopens both. The device
// must keep its id and identity and must not republish anything.
func (d *simDevice) restart() {
	t := d.w.t
	t.Helper()
	if err := d.m.Flush(d.w.ctx); err != nil {
		t.Fatal(err)
	}
	d.close()
	d.net.reset()
	d.open()
	if got := d.m.DeviceID(); got != d.id {
		t.Fatalf("%s: device id changed over a restart: %d, was %d", d.name, got, d.id)
	}
	if got := d.m.IdentityKey(); got != d.ik {
		t.Fatalf("%s: identity key changed over a restart", d.name)
	}
	if err := d.m.Flush(d.w.ctx); err != nil {
		t.Fatal(err)
	}
	n := len(d.fs)
	want := map[string]int{"DownloadDeviceList": n, "DownloadBundle": n}
	if got := d.net.Calls(); !simMapsEqual(got, want) {
		t.Fatalf("%s: server calls on restart = %v, want %v", d.name, got, want)
	}
}

func simMapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func simListContains(l devicelist.List, id uint32) bool {
	return slices.ContainsFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == id })
}

func (w *simWorld) byID(jid string, id uint32) *simDevice {
	for _, d := range w.devs {
		if d.jid == jid && d.id == id {
			return d
		}
	}
	return nil
}

func (w *simWorld) accounts() []string {
	var out []string
	for _, d := range w.devs {
		if !slices.Contains(out, d.jid) {
			out = append(out, d.jid)
		}
	}
	return out
}

// deliver hands a stanza to every receiving device of the account to,
// except the sending device.
func (w *simWorld) deliver(from *simDevice, to string, st simStanza) {
	for _, d := range w.devs {
		if d.jid == to && d != from && d.receives {
			d.queue = append(d.queue, simStanza{from: st.from, msgs: st.msgs})
		}
	}
}

// propagate delivers every published device list that changed to every
// device subscribed to it, as PEP notifications would. It reports whether
// anything was delivered.
func (w *simWorld) propagate() bool {
	w.t.Helper()
	progress := false
	for _, jid := range w.accounts() {
		for _, ns := range simNamespaces {
			l := w.srv.DeviceList(ns, jid)
			fp := fmt.Sprint(l.Devices)
			for _, d := range w.devs {
				if d.m == nil || !d.notified || !d.supports(ns) || d.seen[ns+" "+jid] == fp {
					continue
				}
				d.seen[ns+" "+jid] = fp
				progress = true
				if err := d.m.UpdateDeviceList(w.ctx, jid, l); err != nil {
					w.t.Fatalf("%s: updating the %s device list of %s: %v", d.name, ns, jid, err)
				}
			}
		}
	}
	return progress
}

// pump moves the messages the managers sent through the server (empty
// messages) into the devices' queues.
func (w *simWorld) pump() bool {
	progress := false
	for _, jid := range w.accounts() {
		for _, dl := range w.srv.Inbox(jid) {
			progress = true
			from := w.byID(dl.From, dl.Message.SID)
			w.deliver(from, dl.To, simStanza{from: dl.From, msgs: []*encrypted.Encrypted{dl.Message}})
		}
	}
	return progress
}

// settle runs the world until nothing moves: queued stanzas are decrypted,
// background work is flushed, device lists propagated, sent messages
// delivered.
func (w *simWorld) settle() {
	w.t.Helper()
	for round := 0; ; round++ {
		if round > 20 {
			w.t.Fatal("the world does not settle")
		}
		progress := false
		for _, d := range w.devs {
			if d.m == nil {
				continue
			}
			q := d.queue
			d.queue = nil
			for _, st := range q {
				progress = true
				d.receive(st)
			}
		}
		for _, d := range w.devs {
			if d.m != nil {
				if err := d.m.Flush(w.ctx); err != nil {
					w.t.Fatal(err)
				}
			}
		}
		if w.propagate() {
			progress = true
		}
		if w.pump() {
			progress = true
		}
		if !progress {
			return
		}
	}
}

// receive decrypts a stanza and checks the result against the model.
func (d *simDevice) receive(st simStanza) {
	w := d.w
	t := w.t
	t.Helper()
	n := 0
	for _, msg := range st.msgs {
		if !d.supports(msg.Namespace) {
			continue
		}
		dec, err := d.m.Decrypt(w.ctx, st.from, msg)
		if errors.Is(err, session.ErrMessageNotForUs) {
			continue
		}
		n++
		sender := w.byID(st.from, msg.SID)
		if sender == nil {
			t.Fatalf("%s: message from unknown device %d of %s", d.name, msg.SID, st.from)
		}
		if d.distrusts[sender] {
			if !errors.Is(err, session.ErrSenderDistrusted) {
				t.Fatalf("%s: message from distrusted %s: err = %v, want ErrSenderDistrusted", d.name, sender.name, err)
			}
			d.log = append(d.log, simReceived{from: sender, ns: msg.Namespace, rejected: true})
			continue
		}
		if err != nil {
			t.Fatalf("%s: decrypting from %s (%s): %v", d.name, sender.name, msg.Namespace, err)
		}
		if dec.Sender.JID != sender.jid || dec.Sender.DeviceID != sender.id || dec.Sender.IdentityKey != sender.ik || dec.Namespace != msg.Namespace {
			t.Fatalf("%s: decrypted sender %s/%d (%s), want %s", d.name, dec.Sender.JID, dec.Sender.DeviceID, dec.Namespace, sender.name)
		}
		if dec.Empty != (msg.Payload == nil) || dec.Empty != (dec.Plaintext == nil) {
			t.Fatalf("%s: Empty = %v for payload %v, plaintext %q", d.name, dec.Empty, msg.Payload != nil, dec.Plaintext)
		}
		pk := simPeer{sender, msg.Namespace}
		d.sess[pk] = simSessEstablished
		if dec.KeyExchange {
			w.emptiesDue[[2]*simDevice{d, sender}]++
		}
		d.log = append(d.log, simReceived{from: sender, ns: msg.Namespace, text: string(dec.Plaintext), empty: dec.Empty, kex: dec.KeyExchange})
	}
	if n > 1 {
		t.Fatalf("%s: %d elements of one stanza were for it", d.name, n)
	}
}

func simRecipient(r session.Recipient) string {
	return fmt.Sprintf("%s/%d(%s)", r.JID, r.DeviceID, r.Namespace)
}

func simRecipients(rs []session.Recipient) []string {
	var out []string
	for _, r := range rs {
		out = append(out, simRecipient(r))
	}
	slices.Sort(out)
	return out
}

// expected computes who from must encrypt for: every listed device of the
// recipients and of the own account (but from), not distrusted by from,
// over the first of from's namespaces the device supports.
func (w *simWorld) expected(from *simDevice, to []string) (map[*simDevice]string, []string) {
	jids := []string{from.jid}
	var others []string
	for _, j := range to {
		if j != from.jid && !slices.Contains(others, j) {
			others = append(others, j)
		}
	}
	jids = append(jids, others...)
	out := map[*simDevice]string{}
	var unreachable []string
	for _, jid := range jids {
		reached := false
		for _, d := range w.devs {
			if d.jid != jid || d == from || !d.listed || from.distrusts[d] {
				continue
			}
			for _, f := range from.fs {
				if d.supports(f.Namespace) {
					out[d] = f.Namespace
					reached = true
					break
				}
			}
		}
		if !reached && jid != from.jid {
			unreachable = append(unreachable, jid)
		}
	}
	return out, unreachable
}

func simPlaintexts(d *simDevice, text string) map[string][]byte {
	out := map[string][]byte{}
	for _, ns := range d.namespaces() {
		out[ns] = []byte(text)
	}
	return out
}

// send encrypts text from one device to the given accounts (and the own
// account's other devices), delivers it, runs the world, and checks every
// device against the model: exact recipients, key exchanges exactly where
// no session was established, exact plaintexts, nothing for anyone else,
// and exactly one empty answer per key exchange.
func (w *simWorld) send(from *simDevice, text string, to ...string) *session.EncryptResult {
	t := w.t
	t.Helper()
	w.settle()
	for _, d := range w.devs {
		d.log = nil
	}
	clear(w.emptiesDue)
	want, unreachable := w.expected(from, to)
	wantKex := map[*simDevice]bool{}
	for d, ns := range want {
		wantKex[d] = from.sess[simPeer{d, ns}] != simSessEstablished
	}

	delivered := false
	res, err := from.m.Encrypt(w.ctx, to, simPlaintexts(from, text), func(r *session.EncryptResult) error {
		delivered = true
		st := simStanza{from: from.jid, msgs: r.Messages}
		w.deliver(from, from.jid, st)
		for _, j := range to {
			if j != from.jid {
				w.deliver(from, j, st)
			}
		}
		return nil
	})
	if len(unreachable) > 0 || len(want) == 0 {
		var ne *session.NoEligibleDevicesError
		if !errors.Is(err, session.ErrNoEligibleDevices) || !errors.As(err, &ne) {
			t.Fatalf("%s sending %q: err = %v, want no eligible devices for %v", from.name, text, err, unreachable)
		}
		if len(unreachable) > 0 && !slices.Equal(ne.JIDs, unreachable) {
			t.Fatalf("%s sending %q: no eligible devices for %v, want %v", from.name, text, ne.JIDs, unreachable)
		}
		if delivered || res != nil {
			t.Fatalf("%s sending %q: delivered although no eligible devices", from.name, text)
		}
		w.settle()
		for _, d := range w.devs {
			if len(d.log) > 0 {
				t.Fatalf("%s got %v from a message that failed to encrypt", d.name, d.log)
			}
		}
		return nil
	}
	if err != nil {
		t.Fatalf("%s sending %q: %v", from.name, text, err)
	}
	if !delivered {
		t.Fatalf("%s sending %q: deliver was not called", from.name, text)
	}
	if len(res.Failures) > 0 {
		t.Fatalf("%s sending %q: failures %v", from.name, text, res.Failures)
	}

	// Exact recipients, and key elements matching them.
	var wantRec []string
	for d, ns := range want {
		wantRec = append(wantRec, simRecipient(session.Recipient{JID: d.jid, DeviceID: d.id, Namespace: ns}))
	}
	slices.Sort(wantRec)
	if got := simRecipients(res.Recipients); !slices.Equal(got, wantRec) {
		t.Fatalf("%s sending %q: recipients\n%v\nwant\n%v", from.name, text, got, wantRec)
	}
	var keyed []string
	for i, msg := range res.Messages {
		if i > 0 && slices.Index(from.namespaces(), msg.Namespace) <= slices.Index(from.namespaces(), res.Messages[i-1].Namespace) {
			t.Fatalf("%s: messages not in priority order", from.name)
		}
		if msg.SID != from.id || len(msg.Keys) == 0 || msg.Payload == nil {
			t.Fatalf("%s: malformed message %+v", from.name, msg)
		}
		for _, k := range msg.Keys {
			d := w.byID(k.JID, k.RID)
			if d == nil {
				t.Fatalf("%s: key for unknown device %s/%d", from.name, k.JID, k.RID)
			}
			keyed = append(keyed, simRecipient(session.Recipient{JID: k.JID, DeviceID: k.RID, Namespace: msg.Namespace}))
			if k.KeyExchange != wantKex[d] {
				t.Fatalf("%s sending %q: key exchange for %s = %v, want %v", from.name, text, d.name, k.KeyExchange, wantKex[d])
			}
		}
	}
	slices.Sort(keyed)
	if !slices.Equal(keyed, wantRec) {
		t.Fatalf("%s sending %q: keys for %v, want %v", from.name, text, keyed, wantRec)
	}
	for d, ns := range want {
		if pk := (simPeer{d, ns}); from.sess[pk] == simSessNone {
			from.sess[pk] = simSessUnconfirmed
		}
	}

	w.settle()

	// Every device got exactly what it should.
	gotEmpties := map[[2]*simDevice]int{}
	for _, d := range w.devs {
		var msgs []simReceived
		for _, r := range d.log {
			if r.empty {
				gotEmpties[[2]*simDevice{r.from, d}]++
				continue
			}
			msgs = append(msgs, r)
		}
		var wantMsgs []simReceived
		if ns, ok := want[d]; ok && d.receives {
			r := simReceived{from: from, ns: ns, text: text, kex: wantKex[d]}
			if d.distrusts[from] {
				r = simReceived{from: from, ns: ns, rejected: true}
			}
			wantMsgs = append(wantMsgs, r)
		}
		if !slices.Equal(msgs, wantMsgs) {
			t.Fatalf("%s sending %q: %s got %v, want %v", from.name, text, d.name, msgs, wantMsgs)
		}
	}
	if !simMapsEqualDev(gotEmpties, w.emptiesDue) {
		t.Fatalf("%s sending %q: empty messages %v, want %v", from.name, text, simPairs(gotEmpties), simPairs(w.emptiesDue))
	}
	return res
}

func simMapsEqualDev(a, b map[[2]*simDevice]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func simPairs(m map[[2]*simDevice]int) string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s->%s:%d", k[0].name, k[1].name, v))
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// removeFromList republishes the device lists of d's account without d, as
// another client of the account would. The device is gone: it gets no
// notifications (it would add itself back) but still gets stanzas, so that
// the test sees it is not encrypted for.
func (w *simWorld) removeFromList(d *simDevice) {
	w.t.Helper()
	// The checks that keep d on its own lists after a publish would put it
	// back: as a device that is really gone, it runs none any more.
	if err := d.m.WaitOwnList(w.ctx); err != nil {
		w.t.Fatal(err)
	}
	for _, ns := range d.namespaces() {
		l := w.srv.DeviceList(ns, d.jid)
		l.Devices = slices.DeleteFunc(l.Devices, func(x devicelist.Device) bool { return x.ID == d.id })
		w.srv.SetDeviceList(d.jid, l)
	}
	d.listed, d.notified = false, false
	w.settle()
}

func (w *simWorld) setTrust(by, of *simDevice, level string) {
	w.t.Helper()
	if err := by.m.SetTrust(w.ctx, of.jid, of.ik, level); err != nil {
		w.t.Fatal(err)
	}
	lv, err := trust.BTBV(nil).Evaluate(level)
	if err != nil {
		w.t.Fatal(err)
	}
	by.distrusts[of] = lv == trust.Distrusted
}

func (w *simWorld) deviceInfo(by *simDevice, of *simDevice) session.DeviceInfo {
	w.t.Helper()
	infos, err := by.m.Devices(w.ctx, of.jid)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, i := range infos {
		if i.DeviceID == of.id {
			return i
		}
	}
	w.t.Fatalf("%s does not know %s", by.name, of.name)
	return session.DeviceInfo{}
}

func simNoKeyFor(t *testing.T, res *session.EncryptResult, d *simDevice) {
	t.Helper()
	for _, msg := range res.Messages {
		for _, k := range msg.Keys {
			if k.RID == d.id {
				t.Fatalf("message encrypted for %s", d.name)
			}
		}
	}
}

const (
	simAlice = "alice@example.org"
	simBob   = "bob@example.net"
	simCarol = "carol@example.com"
)

func TestSimulationMultiParty(t *testing.T) {
	w := newSimWorld(t)
	a1 := w.add("a1", simAlice, simBoth, simOpts{})
	a2 := w.add("a2", simAlice, simTwo, simOpts{})
	b1 := w.add("b1", simBob, simLegacy, simOpts{})
	b2 := w.add("b2", simBob, simBoth, simOpts{})
	c1 := w.add("c1", simCarol, simLegacyFirst, simOpts{})
	w.settle()

	// Every direction, with own copies, over mixed backends.
	w.send(a1, "a1 to bob", simBob)
	w.send(b1, "b1 to alice", simAlice)
	w.send(b2, "b2 to alice and carol", simAlice, simCarol)
	w.send(c1, "c1 to alice and bob", simAlice, simBob)
	w.send(a2, "a2 to carol", simCarol)
	w.send(a2, "a2 to bob", simBob)
	w.send(a1, "a1 to bob again", simBob)

	// Devices join mid-conversation.
	a3 := w.join("a3", simAlice, simLegacy, simOpts{})
	w.settle()
	w.send(a1, "a1 after a3 joined", simBob, simCarol)
	w.send(a3, "a3 to bob", simBob)
	b3 := w.join("b3", simBob, simTwo, simOpts{})
	c2 := w.join("c2", simCarol, simTwo, simOpts{})
	w.settle()
	w.send(c2, "c2 to alice and bob", simAlice, simBob)
	w.send(b3, "b3 to carol", simCarol)
	w.send(b1, "b1 to carol", simCarol)
	w.send(c1, "c1 to bob", simBob)

	// Restarts from the persistent store between messages.
	a1.restart()
	b2.restart()
	c1.restart()
	w.send(a1, "a1 after its restart", simBob, simCarol)
	w.send(b2, "b2 after its restart", simAlice)
	w.send(c1, "c1 after its restart", simAlice, simBob)

	// Messages to the own account only.
	w.send(a1, "a1 note to self")
	w.send(b1, "b1 note to self")
	w.send(c2, "c2 note to self")

	// A device removed from its list becomes inactive and gets nothing.
	w.removeFromList(a2)
	if info := w.deviceInfo(b2, a2); len(info.Active) != 0 || !slices.Equal(info.Namespaces, []string{simNSTwo}) {
		t.Fatalf("b2's view of the removed a2: active %v, namespaces %v", info.Active, info.Namespaces)
	}
	if _, others, err := a1.m.OwnDevices(w.ctx); err != nil {
		t.Fatal(err)
	} else if i := slices.IndexFunc(others, func(d session.DeviceInfo) bool { return d.DeviceID == a2.id }); i < 0 || len(others[i].Active) != 0 {
		t.Fatalf("a1's view of the removed a2: %+v", others)
	}
	simNoKeyFor(t, w.send(b2, "b2 after a2 was removed", simAlice), a2)
	simNoKeyFor(t, w.send(a1, "a1 after a2 was removed"), a2)
	simNoKeyFor(t, w.send(c2, "c2 after a2 was removed", simAlice), a2)

	// Trust changed mid-conversation.
	w.setTrust(b2, c2, trust.LevelDistrusted)
	if info := w.deviceInfo(b2, c2); info.Level != trust.Distrusted {
		t.Fatalf("c2 is %v for b2 after distrusting it", info.Level)
	}
	simNoKeyFor(t, w.send(b2, "b2 to carol, c2 distrusted", simCarol), c2)
	w.send(c2, "c2 to bob while distrusted by b2", simBob) // b2 rejects it
	w.send(c2, "c2 to bob while still distrusted by b2", simBob)
	w.setTrust(b2, c2, trust.LevelTrusted)
	w.send(c2, "c2 to bob, trusted again", simBob)
	w.send(b2, "b2 to carol, c2 trusted again", simCarol)

	// Another device joins, then more restarts.
	a4 := w.join("a4", simAlice, simBoth, simOpts{})
	w.settle()
	w.send(c1, "c1 to alice after a4 joined", simAlice)
	w.send(a4, "a4 to bob and carol", simBob, simCarol)
	a4.restart()
	b3.restart()
	w.send(b3, "b3 to alice after its restart", simAlice)
	w.send(a4, "a4 to bob after its restart", simBob)

	// Carol's legacy capable device goes away: a3 (legacy only) cannot
	// reach carol any more, the others still can.
	w.removeFromList(c1)
	if w.send(a3, "a3 to carol without c1", simCarol) != nil {
		t.Fatal("a3 reached carol without a legacy device")
	}
	simNoKeyFor(t, w.send(b2, "b2 to carol without c1", simCarol), c1)

	// Finally everybody writes to everybody.
	for _, d := range []*simDevice{a1, a3, a4, b1, b2, b3, c2} {
		w.send(d, "round from "+d.name, simAlice, simBob, simCarol)
	}
}

// trySend encrypts without checking against the model and queues what was
// delivered for the recipients' devices.
func (w *simWorld) trySend(from *simDevice, text string, to ...string) (*session.EncryptResult, bool, error) {
	delivered := false
	res, err := from.m.Encrypt(w.ctx, to, simPlaintexts(from, text), func(r *session.EncryptResult) error {
		delivered = true
		st := simStanza{from: from.jid, msgs: r.Messages}
		w.deliver(from, from.jid, st)
		for _, j := range to {
			if j != from.jid {
				w.deliver(from, j, st)
			}
		}
		return nil
	})
	return res, delivered, err
}

// takeQueue removes and returns the stanzas queued for d.
func (d *simDevice) takeQueue() []simStanza {
	q := d.queue
	d.queue = nil
	return q
}

// clearLogs forgets what every device received so far.
func (w *simWorld) clearLogs() {
	for _, d := range w.devs {
		d.log = nil
	}
	clear(w.emptiesDue)
}

func (w *simWorld) checkNoLogs() {
	w.t.Helper()
	for _, d := range w.devs {
		if len(d.log) > 0 {
			w.t.Fatalf("%s got %v", d.name, d.log)
		}
	}
}

func TestSimulationManualTrust(t *testing.T) {
	w := newSimWorld(t)
	m1 := w.add("m1", simAlice, simBoth, simOpts{trust: trust.Manual(nil)})
	b1 := w.add("b1", simBob, simBoth, simOpts{})
	w.settle()

	undecided := func(what string, to ...string) {
		t.Helper()
		w.settle()
		w.clearLogs()
		res, delivered, err := w.trySend(m1, what, to...)
		if !errors.Is(err, session.ErrStillUndecided) || res != nil || delivered {
			t.Fatalf("%s: err = %v, delivered %v, want ErrStillUndecided and nothing delivered", what, err, delivered)
		}
		m1.net.reset()
		w.settle()
		w.checkNoLogs()
		if c := m1.net.Calls()["SendMessage"]; c != 0 {
			t.Fatalf("%s: %d messages sent", what, c)
		}
	}
	undecided("to bob, undecided", simBob)
	if info := w.deviceInfo(m1, b1); info.Level != trust.Undecided || info.Trust != trust.LevelUndecided {
		t.Fatalf("b1 is %v (%s) for m1", info.Level, info.Trust)
	}
	w.setTrust(m1, b1, trust.LevelTrusted)
	w.send(m1, "to bob, b1 trusted", simBob)
	w.send(b1, "from bob", simAlice)

	// A device joins the contact's account: encryption stops until it is
	// decided, and nobody gets anything meanwhile.
	b2 := w.add("b2", simBob, simTwo, simOpts{})
	w.settle()
	undecided("to bob, b2 undecided", simBob)
	w.setTrust(m1, b2, trust.LevelDistrusted)
	simNoKeyFor(t, w.send(m1, "to bob, b2 distrusted", simBob), b2)
	w.setTrust(m1, b2, trust.LevelTrusted)
	w.send(m1, "to bob, b2 trusted", simBob)

	// The same for a new own device.
	m2 := w.add("m2", simAlice, simLegacy, simOpts{})
	w.settle()
	undecided("to bob, own m2 undecided", simBob)
	undecided("note to self, own m2 undecided")
	w.setTrust(m1, m2, trust.LevelTrusted)
	w.send(m1, "to bob, m2 trusted", simBob)
	w.send(m2, "from m2", simBob)
}

// waitBundle waits until the published bundle satisfies ok (the bundle
// upload after a rotation may run in the background rotation loop).
func (w *simWorld) waitBundle(ns string, d *simDevice, ok func(bundle.Bundle) bool) bundle.Bundle {
	w.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, found := w.srv.Bundle(ns, d.jid, d.id)
		if found && ok(b) {
			return b
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("the %s bundle of %s did not change as expected: %+v", ns, d.name, b)
		}
		time.Sleep(time.Millisecond)
	}
}

func simPreKeyIDs(b bundle.Bundle) map[uint32][32]byte {
	out := map[uint32][32]byte{}
	for _, pk := range b.PreKeys {
		out[pk.ID] = pk.Key
	}
	return out
}

func TestSimulationSignedPreKeyRotation(t *testing.T) {
	const tina = "tina@example.org"
	w := newSimWorld(t)
	tg := w.add("t", tina, simBoth, simOpts{})
	w.settle()
	ctx := w.ctx

	published := func() map[string]bundle.Bundle {
		out := map[string]bundle.Bundle{}
		for _, ns := range simNamespaces {
			b, ok := w.srv.Bundle(ns, tina, tg.id)
			if !ok {
				t.Fatalf("no %s bundle", ns)
			}
			out[ns] = b
		}
		return out
	}
	rotate := func(before map[string]bundle.Bundle) map[string]bundle.Bundle {
		t.Helper()
		w.clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
		next, err := tg.m.RotateSignedPreKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if next != session.DefaultSignedPreKeyRotation {
			t.Fatalf("next rotation in %v, want %v", next, session.DefaultSignedPreKeyRotation)
		}
		out := map[string]bundle.Bundle{}
		for _, ns := range simNamespaces {
			old := before[ns]
			b := w.waitBundle(ns, tg, func(b bundle.Bundle) bool { return b.SignedPreKeyID != old.SignedPreKeyID })
			if b.IdentityKey != old.IdentityKey || b.SignedPreKey == old.SignedPreKey || b.SignedPreKeySignature == old.SignedPreKeySignature {
				t.Fatalf("%s: rotation changed the identity or kept the signed pre key", ns)
			}
			if !maps.Equal(simPreKeyIDs(b), simPreKeyIDs(old)) {
				t.Fatalf("%s: rotation changed the pre keys", ns)
			}
			out[ns] = b
		}
		return out
	}

	gen0 := published()
	// Not due yet: nothing happens.
	tg.net.reset()
	next, err := tg.m.RotateSignedPreKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next <= 0 || next > session.DefaultSignedPreKeyRotation {
		t.Fatalf("next rotation in %v", next)
	}
	if c := tg.net.Calls(); len(c) != 0 {
		t.Fatalf("a rotation that was not due made calls %v", c)
	}
	w.clock.Advance(session.DefaultSignedPreKeyRotation - time.Hour)
	if _, err := tg.m.RotateSignedPreKeys(ctx); err != nil {
		t.Fatal(err)
	}
	if got := published(); got[simNSTwo].SignedPreKeyID != gen0[simNSTwo].SignedPreKeyID || got[simNSLegacy].SignedPreKeyID != gen0[simNSLegacy].SignedPreKeyID {
		t.Fatal("the signed pre key was rotated before it was due")
	}

	gen1 := rotate(gen0)

	// Senders that downloaded the bundle before the rotation still get
	// through, in both namespaces.
	fsOf := map[string][]backends.Factory{simNSTwo: simTwo, simNSLegacy: simLegacy}
	for _, ns := range simNamespaces {
		i := w.add("old-"+ns, "ivan-"+strings.ReplaceAll(ns, ":", "-")+"@example.org", fsOf[ns], simOpts{memory: true})
		i.net.setStale(simBundleRef{ns, tina, tg.id}, gen0[ns])
		w.settle()
		w.send(i, "built from the bundle before the rotation", tina)
		w.send(tg, "answer to the old bundle", i.jid)
	}

	gen2 := rotate(published())
	_ = gen1

	for _, ns := range simNamespaces {
		// One rotation old still works.
		i := w.add("gen1-"+ns, "gen1-"+strings.ReplaceAll(ns, ":", "-")+"@example.org", fsOf[ns], simOpts{memory: true})
		i.net.setStale(simBundleRef{ns, tina, tg.id}, withPreKeysOf(gen1[ns], gen2[ns]))
		w.settle()
		w.send(i, "built from the bundle one rotation old", tina)

		// Two rotations old fails as a key exchange error, even with a
		// pre key that is still there, and changes nothing.
		j := w.add("gen0-"+ns, "gen0-"+strings.ReplaceAll(ns, ":", "-")+"@example.org", fsOf[ns], simOpts{memory: true})
		j.net.setStale(simBundleRef{ns, tina, tg.id}, withPreKeysOf(gen0[ns], published()[ns]))
		w.settle()
		before := published()[ns]
		res, delivered, err := w.trySend(j, "built from the bundle two rotations old", tina)
		if err != nil || !delivered || len(res.Recipients) != 1 || res.Recipients[0].DeviceID != tg.id {
			t.Fatalf("%s: encrypting with the stale bundle: %v, %+v", ns, err, res)
		}
		q := tg.takeQueue()
		if len(q) != 1 || len(q[0].msgs) != 1 || !q[0].msgs[0].Keys[0].KeyExchange {
			t.Fatalf("%s: queued %+v", ns, q)
		}
		tg.net.reset()
		_, err = tg.m.Decrypt(ctx, j.jid, q[0].msgs[0])
		if !errors.Is(err, backends.ErrKeyExchange) || !errors.Is(err, backends.ErrUnknownSignedPreKey) || errors.Is(err, session.ErrStorage) {
			t.Fatalf("%s: decrypting a key exchange with a signed pre key two rotations old: %v", ns, err)
		}
		if err := tg.m.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if c := tg.net.Calls(); c["UploadBundle"] != 0 || c["SendMessage"] != 0 {
			t.Fatalf("%s: a failed key exchange made calls %v", ns, c)
		}
		if after := published()[ns]; !maps.Equal(simPreKeyIDs(after), simPreKeyIDs(before)) {
			t.Fatalf("%s: a failed key exchange changed the pre keys", ns)
		}
	}
}

// withPreKeysOf returns b with the pre keys of cur, so that a key exchange
// built from it can only fail for its signed pre key.
func withPreKeysOf(b, cur bundle.Bundle) bundle.Bundle {
	b.PreKeys = slices.Clone(cur.PreKeys)
	return b
}

func TestSimulationPreKeyRefill(t *testing.T) {
	const tina = "tina@example.org"
	w := newSimWorld(t)
	tg := w.add("t", tina, simBoth, simOpts{})
	w.settle()

	seen := map[string]map[uint32][32]byte{}
	prev := map[string]bundle.Bundle{}
	for _, ns := range simNamespaces {
		b, _ := w.srv.Bundle(ns, tina, tg.id)
		if len(b.PreKeys) != session.NumPreKeys {
			t.Fatalf("%s: %d pre keys at the start", ns, len(b.PreKeys))
		}
		seen[ns] = simPreKeyIDs(b)
		prev[ns] = b
	}
	fsOf := map[string][]backends.Factory{simNSTwo: simTwo, simNSLegacy: simLegacy}
	const rounds = 24
	for i := range rounds {
		ns := simNamespaces[i%2]
		p := w.add(fmt.Sprintf("p%d", i), fmt.Sprintf("p%d@example.org", i), fsOf[ns], simOpts{memory: true})
		w.settle()
		w.send(p, fmt.Sprintf("session %d", i), tina)
		for _, bns := range simNamespaces {
			b, _ := w.srv.Bundle(bns, tina, tg.id)
			if len(b.PreKeys) != session.NumPreKeys {
				t.Fatalf("round %d: %s bundle has %d pre keys after Flush", i, bns, len(b.PreKeys))
			}
			old, cur := simPreKeyIDs(prev[bns]), simPreKeyIDs(b)
			var removed, added []uint32
			for id, k := range old {
				if ck, ok := cur[id]; !ok {
					removed = append(removed, id)
				} else if ck != k {
					t.Fatalf("round %d: pre key %d changed its key", i, id)
				}
			}
			for id, k := range cur {
				if _, ok := old[id]; ok {
					continue
				}
				added = append(added, id)
				if _, reused := seen[bns][id]; reused {
					t.Fatalf("round %d: %s pre key id %d reused", i, bns, id)
				}
				seen[bns][id] = k
			}
			want := 0
			if bns == ns {
				want = 1
			}
			if len(removed) != want || len(added) != want {
				t.Fatalf("round %d: %s pre keys removed %v, added %v, want %d each", i, bns, removed, added, want)
			}
			prev[bns] = b
		}
	}
	for _, ns := range simNamespaces {
		if want := session.NumPreKeys + rounds/2; len(seen[ns]) != want {
			t.Fatalf("%s: %d pre key ids seen, want %d", ns, len(seen[ns]), want)
		}
	}
}

func TestSimulationHeartbeat(t *testing.T) {
	const hank, hugo = "hank@example.org", "hugo@example.net"
	for _, c := range []struct {
		ns string
		fs []backends.Factory
	}{{simNSTwo, simTwo}, {simNSLegacy, simLegacy}} {
		t.Run(c.ns, func(t *testing.T) {
			w := newSimWorld(t)
			ctx := w.ctx
			h1 := w.add("h1", hank, c.fs, simOpts{memory: true})
			h2 := w.add("h2", hugo, c.fs, simOpts{memory: true})
			w.settle()
			w.send(h1, "hi", hugo) // key exchange, answered by an empty message
			chain := func() uint32 {
				t.Helper()
				l, err := h1.m.SendingChainLength(ctx, hugo, h2.id)
				if err != nil {
					t.Fatal(err)
				}
				if len(l) != 1 {
					t.Fatalf("sending chain lengths %v", l)
				}
				return l[c.ns]
			}
			if n := chain(); n != 0 {
				t.Fatalf("sending chain length %d after the answer, want 0", n)
			}
			h2.net.reset()
			for i := 1; i <= 60; i++ {
				text := fmt.Sprintf("one way %d", i)
				res, err := h1.m.Encrypt(ctx, []string{hugo}, simPlaintexts(h1, text), nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Messages) != 1 || len(res.Messages[0].Keys) != 1 || res.Messages[0].Keys[0].KeyExchange {
					t.Fatalf("message %d: %+v", i, res.Messages)
				}
				dec, err := h2.m.Decrypt(ctx, hank, res.Messages[0])
				if err != nil || string(dec.Plaintext) != text || dec.KeyExchange {
					t.Fatalf("message %d: %v, %+v", i, err, dec)
				}
				if err := h2.m.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				inbox := w.srv.Inbox(hank)
				if i != session.HeartbeatThreshold+1 {
					if len(inbox) != 0 {
						t.Fatalf("message %d: %d messages sent back", i, len(inbox))
					}
					continue
				}
				if len(inbox) != 1 {
					t.Fatalf("message %d: %d heartbeats, want 1", i, len(inbox))
				}
				hb := inbox[0]
				if hb.From != hugo || hb.Message.SID != h2.id || hb.Message.Payload != nil || len(hb.Message.Keys) != 1 || hb.Message.Keys[0].RID != h1.id {
					t.Fatalf("heartbeat %+v", hb)
				}
				if n := chain(); n != uint32(i) {
					t.Fatalf("sending chain length %d before the heartbeat, want %d", n, i)
				}
				dec, err = h1.m.Decrypt(ctx, hugo, hb.Message)
				if err != nil || !dec.Empty || dec.Plaintext != nil || dec.KeyExchange || dec.Sender.DeviceID != h2.id {
					t.Fatalf("heartbeat: %v, %+v", err, dec)
				}
				if err := h1.m.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				if n := chain(); n != 0 {
					t.Fatalf("sending chain length %d after the heartbeat, want 0", n)
				}
				if got := w.srv.Inbox(hugo); len(got) != 0 {
					t.Fatalf("the heartbeat was answered: %+v", got)
				}
			}
			if n := chain(); n != 60-(session.HeartbeatThreshold+1) {
				t.Fatalf("sending chain length %d at the end", n)
			}
			if c := h2.net.Calls()["SendMessage"]; c != 1 {
				t.Fatalf("%d messages sent by the receiver, want 1", c)
			}
		})
	}
}

// encryptOne encrypts text from one device to jid without delivering it and
// returns the single message (the sender must reach exactly one device).
func (w *simWorld) encryptOne(from *simDevice, text, jid string) *encrypted.Encrypted {
	w.t.Helper()
	res, err := from.m.Encrypt(w.ctx, []string{jid}, simPlaintexts(from, text), nil)
	if err != nil {
		w.t.Fatal(err)
	}
	if len(res.Messages) != 1 || len(res.Messages[0].Keys) != 1 {
		w.t.Fatalf("%s: %+v", from.name, res.Messages)
	}
	return res.Messages[0]
}

func (w *simWorld) decryptAs(d *simDevice, from string, msg *encrypted.Encrypted, text string, kex bool) {
	w.t.Helper()
	dec, err := d.m.Decrypt(w.ctx, from, msg)
	if err != nil {
		w.t.Fatalf("%s decrypting %q: %v", d.name, text, err)
	}
	if string(dec.Plaintext) != text || dec.Empty != (text == "") || dec.KeyExchange != kex {
		w.t.Fatalf("%s: decrypted %q (empty %v, kex %v), want %q (kex %v)", d.name, dec.Plaintext, dec.Empty, dec.KeyExchange, text, kex)
	}
	if err := d.m.Flush(w.ctx); err != nil {
		w.t.Fatal(err)
	}
}

// preKeyDiff returns the pre key ids in a but not in b.
func preKeyDiff(a, b bundle.Bundle) []uint32 {
	ib := simPreKeyIDs(b)
	var out []uint32
	for _, pk := range a.PreKeys {
		if _, ok := ib[pk.ID]; !ok {
			out = append(out, pk.ID)
		}
	}
	slices.Sort(out)
	return out
}

func TestSimulationHistorySync(t *testing.T) {
	const rita, sam, sue = "rita@example.org", "sam@example.net", "sue@example.com"
	w := newSimWorld(t)
	ctx := w.ctx
	r := w.add("r", rita, simBoth, simOpts{syncing: true})
	s1 := w.add("s1", sam, simTwo, simOpts{memory: true})
	s2 := w.add("s2", sue, simLegacy, simOpts{memory: true})
	w.settle()
	if !r.m.InHistorySync() {
		t.Fatal("a manager does not start in history synchronisation mode")
	}
	bundles := func() map[string]bundle.Bundle {
		out := map[string]bundle.Bundle{}
		for _, ns := range simNamespaces {
			b, _ := w.srv.Bundle(ns, rita, r.id)
			if len(b.PreKeys) != session.NumPreKeys {
				t.Fatalf("%s bundle with %d pre keys", ns, len(b.PreKeys))
			}
			out[ns] = b
		}
		return out
	}
	noneSent := func(when string) {
		t.Helper()
		if c := r.net.Calls()["SendMessage"]; c != 0 {
			t.Fatalf("%s: %d messages sent in history synchronisation mode", when, c)
		}
		if in := append(w.srv.Inbox(sam), w.srv.Inbox(sue)...); len(in) != 0 {
			t.Fatalf("%s: %d messages delivered", when, len(in))
		}
	}

	before := bundles()
	// Two messages of s1 carry the same key exchange, one of s2 another.
	m1 := w.encryptOne(s1, "m1", rita)
	m2 := w.encryptOne(s1, "m2", rita)
	n1 := w.encryptOne(s2, "n1", rita)
	for _, m := range []*encrypted.Encrypted{m1, m2, n1} {
		if !m.Keys[0].KeyExchange {
			t.Fatal("first contact without key exchange")
		}
	}

	r.net.reset()
	w.decryptAs(r, sam, m1, "m1", true)
	w.decryptAs(r, sue, n1, "n1", true)
	afterKex := bundles()
	for _, ns := range simNamespaces {
		if gone := preKeyDiff(before[ns], afterKex[ns]); len(gone) != 1 {
			t.Fatalf("%s: pre keys %v left the bundle, want exactly one", ns, gone)
		}
	}
	if c := r.net.Calls()["UploadBundle"]; c != 2 {
		t.Fatalf("%d bundle uploads, want 2", c)
	}
	noneSent("after the key exchanges")

	// The queue and the hidden pre keys survive a restart.
	r.restart()
	if !r.m.InHistorySync() {
		t.Fatal("not in history synchronisation mode after the restart")
	}
	w.decryptAs(r, sam, m2, "m2", true)
	// The hidden pre key still completes the key exchange: forget the
	// session and decrypt the first message again.
	if err := r.m.PurgeJID(ctx, sam); err != nil {
		t.Fatal(err)
	}
	w.decryptAs(r, sam, m1, "m1", true)
	if got := bundles(); !maps.Equal(simPreKeyIDs(got[simNSTwo]), simPreKeyIDs(afterKex[simNSTwo])) || !maps.Equal(simPreKeyIDs(got[simNSLegacy]), simPreKeyIDs(afterKex[simNSLegacy])) {
		t.Fatal("the bundle changed although no new pre key was used")
	}
	noneSent("after the repeated key exchange")

	// Leaving the mode sends one empty message per device.
	if err := r.m.AfterHistorySync(ctx); err != nil {
		t.Fatal(err)
	}
	if r.m.InHistorySync() {
		t.Fatal("still in history synchronisation mode")
	}
	if err := r.m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if c := r.net.Calls()["SendMessage"]; c != 2 {
		t.Fatalf("%d empty messages sent, want 2", c)
	}
	for _, c := range []struct {
		s   *simDevice
		jid string
	}{{s1, sam}, {s2, sue}} {
		in := w.srv.Inbox(c.jid)
		if len(in) != 1 || in[0].From != rita || in[0].Message.SID != r.id || in[0].Message.Payload != nil ||
			len(in[0].Message.Keys) != 1 || in[0].Message.Keys[0].RID != c.s.id || in[0].Message.Keys[0].KeyExchange {
			t.Fatalf("%s got %+v, want one empty message", c.s.name, in)
		}
		w.decryptAs(c.s, rita, in[0].Message, "", false)
		// The session is confirmed: no key exchange any more.
		m := w.encryptOne(c.s, "after the sync", rita)
		if m.Keys[0].KeyExchange {
			t.Fatalf("%s still sends key exchanges", c.s.name)
		}
		w.decryptAs(r, c.jid, m, "after the sync", false)
	}
	if got := bundles(); !maps.Equal(simPreKeyIDs(got[simNSTwo]), simPreKeyIDs(afterKex[simNSTwo])) {
		t.Fatal("the bundle changed when leaving history synchronisation mode")
	}

	// The queue is empty: a restart and another AfterHistorySync send nothing.
	r.restart()
	if err := r.m.AfterHistorySync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	noneSent("after a second AfterHistorySync")

	// The hidden pre keys are gone now: the key exchange cannot be
	// repeated any more.
	if err := r.m.PurgeJID(ctx, sam); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Decrypt(ctx, sam, m1); !errors.Is(err, backends.ErrKeyExchange) || !errors.Is(err, backends.ErrUnknownPreKey) || errors.Is(err, session.ErrStorage) {
		t.Fatalf("repeating a key exchange after AfterHistorySync: %v, want an unknown pre key", err)
	}
}

func TestSimulationErrors(t *testing.T) {
	const xavier, yves = "xavier@example.org", "yves@example.net"
	w := newSimWorld(t)
	ctx := w.ctx
	a1 := w.add("a1", simAlice, simBoth, simOpts{memory: true})
	b1 := w.add("b1", simBob, simBoth, simOpts{memory: true})
	b2 := w.add("b2", simBob, simTwo, simOpts{memory: true})
	c1 := w.add("c1", simCarol, simBoth, simOpts{memory: true})
	w.settle()
	w.send(a1, "hello bob", simBob)

	// A message for bob is not for carol.
	w.clearLogs()
	res, delivered, err := w.trySend(a1, "only for bob", simBob)
	if err != nil || !delivered {
		t.Fatal(err)
	}
	for _, msg := range res.Messages {
		if _, err := c1.m.Decrypt(ctx, simAlice, msg); !errors.Is(err, session.ErrMessageNotForUs) {
			t.Fatalf("carol decrypting bob's message: %v, want ErrMessageNotForUs", err)
		}
	}

	// A message from an unknown device fails after one refresh and leaves
	// the session alone.
	msg := res.Messages[0]
	forged := *msg
	forged.SID = 4242
	for w.byID(simAlice, forged.SID) != nil {
		forged.SID++
	}
	b1.net.reset()
	if _, err := b1.m.Decrypt(ctx, simAlice, &forged); !errors.Is(err, session.ErrSenderNotFound) {
		t.Fatalf("message from an unknown device: %v, want ErrSenderNotFound", err)
	}
	if c := b1.net.Calls(); !simMapsEqual(c, map[string]int{"DownloadDeviceList": 1}) {
		t.Fatalf("calls for an unknown sender: %v, want one device list download", c)
	}
	// The genuine messages still decrypt.
	w.settle()
	for _, d := range []*simDevice{b1, b2} {
		if len(d.log) != 1 || d.log[0].text != "only for bob" || d.log[0].from != a1 {
			t.Fatalf("%s got %v", d.name, d.log)
		}
	}

	// No devices: nothing is encrypted or delivered.
	a1.net.reset()
	if w.send(a1, "to nobody", "nobody@example.org") != nil {
		t.Fatal("encrypted for an account without devices")
	}
	if w.send(a1, "to bob and nobody", simBob, "nobody@example.org") != nil {
		t.Fatal("encrypted although one recipient has no devices")
	}
	if c := a1.net.Calls()["SendMessage"]; c != 0 {
		t.Fatalf("%d messages sent", c)
	}

	// A replayed message is a duplicate, not a storage failure; a message
	// over a session the receiver does not have fails with ErrNoSession.
	if _, err := b2.m.Decrypt(ctx, simAlice, res.Messages[0]); !errors.Is(err, backends.ErrDuplicateMessage) || errors.Is(err, session.ErrStorage) {
		t.Fatalf("replayed message: %v, want ErrDuplicateMessage only", err)
	}
	if err := c1.m.PurgeJID(ctx, simAlice); err != nil {
		t.Fatal(err)
	}
	w.send(a1, "to carol", simCarol)
	if err := c1.m.PurgeJID(ctx, simAlice); err != nil {
		t.Fatal(err)
	}
	c1.sess = map[simPeer]int{}
	res, _, err = w.trySend(a1, "to carol without session", simCarol)
	if err != nil {
		t.Fatal(err)
	}
	if q := c1.takeQueue(); len(q) != 1 {
		t.Fatalf("carol got %d stanzas", len(q))
	}
	if _, err := c1.m.Decrypt(ctx, simAlice, res.Messages[0]); !errors.Is(err, session.ErrNoSession) || errors.Is(err, session.ErrStorage) {
		t.Fatalf("message without session: %v, want ErrNoSession only", err)
	}

	// A device without bundle is reported, the others still receive.
	x1 := w.add("x1", xavier, simBoth, simOpts{memory: true})
	x2 := w.add("x2", xavier, simBoth, simOpts{memory: true})
	w.settle()
	for _, ns := range simNamespaces {
		if err := w.srv.Network(xavier).DeleteBundle(ctx, ns, x2.id); err != nil {
			t.Fatal(err)
		}
	}
	y1 := w.add("y1", yves, simBoth, simOpts{memory: true})
	// x3's identity key is known to y1 (its bundle was seen), but its
	// bundle is gone when y1 builds the session.
	x3 := w.add("x3", xavier, simTwo, simOpts{memory: true})
	w.settle()
	if info := w.deviceInfo(y1, x3); !info.HasIdentityKey || info.IdentityKey != x3.ik {
		t.Fatalf("y1's view of x3: %+v", info)
	}
	if err := w.srv.Network(xavier).DeleteBundle(ctx, simNSTwo, x3.id); err != nil {
		t.Fatal(err)
	}
	w.clearLogs()
	res, delivered, err = w.trySend(y1, "to xavier", xavier)
	if err != nil || !delivered {
		t.Fatal(err)
	}
	if got := simRecipients(res.Recipients); !slices.Equal(got, []string{simRecipient(session.Recipient{JID: xavier, DeviceID: x1.id, Namespace: simNSTwo})}) {
		t.Fatalf("recipients %v, want x1 only", got)
	}
	var failed []uint32
	for _, f := range res.Failures {
		if f.JID != xavier || !errors.Is(f, session.ErrBundleNotFound) {
			t.Fatalf("failure %v, want a missing bundle", f)
		}
		if f.DeviceID == x3.id && f.Namespace != simNSTwo {
			t.Fatalf("failure %v without the namespace of the session", f)
		}
		failed = append(failed, f.DeviceID)
	}
	slices.Sort(failed)
	if want := []uint32{min(x2.id, x3.id), max(x2.id, x3.id)}; !slices.Equal(failed, want) {
		t.Fatalf("failures for %v, want x2 and x3 %v", failed, want)
	}
	simNoKeyFor(t, res, x2)
	simNoKeyFor(t, res, x3)
	w.settle()
	if len(x1.log) != 1 || x1.log[0].text != "to xavier" || !x1.log[0].kex || len(x2.log) != 0 || len(x3.log) != 0 {
		t.Fatalf("x1 got %v, x2 got %v, x3 got %v", x1.log, x2.log, x3.log)
	}
	if len(y1.log) != 1 || !y1.log[0].empty || y1.log[0].from != x1 {
		t.Fatalf("y1 got %v, want x1's empty answer", y1.log)
	}
	// Every recipient lacking a bundle: no eligible devices.
	if err := w.srv.Network(xavier).DeleteBundle(ctx, simNSTwo, x1.id); err != nil {
		t.Fatal(err)
	}
	if err := w.srv.Network(xavier).DeleteBundle(ctx, simNSLegacy, x1.id); err != nil {
		t.Fatal(err)
	}
	z1 := w.add("z1", "zoe@example.org", simBoth, simOpts{memory: true})
	w.settle()
	res, delivered, err = w.trySend(z1, "to xavier without bundles", xavier)
	var ne *session.NoEligibleDevicesError
	if !errors.As(err, &ne) || !slices.Equal(ne.JIDs, []string{xavier}) || len(ne.Failures) != 3 || delivered || res != nil {
		t.Fatalf("all bundles missing: %v (%+v), delivered %v", err, ne, delivered)
	}
}

// TestSimulationCloseRightAfterStart closes managers at once after New and
// after a restart: the signed pre key rotation that starts with every
// manager must not report the close as a background failure.
func TestSimulationCloseRightAfterStart(t *testing.T) {
	w := newSimWorld(t)
	for i := range 10 {
		d := w.add(fmt.Sprintf("q%d", i), "quick@example.org", simBoth, simOpts{memory: true})
		d.restart()
		d.close()
	}
}
