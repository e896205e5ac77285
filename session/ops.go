package session

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/store"
)

// SetOwnLabel sets the label of this device and republishes the own device
// lists (legacy lists carry no labels).
func (m *Manager) SetOwnLabel(ctx context.Context, label string) error {
	if err := m.check(); err != nil {
		return err
	}
	if err := m.update(ctx, func(tx store.Tx) error { return tx.Put(keyOwnLabel, []byte(label)) }); err != nil {
		return storageErr(err)
	}
	for _, ns := range m.namespaces() {
		l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
		if err != nil {
			return netErr("downloading own device list", err)
		}
		l.Namespace = ns
		if err := m.uploadOwnList(ctx, ns, l, true); err != nil {
			return err
		}
	}
	return nil
}

// ClearDeviceList republishes the own device lists with this device only,
// so that other clients stop encrypting for devices that are gone for good.
func (m *Manager) ClearDeviceList(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	for _, ns := range m.namespaces() {
		if err := m.uploadOwnList(ctx, ns, devicelist.List{Namespace: ns}, true); err != nil {
			return err
		}
	}
	return nil
}

// PurgeBackend removes everything of one namespace: the own device from
// its published device list, the own bundle, and all local state (keys and
// sessions). A loaded backend is unloaded. Unsubscribe from the
// namespace's device lists first.
func (m *Manager) PurgeBackend(ctx context.Context, ns string) error {
	if err := m.check(); err != nil {
		return err
	}
	l, err := m.net.DownloadDeviceList(ctx, ns, m.cfg.JID)
	if err != nil {
		return netErr("downloading own device list", err)
	}
	idx := slices.IndexFunc(l.Devices, func(d devicelist.Device) bool { return d.ID == m.devID })
	if idx >= 0 {
		l.Namespace = ns
		l.Devices = slices.Delete(l.Devices, idx, idx+1)
		if err := m.net.UploadDeviceList(ctx, l); err != nil {
			return netErr("uploading own device list", err)
		}
	}
	if err := m.net.DeleteBundle(ctx, ns, m.devID); err != nil {
		return netErr("deleting bundle", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	err = m.updateLocked(ctx, func(tx store.Tx) error {
		if err := tx.DeletePrefix(prefixBackend(ns)); err != nil {
			return err
		}
		if err := forgetNamespace(tx, ns); err != nil {
			return err
		}
		rec, err := getDevice(tx, m.cfg.JID, m.devID)
		if err != nil {
			return err
		}
		rec.Active.remove(ns)
		return putDevice(tx, m.cfg.JID, m.devID, rec)
	})
	if err != nil {
		return storageErr(err)
	}
	if be, ok := m.backends[ns]; ok {
		be.Purge()
		delete(m.backends, ns)
		order := slices.DeleteFunc(slices.Clone(m.namespaces()), func(s string) bool { return s == ns })
		m.order.Store(newNSOrder(order))
	}
	return nil
}

// PurgeJID forgets everything about a bare JID: devices, trust decisions
// and sessions in every namespace. JIDs we know nothing about are fine.
func (m *Manager) PurgeJID(ctx context.Context, jid string) error {
	if err := m.check(); err != nil {
		return err
	}
	if jid == m.cfg.JID {
		return fmt.Errorf("%w: cannot purge the own account", ErrInvalidConfig)
	}
	return storageErr(m.update(ctx, func(tx store.Tx) error {
		if err := tx.DeletePrefix(prefixDevicesOf(jid)); err != nil {
			return err
		}
		if err := tx.DeletePrefix(prefixTrustOf(jid)); err != nil {
			return err
		}
		for _, ns := range m.namespaces() {
			if err := tx.DeletePrefix(prefixSessionsOf(ns, jid)); err != nil {
				return err
			}
		}
		return nil
	}))
}

// SendingChainLength returns, per namespace, how many messages were sent to
// the device since it last answered with a new ratchet key. A large value
// means the device may be stale (gone without being removed).
func (m *Manager) SendingChainLength(ctx context.Context, jid string, dev uint32) (map[string]uint32, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	out := map[string]uint32{}
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.store.View(ctx, func(tx store.Tx) error {
		for _, ns := range m.namespaces() {
			raw, err := tx.Get(keySession(ns, jid, dev))
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			s, err := m.backends[ns].UnmarshalSession(raw)
			if err != nil {
				return err
			}
			out[ns] = s.SendingChainLength()
		}
		return nil
	})
	return out, storageErr(err)
}

// ReplaceSession builds fresh sessions with one device, from freshly
// downloaded bundles, in every namespace in which a session exists, and
// sends an empty message over each so that the device learns the new
// session. Use it when a session is broken. Failures are reported per
// namespace.
func (m *Manager) ReplaceSession(ctx context.Context, jid string, dev uint32) map[string]error {
	out := map[string]error{}
	if err := m.check(); err != nil {
		out[""] = err
		return out
	}
	lengths, err := m.SendingChainLength(ctx, jid, dev)
	if err != nil {
		out[""] = err
		return out
	}
	for ns := range lengths {
		b, err := m.net.DownloadBundle(ctx, ns, jid, dev)
		if err != nil {
			out[ns] = netErr("downloading bundle", err)
			continue
		}
		// The new session is committed before its key exchange leaves, and
		// reverted if sending fails.
		var msg *encrypted.Encrypted
		m.mu.Lock()
		txErr, sendErr := m.updateThenSendLocked(ctx, func(tx store.Tx) error {
			be, err := m.backend(ns)
			if err != nil {
				return err
			}
			// The fresh bundle must carry the identity key on record, the
			// one the trust decision was made on.
			rec, err := getDevice(tx, jid, dev)
			if err != nil {
				return err
			}
			if !rec.HasIdentityKey {
				return fmt.Errorf("%w: identity key of device %d of %s unknown", ErrSenderNotFound, dev, jid)
			}
			if err := m.checkBundleIdentity(be, b, jid, dev, rec.IdentityKey); err != nil {
				return err
			}
			content, km, err := be.EncryptEmpty()
			if err != nil {
				return err
			}
			s, ke, err := be.BuildSessionActive(jid, dev, b, km)
			if err != nil {
				return err
			}
			// The old session stays for the messages the device sends
			// before our key exchange reaches it.
			old, err := tx.Get(keySession(ns, jid, dev))
			switch {
			case err == nil:
				if err := tx.Put(keyPreviousSession(ns, jid, dev), old); err != nil {
					return err
				}
			case !errors.Is(err, store.ErrNotFound):
				return err
			}
			raw, err := s.MarshalBinary()
			if err != nil {
				return err
			}
			if err := tx.Put(keySession(ns, jid, dev), raw); err != nil {
				return err
			}
			msg = &encrypted.Encrypted{Namespace: ns, SID: m.devID, IV: content.IV,
				Keys: []encrypted.Key{{JID: jid, RID: dev, KeyExchange: ke.KeyExchange, Data: ke.Data}}}
			return nil
		}, func() error {
			if err := m.net.SendMessage(ctx, jid, msg); err != nil {
				return netErr("sending empty message", err)
			}
			return nil
		})
		m.mu.Unlock()
		out[ns] = sendErr
		switch {
		case txErr == nil:
		case isMessageError(txErr) || errors.Is(txErr, ErrSenderNotFound):
			// The bundle is unusable (or not the device's): nothing changed.
			out[ns] = fmt.Errorf("omemo: replacing the session with device %d of %s: %w", dev, jid, txErr)
		default:
			out[ns] = storageErr(txErr)
		}
		if out[ns] == nil {
			delete(out, ns)
		}
	}
	return out
}

// Resync checks, on a new connection to the server, what the server holds
// for this device, as New does: each own device list must list it (it is
// published again if not) and each bundle must be the local one (uploaded
// again if not, for example after the server lost its data). Then the
// empty messages still owed to key exchanges, which could not be sent
// while disconnected, are sent in the background.
func (m *Manager) Resync(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	for _, ns := range m.namespaces() {
		if err := m.publishOwnDevice(ctx, ns, false); err != nil {
			return err
		}
		if err := m.publishBundleIfChanged(ctx, ns); err != nil {
			return err
		}
	}
	if !m.syncing.Load() {
		m.work.enqueue("settle-queue", m.settleQueue)
	}
	return nil
}
