package session

import (
	"sync"
	"time"
)

// bundleMisses remembers devices whose bundle was not published when last
// asked for, so that a stale device (still listed, long gone) does not cost
// a request, and the sender a round trip, on every message. The first miss
// defers the next attempt by a minute, each further one doubles the wait up
// to an hour, and any change to the account's device list forgets the
// account's misses. Only "not found" counts: network failures are retried
// at once.
type bundleMisses struct {
	mu sync.Mutex
	m  map[bundleRef]missEntry
}

type missEntry struct {
	retry time.Time     // no download before this
	wait  time.Duration // the wait that set retry
}

const (
	firstMissWait = time.Minute
	maxMissWait   = time.Hour
	// maxMisses bounds the memory a hostile device list can take; beyond
	// it everything is forgotten (and retried).
	maxMisses = 10000
)

func newBundleMisses() *bundleMisses { return &bundleMisses{m: map[bundleRef]missEntry{}} }

// deferred reports until when a download of ref is deferred.
func (b *bundleMisses) deferred(ref bundleRef, now time.Time) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[ref]
	if !ok || !now.Before(e.retry) {
		return time.Time{}, false
	}
	return e.retry, true
}

// missed records that ref has no bundle.
func (b *bundleMisses) missed(ref bundleRef, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.m[ref]
	wait := firstMissWait
	if ok {
		wait = min(2*e.wait, maxMissWait)
	} else if len(b.m) >= maxMisses {
		clear(b.m)
	}
	b.m[ref] = missEntry{retry: now.Add(wait), wait: wait}
}

// found forgets ref.
func (b *bundleMisses) found(ref bundleRef) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, ref)
}

// forgetJID forgets every miss of jid's devices.
func (b *bundleMisses) forgetJID(jid string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ref := range b.m {
		if ref.jid == jid {
			delete(b.m, ref)
		}
	}
}
