package session

import (
	"context"
	"encoding"
	"encoding/binary"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	omemons "mellium.im/omemo/ns"
	"mellium.im/omemo/store"
)

// Manager is the OMEMO session manager of one account and device.
type Manager struct {
	cfg   Config
	store store.Store
	net   Network
	id    *backends.IdentityKeyPair
	devID uint32

	// mu serialises every state change (and so all work on any peer
	// device): the crypto is microseconds, so one lock keeps ratchets from
	// forking at no measurable cost. Network round trips happen outside it.
	mu       sync.Mutex
	backends map[string]backends.Backend // guarded by mu
	// cache holds, within Config.CacheBudget, what operations read again
	// and again, and the deserialised sessions (cache.go).
	cache *readCache
	// misses defers bundle downloads of devices that had none (misses.go).
	misses *bundleMisses
	// saved collects the sessions a running transaction stores, to be kept
	// in the cache once it commits (guarded by mu).
	saved map[string]loadedSession
	// sessionBuf is where sessions are serialised before the store copies
	// them; it is wiped after each use (guarded by mu).
	sessionBuf []byte
	// acks are inbox entries acknowledged and not deleted yet (guarded by
	// mu; inbox.go).
	acks []uint64
	// inboxNext is the next inbox sequence number as last committed, 0 if
	// unknown (read from the store then); inboxPending is what a running
	// transaction wrote (guarded by mu; inbox.go). Keeping it saves a
	// store read per decryption: a round trip with PostgreSQL.
	inboxNext, inboxPending uint64
	// order holds the loaded namespaces in priority order. It is never
	// modified once stored: PurgeBackend stores a new one (under mu), so
	// that it can be read without the lock.
	order atomic.Pointer[nsOrder]

	// watching holds the pending checks of the own device lists after a
	// publish, by namespace (see watchOwnList; allocated while one is);
	// watchWG counts them.
	watchMu  sync.Mutex
	watching map[string]*ownWatch
	watchWG  sync.WaitGroup

	// graceTimer runs the next sweep of used pre keys (background.go).
	graceMu    sync.Mutex
	graceTimer *time.Timer

	// rotTimer runs the next signed pre key rotation check; rotRetry is
	// the wait before the next retry of a failed one (background.go).
	rotMu    sync.Mutex
	rotTimer *time.Timer
	rotRetry time.Duration

	syncing atomic.Bool // history synchronisation mode
	closed  atomic.Bool
	// work is the Manager's queue of background work on its Scheduler.
	work worker
	stop context.CancelFunc
}

// New opens the session manager of cfg.JID on st, starting the account's
// OMEMO state on the first run. Start-up is idempotent and repairs what a
// failed earlier run left behind: it republishes device lists and bundles
// that are missing or differ, sets up backends added since the last run
// and purges backends removed since. It starts the signed pre key rotation
// checks and the background work, on Config.Scheduler; Close stops them.
// An idle Manager runs no goroutine of its own.
func New(ctx context.Context, st store.Store, net Network, cfg Config) (*Manager, error) {
	c, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if st == nil || net == nil {
		return nil, fmt.Errorf("%w: store and network are required", ErrInvalidConfig)
	}
	cache := newReadCache(c.CacheBudget)
	m := &Manager{cfg: c, store: st, net: boundedNetwork{net, c.NetworkTimeout}, backends: map[string]backends.Backend{}, cache: cache, misses: &bundleMisses{cache},
		saved: map[string]loadedSession{}}
	m.order.Store(sharedNSOrder(c.Backends))
	m.syncing.Store(!c.StartSynced)
	bg, stop := context.WithCancel(context.Background())
	m.stop = stop
	// The queue exists from the start: the checks of the own device lists
	// that the repair starts run on it.
	m.work.init(c.Scheduler, bg, c.OnError)
	fail := func(err error) (*Manager, error) {
		m.closed.Store(true)
		m.shutdown()
		return nil, err
	}

	if err := m.loadOrCreate(ctx); err != nil {
		return fail(err)
	}
	if err := m.repair(ctx); err != nil {
		return fail(err)
	}
	if !m.syncing.Load() {
		m.work.enqueue("settle-queue", m.settleQueue)
	}
	m.work.enqueue("grace-sweep", m.sweepGrace)
	m.scheduleRotation(m.RotateSignedPreKeys(ctx))
	return m, nil
}

// nsOrders holds the namespace orders that Managers start with, by their
// namespaces joined with NULs: the Managers of one program have a few
// configurations at most, and an nsOrder is never modified, so that they
// share it.
var nsOrders struct {
	sync.Mutex
	m map[string]*nsOrder
}

// maxSharedOrders bounds nsOrders; other orders are not shared.
const maxSharedOrders = 64

// sharedNSOrder returns the namespace order of backends fs.
func sharedNSOrder(fs []backends.Factory) *nsOrder {
	var key strings.Builder
	for _, f := range fs {
		key.WriteString(f.Namespace)
		key.WriteByte(0)
	}
	nsOrders.Lock()
	defer nsOrders.Unlock()
	if o, ok := nsOrders.m[key.String()]; ok {
		return o
	}
	order := make([]string, 0, len(fs))
	for _, f := range fs {
		order = append(order, f.Namespace)
	}
	o := newNSOrder(order)
	if len(nsOrders.m) < maxSharedOrders {
		if nsOrders.m == nil {
			nsOrders.m = map[string]*nsOrder{}
		}
		nsOrders.m[key.String()] = o
	}
	return o
}

// Close stops the background work and waits for it: it cancels the
// Manager's pending tasks on its Scheduler and waits for the one running,
// if any. It does not close the store. Calls after Close fail with
// ErrClosed.
//
// Background work not done yet is not lost: the empty replies owed to key
// exchanges and heartbeats are queued in the store and sent at the next
// start, a rotated signed pre key not published yet is published by the
// next rotation check, and a bundle that differs from the published one is
// republished at every start.
func (m *Manager) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	m.shutdown()
	return nil
}

// shutdown stops the background work of a Manager marked closed: its
// timers, its queue (waiting for the running task) and the checks of the
// own device lists.
func (m *Manager) shutdown() {
	m.stop()
	m.graceMu.Lock()
	if m.graceTimer != nil {
		m.graceTimer.Stop()
	}
	m.graceMu.Unlock()
	m.rotMu.Lock()
	if m.rotTimer != nil {
		m.rotTimer.Stop()
	}
	m.rotMu.Unlock()
	m.work.close()
	m.watchMu.Lock()
	for ns, w := range m.watching {
		m.endWatchLocked(ns, w)
	}
	m.watchMu.Unlock()
	m.watchWG.Wait()
}

func (m *Manager) check() error {
	if m.closed.Load() {
		return ErrClosed
	}
	return nil
}

// DeviceID is the own device id.
func (m *Manager) DeviceID() uint32 { return m.devID }

// JID is the own bare JID.
func (m *Manager) JID() string { return m.cfg.JID }

// IdentityKey is the own Ed25519 identity key.
func (m *Manager) IdentityKey() [32]byte { return m.id.PublicKey() }

// Namespaces are the loaded backends' namespaces in priority order.
func (m *Manager) Namespaces() []string { return slices.Clone(m.namespaces()) }

// namespaces returns the loaded namespaces in priority order; the slice is
// shared and must not be modified.
func (m *Manager) namespaces() []string { return m.order.Load().list }

// nsOrder is the loaded namespaces in priority order, with the namespace
// lists of device information that are made of well-known namespaces
// only, so that the device information of thousands of devices shares
// them.
type nsOrder struct {
	list []string
	// lists[seen<<len(wellKnownNS)|on] are the namespaces and the active
	// namespaces of a device whose activity has those bits and no other
	// namespace, in priority order; nil if none.
	lists [1 << (2 * len(wellKnownNS))][2][]string
}

func newNSOrder(list []string) *nsOrder {
	o := &nsOrder{list: list}
	for code := range o.lists {
		seen, on := code>>len(wellKnownNS), code&(1<<len(wellKnownNS)-1)
		if on&^seen != 0 {
			continue // active but not seen: no such activity
		}
		var nss, active []string
		for i, w := range wellKnownNS {
			if seen&(1<<i) != 0 {
				nss = append(nss, w)
			}
			if on&(1<<i) != 0 {
				active = append(active, w)
			}
		}
		// Clipped: an append by a holder of the lists copies them.
		o.lists[code] = [2][]string{slices.Clip(sortByOrder(list, nss)), slices.Clip(sortByOrder(list, active))}
	}
	return o
}

// namespaceLists returns the namespaces of a device and those it is
// active in, in priority order. The slices may be shared: they must not
// be modified.
func (o *nsOrder) namespaceLists(a activity) (nss, active []string) {
	if a.other == nil {
		l := &o.lists[int(a.seen)<<len(wellKnownNS)|int(a.on)]
		return l[0], l[1]
	}
	for ns, on := range a.all() {
		nss = append(nss, ns)
		if on {
			active = append(active, ns)
		}
	}
	return sortByOrder(o.list, nss), sortByOrder(o.list, active)
}

func (m *Manager) backend(ns string) (backends.Backend, error) {
	b, ok := m.backends[ns]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNamespace, ns)
	}
	return b, nil
}

func storageErr(err error) error {
	if err == nil || errors.Is(err, ErrStorage) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrStorage, err)
}

func netErr(what string, err error) error {
	if errors.Is(err, ErrBundleNotFound) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrNetwork, what, err)
}

// update runs f in one store transaction under mu. If the transaction
// fails, the backends' in-memory key state is restored from the store, so
// memory never runs ahead of what was committed.
func (m *Manager) update(ctx context.Context, f func(tx store.Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.updateLocked(ctx, f)
}

func (m *Manager) updateLocked(ctx context.Context, f func(tx store.Tx) error) error {
	gen := m.cache.generation()
	var track *trackTx
	acked := 0
	err := m.store.Update(ctx, func(tx store.Tx) error {
		track = &trackTx{Tx: tx}
		var err error
		if acked, err = m.applyAcksLocked(tx); err != nil {
			return err
		}
		return f(track)
	})
	if err == nil && acked > 0 {
		m.acks = slices.Delete(m.acks, 0, acked)
	}
	switch pending := m.inboxPending; {
	case err != nil || track == nil || track.meta || track.sessionsGone:
		m.inboxNext = 0 // read it again
	case pending != 0:
		m.inboxNext = pending
	}
	m.inboxPending = 0
	if track != nil && (track.meta || track.sessionsGone) {
		m.cache.invalidate(track.meta, track.sessionsGone)
	} else if err == nil && track != nil && len(track.newSessions) > 0 {
		m.cache.addSessions(gen, track.newSessions...)
	}
	// Loaded sessions stay in memory while the store holds exactly what
	// they were saved as: a committed write keeps the object that was
	// saved, anything else about a session key drops it.
	if track != nil && (track.sessionsGone || len(track.newSessions) > 0) {
		saved := m.saved
		if err != nil {
			saved = nil
		}
		m.cache.keepSessions(track.sessionsGone, track.newSessions, saved)
	}
	if len(m.saved) > 64 {
		m.saved = map[string]loadedSession{} // a map does not shrink
	} else {
		clear(m.saved)
	}
	if err != nil {
		if rerr := m.reloadBackendsLocked(context.WithoutCancel(ctx)); rerr != nil {
			m.cfg.OnError(fmt.Errorf("omemo: restoring key state after a failed commit: %w", rerr))
		}
	}
	return err
}

// updateThenSendLocked commits f's changes and only then hands a message
// over with send (which may be nil). A message must never leave before the
// ratchet state that produced it is committed: if the commit failed (or the
// process died) after the message went out, the next message would reuse
// its message key, and the peer would drop it as a duplicate. If send
// fails with ErrNotSent, the committed changes are reverted, so that a
// message that was never handed over leaves no trace; after any other
// error, or should the revert fail too, the state stays advanced, which
// only costs the peer one skipped message key.
//
// It returns the error of the transaction (nothing was sent) and the error
// of send separately. The caller holds mu.
func (m *Manager) updateThenSendLocked(ctx context.Context, f func(tx store.Tx) error, send func() error) (txErr, sendErr error) {
	if send == nil {
		return m.updateLocked(ctx, f), nil
	}
	var undo *undoTx
	if err := m.updateLocked(ctx, func(tx store.Tx) error {
		undo = &undoTx{Tx: tx, old: map[string][]byte{}}
		return f(undo)
	}); err != nil {
		return err, nil
	}
	if sendErr = send(); sendErr == nil || !errors.Is(sendErr, ErrNotSent) {
		// Sent, or perhaps sent: the committed state must stay.
		return nil, sendErr
	}
	err := m.updateLocked(context.WithoutCancel(ctx), func(tx store.Tx) error {
		for k, v := range undo.old {
			var err error
			if v == nil {
				err = tx.Delete(k)
			} else {
				err = tx.Put(k, v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		// The revert may have touched key material: memory follows the store.
		err = m.reloadBackendsLocked(context.WithoutCancel(ctx))
	}
	if err != nil {
		m.cfg.OnError(fmt.Errorf("omemo: reverting state after a failed hand-over: %w", storageErr(err)))
	}
	return nil, sendErr
}

// undoTx records the previous value (nil if absent) of every key a
// transaction writes, so that its changes can be reverted after commit.
type undoTx struct {
	store.Tx
	old map[string][]byte
}

func (u *undoTx) save(key string) error {
	if _, ok := u.old[key]; ok {
		return nil
	}
	v, err := u.Tx.Get(key) // a present value is never nil
	switch {
	case errors.Is(err, store.ErrNotFound):
		u.old[key] = nil
	case err != nil:
		return err
	default:
		u.old[key] = v
	}
	return nil
}

func (u *undoTx) Put(key string, value []byte) error {
	if err := u.save(key); err != nil {
		return err
	}
	return u.Tx.Put(key, value)
}

func (u *undoTx) Delete(key string) error {
	if err := u.save(key); err != nil {
		return err
	}
	return u.Tx.Delete(key)
}

func (u *undoTx) DeletePrefix(prefix string) error {
	if err := u.Tx.Scan(prefix, func(key string, _ []byte) error { return u.save(key) }); err != nil {
		return err
	}
	return u.Tx.DeletePrefix(prefix)
}

// loadSession returns the session stored under key (nil if none), taking
// it from the cache when it is there. A session taken from the cache is
// out of it until saveSession keeps it again, so a failed transaction can
// never leave a modified object behind. The caller holds mu.
func (m *Manager) loadSession(tx store.Tx, be backends.Backend, key string) (backends.Session, error) {
	if s, ok := m.cache.takeSession(key, be.Namespace()); ok {
		return s, nil
	}
	return readSession(tx, be, key)
}

// readSession decodes the session stored under key: nil if there is none,
// an error wrapping errUnreadableSession if its bytes do not decode.
func readSession(tx store.Tx, be backends.Backend, key string) (backends.Session, error) {
	raw, err := tx.Get(key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s, err := be.UnmarshalSession(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnreadableSession, err)
	}
	return s, nil
}

// errUnreadableSession marks stored session bytes that do not decode.
var errUnreadableSession = errors.New("omemo: unreadable stored session")

// saveSession stores a session; the object is kept in memory once the
// transaction commits. The caller holds mu.
func (m *Manager) saveSession(tx store.Tx, key string, s backends.Session) error {
	var raw []byte
	var err error
	if a, ok := s.(encoding.BinaryAppender); ok {
		// Put stores a copy: serialise into one reused buffer.
		raw, err = a.AppendBinary(m.sessionBuf[:0])
		if err == nil {
			m.sessionBuf = raw
			defer clear(raw)
		}
	} else {
		raw, err = s.MarshalBinary()
	}
	if err != nil {
		return err
	}
	if err := tx.Put(key, raw); err != nil {
		return err
	}
	m.saved[key] = loadedSession{s, sessionSize(key, len(raw))}
	return nil
}

func (m *Manager) reloadBackendsLocked(ctx context.Context) error {
	return m.store.View(ctx, func(tx store.Tx) error {
		// Only the loaded backends: a purged one has no keys left.
		for _, f := range m.cfg.Backends {
			if _, loaded := m.backends[f.Namespace]; !loaded {
				continue
			}
			raw, err := tx.Get(keyBackendKeys(f.Namespace))
			if err != nil {
				return err
			}
			b, err := f.New(m.id, raw, m.cfg.backendOptions())
			if err != nil {
				return err
			}
			m.backends[f.Namespace] = b
		}
		return nil
	})
}

// putKeys stores the own key material of a backend.
func putKeys(tx store.Tx, b backends.Backend) error {
	raw, err := b.MarshalKeys()
	if err != nil {
		return err
	}
	return tx.Put(keyBackendKeys(b.Namespace()), raw)
}

// loadOrCreate loads the identity, the device id and the backends' keys,
// creating what is missing in one transaction.
func (m *Manager) loadOrCreate(ctx context.Context) error {
	var haveID, settled bool
	err := m.store.View(ctx, func(tx store.Tx) error {
		raw, err := tx.Get(keyIdentity)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			m.id = new(backends.IdentityKeyPair)
			if err := m.id.UnmarshalBinary(raw); err != nil {
				return err
			}
		}
		raw, err = tx.Get(keyDeviceID)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		case len(raw) != 4:
			return fmt.Errorf("corrupt device id")
		default:
			m.devID = binary.BigEndian.Uint32(raw)
			haveID = true
		}
		if m.id == nil || !haveID {
			return nil
		}
		// Most starts find everything in place: look before writing.
		settled, err = m.loadSettled(tx)
		return err
	})
	if err != nil {
		return storageErr(err)
	}
	if settled {
		return nil
	}

	// A new device id must collide with no device in the own lists.
	var devID uint32
	if !haveID {
		taken := map[uint32]bool{}
		for _, ns := range m.namespaces() {
			l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
			if err != nil {
				return netErr("downloading own device list", err)
			}
			for _, d := range l.Devices {
				taken[d.ID] = true
			}
		}
		for {
			var b [4]byte
			if _, err := m.cfg.Rand.Read(b[:]); err != nil {
				return fmt.Errorf("omemo: drawing device id: %w", err)
			}
			devID = binary.BigEndian.Uint32(b[:]) & MaxDeviceID
			if devID != 0 && !taken[devID] {
				break
			}
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	return storageErr(m.store.Update(ctx, func(tx store.Tx) error {
		if m.id == nil {
			id, err := backends.GenerateIdentityKeyPair(m.cfg.Rand)
			if err != nil {
				return err
			}
			raw, _ := id.MarshalBinary()
			if err := tx.Put(keyIdentity, raw); err != nil {
				return err
			}
			m.id = id
		}
		if !haveID {
			m.devID = devID
			if err := tx.Put(keyDeviceID, binary.BigEndian.AppendUint32(nil, devID)); err != nil {
				return err
			}
			if err := tx.Put(keyOwnLabel, []byte(m.cfg.Label)); err != nil {
				return err
			}
		}
		for _, f := range m.cfg.Backends {
			raw, err := tx.Get(keyBackendKeys(f.Namespace))
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			b, err := f.New(m.id, raw, m.cfg.backendOptions())
			if err != nil {
				return fmt.Errorf("omemo: backend %s: %w", f.Namespace, err)
			}
			if raw == nil {
				if err := putKeys(tx, b); err != nil {
					return err
				}
			}
			m.backends[f.Namespace] = b
		}
		// The own device record lists the loaded namespaces, all active.
		rec, err := getDevice(tx, m.cfg.JID, m.devID)
		if err != nil {
			return err
		}
		rec.IdentityKey = m.id.PublicKey()
		rec.HasIdentityKey = true
		rec.Label = m.ownLabelTx(tx)
		rec.Active = activity{}
		for _, ns := range m.namespaces() {
			rec.Active.set(ns, true)
		}
		if err := putDevice(tx, m.cfg.JID, m.devID, rec); err != nil {
			return err
		}
		if err := m.recordNamespaces(tx); err != nil {
			return err
		}
		return m.indexIdentityOwners(tx)
	}))
}

// loadSettled loads the backends of an account whose identity and device
// id are stored, and reports whether everything else that loadOrCreate
// writes is in place too: the key material of every backend, the own
// device record as loadOrCreate makes it, the record of the namespaces
// and the index of identity owners. Then a start writes nothing; if
// anything is missing or differs, it loads nothing and loadOrCreate
// writes what is due.
func (m *Manager) loadSettled(tx store.Tx) (bool, error) {
	rec, err := getDevice(tx, m.cfg.JID, m.devID)
	if err != nil || !rec.HasIdentityKey || rec.IdentityKey != m.id.PublicKey() || rec.Label != m.ownLabelTx(tx) {
		return false, nil // the write path reports a corrupt record
	}
	nss := m.namespaces()
	n := 0
	for ns, active := range rec.Active.all() {
		if !active || !slices.Contains(nss, ns) {
			return false, nil
		}
		n++
	}
	if n != len(nss) {
		return false, nil
	}
	stored, recorded, err := storedNamespaces(tx)
	if err != nil || !recorded {
		return false, err
	}
	for _, ns := range nss {
		if !slices.Contains(stored, ns) {
			return false, nil
		}
	}
	for _, k := range []string{keyIdentityOwner(m.id.PublicKey()), keyIdentityOwnersIndexed} {
		if _, err := tx.Get(k); errors.Is(err, store.ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
	}
	loaded := make(map[string]backends.Backend, len(m.cfg.Backends))
	for _, f := range m.cfg.Backends {
		raw, err := tx.Get(keyBackendKeys(f.Namespace))
		if errors.Is(err, store.ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		b, err := f.New(m.id, raw, m.cfg.backendOptions())
		if err != nil {
			return false, fmt.Errorf("omemo: backend %s: %w", f.Namespace, err)
		}
		loaded[f.Namespace] = b
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.backends = loaded
	return true, nil
}

func (m *Manager) ownLabelTx(tx store.Tx) string {
	raw, err := tx.Get(keyOwnLabel)
	if err != nil {
		return ""
	}
	return string(raw)
}

// repair brings the published state in line with the local one: the own
// device in every own device list, every bundle as it is locally, and
// backends removed since the last run purged. It runs at every start, and
// reads only the own state: the namespaces that have state are listed in
// one record (see recordNamespaces), not found among the sessions.
func (m *Manager) repair(ctx context.Context) error {
	var stale []string
	err := m.store.View(ctx, func(tx store.Tx) error {
		nss, _, err := storedNamespaces(tx)
		for _, ns := range nss {
			if !slices.Contains(m.namespaces(), ns) {
				stale = append(stale, ns)
			}
		}
		return err
	})
	if err != nil {
		return storageErr(err)
	}
	for _, ns := range stale {
		if err := m.PurgeBackend(ctx, ns); err != nil {
			return err
		}
	}
	for _, ns := range m.namespaces() {
		if err := m.publishOwnDevice(ctx, ns, false); err != nil {
			return err
		}
		if err := m.publishBundleIfChanged(ctx, ns); err != nil {
			return err
		}
	}
	return nil
}

// localBundle returns the own bundle of backend ns as it is now.
func (m *Manager) localBundle(ns string) (bundle.Bundle, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, err := m.backend(ns)
	if err != nil {
		return bundle.Bundle{}, err
	}
	return b.Bundle()
}

// publishBundleIfChanged downloads the own bundle and uploads the local one
// if the download failed or differs.
func (m *Manager) publishBundleIfChanged(ctx context.Context, ns string) error {
	local, err := m.localBundle(ns)
	if err != nil {
		return err
	}
	remote, err := m.net.DownloadBundle(ctx, ns, m.cfg.JID, m.devID)
	if err == nil && bundlesEqual(remote, local) {
		return nil
	}
	return m.uploadBundle(ctx, ns)
}

func (m *Manager) uploadBundle(ctx context.Context, ns string) error {
	local, err := m.localBundle(ns)
	if err != nil {
		return err
	}
	// Loading key material does not recompute the public keys (a checksum
	// guards the stored bytes): check them all before publishing, so that a
	// damaged key is never offered to contacts, whose key exchanges with it
	// would fail.
	if err := m.verifyKeys(ns); err != nil {
		return err
	}
	if err := m.net.UploadBundle(ctx, m.devID, local); err != nil {
		return netErr("uploading bundle", err)
	}
	return nil
}

// verifyKeys runs the complete check of backend ns's own key material, if
// the backend offers one.
func (m *Manager) verifyKeys(ns string) error {
	m.mu.Lock()
	b, err := m.backend(ns)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if v, ok := b.(backends.KeyVerifier); ok {
		if err := v.VerifyKeys(); err != nil {
			return fmt.Errorf("omemo: not publishing the %s bundle: %w", ns, err)
		}
	}
	return nil
}

// bundlesEqual compares two bundles; pre key order does not matter.
func bundlesEqual(a, b bundle.Bundle) bool {
	if a.Namespace != b.Namespace || a.IdentityKey != b.IdentityKey || a.SignedPreKeyID != b.SignedPreKeyID ||
		a.SignedPreKey != b.SignedPreKey || a.SignedPreKeySignature != b.SignedPreKeySignature ||
		len(a.PreKeys) != len(b.PreKeys) {
		return false
	}
	if slices.Equal(a.PreKeys, b.PreKeys) {
		return true // in the same order, as a server returns what was published
	}
	set := make(map[bundle.PreKey]bool, len(a.PreKeys))
	for _, pk := range a.PreKeys {
		set[pk] = true
	}
	for _, pk := range b.PreKeys {
		if !set[pk] {
			return false
		}
	}
	return true
}

// publishOwnDevice downloads the own device list of ns, ingests it, and
// uploads it with the own device (and label) if it is missing or differs,
// or always if force is set.
func (m *Manager) publishOwnDevice(ctx context.Context, ns string, force bool) error {
	l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
	if err != nil {
		return netErr("downloading own device list", err)
	}
	l.Namespace = ns
	if _, err := m.ingest(ctx, ns, m.cfg.JID, l); err != nil {
		return err
	}
	return m.uploadOwnList(ctx, ns, l, force)
}

// uploadOwnList publishes the own device list of ns: l with this device
// in it (labelled), if that changes l or force is set; then it makes sure
// that the device stays listed (confirmOwnListed).
func (m *Manager) uploadOwnList(ctx context.Context, ns string, l devicelist.List, force bool) error {
	published, err := m.publishOwnList(ctx, ns, l, force)
	if err != nil || !published {
		return err
	}
	return m.confirmOwnListed(ctx, ns)
}

// publishOwnList publishes l with this device in it, if that changes l or
// force is set, and reports whether it published.
func (m *Manager) publishOwnList(ctx context.Context, ns string, l devicelist.List, force bool) (bool, error) {
	var label string
	if err := m.store.View(ctx, func(tx store.Tx) error { label = m.ownLabelTx(tx); return nil }); err != nil {
		return false, storageErr(err)
	}
	own := devicelist.Device{ID: m.devID}
	if ns != omemons.Legacy && label != "" {
		own.Label = label
		sig, err := m.id.Sign([]byte(label), m.cfg.Rand)
		if err != nil {
			return false, err
		}
		own.LabelSignature = sig[:]
	}
	changed := force
	found := false
	out := devicelist.List{Namespace: ns}
	for _, d := range l.Devices {
		if d.ID == m.devID {
			found = true
			if d.Label != own.Label {
				changed = true
			}
			if ns != omemons.Legacy && d.Label == own.Label && d.Label != "" {
				own.LabelSignature = d.LabelSignature // keep the published one
			}
			out.Devices = append(out.Devices, own)
			continue
		}
		out.Devices = append(out.Devices, d)
	}
	if !found {
		out.Devices = append(out.Devices, own)
		changed = true
	}
	if !changed {
		return false, nil
	}
	if err := m.net.UploadDeviceList(ctx, out); err != nil {
		return false, netErr("uploading own device list", err)
	}
	return true, nil
}

// Own device list convergence. Devices of one account that publish at the
// same time (they start together) each fetch the list, add themselves and
// publish: the last publish drops the others, and contacts never encrypt
// for a device missing from the list. PEP has no compare-and-swap, and the
// own-list notification that would repair it needs +notify presence, so
// after a publish a device reads the list back and publishes again while
// it is missing, then checks again in the background a few times, in case
// a device that fetched before its publish overwrites it late.
const maxOwnListPublishes = 8

// ownListChecks are the delays of the background checks after a publish.
var ownListChecks = []time.Duration{300 * time.Millisecond, time.Second, 2500 * time.Millisecond}

// testOwnListChecks replaces ownListChecks in tests, if set.
var testOwnListChecks atomic.Pointer[[]time.Duration]

func ownListDelays() []time.Duration {
	if d := testOwnListChecks.Load(); d != nil {
		return *d
	}
	return ownListChecks
}

// confirmOwnListed reads the own list of ns back until it holds this
// device, publishing it again (merged with what the server has) with a
// jittered backoff, then starts the background checks.
func (m *Manager) confirmOwnListed(ctx context.Context, ns string) error {
	if err := m.ensureOwnListed(ctx, ns); err != nil {
		return err
	}
	m.watchOwnList(ns)
	return nil
}

// ensureOwnListed makes sure the published own list of ns holds this
// device, republishing it while it does not.
func (m *Manager) ensureOwnListed(ctx context.Context, ns string) error {
	backoff := 50 * time.Millisecond
	for publishes := 0; ; publishes++ {
		l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
		if err != nil {
			return netErr("reading back own device list", err)
		}
		l.Namespace = ns
		if _, err := m.ingest(ctx, ns, m.cfg.JID, l); err != nil {
			return err
		}
		if slices.ContainsFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == m.devID }) {
			return nil
		}
		if publishes == maxOwnListPublishes {
			return fmt.Errorf("%w: this device is still missing from the own %s device list after %d publishes", ErrNetwork, ns, publishes)
		}
		// Another device published over ours: let the devices publishing
		// at the same time drift apart, then publish on what is there now.
		if err := sleepJittered(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, 2*time.Second)
		if l, err = m.net.DownloadDeviceList(ctx, ns, m.cfg.JID); err != nil {
			return netErr("downloading own device list", err)
		}
		l.Namespace = ns
		if _, err := m.publishOwnList(ctx, ns, l, false); err != nil {
			return err
		}
	}
}

// ownWatch is the state of the checks of an own device list after a
// publish.
type ownWatch struct {
	delays  []time.Duration // ownListChecks
	step    int             // the pending check is after delays[step]
	timer   *time.Timer     // its timer; nil once it fired
	restart bool            // started over while a check was queued or running
}

// watchOwnList checks in the background, after each delay of
// ownListChecks, that this device is still on the own list of ns,
// republishing it if not (and starting the checks over). A watch already
// running for ns starts over instead. The waits are timers and the checks
// tasks of the Manager's queue: a watch holds no goroutine.
func (m *Manager) watchOwnList(ns string) {
	m.watchMu.Lock()
	defer m.watchMu.Unlock()
	if m.closed.Load() {
		return
	}
	if w, ok := m.watching[ns]; ok {
		w.step = 0
		if w.timer != nil && w.timer.Stop() {
			m.armWatchLocked(ns, w)
		} else {
			w.restart = true // the check in progress starts over when done
		}
		return
	}
	w := &ownWatch{delays: ownListDelays()}
	if m.watching == nil {
		m.watching = map[string]*ownWatch{}
	}
	m.watching[ns] = w
	m.watchWG.Add(1)
	m.armWatchLocked(ns, w)
}

// armWatchLocked starts the timer of the next check of w. The caller
// holds watchMu.
func (m *Manager) armWatchLocked(ns string, w *ownWatch) {
	w.timer = time.AfterFunc(jitter(w.delays[w.step]), func() {
		m.watchMu.Lock()
		if m.watching[ns] != w {
			m.watchMu.Unlock()
			return // ended meanwhile
		}
		w.timer = nil
		m.watchMu.Unlock()
		if !m.work.enqueue("watch/"+ns, func(ctx context.Context) error { return m.checkOwnList(ctx, ns, w) }) {
			m.watchMu.Lock()
			m.endWatchLocked(ns, w) // closed, or a full queue
			m.watchMu.Unlock()
		}
	})
}

// endWatchLocked ends the watch w of ns, if it is still the running one.
// The caller holds watchMu.
func (m *Manager) endWatchLocked(ns string, w *ownWatch) {
	if m.watching[ns] != w {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	delete(m.watching, ns)
	if len(m.watching) == 0 {
		m.watching = nil
	}
	m.watchWG.Done()
}

// checkOwnList is the task of one check of the watch w of ns.
func (m *Manager) checkOwnList(ctx context.Context, ns string, w *ownWatch) error {
	republished := false
	purged := !slices.Contains(m.namespaces(), ns)
	if !purged {
		l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
		if err == nil && !slices.ContainsFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == m.devID }) {
			if err := m.ensureOwnListed(ctx, ns); err != nil && ctx.Err() == nil {
				m.cfg.OnError(fmt.Errorf("omemo: keeping this device on the own %s device list: %w", ns, err))
			}
			republished = true
		}
	}
	m.watchMu.Lock()
	defer m.watchMu.Unlock()
	if m.watching[ns] != w {
		return nil
	}
	switch {
	case purged || m.closed.Load():
		m.endWatchLocked(ns, w)
		return nil
	case republished || w.restart:
		w.step, w.restart = 0, false // check again from the start
	default:
		w.step++
	}
	if w.step == len(w.delays) {
		m.endWatchLocked(ns, w)
		return nil
	}
	m.armWatchLocked(ns, w)
	return nil
}

// WaitOwnList waits until the background checks that keep this device on
// the own device lists after a publish are over (a few seconds after the
// last publish), or ctx is done.
func (m *Manager) WaitOwnList(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		m.watchWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// jitter returns d ± 25 %, so that devices that act together drift apart.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + time.Duration(mathrand.Int64N(int64(d)/2+1))
}

func sleepJittered(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(jitter(d))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// keyNamespaces lists the namespaces that have state under "omemo/ns/",
// so that a start finds the backends removed since the last run without
// reading every session. A namespace is added in the transaction that
// creates its state (loadOrCreate) and removed in the one that deletes it
// (PurgeBackend); a store written before the record existed is scanned
// once, at the first start, and the record written then.
const keyNamespaces = "omemo/namespaces"

const namespacesVersion = 1

func marshalNamespaces(nss []string) []byte {
	out := []byte{namespacesVersion}
	for _, ns := range nss {
		out = appendString(out, ns)
	}
	return out
}

func unmarshalNamespaces(b []byte) ([]string, bool) {
	if len(b) < 1 || b[0] != namespacesVersion {
		return nil, false
	}
	b = b[1:]
	var out []string
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return nil, false
		}
		out = append(out, string(b[k:k+int(n)]))
		b = b[k+int(n):]
	}
	return out, true
}

// storedNamespaces returns the namespaces that have state, sorted, and
// whether the store has their record. Without one (a store written before
// it existed, or an unreadable record) they are found by scanning every
// key under "omemo/ns/", sessions included.
func storedNamespaces(tx store.Tx) (nss []string, recorded bool, err error) {
	raw, err := tx.Get(keyNamespaces)
	switch {
	case err == nil:
		if nss, ok := unmarshalNamespaces(raw); ok {
			return nss, true, nil
		}
	case !errors.Is(err, store.ErrNotFound):
		return nil, false, err
	}
	err = tx.Scan(prefixNS, func(key string, _ []byte) error {
		if ns, ok := namespaceOfKey(key); ok && !slices.Contains(nss, ns) {
			nss = append(nss, ns)
		}
		return nil
	})
	slices.Sort(nss)
	return nss, false, err
}

// recordNamespaces adds the loaded namespaces to the record of those that
// have state, writing the record if it is missing (the one-time migration
// of a store written before it existed). It runs in the transaction that
// creates the backends' state.
func (m *Manager) recordNamespaces(tx store.Tx) error {
	nss, recorded, err := storedNamespaces(tx)
	if err != nil {
		return err
	}
	n := len(nss)
	for _, ns := range m.namespaces() {
		if !slices.Contains(nss, ns) {
			nss = append(nss, ns)
		}
	}
	if recorded && len(nss) == n {
		return nil
	}
	slices.Sort(nss)
	return tx.Put(keyNamespaces, marshalNamespaces(nss))
}

// forgetNamespace removes ns from the record of the namespaces that have
// state, in the transaction that deletes its state.
func forgetNamespace(tx store.Tx, ns string) error {
	raw, err := tx.Get(keyNamespaces)
	if errors.Is(err, store.ErrNotFound) {
		return nil // the next start scans
	}
	if err != nil {
		return err
	}
	nss, ok := unmarshalNamespaces(raw)
	if !ok {
		return tx.Delete(keyNamespaces) // unreadable: the next start scans
	}
	i := slices.Index(nss, ns)
	if i < 0 {
		return nil
	}
	return tx.Put(keyNamespaces, marshalNamespaces(slices.Delete(nss, i, i+1)))
}

func namespaceOfKey(key string) (string, bool) {
	const p = "omemo/ns/"
	rest := key[len(p):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == '/' {
			ns, err := unesc(rest[:i])
			return ns, err == nil
		}
	}
	return "", false
}
