package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// Recipient is one device a message was encrypted for.
type Recipient struct {
	JID       string
	DeviceID  uint32
	Namespace string
}

// EncryptResult is an encrypted message: one <encrypted> element per
// backend in use (in priority order), ready to be serialised into one
// stanza, the devices it reaches, and the devices that could not be
// reached (non-fatal failures such as a missing bundle).
type EncryptResult struct {
	Messages   []*encrypted.Encrypted
	Recipients []Recipient
	Failures   []DeviceError
	// Unreached are the recipients none of whose devices could be
	// encrypted for, when AllowUnreached allowed that.
	Unreached []string
}

// EncryptOption changes how Encrypt treats its recipients.
type EncryptOption func(*encryptOptions)

type encryptOptions struct {
	allowUnreached bool
}

// AllowUnreached lets Encrypt go on when some recipients have no device
// that can be encrypted for (no device published, all distrusted or all
// failed): they are named in EncryptResult.Unreached instead of failing
// the whole message. At least one device must still be reached. A group
// chat sender that chose to skip members without OMEMO uses it; by default
// Encrypt fails closed.
func AllowUnreached() EncryptOption {
	return func(o *encryptOptions) { o.allowUnreached = true }
}

// Encrypt encrypts a message for every device of the recipients and of the
// own account (but this device), one backend per device chosen by priority,
// after the trust policy decided on undecided devices. Plaintexts holds the
// plaintext per namespace (OMEMO 2 takes the SCE envelope, legacy OMEMO
// the body); it must cover every loaded backend that may be used.
//
// It fails closed: if the policy leaves a device undecided it returns
// ErrStillUndecided, and if a recipient (other than the own account) has no
// device left it returns a *NoEligibleDevicesError; nothing is encrypted or
// stored then. Per-device failures are collected in the result.
//
// If deliver is not nil it is called with the result while the session
// state is held, after the new ratchet state was committed (a message must
// never be out while the state that produced it is not stored, or its
// message key could be used again). If deliver fails with an error that
// wraps ErrNotSent, the sessions are reverted, so a message that was never
// handed over leaves no trace; after any other error of deliver (the
// message may be out) the ratchet steps stay used, and the recipients
// skip them. deliver must not call back into the Manager.
func (m *Manager) Encrypt(ctx context.Context, to []string, plaintexts map[string][]byte, deliver func(*EncryptResult) error, opts ...EncryptOption) (*EncryptResult, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	var o encryptOptions
	for _, f := range opts {
		f(&o)
	}
	recipients := []string{}
	for _, j := range to {
		if j != "" && j != m.cfg.JID && !slices.Contains(recipients, j) {
			recipients = append(recipients, j)
		}
	}
	all := append(slices.Clone(recipients), m.cfg.JID)

	cache := m.newBundleCache()
	type target struct {
		info DeviceInfo
		ns   string
		key  string // the session's storage key
		have bool   // a session exists
	}
	var targets []target
	var failures []DeviceError
	// Device information of every recipient in one read, identity keys
	// discovered in parallel across recipients.
	results, err := m.devicesOfJIDs(ctx, all, cache)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i, jid := range all {
		r := results[i]
		failures = append(failures, r.failures...)
		for _, d := range r.infos {
			if jid == m.cfg.JID && d.DeviceID == m.devID {
				continue
			}
			ns := ""
			for _, a := range d.Active { // Active is in priority order
				if plaintexts[a] != nil {
					ns = a
					break
				}
			}
			if ns == "" {
				continue
			}
			targets = append(targets, target{info: d, ns: ns, key: keySession(ns, d.JID, d.DeviceID)})
		}
	}

	// Trust gate: decide undecided devices in bulk, then encrypt only for
	// trusted ones.
	var undecided []trust.Device
	for _, t := range targets {
		if t.info.Level == trust.Undecided {
			undecided = append(undecided, t.info.trustDevice())
		}
	}
	if len(undecided) > 0 {
		// The policy sees every known device of the recipients.
		var known []trust.Device
		for i, jid := range all {
			for _, d := range results[i].infos {
				if jid != m.cfg.JID || d.DeviceID != m.devID {
					known = append(known, d.trustDevice())
				}
			}
		}
		decisions, err := m.cfg.Trust.Decide(ctx, undecided, known)
		if err != nil {
			return nil, fmt.Errorf("omemo: trust decision: %w", err)
		}
		if len(decisions) > 0 {
			err := m.update(ctx, func(tx store.Tx) error {
				for k, level := range decisions {
					if _, err := m.cfg.Trust.Evaluate(level); err != nil {
						return fmt.Errorf("%w: %w", ErrUnknownTrustLevel, err)
					}
					if err := tx.Put(keyTrust(k.JID, k.IdentityKey), []byte(level)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return nil, storageErr(err)
			}
		}
		for i := range targets {
			if targets[i].info.Level != trust.Undecided {
				continue
			}
			if level, ok := decisions[targets[i].info.trustDevice().Key()]; ok {
				l, _ := m.cfg.Trust.Evaluate(level)
				targets[i].info.Trust, targets[i].info.Level = level, l
			}
		}
		var still []string
		for _, t := range targets {
			if t.info.Level == trust.Undecided {
				still = append(still, fmt.Sprintf("%s/%d", t.info.JID, t.info.DeviceID))
			}
		}
		if len(still) > 0 {
			return nil, fmt.Errorf("%w: %v", ErrStillUndecided, still)
		}
	}
	trusted := targets[:0]
	for _, t := range targets {
		if t.info.Level == trust.Trusted {
			trusted = append(trusted, t)
		}
	}
	targets = trusted

	// Bundles of the devices we have no session with, fetched in parallel.
	var unknown []int
	for i := range targets {
		if m.cache.hasSession(targets[i].key) {
			targets[i].have = true
		} else {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) > 0 {
		gen := m.cache.generation()
		if err := m.store.View(ctx, func(tx store.Tx) error {
			for _, i := range unknown {
				_, err := tx.Get(targets[i].key)
				if err == nil {
					targets[i].have = true
					m.cache.addSessions(gen, targets[i].key)
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, storageErr(err)
		}
	}
	for _, t := range targets {
		if !t.have {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = cache.get(ctx, m.net, t.ns, t.info.JID, t.info.DeviceID)
			}()
		}
	}
	wg.Wait()

	res := &EncryptResult{}
	// The new ratchet state is committed before the message is handed over
	// (see updateThenSendLocked), and reverted if deliver fails.
	var handOver func() error
	if deliver != nil {
		handOver = func() error { return deliver(res) }
	}
	var deliverErr error
	for attempt := 0; ; attempt++ {
		// Devices whose session vanished since it was looked up (a purge)
		// need their bundle; it is downloaded outside the lock and the
		// transaction runs again.
		var need []target
		m.mu.Lock()
		err, deliverErr = m.updateThenSendLocked(ctx, func(tx store.Tx) error {
			need = need[:0]
			res.Messages, res.Recipients, res.Failures = nil, make([]Recipient, 0, len(targets)), slices.Clone(failures)
			reached := map[string]bool{}
			for _, ns := range m.namespaces() {
				be := m.backends[ns]
				group := make([]target, 0, len(targets))
				for _, t := range targets {
					if t.ns == ns {
						group = append(group, t)
					}
				}
				if len(group) == 0 {
					continue
				}
				content, km, err := be.EncryptPlaintext(plaintexts[ns])
				if err != nil {
					return err
				}
				msg := &encrypted.Encrypted{Namespace: ns, SID: m.devID, IV: content.IV, Payload: content.Ciphertext,
					Keys: make([]encrypted.Key, 0, len(group))}
				for _, t := range group {
					jid, dev := t.info.JID, t.info.DeviceID
					ke, s, err := m.encryptFor(tx, be, cache, ns, jid, dev, t.key, km, t.info.IdentityKey)
					if errors.Is(err, errBundleNeeded) && attempt < maxEncryptAttempts-1 {
						need = append(need, t)
						continue
					}
					if err != nil {
						if isDeviceFailure(err) {
							res.Failures = append(res.Failures, DeviceError{Namespace: ns, JID: jid, DeviceID: dev, Err: err})
							continue
						}
						return err
					}
					if err := m.saveSession(tx, t.key, s); err != nil {
						return err
					}
					msg.Keys = append(msg.Keys, encrypted.Key{JID: jid, RID: dev, KeyExchange: ke.KeyExchange, Data: ke.Data})
					res.Recipients = append(res.Recipients, Recipient{jid, dev, ns})
					reached[jid] = true
				}
				if len(msg.Keys) > 0 {
					res.Messages = append(res.Messages, msg)
				}
			}
			if len(need) > 0 {
				return errBundleNeeded
			}
			var missing []string
			for _, j := range recipients {
				if !reached[j] {
					missing = append(missing, j)
				}
			}
			if len(missing) > 0 && !(o.allowUnreached && len(res.Recipients) > 0) {
				return &NoEligibleDevicesError{JIDs: missing, Failures: res.Failures}
			}
			res.Unreached = missing
			if len(res.Messages) == 0 {
				return &NoEligibleDevicesError{JIDs: []string{m.cfg.JID}, Failures: res.Failures}
			}
			return nil
		}, handOver)
		m.mu.Unlock()
		if !errors.Is(err, errBundleNeeded) || len(need) == 0 {
			break
		}
		var wg sync.WaitGroup
		for _, t := range need {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = cache.get(ctx, m.net, t.ns, t.info.JID, t.info.DeviceID)
			}()
		}
		wg.Wait()
	}
	if err != nil {
		var ne *NoEligibleDevicesError
		if errors.As(err, &ne) {
			return nil, err
		}
		return nil, storageErr(err)
	}
	if deliverErr != nil {
		return nil, fmt.Errorf("omemo: delivering the message: %w", deliverErr)
	}
	return res, nil
}

// maxEncryptAttempts bounds how often Encrypt runs its transaction again
// for devices whose session vanished meanwhile.
const maxEncryptAttempts = 3

// errBundleNeeded reports, inside Encrypt's transaction, a device without
// a session whose bundle was not downloaded: network work never happens
// under the lock.
var errBundleNeeded = errors.New("omemo: bundle needed")

// encryptFor encrypts key material for one device under the lock. The
// session is looked up again here, not trusted from before the lock: a key
// exchange of the device, or another Encrypt, may have created one
// meanwhile, and building a second one would overwrite it (the device's
// next message would then be lost, or both sides end up on different
// sessions). Without a session, an active one is built from the bundle
// downloaded before the lock, which is used only if it carries ik, the
// identity key the trust decision was made on.
func (m *Manager) encryptFor(tx store.Tx, be backends.Backend, cache *bundleCache, ns, jid string, dev uint32, key string, km []byte, ik [32]byte) (backends.KeyElement, backends.Session, error) {
	s, err := m.loadSession(tx, be, key)
	if err != nil {
		return backends.KeyElement{}, nil, err
	}
	if s != nil {
		ke, err := be.EncryptKeyMaterial(s, km)
		return ke, s, err
	}
	b, ok, err := cache.downloaded(ns, jid, dev)
	if !ok {
		return backends.KeyElement{}, nil, errBundleNeeded
	}
	if err != nil {
		return backends.KeyElement{}, nil, err
	}
	if err := m.checkBundleIdentity(be, b, jid, dev, ik); err != nil {
		return backends.KeyElement{}, nil, err
	}
	s, ke, err := be.BuildSessionActive(jid, dev, b, km)
	return ke, s, err
}

// checkBundleIdentity makes sure a downloaded bundle carries the identity
// key stored for the device before a session is built from it (python-omemo
// 1.0 does not compare them). A bundle that may be fetched again at any
// time is no evidence of identity: only the stored key, on which every
// trust decision was made, is.
func (m *Manager) checkBundleIdentity(be backends.Backend, b bundle.Bundle, jid string, dev uint32, stored [32]byte) error {
	published, err := be.BundleIdentityKey(b)
	if err != nil {
		return err
	}
	if published != stored {
		err := &IdentityMismatchError{Namespace: be.Namespace(), JID: jid, DeviceID: dev, Stored: stored, Published: published}
		m.cfg.Logger.Warn("omemo: refusing a bundle whose identity key differs from the stored one",
			"jid", jid, "device", dev, "namespace", be.Namespace())
		return err
	}
	return nil
}

// isDeviceFailure tells failures that exclude one device (its bundle is
// missing, unreachable or unusable) from failures that abort the operation.
func isDeviceFailure(err error) bool {
	return errors.Is(err, ErrNetwork) || errors.Is(err, ErrBundleNotFound) || errors.Is(err, ErrPublicDataInconsistency) ||
		errors.Is(err, backends.ErrKeyExchange) || errors.Is(err, backends.ErrMalformed)
}
