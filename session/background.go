package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/store"
)

// Flush waits until the background work queued so far (bundle uploads,
// empty messages, and the timed checks that are due) is done. Timed work
// that is not due yet is not waited for (see WaitOwnList for the checks
// of the own device lists).
func (m *Manager) Flush(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	return m.work.idle(ctx)
}

// scheduleRotation arms the next rotation check after one that returned
// next and err: a little after the next rotation is due, and at least
// about hourly so that a clock change is noticed; after a failure, retry
// after 60 s, doubling up to an hour. Failures are reported to OnError,
// except those of a closed Manager. The checks run as tasks of the
// Manager's queue on its Scheduler, which hold no goroutine while they
// wait.
//
// The first check runs before New returns, so that a Manager's rotation
// state is settled when the application gets it.
func (m *Manager) scheduleRotation(next time.Duration, err error) {
	if err != nil && (errors.Is(err, ErrClosed) || m.work.ctx.Err() != nil) {
		return // closed (possibly during the check): not a failure
	}
	if err != nil {
		m.cfg.OnError(err)
	}
	m.rotMu.Lock()
	defer m.rotMu.Unlock()
	if m.closed.Load() {
		return
	}
	var wait time.Duration
	if err != nil {
		wait = max(m.rotRetry, time.Minute)
		m.rotRetry = min(2*wait, time.Hour)
	} else {
		m.rotRetry = 0
		// The hourly check is jittered, so that the checks of accounts
		// started together spread out.
		wait = min(next+time.Minute, jitter(time.Hour))
	}
	if m.rotTimer == nil {
		m.rotTimer = m.work.after(wait, "rotate", m.rotationCheck)
	} else {
		m.rotTimer.Reset(wait)
	}
}

// rotationCheck is the task of a timed rotation check.
func (m *Manager) rotationCheck(ctx context.Context) error {
	m.scheduleRotation(m.RotateSignedPreKeys(ctx))
	return nil
}

// RotateSignedPreKeys rotates the signed pre key of every backend whose key
// is older than the rotation period, republishes the bundle, and returns
// the time until the next rotation is due. The previous signed pre key is
// kept for one more period.
//
// A rotation and the need to publish it are committed together: a bundle
// upload that fails is retried by every later call (the background checks
// call again with backoff, and at every start) until it succeeds, and no
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
	// Most starts find nothing to settle: look before writing.
	m.mu.Lock()
	hidden := false
	for _, be := range m.backends {
		hidden = hidden || len(be.HiddenPreKeys()) > 0
	}
	m.mu.Unlock()
	if !hidden {
		queued := false
		if err := m.store.View(ctx, func(tx store.Tx) error {
			return tx.Scan(prefixQueue, func(string, []byte) error {
				queued = true
				return store.ErrStopScan
			})
		}); err != nil {
			return storageErr(err)
		}
		if !queued {
			return nil
		}
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
