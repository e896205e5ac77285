package session_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// readCounter is a store that counts the keys its transactions read (each
// Get, and each key a Scan visits), and notes the session keys among them.
type readCounter struct {
	store.Store
	mu       sync.Mutex
	reads    int
	sessions int
	keyReads map[string]int // per key, if not nil
}

func (r *readCounter) count(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	if r.keyReads != nil {
		r.keyReads[key]++
	}
	if strings.Contains(key, "/sessions/") {
		r.sessions++
	}
}

func (r *readCounter) counts() (reads, sessions int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reads, r.sessions
}

func (r *readCounter) View(ctx context.Context, f func(store.Tx) error) error {
	return r.Store.View(ctx, func(tx store.Tx) error { return f(countingTx{tx, r}) })
}

func (r *readCounter) Update(ctx context.Context, f func(store.Tx) error) error {
	return r.Store.Update(ctx, func(tx store.Tx) error { return f(countingTx{tx, r}) })
}

type countingTx struct {
	store.Tx
	r *readCounter
}

func (t countingTx) Get(key string) ([]byte, error) {
	t.r.count(key)
	return t.Tx.Get(key)
}

func (t countingTx) Scan(prefix string, f func(string, []byte) error) error {
	return t.Tx.Scan(prefix, func(k string, v []byte) error {
		t.r.count(k)
		return f(k, v)
	})
}

// addContacts stores what messaging n contacts leaves behind (as far as a
// start could read it): a device record, a trust decision and a session
// in namespace ns each.
func addContacts(t *testing.T, st store.Store, ns string, n int) {
	t.Helper()
	err := st.Update(context.Background(), func(tx store.Tx) error {
		for i := range n {
			jid := url.PathEscape(fmt.Sprintf("contact%d@example.org", i))
			for _, k := range []string{
				"omemo/ns/" + url.PathEscape(ns) + "/sessions/" + jid + "/1",
				"omemo/devices/" + jid + "/1",
				"omemo/trust/" + jid + "/AAAA",
			} {
				if err := tx.Put(k, make([]byte, 400)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startCounting starts a Manager on st and returns the keys it read until
// it was started and its start-up background work was done.
func startCounting(t *testing.T, st store.Store, srv *sessiontest.Server, fs ...backends.Factory) (reads, sessions int) {
	t.Helper()
	ctx := context.Background()
	rc := &readCounter{Store: st}
	m := openOn(t, rc, srv, "alice@example.org", fs...)
	defer m.Close()
	if err := m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return rc.counts()
}

// A start reads the own state only: the number of keys it reads does not
// grow with the number of contacts, and no session is read.
func TestStartReadsOwnStateOnly(t *testing.T) {
	reads := map[int]int{}
	for _, n := range []int{10, 3000} {
		srv := sessiontest.NewServer()
		st := store.NewMemory()
		m := openOn(t, st, srv, "alice@example.org", twomemo.Factory, oldmemo.Factory)
		m.Close()
		addContacts(t, st, twomemo.Namespace, n)
		var sessions int
		reads[n], sessions = startCounting(t, st, srv, twomemo.Factory, oldmemo.Factory)
		if sessions != 0 {
			t.Fatalf("%d contacts: the start read %d session keys", n, sessions)
		}
	}
	t.Logf("keys read at start: %v", reads)
	if reads[3000] != reads[10] {
		t.Fatalf("keys read at start grow with the contacts: %v", reads)
	}
}

// A store written before the record of namespaces existed is scanned once
// at the first start: a backend removed since is purged, and the record
// written, so that later starts read no sessions.
func TestNamespacesRecordMigration(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	st := store.NewMemory()
	m := openOn(t, st, srv, "alice@example.org", twomemo.Factory, oldmemo.Factory)
	m.Close()
	addContacts(t, st, oldmemo.Namespace, 50)
	addContacts(t, st, twomemo.Namespace, 50)
	nss, ok, err := session.RecordedNamespaces(ctx, st)
	if err != nil || !ok || !slices.Equal(nss, []string{oldmemo.Namespace, twomemo.Namespace}) {
		t.Fatalf("recorded namespaces %q, %v, %v", nss, ok, err)
	}
	// The store as an older version left it.
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.Delete("omemo/namespaces") }); err != nil {
		t.Fatal(err)
	}

	// Legacy OMEMO was removed from the configuration meanwhile.
	if _, sessions := startCounting(t, st, srv, twomemo.Factory); sessions == 0 {
		t.Fatal("the first start after the upgrade did not look for namespaces")
	}
	nss, ok, err = session.RecordedNamespaces(ctx, st)
	if err != nil || !ok || !slices.Equal(nss, []string{twomemo.Namespace}) {
		t.Fatalf("recorded namespaces after the migration %q, %v, %v", nss, ok, err)
	}
	left := 0
	if err := st.View(ctx, func(tx store.Tx) error {
		return tx.Scan("omemo/ns/"+url.PathEscape(oldmemo.Namespace)+"/", func(string, []byte) error {
			left++
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d keys of the removed backend left", left)
	}
	if _, _, ok := listedOwn(srv, oldmemo.Namespace); ok {
		t.Fatal("the removed backend's device list still holds this device")
	}

	// Later starts read the record, not the sessions.
	if _, sessions := startCounting(t, st, srv, twomemo.Factory); sessions != 0 {
		t.Fatalf("a start after the migration read %d session keys", sessions)
	}

	// A backend added later is recorded; removing it again purges it.
	startCounting(t, st, srv, twomemo.Factory, oldmemo.Factory)
	if nss, _, _ := session.RecordedNamespaces(ctx, st); len(nss) != 2 {
		t.Fatalf("recorded namespaces after adding a backend: %q", nss)
	}
	startCounting(t, st, srv, oldmemo.Factory)
	if nss, _, _ := session.RecordedNamespaces(ctx, st); !slices.Equal(nss, []string{oldmemo.Namespace}) {
		t.Fatalf("recorded namespaces after removing a backend: %q", nss)
	}
}

// listedOwn reports whether alice's device list of ns lists any device.
func listedOwn(srv *sessiontest.Server, ns string) (string, uint32, bool) {
	l := srv.DeviceList(ns, "alice@example.org")
	if len(l.Devices) == 0 {
		return "", 0, false
	}
	return "alice@example.org", l.Devices[0].ID, true
}
