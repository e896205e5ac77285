package session

import (
	"maps"
	"strings"
	"sync"

	"mellium.im/omemo/store"
)

// readCache keeps what every Encrypt and Decrypt reads (the device records
// of the accounts involved, trust decisions, which sessions exist) in
// memory. The store stays the only truth: every transaction that writes
// such records invalidates the cache after it ends (committed or not), and
// a value read before an invalidation is never filled in after it
// (generation check), so the cache can only be cold, never stale. Only this
// Manager writes the store (the persistent store is locked per process).
type readCache struct {
	mu      sync.Mutex
	gen     uint64
	devices map[string]map[uint32]deviceRecord
	// infos holds the device information built from devices[jid] when
	// every record has its identity key (nothing left to discover).
	// Levels are evaluated again on every use: a Policy need not be pure.
	infos    map[string][]DeviceInfo
	trust    map[trustRef]string // absent: nothing stored
	sessions map[string]struct{} // storage keys of sessions known to exist
}

type trustRef struct {
	jid string
	ik  [32]byte
}

func newReadCache() *readCache {
	return &readCache{
		devices:  map[string]map[uint32]deviceRecord{},
		infos:    map[string][]DeviceInfo{},
		trust:    map[trustRef]string{},
		sessions: map[string]struct{}{},
	}
}

// generation is taken before reading from the store.
func (c *readCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *readCache) devicesOf(jid string) (map[uint32]deviceRecord, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	recs, ok := c.devices[jid]
	if !ok {
		return nil, false
	}
	return maps.Clone(recs), true
}

func (c *readCache) putDevices(gen uint64, jid string, recs map[uint32]deviceRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == c.gen {
		c.devices[jid] = maps.Clone(recs)
	}
}

// devicesAndInfos returns the cached records and device information of
// jid. Both are shared: the caller must not modify them.
func (c *readCache) devicesAndInfos(jid string) (map[uint32]deviceRecord, []DeviceInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	infos, ok := c.infos[jid]
	if !ok {
		return nil, nil, false
	}
	return c.devices[jid], infos, true
}

// putInfos caches the device information of jid built from recs; recs and
// infos must not be modified afterwards.
func (c *readCache) putInfos(gen uint64, jid string, recs map[uint32]deviceRecord, infos []DeviceInfo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen == c.gen {
		c.devices[jid] = recs
		c.infos[jid] = infos
	}
}

func (c *readCache) trustName(ref trustRef) (name string, stored, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	name, ok = c.trust[ref]
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
	c.trust[ref] = name
}

func (c *readCache) hasSession(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.sessions[key]
	return ok
}

func (c *readCache) addSessions(gen uint64, keys ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	for _, k := range keys {
		c.sessions[k] = struct{}{}
	}
}

// invalidate drops the cached records a transaction may have changed.
func (c *readCache) invalidate(meta, sessions bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if meta {
		clear(c.devices)
		clear(c.infos)
		clear(c.trust)
	}
	if sessions {
		clear(c.sessions)
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
