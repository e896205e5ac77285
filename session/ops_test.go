package session_test

import (
	"context"
	"errors"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

func openOn(t *testing.T, st store.Store, srv *sessiontest.Server, jid string, fs ...backends.Factory) *session.Manager {
	t.Helper()
	m, err := session.New(context.Background(), st, srv.Network(jid), session.Config{
		JID: jid, Backends: fs, StartSynced: true,
		OnError: func(err error) { t.Errorf("background error: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func listed(l devicelist.List, id uint32) (devicelist.Device, bool) {
	for _, d := range l.Devices {
		if d.ID == id {
			return d, true
		}
	}
	return devicelist.Device{}, false
}

// Backends added between runs are set up, backends removed are purged
// (device list entry, bundle and local state), and the identity stays.
func TestBackendsAddedAndRemoved(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	st := store.NewMemory()
	const jid = "alice@example.org"

	m := openOn(t, st, srv, jid, twomemo.Factory)
	id, ik := m.DeviceID(), m.IdentityKey()
	if _, ok := listed(srv.DeviceList(oldmemo.Namespace, jid), id); ok {
		t.Fatal("legacy list published without the legacy backend")
	}
	m.Close()

	m = openOn(t, st, srv, jid, twomemo.Factory, oldmemo.Factory)
	if m.DeviceID() != id || m.IdentityKey() != ik {
		t.Fatal("device id or identity changed across restarts")
	}
	if _, ok := listed(srv.DeviceList(oldmemo.Namespace, jid), id); !ok {
		t.Fatal("added legacy backend: own device not in the legacy list")
	}
	if _, ok := srv.Bundle(oldmemo.Namespace, jid, id); !ok {
		t.Fatal("added legacy backend: no legacy bundle")
	}
	m.Close()

	m = openOn(t, st, srv, jid, oldmemo.Factory)
	defer m.Close()
	if _, ok := listed(srv.DeviceList(twomemo.Namespace, jid), id); ok {
		t.Fatal("removed OMEMO 2 backend: own device still in its list")
	}
	if _, ok := srv.Bundle(twomemo.Namespace, jid, id); ok {
		t.Fatal("removed OMEMO 2 backend: bundle still published")
	}
	err := st.View(ctx, func(tx store.Tx) error {
		return tx.Scan("omemo/ns/urn:xmpp:omemo:2", func(key string, _ []byte) error {
			return errors.New("left over: " + key)
		})
	})
	if err != nil {
		t.Fatalf("removed OMEMO 2 backend: %v", err)
	}
	self, _, err := m.OwnDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(self.Active) != 1 || self.Active[0] != oldmemo.Namespace {
		t.Fatalf("own device active in %v, want only the legacy namespace", self.Active)
	}
}

func TestOwnLabelAndClearDeviceList(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	const jid = "alice@example.org"
	m := openOn(t, store.NewMemory(), srv, jid, twomemo.Factory, oldmemo.Factory)
	defer m.Close()
	id := m.DeviceID()

	if err := m.SetOwnLabel(ctx, "laptop"); err != nil {
		t.Fatal(err)
	}
	d, ok := listed(srv.DeviceList(twomemo.Namespace, jid), id)
	if !ok || d.Label != "laptop" || len(d.LabelSignature) != 64 {
		t.Fatalf("OMEMO 2 list entry %+v, want the label with a signature", d)
	}
	if d, _ := listed(srv.DeviceList(oldmemo.Namespace, jid), id); d.Label != "" {
		t.Fatal("label in the legacy list")
	}
	self, _, err := m.OwnDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if self.Label != "laptop" {
		t.Fatalf("own label %q", self.Label)
	}

	// Another client published stale devices; clearing leaves only ours.
	for _, ns := range []string{twomemo.Namespace, oldmemo.Namespace} {
		l := srv.DeviceList(ns, jid)
		l.Devices = append(l.Devices, devicelist.Device{ID: 4242}, devicelist.Device{ID: 4343})
		srv.SetDeviceList(jid, l)
	}
	if err := m.ClearDeviceList(ctx); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{twomemo.Namespace, oldmemo.Namespace} {
		l := srv.DeviceList(ns, jid)
		if len(l.Devices) != 1 || l.Devices[0].ID != id {
			t.Fatalf("%s list after clearing: %+v", ns, l.Devices)
		}
	}
	if err := m.PurgeJID(ctx, "nobody@example.org"); err != nil {
		t.Fatalf("purging an unknown JID: %v", err)
	}
	if _, err := session.New(ctx, store.NewMemory(), srv.Network(jid), session.Config{
		JID: jid, Backends: []backends.Factory{twomemo.Factory, twomemo.Factory},
	}); !errors.Is(err, session.ErrInvalidConfig) {
		t.Fatalf("duplicate backends: %v", err)
	}
	if _, err := session.New(ctx, store.NewMemory(), srv.Network(jid), session.Config{
		JID: jid, Backends: []backends.Factory{twomemo.Factory}, PreKeyRefillThreshold: 24,
	}); !errors.Is(err, session.ErrInvalidConfig) {
		t.Fatalf("refill threshold 24: %v", err)
	}
}
