package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/encrypted"
	omemons "mellium.im/omemo/ns"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// Decrypted is a decrypted message.
type Decrypted struct {
	// Plaintext is nil for empty (key transport) messages.
	Plaintext []byte
	Empty     bool
	Namespace string
	// Sender is the sending device. Its Level is Undecided for senders
	// nobody decided on yet: the message is decrypted, and the application
	// should show that it comes from an unverified device. Its Namespaces
	// and Active lists are shared with the Manager: they must not be
	// modified.
	Sender DeviceInfo
	// KeyExchange reports that the message started (or repeated the start
	// of) a session.
	KeyExchange bool
	// InboxSeq is the inbox entry stored with the message (see Keep), 0 if
	// none.
	InboxSeq uint64
}

// Decrypt decrypts a message that from (a bare JID) sent. It rejects
// messages without a key for this device (ErrMessageNotForUs), from unknown
// devices (ErrSenderNotFound, after one device list refresh) and from
// distrusted ones (ErrSenderDistrusted). A key exchange must carry the
// identity key known for the device (ErrPublicDataInconsistency).
//
// State changes are committed only if the message decrypts completely; a
// message that fails leaves every session and key as it was.
//
// A session that a new key exchange (the peer's, or ReplaceSession's)
// replaced is kept as the device's previous session: a message that the
// current session cannot decrypt is tried with it, and if it decrypts, the
// two swap. Messages the peer sent before it learnt of the new session,
// and both sides starting a session at the same time, therefore lose
// nothing (python-omemo drops the old session and with it those messages). After a key
// exchange the used pre key is deleted (hidden in history synchronisation
// mode), pre keys are refilled and the bundle republished, and an empty
// message completes the session; a heartbeat is sent when the receiving
// chain grows past 53 messages. That follow-up work runs in the background.
func (m *Manager) Decrypt(ctx context.Context, from string, msg *encrypted.Encrypted, opts ...DecryptOption) (*Decrypted, error) {
	return m.decrypt(ctx, from, msg, false, opts)
}

// DecryptOffline is Decrypt without network work: if the sending device or
// its identity key is not stored yet, it returns an error matching
// ErrSenderUnresolved instead of fetching the sender's device list and
// bundle. A receiver that must not wait for one sender's lookup (a single
// worker decrypting everyone's messages) calls ResolveSender for that
// message elsewhere and tries again, while it goes on with other senders.
func (m *Manager) DecryptOffline(ctx context.Context, from string, msg *encrypted.Encrypted, opts ...DecryptOption) (*Decrypted, error) {
	return m.decrypt(ctx, from, msg, true, opts)
}

func (m *Manager) decrypt(ctx context.Context, from string, msg *encrypted.Encrypted, offline bool, opts []DecryptOption) (*Decrypted, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	var o decryptOptions
	for _, f := range opts {
		f(&o)
	}
	if msg == nil {
		return nil, fmt.Errorf("%w: no message", backends.ErrMalformed)
	}
	ns := msg.Namespace
	m.mu.Lock()
	be, err := m.backend(ns)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	keys := msg.KeysFor(m.cfg.JID, m.devID)
	if len(keys) == 0 {
		return nil, ErrMessageNotForUs
	}
	key := keys[0]
	if from == m.cfg.JID && msg.SID == m.devID {
		return nil, fmt.Errorf("%w: message claims to come from this device", ErrSenderNotFound)
	}

	// An OMEMO 2 key exchange carries the sender's Ed25519 identity key:
	// a listed device whose key is not stored yet needs no bundle download
	// (legacy key exchanges carry only the Curve25519 form, whose Ed25519
	// sign bit comes from the bundle).
	var kexIK *[32]byte
	if key.KeyExchange && ns == omemons.OMEMO2 {
		kex, _, err := be.ParseKeyExchange(key.Data, false)
		if err != nil {
			return nil, err
		}
		kexIK = &kex.IdentityKey
	}
	sender, err := m.sender(ctx, ns, from, msg.SID, offline, kexIK)
	if err != nil {
		return nil, err
	}
	// learned: the identity key comes from this key exchange; it is stored
	// with the session, once the message decrypted (which proves that the
	// sender holds the key).
	learned := !sender.HasIdentityKey && kexIK != nil
	if learned {
		sender.IdentityKey, sender.HasIdentityKey = *kexIK, true
		if err := m.store.View(ctx, func(tx store.Tx) error {
			sender.Trust, sender.Level, err = m.trustOf(tx, m.cache.generation(), from, *kexIK)
			return err
		}); err != nil {
			return nil, storageErr(err)
		}
	}
	if sender.Level == trust.Distrusted {
		return nil, ErrSenderDistrusted
	}

	out := &Decrypted{Namespace: ns, Sender: sender, KeyExchange: key.KeyExchange, Empty: msg.Payload == nil}
	var usedPreKey, sendEmpty, graced bool
	sessionKey := keySession(ns, from, msg.SID)
	m.mu.Lock()
	defer m.mu.Unlock()
	be = m.backends[ns]
	err = m.updateLocked(ctx, func(tx store.Tx) error {
		usedPreKey, sendEmpty, graced = false, false, false
		existing, err := m.loadSession(tx, be, sessionKey)
		if err != nil {
			if !errors.Is(err, errUnreadableSession) {
				return err
			}
			m.cfg.Logger.Warn("omemo: dropping unreadable session", "jid", from, "device", msg.SID, "err", err)
			existing = nil
		}

		var s backends.Session
		var km []byte
		// replaced is the session s takes the place of, kept as the
		// previous one; promoted reports that the previous session
		// decrypted the message and becomes the current one again.
		var replaced backends.Session
		promoted := false
		if learned {
			rec, err := getDevice(tx, from, msg.SID)
			if err != nil {
				return err
			}
			switch {
			case rec.HasIdentityKey && rec.IdentityKey != sender.IdentityKey:
				return ErrPublicDataInconsistency // learnt meanwhile, and not this one
			case !rec.HasIdentityKey:
				owner, err := claimIdentity(tx, from, sender.IdentityKey)
				if err != nil {
					return err
				}
				if owner != from {
					return fmt.Errorf("%w: %w", ErrSenderNotFound, &IdentityClaimedError{JID: from, DeviceID: msg.SID, Owner: owner, IdentityKey: sender.IdentityKey})
				}
				rec.IdentityKey, rec.HasIdentityKey = sender.IdentityKey, true
				if err := putDevice(tx, from, msg.SID, rec); err != nil {
					return err
				}
			}
		}
		if key.KeyExchange {
			kex, inner, err := be.ParseKeyExchange(key.Data, sender.IdentityKey[31]&0x80 != 0)
			if err != nil {
				return err
			}
			if kex.IdentityKey != sender.IdentityKey {
				return ErrPublicDataInconsistency
			}
			sameAs := func(x backends.Session) bool {
				return x != nil && x.Initiation() == backends.Passive && x.KeyExchange().BuildsSameSession(kex)
			}
			switch {
			case sameAs(existing):
				s = existing
				km, err = be.DecryptKeyMaterial(s, inner)
			default:
				prev, perr := m.loadPreviousSession(tx, be, ns, from, msg.SID)
				if perr != nil {
					return perr
				}
				if sameAs(prev) {
					s, replaced, promoted = prev, existing, true
					km, err = be.DecryptKeyMaterial(s, inner)
					break
				}
				// A new key exchange replaces the session.
				s, km, err = be.BuildSessionPassive(from, msg.SID, kex, inner)
				usedPreKey = err == nil
				replaced = existing
			}
			if err != nil {
				return err
			}
		} else {
			if existing == nil {
				return ErrNoSession
			}
			s = existing
			if km, err = be.DecryptKeyMaterial(s, key.Data); err != nil {
				if errors.Is(err, backends.ErrDuplicateMessage) {
					return err
				}
				// The peer may still be writing on the session a key
				// exchange replaced (both sides started one at once, or
				// ours has not reached it yet).
				prev, perr := m.loadPreviousSession(tx, be, ns, from, msg.SID)
				if perr != nil || prev == nil {
					return err
				}
				pkm, perr := be.DecryptKeyMaterial(prev, key.Data)
				if errors.Is(perr, backends.ErrDuplicateMessage) {
					return perr // decrypted before, through the previous session
				}
				if perr != nil {
					return err
				}
				s, km, replaced, promoted = prev, pkm, existing, true
			}
		}
		if replaced != nil {
			raw, err := replaced.MarshalBinary()
			if err != nil {
				return err
			}
			if err := tx.Put(keyPreviousSession(ns, from, msg.SID), raw); err != nil {
				return err
			}
		}
		if promoted {
			m.cfg.Logger.Debug("omemo: the previous session decrypted the message and is current again", "jid", from, "device", msg.SID)
		}
		if !out.Empty {
			pt, err := be.DecryptPlaintext(backends.Content{Ciphertext: msg.Payload, IV: msg.IV}, km)
			if err != nil {
				return err
			}
			out.Plaintext = pt
		}
		if err := m.saveSession(tx, sessionKey, s); err != nil {
			return err
		}
		if err := m.applyOptions(tx, &o, out); err != nil {
			return err
		}
		if usedPreKey {
			// The used pre key leaves the bundle at once but is deleted only
			// after a grace period (or at the end of history
			// synchronisation): a peer that fetched the bundle before our
			// republished one reached the server may still use it, and its
			// first message would otherwise be lost (unknown pre key).
			removed := be.HidePreKey(s)
			switch {
			case !removed:
			case m.syncing.Load():
				// Until the end of the synchronisation.
				if err := tx.Put(keyGrace(ns, s.KeyExchange().PreKeyID), binary.BigEndian.AppendUint64(nil, 0)); err != nil {
					return err
				}
			case m.cfg.PreKeyGrace > 0:
				if err := tx.Put(keyGrace(ns, s.KeyExchange().PreKeyID), binary.BigEndian.AppendUint64(nil, uint64(m.cfg.Now().Add(m.cfg.PreKeyGrace).Unix()))); err != nil {
					return err
				}
				graced = true
			default:
				be.DeletePreKey(s)
			}
			usedPreKey = removed
			if removed {
				if n := be.NumVisiblePreKeys(); n <= m.cfg.PreKeyRefillThreshold {
					if err := be.GeneratePreKeys(NumPreKeys - n); err != nil {
						return err
					}
				}
				if err := putKeys(tx, be); err != nil {
					return err
				}
			}
		}
		n, ok := s.ReceivingChainLength()
		sendEmpty = key.KeyExchange || ok && n > HeartbeatThreshold
		if !sendEmpty {
			return nil
		}
		// The empty reply is owed from this commit on: it is queued in the
		// store, so that neither Close nor a crash loses it (the next start
		// sends what is left), and sent in the background, or at the end of
		// history synchronisation.
		if m.syncing.Load() {
			sendEmpty = false
		}
		return tx.Put(keyQueue(ns, from, msg.SID), nil)
	})
	if err != nil {
		var ke keepError
		if errors.As(err, &ke) {
			return nil, ke.err
		}
		if isMessageError(err) {
			return nil, err
		}
		return nil, storageErr(err)
	}
	if usedPreKey {
		m.work.enqueue("bundle/"+ns, func(ctx context.Context) error { return m.uploadBundle(ctx, ns) })
	}
	if graced {
		m.scheduleGraceSweep(m.cfg.PreKeyGrace)
	}
	if sendEmpty {
		m.work.enqueue(keyQueue(ns, from, msg.SID), func(ctx context.Context) error {
			return m.sendEmptyLocked(ctx, ns, from, msg.SID, true)
		})
	}
	return out, nil
}

// loadPreviousSession returns the session a key exchange replaced, nil if
// there is none or it is unreadable (it only serves late messages).
func (m *Manager) loadPreviousSession(tx store.Tx, be backends.Backend, ns, jid string, dev uint32) (backends.Session, error) {
	s, err := readSession(tx, be, keyPreviousSession(ns, jid, dev))
	if errors.Is(err, errUnreadableSession) {
		m.cfg.Logger.Warn("omemo: ignoring an unreadable previous session", "jid", jid, "device", dev, "err", err)
		return nil, nil
	}
	return s, err
}

// isMessageError tells errors caused by the message (it is malformed, does
// not authenticate, repeats, or its key exchange is unusable) from failures
// of the store, so that only the latter are reported as ErrStorage.
func isMessageError(err error) bool {
	for _, target := range []error{
		ErrNoSession, ErrPublicDataInconsistency, ErrSenderNotFound,
		backends.ErrMalformed, backends.ErrVersion, backends.ErrAuthentication,
		backends.ErrDecryption, backends.ErrKeyExchange, backends.ErrInvalidKeyMaterial,
		backends.ErrDuplicateMessage, backends.ErrTooManySkipped,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

// sender finds the sending device, refreshing the sender's device list
// once if it is unknown, and makes sure its identity key is known. Offline,
// it only looks at what is stored.
//
// With kexIK (the identity key an OMEMO 2 key exchange carries), a device
// that is listed but whose identity key is not stored is returned without
// one (HasIdentityKey false): the caller takes the key from the key
// exchange.
func (m *Manager) sender(ctx context.Context, ns, jid string, dev uint32, offline bool, kexIK *[32]byte) (DeviceInfo, error) {
	listed := func(recs map[uint32]deviceRecord) (DeviceInfo, bool) {
		rec, ok := recs[dev]
		if !ok || rec.HasIdentityKey || kexIK == nil {
			return DeviceInfo{}, false
		}
		return DeviceInfo{JID: jid, DeviceID: dev}, true
	}
	if offline {
		infos, recs, _, err := m.devicesOffline(ctx, jid)
		if err != nil {
			return DeviceInfo{}, err
		}
		for _, d := range infos {
			if d.DeviceID == dev {
				return d, nil
			}
		}
		if d, ok := listed(recs); ok {
			return d, nil
		}
		return DeviceInfo{}, fmt.Errorf("%w: device %d of %s", ErrSenderUnresolved, dev, jid)
	}
	for attempt := 0; ; attempt++ {
		infos, recs, failures, err := m.devices(ctx, jid, nil)
		if err != nil {
			return DeviceInfo{}, err
		}
		for _, d := range infos {
			if d.DeviceID == dev {
				return d, nil
			}
		}
		if d, ok := listed(recs); ok {
			return d, nil
		}
		for _, f := range failures {
			if f.DeviceID == dev && errors.Is(f.Err, ErrPublicDataInconsistency) {
				return DeviceInfo{}, fmt.Errorf("%w: %w", ErrSenderNotFound, f.Err)
			}
		}
		if attempt > 0 {
			if _, ok := recs[dev]; ok {
				return DeviceInfo{}, fmt.Errorf("%w: identity key of device %d of %s unavailable", ErrSenderNotFound, dev, jid)
			}
			return DeviceInfo{}, fmt.Errorf("%w: device %d of %s", ErrSenderNotFound, dev, jid)
		}
		if err := m.RefreshDeviceList(ctx, ns, jid); err != nil {
			return DeviceInfo{}, fmt.Errorf("%w: %w", ErrSenderNotFound, err)
		}
	}
}

// ResolveSender does the network work that DecryptOffline leaves out for a
// message of device dev of jid in namespace ns: it refreshes jid's device
// list if the device is not known and downloads bundles to learn identity
// keys that are not stored. It returns nil once the device and its
// identity key are stored, else an error matching ErrSenderNotFound.
func (m *Manager) ResolveSender(ctx context.Context, ns, jid string, dev uint32) error {
	if err := m.check(); err != nil {
		return err
	}
	m.mu.Lock()
	_, err := m.backend(ns)
	m.mu.Unlock()
	if err != nil {
		return err
	}
	_, err = m.sender(ctx, ns, jid, dev, false, nil)
	return err
}

// sendEmptyLocked sends an empty message over the device's session and
// commits the advanced ratchet only once it was sent. With dequeue it
// sends only what the queue of owed empty messages holds for the device,
// and removes the entry in the same transaction (nothing is sent twice).
func (m *Manager) sendEmptyLocked(ctx context.Context, ns, jid string, dev uint32, dequeue bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	be, err := m.backend(ns)
	if err != nil {
		return err
	}
	// The advanced ratchet is committed before the message leaves, and
	// reverted (with the queue entry) if it was certainly not sent; if it
	// may have left, the step stays used and the entry queued again.
	var msg *encrypted.Encrypted
	txErr, sendErr := m.updateThenSendLocked(ctx, func(tx store.Tx) error {
		msg = nil
		if dequeue {
			switch _, err := tx.Get(keyQueue(ns, jid, dev)); {
			case errors.Is(err, store.ErrNotFound):
				return nil // sent already
			case err != nil:
				return err
			}
			if err := tx.Delete(keyQueue(ns, jid, dev)); err != nil {
				return err
			}
		}
		raw, err := tx.Get(keySession(ns, jid, dev))
		if errors.Is(err, store.ErrNotFound) {
			return nil // the session is gone (purged); nothing to complete
		}
		if err != nil {
			return err
		}
		s, err := be.UnmarshalSession(raw)
		if err != nil {
			return err
		}
		if msg, err = m.emptyMessage(be, s); err != nil {
			return err
		}
		if raw, err = s.MarshalBinary(); err != nil {
			return err
		}
		return tx.Put(keySession(ns, jid, dev), raw)
	}, func() error {
		if msg == nil {
			return nil
		}
		if err := m.net.SendMessage(ctx, jid, msg); err != nil {
			return netErr("sending empty message", err)
		}
		return nil
	})
	if txErr != nil {
		return storageErr(txErr)
	}
	if sendErr != nil && dequeue && msg != nil && !errors.Is(sendErr, ErrNotSent) {
		// Perhaps sent: the ratchet step stays used, but the reply is
		// still owed (another empty message costs nothing).
		if err := m.updateLocked(context.WithoutCancel(ctx), func(tx store.Tx) error {
			return tx.Put(keyQueue(ns, jid, dev), nil)
		}); err != nil {
			m.cfg.OnError(fmt.Errorf("omemo: keeping an owed empty message queued: %w", storageErr(err)))
		}
	}
	return sendErr
}

func (m *Manager) emptyMessage(be backends.Backend, s backends.Session) (*encrypted.Encrypted, error) {
	content, km, err := be.EncryptEmpty()
	if err != nil {
		return nil, err
	}
	ke, err := be.EncryptKeyMaterial(s, km)
	if err != nil {
		return nil, err
	}
	return &encrypted.Encrypted{
		Namespace: be.Namespace(), SID: m.devID, IV: content.IV,
		Keys: []encrypted.Key{{JID: s.JID(), RID: s.DeviceID(), KeyExchange: ke.KeyExchange, Data: ke.Data}},
	}, nil
}
