package session

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	omemons "mellium.im/omemo/ns"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

func getDevice(tx store.Tx, jid string, dev uint32) (deviceRecord, error) {
	raw, err := tx.Get(keyDevice(jid, dev))
	if errors.Is(err, store.ErrNotFound) {
		return deviceRecord{}, nil
	}
	if err != nil {
		return deviceRecord{}, err
	}
	return unmarshalRecord(raw)
}

func putDevice(tx store.Tx, jid string, dev uint32, rec deviceRecord) error {
	return tx.Put(keyDevice(jid, dev), rec.marshal())
}

// devicesOf lists the stored devices of a JID, by id.
func devicesOf(tx store.Tx, jid string) (map[uint32]deviceRecord, error) {
	out := map[uint32]deviceRecord{}
	prefix := prefixDevicesOf(jid)
	err := tx.Scan(prefix, func(key string, raw []byte) error {
		id, err := strconv.ParseUint(key[len(prefix):], 10, 32)
		if err != nil {
			return nil
		}
		rec, err := unmarshalRecord(raw)
		if err != nil {
			return err
		}
		out[uint32(id)] = rec
		return nil
	})
	return out, err
}

// UpdateDeviceList ingests a device list of jid, as received in a PEP
// notification. New devices are recorded, devices missing from the list
// become inactive in that namespace (they are never forgotten), labels are
// updated. If the list is the own one and lacks this device, the device is
// added back and the list republished.
func (m *Manager) UpdateDeviceList(ctx context.Context, jid string, l devicelist.List) error {
	if err := m.check(); err != nil {
		return err
	}
	ownMissing, err := m.ingest(ctx, l.Namespace, jid, l)
	if err != nil {
		return err
	}
	if ownMissing {
		return m.uploadOwnList(ctx, l.Namespace, l, true)
	}
	return nil
}

// RefreshDeviceList downloads and ingests the device list of jid in ns.
func (m *Manager) RefreshDeviceList(ctx context.Context, ns, jid string) error {
	if err := m.check(); err != nil {
		return err
	}
	l, err := m.net.DownloadDeviceList(ctx, ns, jid)
	if err != nil {
		return netErr("downloading device list of "+jid, err)
	}
	l.Namespace = ns
	return m.UpdateDeviceList(ctx, jid, l)
}

// RefreshDeviceListAfterRetraction fetches the device list of jid in ns
// again after a notification that it was retracted, purged or deleted. A
// retraction says nothing about the devices, so nothing is assumed: a
// contact's list becomes what the server serves now. The own list is never
// shrunk because of one: if the fetched list lacks this device or another
// own device known to be active, those are put back and the list is
// republished.
func (m *Manager) RefreshDeviceListAfterRetraction(ctx context.Context, ns, jid string) error {
	if jid != m.cfg.JID {
		return m.RefreshDeviceList(ctx, ns, jid)
	}
	if err := m.check(); err != nil {
		return err
	}
	l, err := m.net.DownloadDeviceList(ctx, ns, jid)
	if err != nil {
		return netErr("downloading own device list", err)
	}
	l.Namespace = ns
	var known map[uint32]deviceRecord
	if err := m.store.View(ctx, func(tx store.Tx) error {
		known, err = devicesOf(tx, jid)
		return err
	}); err != nil {
		return storageErr(err)
	}
	listed := map[uint32]bool{}
	for _, d := range l.Devices {
		listed[d.ID] = true
	}
	ids := make([]uint32, 0, len(known))
	for id, rec := range known {
		if rec.Active.active(ns) && !listed[id] && id != m.devID {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		d := devicelist.Device{ID: id}
		if rec := known[id]; ns != omemons.Legacy {
			d.Label, d.LabelSignature = rec.Label, rec.LabelSignature
		}
		l.Devices = append(l.Devices, d)
	}
	if _, err := m.ingest(ctx, ns, jid, l); err != nil {
		return err
	}
	return m.uploadOwnList(ctx, ns, l, len(ids) > 0)
}

// RefreshDeviceLists refreshes the device lists of jid in every namespace.
// The lists are downloaded in parallel, so that this costs one round trip.
// A list the server refuses to show (devicelist.ErrAccessDenied) leaves
// that namespace's devices as they are; it is an error only if no
// namespace's list could be read.
func (m *Manager) RefreshDeviceLists(ctx context.Context, jid string) error {
	if err := m.check(); err != nil {
		return err
	}
	nss := m.Namespaces()
	lists := make([]devicelist.List, len(nss))
	errs := make([]error, len(nss))
	var wg sync.WaitGroup
	for i, ns := range nss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := m.net.DownloadDeviceList(ctx, ns, jid)
			if err != nil {
				errs[i] = netErr("downloading device list of "+jid, err)
				return
			}
			l.Namespace = ns
			lists[i] = l
		}()
	}
	wg.Wait()
	read := false
	for i := range nss {
		if errs[i] == nil {
			errs[i] = m.UpdateDeviceList(ctx, jid, lists[i])
			read = read || errs[i] == nil
		}
	}
	if read {
		// Prosody answers forbidden, to an account without a presence
		// subscription, for a node that does not exist: when another
		// namespace's list of jid could be read, a refusal is most likely
		// that, not a restriction. The devices of that namespace stay as
		// they are either way.
		for i, err := range errs {
			if errors.Is(err, devicelist.ErrAccessDenied) {
				m.cfg.Logger.Debug("omemo: device list refused, another namespace's was read", "jid", jid, "namespace", nss[i])
				errs[i] = nil
			}
		}
	}
	return errors.Join(errs...)
}

// ingest applies a device list in one transaction. It reports whether the
// list is the own one and lacks this device.
func (m *Manager) ingest(ctx context.Context, ns, jid string, l devicelist.List) (ownMissing bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.backend(ns); err != nil {
		return false, err
	}
	listChanged := false
	err = m.updateLocked(ctx, func(tx store.Tx) error {
		listChanged = false
		known, err := devicesOf(tx, jid)
		if err != nil {
			return err
		}
		listed := map[uint32]devicelist.Device{}
		for _, d := range l.Devices {
			listed[d.ID] = d
		}
		ownMissing = jid == m.cfg.JID
		for id, d := range listed {
			if jid == m.cfg.JID && id == m.devID {
				ownMissing = false
				continue // the own record is kept by the manager itself
			}
			rec, ok := known[id]
			changed := !ok || !rec.Active.active(ns)
			rec.Active.set(ns, true)
			// An absent label means "no label support", not "cleared".
			if d.Label != "" && (d.Label != rec.Label || string(d.LabelSignature) != string(rec.LabelSignature)) {
				rec.Label, rec.LabelSignature = d.Label, d.LabelSignature
				changed = true
			}
			if changed {
				listChanged = true
				if err := putDevice(tx, jid, id, rec); err != nil {
					return err
				}
			}
		}
		for id, rec := range known {
			if _, ok := listed[id]; ok || (jid == m.cfg.JID && id == m.devID) {
				continue
			}
			if rec.Active.active(ns) {
				rec.Active.set(ns, false)
				listChanged = true
				if err := putDevice(tx, jid, id, rec); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err == nil && listChanged {
		// A device that appeared or came back may have published a
		// bundle since it was last missed.
		m.misses.forgetJID(jid)
	}
	return ownMissing, storageErr(err)
}

// DeviceInfo describes a device of an account.
type DeviceInfo struct {
	JID      string
	DeviceID uint32
	// Label is the device's label, shown only if its signature verifies
	// with the identity key (XEP-0384 0.9) or the device is our own.
	Label string
	// IdentityKey is the Ed25519 identity key (zero if not known yet).
	IdentityKey    [32]byte
	HasIdentityKey bool
	// Trust is the custom trust level name, Level its core meaning.
	Trust string
	Level trust.Level
	// Namespaces are the backends the device was seen with, in priority
	// order; Active those it currently lists it in.
	Namespaces []string
	Active     []string
}

// Fingerprint is the identity key in the usual form: Curve25519, lowercase
// hex, 8 groups of 8 digits.
func (d DeviceInfo) Fingerprint() string {
	if !d.HasIdentityKey {
		return ""
	}
	fp, err := backends.Fingerprint(d.IdentityKey)
	if err != nil {
		return ""
	}
	return fp
}

func (d DeviceInfo) trustDevice() trust.Device {
	return trust.Device{JID: d.JID, DeviceID: d.DeviceID, IdentityKey: d.IdentityKey, Label: d.Label, Level: d.Trust}
}

// sortNamespaces orders namespaces by backend priority; unknown ones last.
func (m *Manager) sortNamespaces(nss []string) []string {
	return sortByOrder(m.namespaces(), nss)
}

// sortByOrder orders namespaces as in order; those not in it last, by name.
func sortByOrder(order, nss []string) []string {
	slices.SortStableFunc(nss, func(a, b string) int {
		ia, ib := slices.Index(order, a), slices.Index(order, b)
		if ia < 0 {
			ia = len(order)
		}
		if ib < 0 {
			ib = len(order)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	return nss
}

// info builds the device information of a record read in tx. gen is the
// cache generation taken before tx began (see trustOf).
func (m *Manager) info(tx store.Tx, gen uint64, jid string, id uint32, rec deviceRecord) (DeviceInfo, error) {
	d := DeviceInfo{JID: jid, DeviceID: id, IdentityKey: rec.IdentityKey, HasIdentityKey: rec.HasIdentityKey}
	// Shared lists (see Devices): the cached information of thousands of
	// devices holds the same few.
	d.Namespaces, d.Active = m.order.Load().namespaceLists(rec.Active)
	own := jid == m.cfg.JID && id == m.devID
	if rec.LabelVerified {
		d.Label = rec.Label
	}
	if own {
		d.Label = m.ownLabelTx(tx)
	}
	if !rec.HasIdentityKey {
		return d, nil
	}
	name, level, err := m.trustOf(tx, gen, jid, rec.IdentityKey)
	d.Trust, d.Level = name, level
	return d, err
}

// trustOf returns the trust of an identity key of jid, from the cache or
// read in tx. gen must be the cache generation taken before tx began: a
// value read in tx is filed under it, so that a decision committed after
// tx's snapshot was taken (which bumps the generation) is never hidden by
// the older value tx still sees.
func (m *Manager) trustOf(tx store.Tx, gen uint64, jid string, ik [32]byte) (string, trust.Level, error) {
	name := m.cfg.Trust.Default()
	ref := trustRef{jid, ik}
	if cached, stored, ok := m.cache.trustName(ref); ok {
		if stored {
			name = cached
		}
	} else {
		raw, err := tx.Get(keyTrust(jid, ik))
		switch {
		case err == nil:
			name = internLevel(raw)
			m.cache.putTrust(gen, ref, name, true)
		case errors.Is(err, store.ErrNotFound):
			m.cache.putTrust(gen, ref, "", false)
		default:
			return "", 0, storageErr(err)
		}
	}
	level, err := m.cfg.Trust.Evaluate(name)
	if err != nil {
		return name, trust.Undecided, fmt.Errorf("%w: %w", ErrUnknownTrustLevel, err)
	}
	return name, level, nil
}

// internLevel returns a stored trust level name, without a copy of its
// own for the levels of package trust: cached device information holds
// one for each device.
func internLevel(raw []byte) string {
	for _, l := range [...]string{trust.LevelBlindlyTrusted, trust.LevelTrusted, trust.LevelDistrusted,
		trust.LevelUndecided, trust.LevelFirstUse} {
		if string(raw) == l {
			return l
		}
	}
	return string(raw)
}

// Devices returns every known device of jid, active or not. Identity keys
// that are not known yet are discovered by downloading the device's bundle
// (the bundles are kept for building sessions); devices whose identity key
// cannot be obtained are left out.
func (m *Manager) Devices(ctx context.Context, jid string) ([]DeviceInfo, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	infos, _, _, err := m.devices(ctx, jid, nil)
	// The namespace lists may be shared with the read cache, and with
	// other devices' information.
	for i := range infos {
		infos[i].Namespaces = slices.Clone(infos[i].Namespaces)
		infos[i].Active = slices.Clone(infos[i].Active)
	}
	return infos, err
}

// OwnDevices returns this device and the account's other devices.
func (m *Manager) OwnDevices(ctx context.Context) (DeviceInfo, []DeviceInfo, error) {
	all, err := m.Devices(ctx, m.cfg.JID)
	if err != nil {
		return DeviceInfo{}, nil, err
	}
	var self DeviceInfo
	var others []DeviceInfo
	for _, d := range all {
		if d.DeviceID == m.devID {
			self = d
		} else {
			others = append(others, d)
		}
	}
	return self, others, nil
}

// devices returns the device information of jid, discovering unknown
// identity keys through bundles (in parallel). The bundles it downloaded
// are added to cache; failures are returned per device.
func (m *Manager) devices(ctx context.Context, jid string, cache *bundleCache) ([]DeviceInfo, map[uint32]deviceRecord, []DeviceError, error) {
	all, err := m.devicesOfJIDs(ctx, []string{jid}, cache)
	if err != nil {
		return nil, nil, nil, err
	}
	return all[0].infos, all[0].recs, all[0].failures, nil
}

// claimIdentity records jid as the owner of ik unless another account
// announced it first, and returns the owner.
func claimIdentity(tx store.Tx, jid string, ik [32]byte) (string, error) {
	raw, err := tx.Get(keyIdentityOwner(ik))
	switch {
	case err == nil:
		return string(raw), nil
	case !errors.Is(err, store.ErrNotFound):
		return "", err
	}
	return jid, tx.Put(keyIdentityOwner(ik), []byte(jid))
}

// indexIdentityOwners collects the owners of the identity keys stored
// before the index existed (once per store), the own key first.
func (m *Manager) indexIdentityOwners(tx store.Tx) error {
	if _, err := claimIdentity(tx, m.cfg.JID, m.id.PublicKey()); err != nil {
		return err
	}
	if _, err := tx.Get(keyIdentityOwnersIndexed); err == nil {
		return nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	type claim struct {
		jid string
		ik  [32]byte
	}
	var claims []claim
	if err := tx.Scan("omemo/devices/", func(key string, raw []byte) error {
		jid, ok := parseDeviceKey(key)
		if !ok {
			return nil
		}
		rec, err := unmarshalRecord(raw)
		if err != nil || !rec.HasIdentityKey {
			return nil
		}
		claims = append(claims, claim{jid, rec.IdentityKey})
		return nil
	}); err != nil {
		return err
	}
	for _, c := range claims {
		if _, err := claimIdentity(tx, c.jid, c.ik); err != nil {
			return err
		}
	}
	return tx.Put(keyIdentityOwnersIndexed, []byte{1})
}

// devicesOffline is devices without network work: devices whose identity
// key is not stored are left out.
func (m *Manager) devicesOffline(ctx context.Context, jid string) ([]DeviceInfo, map[uint32]deviceRecord, []DeviceError, error) {
	cache := m.newBundleCache()
	cache.offline = true
	return m.devices(ctx, jid, cache)
}

// jidDevices is what devicesOfJIDs finds about one account. Its fields may
// be shared with the read cache: they are read-only.
type jidDevices struct {
	infos    []DeviceInfo
	recs     map[uint32]deviceRecord
	failures []DeviceError
}

// devicesOfJIDs returns the device information of several accounts with
// one read transaction, discovering unknown identity keys through bundles
// in parallel (one write transaction stores what was found). The bundles
// downloaded are kept in cache.
func (m *Manager) devicesOfJIDs(ctx context.Context, jids []string, cache *bundleCache) ([]jidDevices, error) {
	if out, ok := m.cachedDevicesOfJIDs(jids); ok {
		return out, nil
	}
	out := make([]jidDevices, len(jids))
	gen := m.cache.generation()
	var missing []int
	for i, jid := range jids {
		if recs, ok := m.cache.devicesOf(jid); ok {
			out[i].recs = recs
		} else {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		if err := m.store.View(ctx, func(tx store.Tx) error {
			for _, i := range missing {
				recs, err := devicesOf(tx, jids[i])
				if err != nil {
					return err
				}
				out[i].recs = recs
				m.cache.putDevices(gen, jids[i], recs)
			}
			return nil
		}); err != nil {
			return nil, storageErr(err)
		}
	}
	if cache == nil {
		cache = m.newBundleCache()
	}

	// Discover missing identity keys.
	type ref struct {
		i  int
		id uint32
	}
	var bes map[string]backends.Backend
	var wg sync.WaitGroup
	var mu sync.Mutex
	found := map[ref][32]byte{}
	for i, jid := range jids {
		for id, rec := range out[i].recs {
			if rec.HasIdentityKey || cache.offline {
				continue
			}
			if bes == nil {
				bes = m.snapshotBackends()
			}
			nss := []string{}
			for ns := range rec.Active.all() {
				if _, ok := bes[ns]; ok {
					nss = append(nss, ns)
				}
			}
			m.sortNamespaces(nss)
			wg.Add(1)
			go func() {
				defer wg.Done()
				var lastErr error = ErrBundleNotFound
				for _, ns := range nss {
					b, err := cache.get(ctx, m.net, ns, jid, id)
					if err != nil {
						lastErr = err
						continue
					}
					ik, err := bes[ns].BundleIdentityKey(b)
					if err != nil {
						lastErr = err
						continue
					}
					mu.Lock()
					found[ref{i, id}] = ik
					mu.Unlock()
					return
				}
				mu.Lock()
				out[i].failures = append(out[i].failures, DeviceError{JID: jid, DeviceID: id, Err: lastErr})
				mu.Unlock()
			}()
		}
	}
	wg.Wait()

	build := func(tx store.Tx) error {
		for r, ik := range found {
			jid := jids[r.i]
			rec, err := getDevice(tx, jid, r.id)
			if err != nil {
				return err
			}
			if !rec.HasIdentityKey {
				if owner, err := claimIdentity(tx, jid, ik); err != nil {
					return err
				} else if owner != jid {
					claimed := &IdentityClaimedError{JID: jid, DeviceID: r.id, Owner: owner, IdentityKey: ik}
					m.cfg.Logger.Warn("omemo: a device announces another account's identity key", "jid", jid, "device", r.id, "owner", owner)
					out[r.i].failures = append(out[r.i].failures, DeviceError{JID: jid, DeviceID: r.id, Err: claimed})
					continue
				}
				rec.IdentityKey, rec.HasIdentityKey = ik, true
				if err := putDevice(tx, jid, r.id, rec); err != nil {
					return err
				}
			}
			old := out[r.i].recs[r.id]
			old.IdentityKey, old.HasIdentityKey = rec.IdentityKey, true
			old.LabelVerified = rec.LabelVerified
			out[r.i].recs[r.id] = old
		}
		for i, jid := range jids {
			recs := out[i].recs
			ids := make([]uint32, 0, len(recs))
			for id := range recs {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			out[i].infos = out[i].infos[:0]
			for _, id := range ids {
				rec := recs[id]
				if !rec.HasIdentityKey {
					continue
				}
				d, err := m.info(tx, gen, jid, id, rec)
				if err != nil {
					return err
				}
				out[i].infos = append(out[i].infos, d)
			}
		}
		return nil
	}
	var err error
	if len(found) > 0 {
		err = m.update(ctx, build)
	} else {
		err = m.store.View(ctx, build)
	}
	if err != nil {
		return nil, storageErr(err)
	}
	for i := range out {
		slices.SortFunc(out[i].failures, func(a, b DeviceError) int { return int(a.DeviceID) - int(b.DeviceID) })
		complete := len(out[i].failures) == 0
		for _, rec := range out[i].recs {
			complete = complete && rec.HasIdentityKey
		}
		if complete {
			// Nothing was written since gen if the cache accepts it.
			m.cache.putInfos(gen, jids[i], out[i].recs, slices.Clone(out[i].infos))
		}
	}
	return out, nil
}

// cachedDevicesOfJIDs is devicesOfJIDs from the read cache, without a
// store transaction, when every account's information is cached. Trust
// levels are evaluated again; a level the policy no longer knows sends the
// caller down the slow path, which reports it.
func (m *Manager) cachedDevicesOfJIDs(jids []string) ([]jidDevices, bool) {
	out := make([]jidDevices, len(jids))
	for i, jid := range jids {
		recs, infos, ok := m.cache.devicesAndInfos(jid)
		if !ok {
			return nil, false
		}
		out[i].recs = recs
		out[i].infos = slices.Clone(infos)
		for j := range out[i].infos {
			d := &out[i].infos[j]
			if !d.HasIdentityKey {
				continue
			}
			l, err := m.cfg.Trust.Evaluate(d.Trust)
			if err != nil {
				return nil, false
			}
			d.Level = l
		}
	}
	return out, true
}

// SetTrust stores the custom trust level of an identity key of jid.
func (m *Manager) SetTrust(ctx context.Context, jid string, identityKey [32]byte, level string) error {
	if err := m.check(); err != nil {
		return err
	}
	if _, err := m.cfg.Trust.Evaluate(level); err != nil {
		return fmt.Errorf("%w: %w", ErrUnknownTrustLevel, err)
	}
	return storageErr(m.update(ctx, func(tx store.Tx) error {
		return tx.Put(keyTrust(jid, identityKey), []byte(level))
	}))
}

func (m *Manager) snapshotBackends() map[string]backends.Backend {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]backends.Backend, len(m.backends))
	for ns, b := range m.backends {
		out[ns] = b
	}
	return out
}

// bundleCache downloads each bundle at most once per operation, so that the
// bundles fetched to discover identity keys also build the sessions.
type bundleCache struct {
	mu  sync.Mutex
	m   map[bundleRef]*bundleEntry
	sem chan struct{} // bounds the downloads in flight

	misses *bundleMisses // the Manager's, shared by every operation
	now    func() time.Time
	// offline operations discover no identity keys (no downloads).
	offline bool
}

// maxParallelDownloads bounds the bundle downloads one operation runs at
// once, so that a hostile device list with thousands of entries cannot
// open thousands of requests.
const maxParallelDownloads = 32

type bundleRef struct {
	ns, jid string
	id      uint32
}

type bundleEntry struct {
	once sync.Once
	b    bundle.Bundle
	err  error
}

// newBundleCache returns the bundle cache of one operation, which defers
// the downloads of recent misses.
func (m *Manager) newBundleCache() *bundleCache {
	return &bundleCache{m: map[bundleRef]*bundleEntry{}, sem: make(chan struct{}, maxParallelDownloads),
		misses: m.misses, now: m.cfg.Now}
}

// downloaded returns a bundle this operation already fetched (or failed
// to fetch); ok is false if it was not asked for.
func (c *bundleCache) downloaded(ns, jid string, id uint32) (b bundle.Bundle, ok bool, err error) {
	c.mu.Lock()
	e, ok := c.m[bundleRef{ns, jid, id}]
	c.mu.Unlock()
	if !ok {
		return bundle.Bundle{}, false, nil
	}
	e.once.Do(func() { e.err = errBundleNeeded }) // an entry whose download never started
	return e.b, e.err != errBundleNeeded, e.err
}

func (c *bundleCache) get(ctx context.Context, net Network, ns, jid string, id uint32) (bundle.Bundle, error) {
	ref := bundleRef{ns, jid, id}
	c.mu.Lock()
	e, ok := c.m[ref]
	if !ok {
		e = &bundleEntry{}
		c.m[ref] = e
	}
	c.mu.Unlock()
	e.once.Do(func() {
		if retry, ok := c.misses.deferred(ref, c.now()); ok {
			e.err = fmt.Errorf("%w: device %d of %s had none at the last attempt; next attempt after %s",
				ErrBundleNotFound, id, jid, retry.UTC().Format(time.RFC3339))
			return
		}
		select {
		case c.sem <- struct{}{}:
			defer func() { <-c.sem }()
		case <-ctx.Done():
			e.err = ctx.Err()
			return
		}
		e.b, e.err = net.DownloadBundle(ctx, ns, jid, id)
		switch {
		case e.err == nil:
			c.misses.found(ref)
		case errors.Is(e.err, ErrBundleNotFound):
			c.misses.missed(ref, c.now())
		}
		if e.err != nil {
			e.err = netErr(fmt.Sprintf("downloading bundle of device %d of %s", id, jid), e.err)
		} else if e.b.Namespace != ns {
			e.err = fmt.Errorf("%w: bundle of namespace %q", backends.ErrMalformed, e.b.Namespace)
		}
	})
	return e.b, e.err
}
