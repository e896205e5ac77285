package session

import (
	"time"
	"unsafe"
)

// bundleMisses remembers devices whose bundle was not published when last
// asked for, so that a stale device (still listed, long gone) does not cost
// a request, and the sender a round trip, on every message. The first miss
// defers the next attempt by a minute, each further one doubles the wait up
// to an hour, and any change to the account's device list forgets the
// account's misses. Only "not found" counts: network failures are retried
// at once.
//
// The misses are kept per account in the Manager's read cache, within its
// memory budget: a miss that is evicted is forgotten, which costs one
// download attempt, nothing else.
type bundleMisses struct {
	c *readCache
}

// missKey is a device of an account, in the account's misses.
type missKey struct {
	ns string
	id uint32
}

type missEntry struct {
	retry time.Time     // no download before this
	wait  time.Duration // the wait that set retry
}

const (
	firstMissWait = time.Minute
	maxMissWait   = time.Hour
)

// missesSize estimates the memory of an account's misses.
func missesSize(jid string, m map[missKey]missEntry) int64 {
	slot := int64(unsafe.Sizeof(missKey{}) + unsafe.Sizeof(missEntry{}) + 1)
	n := allocSize(int64(len(jid))) + 48 + slot*mapSlots(int64(len(m)))
	for k := range m {
		n += allocSize(int64(len(k.ns)))
	}
	return n
}

// deferred reports until when a download of ref is deferred.
func (b *bundleMisses) deferred(ref bundleRef, now time.Time) (time.Time, bool) {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	m, ok := b.c.misses.get(ref.jid)
	if !ok {
		return time.Time{}, false
	}
	e, ok := m[missKey{ref.ns, ref.id}]
	if !ok || !now.Before(e.retry) {
		return time.Time{}, false
	}
	return e.retry, true
}

// missed records that ref has no bundle.
func (b *bundleMisses) missed(ref bundleRef, now time.Time) {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	m, ok := b.c.misses.get(ref.jid)
	if !ok {
		m = map[missKey]missEntry{}
	}
	k := missKey{ref.ns, ref.id}
	wait := firstMissWait
	if e, ok := m[k]; ok {
		wait = min(2*e.wait, maxMissWait)
	}
	m[k] = missEntry{retry: now.Add(wait), wait: wait}
	b.c.misses.put(ref.jid, m) // the size may have changed
}

// found forgets ref.
func (b *bundleMisses) found(ref bundleRef) {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	m, ok := b.c.misses.peek(ref.jid)
	if !ok {
		return
	}
	k := missKey{ref.ns, ref.id}
	if _, ok := m[k]; !ok {
		return
	}
	if len(m) == 1 {
		b.c.misses.delete(ref.jid)
		return
	}
	// A copy: a map does not shrink.
	m2 := make(map[missKey]missEntry, len(m)-1)
	for mk, e := range m {
		if mk != k {
			m2[mk] = e
		}
	}
	b.c.misses.put(ref.jid, m2)
}

// forgetJID forgets every miss of jid's devices.
func (b *bundleMisses) forgetJID(jid string) {
	b.c.mu.Lock()
	defer b.c.mu.Unlock()
	b.c.misses.delete(jid)
}
