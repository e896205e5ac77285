package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/store"
)

// maxPending bounds the background queue; beyond it new work is dropped
// and reported, so a flood of key exchanges cannot grow memory without
// bound.
const maxPending = 10000

// worker runs follow-up network work (bundle uploads, empty messages) one
// task at a time, off the caller's goroutine. Tasks with the same key are
// coalesced while pending.
type worker struct {
	ctx     context.Context
	onError func(error)

	mu      sync.Mutex
	cond    *sync.Cond
	pending []string
	tasks   map[string]func(context.Context) error
	busy    bool
	closed  bool
	done    chan struct{}
}

func newWorker(ctx context.Context, onError func(error)) *worker {
	w := &worker{ctx: ctx, onError: onError, tasks: map[string]func(context.Context) error{}, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	go w.run()
	return w
}

func (w *worker) enqueue(key string, f func(context.Context) error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if _, ok := w.tasks[key]; ok {
		w.tasks[key] = f
		return
	}
	if len(w.pending) >= maxPending {
		w.onError(fmt.Errorf("omemo: background queue full, dropped %s", key))
		return
	}
	w.pending = append(w.pending, key)
	w.tasks[key] = f
	w.cond.Broadcast()
}

func (w *worker) run() {
	defer close(w.done)
	for {
		w.mu.Lock()
		for len(w.pending) == 0 && !w.closed {
			w.cond.Wait()
		}
		if w.closed {
			w.mu.Unlock()
			return
		}
		key := w.pending[0]
		w.pending = w.pending[1:]
		f := w.tasks[key]
		delete(w.tasks, key)
		w.busy = true
		w.mu.Unlock()

		if err := f(w.ctx); err != nil && w.ctx.Err() == nil {
			w.onError(err)
		}

		w.mu.Lock()
		w.busy = false
		w.cond.Broadcast()
		w.mu.Unlock()
	}
}

// idle waits until no work is pending or running, or ctx is done.
func (w *worker) idle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for (len(w.pending) > 0 || w.busy) && !w.closed {
		if err := ctx.Err(); err != nil {
			return err
		}
		w.cond.Wait()
	}
	return nil
}

func (w *worker) close() {
	w.mu.Lock()
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
}

// Flush waits until the background work queued so far (bundle uploads,
// empty messages) is done.
func (m *Manager) Flush(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	return m.work.idle(ctx)
}

// rotation is the result of a rotation check.
type rotation struct {
	next time.Duration
	err  error
}

// rotateLoop rotates signed pre keys when they are due and republishes the
// bundle, retrying failed uploads after 60 s, doubling up to an hour.
//
// The first check runs before New returns (first is its result), so that
// a Manager's rotation state is settled when the application gets it.
func (m *Manager) rotateLoop(ctx context.Context, first rotation) {
	defer close(m.done)
	retry := time.Minute
	for i := 0; ; i++ {
		next, err := first.next, first.err
		if i > 0 {
			next, err = m.RotateSignedPreKeys(ctx)
		}
		wait := next
		if err != nil && (errors.Is(err, ErrClosed) || ctx.Err() != nil) {
			return // closed (possibly before this first run): not a failure
		}
		if err != nil {
			m.cfg.OnError(err)
			wait = retry
			retry = min(2*retry, time.Hour)
		} else {
			retry = time.Minute
			// Wake up a little after the due time, and at least hourly so
			// that a clock change is noticed.
			wait = min(next+time.Minute, time.Hour)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// RotateSignedPreKeys rotates the signed pre key of every backend whose key
// is older than the rotation period, republishes the bundle, and returns
// the time until the next rotation is due. The previous signed pre key is
// kept for one more period.
//
// A rotation and the need to publish it are committed together: a bundle
// upload that fails is retried by every later call (the background loop
// calls again with backoff, and at every start) until it succeeds, and no
// backend rotates again before its last rotation was published, so that
// peers never hold a signed pre key two rotations old.
func (m *Manager) RotateSignedPreKeys(ctx context.Context) (time.Duration, error) {
	if err := m.check(); err != nil {
		return 0, err
	}
	next := m.cfg.SignedPreKeyRotation
	// Most checks find nothing to do: look before writing.
	idle := true
	if err := m.store.View(ctx, func(tx store.Tx) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, ns := range m.namespaces() {
			if _, err := tx.Get(keyUploadPending(ns)); err == nil {
				idle = false
			} else if !errors.Is(err, store.ErrNotFound) {
				return err
			}
			left := m.cfg.SignedPreKeyRotation - m.backends[ns].SignedPreKeyAge()
			if left < 0 {
				idle = false
			}
			next = min(next, max(left, 0))
		}
		return nil
	}); err != nil {
		return 0, storageErr(err)
	}
	if idle {
		return next, nil
	}
	var upload []string
	err := m.update(ctx, func(tx store.Tx) error {
		upload = upload[:0]
		next = m.cfg.SignedPreKeyRotation
		for _, ns := range m.namespaces() {
			be := m.backends[ns]
			switch _, err := tx.Get(keyUploadPending(ns)); {
			case err == nil:
				upload = append(upload, ns)
				continue
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			left := m.cfg.SignedPreKeyRotation - be.SignedPreKeyAge()
			if left >= 0 {
				next = min(next, left)
				continue
			}
			if err := be.RotateSignedPreKey(); err != nil {
				return err
			}
			if err := putKeys(tx, be); err != nil {
				return err
			}
			if err := tx.Put(keyUploadPending(ns), nil); err != nil {
				return err
			}
			upload = append(upload, ns)
		}
		return nil
	})
	if err != nil {
		return 0, storageErr(err)
	}
	var errs []error
	for _, ns := range upload {
		if err := m.uploadBundle(ctx, ns); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.update(ctx, func(tx store.Tx) error { return tx.Delete(keyUploadPending(ns)) }); err != nil {
			errs = append(errs, storageErr(err))
		}
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("omemo: publishing the rotated signed pre key: %w", errors.Join(errs...))
	}
	return next, nil
}

// BeforeHistorySync enters history synchronisation mode, for the catch-up
// on missed messages after login: used pre keys are hidden rather than
// deleted (late key exchanges from the archive still complete), and empty
// replies are queued, one per device, instead of being sent.
func (m *Manager) BeforeHistorySync() { m.syncing.Store(true) }

// InHistorySync reports whether history synchronisation mode is on.
func (m *Manager) InHistorySync() bool { return m.syncing.Load() }

// AfterHistorySync leaves history synchronisation mode: it deletes the
// hidden pre keys and sends the queued empty messages.
func (m *Manager) AfterHistorySync(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	m.syncing.Store(false)
	return m.settleQueue(ctx)
}

// settleQueue deletes hidden pre keys and sends the owed empty messages
// that the store holds. Outside history synchronisation, New runs it in
// the background: after a crash or a Close, neither a pre key hidden
// during an unfinished synchronisation nor an empty reply queued and not
// sent yet is left behind.
func (m *Manager) settleQueue(ctx context.Context) error {
	type queued struct {
		ns, jid string
		dev     uint32
	}
	var q []queued
	err := m.update(ctx, func(tx store.Tx) error {
		q = q[:0]
		for ns, be := range m.backends {
			if err := deleteSyncHidden(tx, ns, be); err != nil {
				return err
			}
		}
		return tx.Scan(prefixQueue, func(key string, _ []byte) error {
			ns, jid, dev, ok := parseQueueKey(key)
			if ok {
				q = append(q, queued{ns, jid, dev})
			}
			return nil
		})
	})
	if err != nil {
		return storageErr(err)
	}
	var errs []error
	for _, e := range q {
		// Each entry leaves the queue in the transaction that sends it.
		if err := m.sendEmptyLocked(ctx, e.ns, e.jid, e.dev, true); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("omemo: sending queued empty messages: %w", errs[0])
	}
	return nil
}

// SweepPreKeys deletes now the used pre keys whose grace period (see
// Config.PreKeyGrace) ended; the Manager does it by itself in the
// background.
func (m *Manager) SweepPreKeys(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	return m.sweepGrace(ctx)
}

// scheduleGraceSweep runs sweepGrace in the background after d.
func (m *Manager) scheduleGraceSweep(d time.Duration) {
	m.graceMu.Lock()
	defer m.graceMu.Unlock()
	if m.graceTimer != nil || m.closed.Load() {
		return
	}
	m.graceTimer = time.AfterFunc(d, func() {
		m.graceMu.Lock()
		m.graceTimer = nil
		m.graceMu.Unlock()
		m.work.enqueue("grace-sweep", m.sweepGrace)
	})
}

// sweepGrace deletes the used pre keys whose grace period ended, and
// schedules itself for the next one.
func (m *Manager) sweepGrace(ctx context.Context) error {
	now := m.cfg.Now().Unix()
	var next int64
	// Most sweeps find nothing due: look before writing.
	due := false
	if err := m.store.View(ctx, func(tx store.Tx) error {
		for _, ns := range m.namespaces() {
			if err := tx.Scan(prefixGrace(ns), func(_ string, v []byte) error {
				if len(v) != 8 {
					due = true
					return nil
				}
				until := int64(binary.BigEndian.Uint64(v))
				switch {
				case until == 0:
				case until <= now:
					due = true
				case next == 0 || until < next:
					next = until
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return storageErr(err)
	}
	if !due {
		if next != 0 {
			m.scheduleGraceSweep(time.Duration(next-now) * time.Second)
		}
		return nil
	}
	err := m.update(ctx, func(tx store.Tx) error {
		next = 0
		for _, ns := range m.namespaces() {
			be := m.backends[ns]
			prefix := prefixGrace(ns)
			type entry struct {
				key string
				id  uint32
			}
			var due []entry
			if err := tx.Scan(prefix, func(key string, v []byte) error {
				id, err := strconv.ParseUint(key[len(prefix):], 10, 32)
				if err != nil || len(v) != 8 {
					due = append(due, entry{key, 0}) // unreadable: drop the record
					return nil
				}
				until := int64(binary.BigEndian.Uint64(v))
				switch {
				case until == 0:
					// Kept until the history synchronisation ends.
				case until <= now:
					due = append(due, entry{key, uint32(id)})
				case next == 0 || until < next:
					next = until
				}
				return nil
			}); err != nil {
				return err
			}
			changed := false
			for _, e := range due {
				if e.id != 0 && be.DeletePreKeyID(e.id) {
					changed = true
				}
				if err := tx.Delete(e.key); err != nil {
					return err
				}
			}
			if changed {
				if err := putKeys(tx, be); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return storageErr(err)
	}
	if next != 0 {
		m.scheduleGraceSweep(time.Duration(next-now) * time.Second)
	}
	return nil
}

// deleteSyncHidden deletes the pre keys hidden by a history
// synchronisation (or by a version without grace records); those in their
// grace period stay.
func deleteSyncHidden(tx store.Tx, ns string, be backends.Backend) error {
	changed := false
	for _, id := range be.HiddenPreKeys() {
		raw, err := tx.Get(keyGrace(ns, id))
		switch {
		case err == nil && len(raw) == 8 && binary.BigEndian.Uint64(raw) != 0:
			continue // in its grace period
		case err != nil && !errors.Is(err, store.ErrNotFound):
			return err
		}
		if be.DeletePreKeyID(id) {
			changed = true
		}
		if err := tx.Delete(keyGrace(ns, id)); err != nil {
			return err
		}
	}
	if changed {
		return putKeys(tx, be)
	}
	return nil
}
