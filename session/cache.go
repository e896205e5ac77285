package session

import (
	"hash/maphash"
	"maps"
	"strings"
	"sync"
	"unsafe"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/store"
)

// readCache keeps in memory, across calls, what every Encrypt and Decrypt
// reads: the device records and device information of the accounts
// involved, trust decisions, which sessions exist, and the deserialised
// sessions themselves; and the bundle misses (misses.go). Everything in
// it shares one memory budget (Config.CacheBudget), evicted in least
// recently used order (lru.go), so that a Manager that talked to a million
// devices holds no more than one that talked to a few hundred.
//
// The store stays the only truth. Every transaction that writes records
// the cache holds invalidates them after it ends (committed or not), and
// a value read before an invalidation is never filled in after it: a
// value is filed only under the generation that was current before its
// store read began, and every invalidation starts a new generation
// (generation check). So the cache can only be cold, never stale.
// Eviction keeps it so: it only ever removes entries, and the store
// holds what an evicted entry held, which the next read finds. Only this
// Manager writes the store (the persistent store is locked per process).
//
// Deserialised sessions follow the store differently (see
// Manager.updateLocked): one is kept only while the store holds exactly
// what it was saved as, and is taken out while a transaction uses it.
//
// One mutex guards the budget and every table in it.
type readCache struct {
	mu  sync.Mutex
	lru *lru
	gen uint64
	// jids holds the device records of an account, and its device
	// information once every record has its identity key (nothing left
	// to discover). Levels are evaluated again on every use: a Policy
	// need not be pure.
	jids  *lruTable[string, jidEntry]
	trust *lruTable[trustRef, string] // "\x00": nothing stored
	// sessions holds the storage keys of sessions known to exist, as
	// hashes (seeded per Manager): a collision only makes Encrypt skip a
	// bundle download that it then does inside its retry loop.
	sessions *lruTable[uint64, struct{}]
	seed     maphash.Seed
	// loaded holds deserialised sessions by storage key (guarded by the
	// Manager's mu as well: see Manager.loadSession); an entry whose
	// session is nil holds none (it was taken).
	loaded *lruTable[string, loadedSession]
	// misses holds the bundle misses of each account (misses.go).
	misses *lruTable[string, map[missKey]missEntry]
}

// jidEntry is what the cache holds about one account. Both fields are
// shared: nobody modifies them once they are in the cache.
type jidEntry struct {
	recs map[uint32]deviceRecord
	// infos is set (not nil) when every record has its identity key.
	infos []DeviceInfo
}

type trustRef struct {
	jid string
	ik  [32]byte
}

// loadedSession is a deserialised session and its estimated size.
type loadedSession struct {
	s    backends.Session
	size int64
}

// DefaultCacheBudget is Config.CacheBudget when it is zero.
const DefaultCacheBudget = 16 << 20

// Size estimates of cached values, in bytes, beyond the entry structs and
// map slots that lruTable counts itself. They are deliberately generous:
// the budget bounds the heap, not just the data.
var (
	sizeofRecord = int64(unsafe.Sizeof(deviceRecord{}))
	sizeofInfo   = int64(unsafe.Sizeof(DeviceInfo{}))
)

// recordsSize estimates the memory of a map of device records: its slots
// (a map of n items has up to 16n/7 of them) and what the records point to.
func recordsSize(recs map[uint32]deviceRecord) int64 {
	n := int64(48 + (4+sizeofRecord+1)*mapSlots(int64(len(recs))))
	for _, r := range recs {
		n += allocSize(int64(len(r.Label))) + allocSize(int64(len(r.LabelSignature))) + r.Active.heapSize()
	}
	return n
}

func jidEntrySize(jid string, e jidEntry) int64 {
	n := allocSize(int64(len(jid))) + recordsSize(e.recs)
	if e.infos != nil {
		// The strings of device information are shared with the records
		// and interned (namespace lists, trust level names).
		n += allocSize(int64(cap(e.infos)) * sizeofInfo)
	}
	return n
}

// sessionSize estimates the memory of a deserialised session from the
// length of its serialised form. Measured: a session without skipped
// message keys (about 400 bytes serialised) takes some 600 bytes, and
// each skipped message key about 2.4 times its serialised size.
func sessionSize(key string, raw int) int64 {
	r := int64(raw)
	return allocSize(int64(len(key))) + 256 + r + 5*max(r-512, 0)/2
}

func newReadCache(budget int64) *readCache {
	l := newLRU(budget)
	c := &readCache{lru: l, seed: maphash.MakeSeed()}
	c.jids = newLRUTable(l, jidEntrySize)
	c.trust = newLRUTable(l, func(r trustRef, name string) int64 {
		return allocSize(int64(len(r.jid))) + allocSize(int64(len(name)))
	})
	c.sessions = newLRUTable(l, func(uint64, struct{}) int64 { return 0 })
	c.loaded = newLRUTable(l, func(_ string, s loadedSession) int64 { return s.size })
	c.misses = newLRUTable(l, missesSize)
	return c
}

// generation is taken before reading from the store.
func (c *readCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// used is the estimated memory of everything cached.
func (c *readCache) used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.used
}

// devicesOf returns a copy of the cached device records of jid.
func (c *readCache) devicesOf(jid string) (map[uint32]deviceRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.jids.get(jid)
	if !ok {
		return nil, false
	}
	return maps.Clone(e.recs), true
}

// slimRecords copies records for the cache, without what nothing reads
// from it (label signatures are read from the store where needed).
func slimRecords(recs map[uint32]deviceRecord) map[uint32]deviceRecord {
	out := make(map[uint32]deviceRecord, len(recs))
	for id, r := range recs {
		r.LabelSignature = nil
		out[id] = r
	}
	return out
}

// putDevices caches the device records of jid read from the store at
// generation gen, unless the cache holds them already.
func (c *readCache) putDevices(gen uint64, jid string, recs map[uint32]deviceRecord) {
	slim := slimRecords(recs)
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if _, ok := c.jids.peek(jid); !ok {
		c.jids.put(jid, jidEntry{recs: slim})
	}
}

// devicesAndInfos returns the cached records and device information of
// jid. Both are shared: the caller must not modify them.
func (c *readCache) devicesAndInfos(jid string) (map[uint32]deviceRecord, []DeviceInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.jids.get(jid)
	if !ok || e.infos == nil {
		return nil, nil, false
	}
	return e.recs, e.infos, true
}

// putInfos caches the device information of jid built from recs at
// generation gen; infos must not be modified afterwards.
func (c *readCache) putInfos(gen uint64, jid string, recs map[uint32]deviceRecord, infos []DeviceInfo) {
	slim := slimRecords(recs)
	if infos == nil {
		infos = []DeviceInfo{}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == c.gen {
		c.jids.put(jid, jidEntry{recs: slim, infos: infos})
	}
}

func (c *readCache) trustName(ref trustRef) (name string, stored, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	name, ok = c.trust.get(ref)
	if !ok {
		return "", false, false
	}
	return name, name != "\x00", true
}

func (c *readCache) putTrust(gen uint64, ref trustRef, name string, stored bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if !stored {
		name = "\x00" // no decision stored (the policy default applies)
	}
	c.trust.put(ref, name)
}

func (c *readCache) sessionHash(key string) uint64 { return maphash.String(c.seed, key) }

func (c *readCache) hasSession(key string) bool {
	h := c.sessionHash(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.sessions.get(h)
	return ok
}

func (c *readCache) addSessions(gen uint64, keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	for _, k := range keys {
		c.sessions.put(c.sessionHash(k), struct{}{})
	}
}

// takeSession takes the deserialised session of key out of the cache and
// returns it, if there is one of namespace ns. Its entry stays, empty, so
// that putting the session back (keepSessions) allocates nothing.
func (c *readCache) takeSession(key, ns string) (backends.Session, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.loaded.peek(key)
	if !ok || l.s == nil || l.s.Namespace() != ns {
		return nil, false
	}
	c.loaded.put(key, loadedSession{size: l.size})
	return l.s, true
}

// keepSessions updates the deserialised sessions after a transaction that
// wrote the sessions under keys: those in saved (what the committed
// transaction stored) are kept, the others dropped; with all, every
// session is dropped first (sessions were deleted).
func (c *readCache) keepSessions(all bool, keys []string, saved map[string]loadedSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if all {
		c.loaded.clear()
	}
	for _, k := range keys {
		if s, ok := saved[k]; ok {
			c.loaded.put(k, s)
		} else {
			c.loaded.delete(k)
		}
	}
}

// invalidate drops the cached records a transaction may have changed and
// starts a new generation.
func (c *readCache) invalidate(meta, sessions bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if meta {
		c.jids.clear()
		c.trust.clear()
	}
	if sessions {
		c.sessions.clear()
	}
}

// trackTx notes which kinds of cached records a transaction writes.
type trackTx struct {
	store.Tx
	meta, sessionsGone bool
	newSessions        []string
}

const (
	prefixDevicesAll = "omemo/devices/"
	prefixTrustAll   = "omemo/trust/"
	prefixNS         = "omemo/ns/"
)

// isMetaKey reports keys whose records the device information is built
// from: device records, trust decisions and the own label.
func isMetaKey(k string) bool {
	return strings.HasPrefix(k, prefixDevicesAll) || strings.HasPrefix(k, prefixTrustAll) || k == keyOwnLabel
}

func isSessionKey(k string) bool {
	return strings.HasPrefix(k, prefixNS) && strings.Contains(k, "/sessions/")
}

func (t *trackTx) Put(k string, v []byte) error {
	if isMetaKey(k) {
		t.meta = true
	} else if isSessionKey(k) {
		t.newSessions = append(t.newSessions, k)
	}
	return t.Tx.Put(k, v)
}

func (t *trackTx) Delete(k string) error {
	t.note(k)
	return t.Tx.Delete(k)
}

func (t *trackTx) DeletePrefix(p string) error {
	t.note(p)
	if p == "" || strings.HasPrefix(prefixNS, p) || strings.HasPrefix(prefixDevicesAll, p) || strings.HasPrefix(prefixTrustAll, p) || strings.HasPrefix(keyOwnLabel, p) {
		t.meta, t.sessionsGone = true, true
	}
	return t.Tx.DeletePrefix(p)
}

func (t *trackTx) note(k string) {
	if isMetaKey(k) {
		t.meta = true
	}
	if strings.HasPrefix(k, prefixNS) {
		t.sessionsGone = true
	}
}
