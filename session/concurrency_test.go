package session_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// newHooked starts a client whose store calls hooks inside transactions.
func newHooked(t *testing.T, srv *sessiontest.Server, jid string, fs ...backends.Factory) (*client, *sessiontest.HookStore) {
	t.Helper()
	if len(fs) == 0 {
		fs = []backends.Factory{twomemo.Factory}
	}
	hs := &sessiontest.HookStore{Store: store.NewMemory()}
	m, err := session.New(context.Background(), hs, srv.Network(jid), session.Config{
		JID: jid, Backends: fs, StartSynced: true,
		OnError: func(err error) { t.Errorf("background error of %s: %v", jid, err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &client{jid: jid, m: m}, hs
}

// SetTrust(distrusted) commits while a lookup's read transaction, whose
// snapshot predates it, is under way: the old value it reads must not be
// cached as current, or the next Encrypt asks the policy again, BTBV
// writes blindly-trusted over the user's decision and encrypts for the
// device. The lookup is paused right after the snapshot of its k-th read
// transaction, for every k.
func TestTrustDecisionDuringLookup(t *testing.T) {
	for k := 1; ; k++ {
		if !trustDecisionDuringLookup(t, k) {
			if k == 1 {
				t.Fatal("the lookup read nothing")
			}
			return
		}
	}
}

// trustDecisionDuringLookup runs the scenario with the pause in the k-th
// read transaction and reports whether the lookup had one.
func trustDecisionDuringLookup(t *testing.T, k int) bool {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	alice, hs := newHooked(t, srv, "alice@example.org")
	bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
	if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	d := deviceOf(t, alice, bob.jid, bob.m.DeviceID())
	// Any stored decision makes the read cache cold.
	if err := alice.m.SetTrust(ctx, "carol@example.org", [32]byte{1}, trust.LevelTrusted); err != nil {
		t.Fatal(err)
	}

	pause := sessiontest.NewPause()
	var views atomic.Int32
	var armed atomic.Bool
	armed.Store(true)
	hs.OnBegin = func(write bool) {
		if !write && armed.Load() && views.Add(1) == int32(k) {
			pause.Wait()
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := alice.m.Devices(ctx, bob.jid)
		done <- err
	}()
	select {
	case <-pause.Paused():
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err := alice.m.SetTrust(ctx, bob.jid, d.IdentityKey, trust.LevelDistrusted); err != nil {
		t.Fatal(err)
	}
	armed.Store(false)
	pause.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	_, err := alice.m.Encrypt(ctx, []string{bob.jid}, plaintexts("must not reach bob"), nil)
	if !errors.Is(err, session.ErrNoEligibleDevices) {
		t.Fatalf("pause in read transaction %d: Encrypt to a distrusted device = %v, want ErrNoEligibleDevices", k, err)
	}
	if after := deviceOf(t, alice, bob.jid, bob.m.DeviceID()); after.Trust != trust.LevelDistrusted || after.Level != trust.Distrusted {
		t.Fatalf("pause in read transaction %d: the user's decision was changed to %q", k, after.Trust)
	}
	return true
}

// While Alice's first Encrypt to Bob downloads his bundle, Bob's key
// exchange arrives and Alice decrypts it. Encrypt must use that session
// (or keep it): overwriting it loses Bob's next message (unknown pre key).
func TestEncryptKeepsSessionFromKeyExchangeMeanwhile(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			pause := sessiontest.NewPause()
			var armed atomic.Bool
			srv.Fail = func(op, account string) error {
				if op == "DownloadBundle" && account == "alice@example.org" && armed.Load() {
					pause.Wait()
				}
				return nil
			}
			alice := newClient(t, srv, "alice@example.org", be.f)
			bob := newClient(t, srv, "bob@example.org", be.f)
			for _, c := range []*client{alice, bob} {
				for _, o := range []*client{alice, bob} {
					if err := c.m.RefreshDeviceLists(ctx, o.jid); err != nil {
						t.Fatal(err)
					}
				}
			}
			deviceOf(t, alice, bob.jid, bob.m.DeviceID())
			armed.Store(true)
			done := make(chan error, 1)
			go func() {
				_, err := alice.m.Encrypt(ctx, []string{bob.jid}, plaintexts("from alice"), func(r *session.EncryptResult) error {
					for _, msg := range r.Messages {
						srv.Deliver(alice.jid, bob.jid, msg)
					}
					return nil
				})
				done <- err
			}()
			<-pause.Paused()
			armed.Store(false)
			send(t, srv, bob, "from bob 1", alice.jid)
			srv.Inbox(bob.jid) // bob's copy for his own (no) other devices
			if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != "from bob 1" {
				t.Fatalf("alice got %q", got)
			}
			// Bob writes again before he hears from Alice: still on his
			// session, key exchange attached.
			send(t, srv, bob, "from bob 2", alice.jid)
			pause.Resume()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != "from bob 2" {
				t.Fatalf("alice got %q", got)
			}
			if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "from alice" {
				t.Fatalf("bob got %q", got)
			}
			for i := range 3 {
				send(t, srv, bob, fmt.Sprint("from bob again ", i), alice.jid)
				if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != fmt.Sprint("from bob again ", i) {
					t.Fatalf("alice got %q", got)
				}
				send(t, srv, alice, fmt.Sprint("from alice again ", i), bob.jid)
				if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != fmt.Sprint("from alice again ", i) {
					t.Fatalf("bob got %q", got)
				}
			}
		})
	}
}

// Many first messages to one device at once, with its bundle trimmed to one
// pre key: one session is built, the others use it, and every message
// decrypts (two sessions on the same pre key would leave the peers unable
// to read each other until ReplaceSession).
func TestConcurrentFirstSends(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			alice := newClient(t, srv, "alice@example.org", be.f)
			bob := newClient(t, srv, "bob@example.org", be.f)
			for _, c := range []*client{alice, bob} {
				for _, o := range []*client{alice, bob} {
					if err := c.m.RefreshDeviceLists(ctx, o.jid); err != nil {
						t.Fatal(err)
					}
				}
			}
			deviceOf(t, alice, bob.jid, bob.m.DeviceID())
			b, _ := srv.Bundle(be.f.Namespace, bob.jid, bob.m.DeviceID())
			b.PreKeys = b.PreKeys[:1]
			srv.SetBundle(bob.jid, bob.m.DeviceID(), b)

			const n = 16
			start := make(chan struct{})
			errs := make(chan error, n)
			for i := range n {
				go func() {
					<-start
					_, err := alice.m.Encrypt(ctx, []string{bob.jid}, plaintexts(fmt.Sprint("first ", i)), func(r *session.EncryptResult) error {
						for _, msg := range r.Messages {
							srv.Deliver(alice.jid, bob.jid, msg)
						}
						return nil
					})
					errs <- err
				}()
			}
			close(start)
			for range n {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			got := deliverAll(t, srv, bob)
			if len(got) != n {
				t.Fatalf("bob decrypted %d of %d first messages", len(got), n)
			}
			send(t, srv, bob, "reply", alice.jid)
			if got := deliverAll(t, srv, alice); len(got) != 1 || got[0] != "reply" {
				t.Fatalf("alice got %q", got)
			}
		})
	}
}

// A session that Encrypt saw before taking the lock is gone when it holds
// it (PurgeJID committed in between): the bundle is downloaded outside the
// lock and the transaction runs again. A download under the lock would
// hold up every other operation of the Manager for a network round trip.
func TestEncryptSessionGoneMeanwhile(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	var alice atomic.Pointer[client]
	var underLock atomic.Int32
	srv.Fail = func(op, account string) error {
		a := alice.Load()
		if op != "DownloadBundle" || account != "alice@example.org" || a == nil {
			return nil
		}
		// Is the Manager's lock free? SendingChainLength takes it.
		free := make(chan struct{})
		go func() {
			_, _ = a.m.SendingChainLength(ctx, "bob@example.org", 1)
			close(free)
		}()
		select {
		case <-free:
		case <-time.After(time.Second):
			underLock.Add(1)
		}
		return nil
	}
	a, hs := newHooked(t, srv, "alice@example.org")
	bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
	for _, c := range []*client{a, bob} {
		for _, o := range []*client{a, bob} {
			if err := c.m.RefreshDeviceLists(ctx, o.jid); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(t, srv, a, "one", bob.jid)
	if got := deliverAll(t, srv, bob); len(got) != 1 {
		t.Fatalf("bob got %q", got)
	}
	deliverAll(t, srv, a)
	// A purge of someone else makes the cache forget which sessions exist.
	if err := a.m.PurgeJID(ctx, "carol@example.org"); err != nil {
		t.Fatal(err)
	}
	alice.Store(a)

	pause := sessiontest.NewPause()
	var armed atomic.Bool
	armed.Store(true)
	hs.OnGet = func(write bool, key string) {
		if !write && armed.Load() && strings.Contains(key, "/sessions/bob@") {
			pause.Wait()
		}
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.m.Encrypt(ctx, []string{bob.jid}, plaintexts("two"), func(r *session.EncryptResult) error {
			for _, msg := range r.Messages {
				srv.Deliver(a.jid, bob.jid, msg)
			}
			return nil
		})
		done <- err
	}()
	<-pause.Paused()
	armed.Store(false)
	if err := a.m.PurgeJID(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	pause.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := underLock.Load(); n != 0 {
		t.Fatalf("%d bundle downloads while the Manager's lock was held", n)
	}
	if got := deliverAll(t, srv, bob); len(got) != 1 || got[0] != "two" {
		t.Fatalf("bob got %q", got)
	}
}

// A bundle upload that fails after a signed pre key rotation is retried
// until it succeeds (the retry used to find no rotation due and upload
// nothing); the backend does not rotate again before its last rotation
// was published. (A restart republishes a differing bundle anyway.)
func TestRotationUploadRetried(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	srv := sessiontest.NewServer()
	var failUploads atomic.Bool
	srv.Fail = func(op, account string) error {
		if op == "UploadBundle" && failUploads.Load() {
			return errors.New("injected upload failure")
		}
		return nil
	}
	st := store.NewMemory()
	cfg := session.Config{JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory}, StartSynced: true, Now: clock.Now,
		OnError: func(error) {}}
	m, err := session.New(ctx, st, srv.Network("alice@example.org"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	published := func(ns string) uint32 {
		b, ok := srv.Bundle(ns, "alice@example.org", m.DeviceID())
		if !ok {
			t.Fatalf("no %s bundle", ns)
		}
		return b.SignedPreKeyID
	}
	before := map[string]uint32{twomemo.Namespace: published(twomemo.Namespace), oldmemo.Namespace: published(oldmemo.Namespace)}

	failUploads.Store(true)
	clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	if _, err := m.RotateSignedPreKeys(ctx); err == nil {
		t.Fatal("rotation with failing uploads reported success")
	}
	// Another period passes while the server refuses: no second rotation.
	clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	if _, err := m.RotateSignedPreKeys(ctx); err == nil {
		t.Fatal("retry with failing uploads reported success")
	}
	for ns, id := range before {
		if got := published(ns); got != id {
			t.Fatalf("%s: published %d while uploads fail", ns, got)
		}
	}
	defer m.Close()
	failUploads.Store(false)
	if _, err := m.RotateSignedPreKeys(ctx); err != nil {
		t.Fatal(err)
	}
	for ns, id := range before {
		if got := published(ns); got != id+1 {
			t.Fatalf("%s: published signed pre key %d, want %d (one rotation, published)", ns, got, id+1)
		}
	}
	// Once published, the next period rotates again.
	clock.Advance(session.DefaultSignedPreKeyRotation + time.Hour)
	if _, err := m.RotateSignedPreKeys(ctx); err != nil {
		t.Fatal(err)
	}
	for ns, id := range before {
		if got := published(ns); got != id+2 {
			t.Fatalf("%s: published %d after the next rotation, want %d", ns, got, id+2)
		}
	}
}

// After PurgeBackend, a failed commit restores the in-memory key state of
// the backends that are still loaded (it used to fail on the purged one,
// leaving memory ahead of the store: a pre key deleted by a transaction
// that never committed stayed deleted).
func TestRestoreAfterPurgeBackend(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	fs := sessiontest.NewFailStore(store.NewMemory())
	var bgErrs atomic.Int32
	alice, err := session.New(ctx, fs, srv.Network("alice@example.org"), session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory}, StartSynced: true,
		OnError: func(err error) { bgErrs.Add(1); t.Logf("background: %v", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bob := newClient(t, srv, "bob@example.org", oldmemo.Factory)
	if err := alice.PurgeBackend(ctx, twomemo.Namespace); err != nil {
		t.Fatal(err)
	}
	if err := bob.m.RefreshDeviceLists(ctx, "alice@example.org"); err != nil {
		t.Fatal(err)
	}
	send(t, srv, bob, "kex", "alice@example.org")
	in := srv.Inbox("alice@example.org")
	if len(in) != 1 {
		t.Fatalf("%d messages", len(in))
	}
	// Learn bob first, so that the failing transaction is the decryption.
	if err := alice.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Devices(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	fs.FailNth(1, sessiontest.FailCommit)
	if _, err := alice.Decrypt(ctx, bob.jid, in[0].Message); !errors.Is(err, session.ErrStorage) {
		t.Fatalf("Decrypt with a failing commit = %v", err)
	}
	if n := bgErrs.Load(); n != 0 {
		t.Fatalf("%d errors restoring the key state", n)
	}
	// The pre key the failed transaction used is still there.
	dec, err := alice.Decrypt(ctx, bob.jid, in[0].Message)
	if err != nil || string(dec.Plaintext) != "kex" {
		t.Fatalf("Decrypt after the failed commit: %v, %v", dec, err)
	}
}

// PurgeBackend changes the loaded namespaces while other calls read them
// (run with -race: the list used to be modified in place without the
// readers' holding the lock).
func TestPurgeBackendWhileInUse(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	alice := newClient(t, srv, "alice@example.org")
	bob := newClient(t, srv, "bob@example.org")
	if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	var calls atomic.Int32
	for _, f := range []func() error{
		func() error { _ = alice.m.Namespaces(); return nil },
		func() error { _, err := alice.m.Devices(ctx, bob.jid); return err },
		func() error { return alice.m.SetOwnLabel(ctx, "") },
		func() error { return alice.m.ClearDeviceList(ctx) },
		func() error { _, err := alice.m.SendingChainLength(ctx, bob.jid, bob.m.DeviceID()); return err },
		func() error { _, err := alice.m.RotateSignedPreKeys(ctx); return err },
	} {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := f(); err != nil && !errors.Is(err, session.ErrUnknownNamespace) {
					t.Error(err)
					return
				}
				calls.Add(1)
			}
		}()
	}
	for calls.Load() < 50 {
		time.Sleep(time.Millisecond)
	}
	if err := alice.m.PurgeBackend(ctx, twomemo.Namespace); err != nil {
		t.Fatal(err)
	}
	for n := calls.Load(); calls.Load() < n+50; {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	for range 6 {
		<-done
	}
	if got := alice.m.Namespaces(); len(got) != 1 || got[0] != oldmemo.Namespace {
		t.Fatalf("namespaces after the purge: %v", got)
	}
}

// The empty reply a key exchange is owed survives a Close before it could
// be sent (here: the server refuses it), and a crash during history
// synchronisation leaves no hidden pre key behind: the next start, outside
// synchronisation, sends what is owed and deletes what is hidden.
func TestOwedWorkSurvivesRestart(t *testing.T) {
	for _, synced := range []bool{true, false} {
		t.Run(fmt.Sprintf("synced=%v", synced), func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			var refuse atomic.Bool
			srv.Fail = func(op, account string) error {
				if op == "SendMessage" && account == "alice@example.org" && refuse.Load() {
					return errors.New("injected: message refused")
				}
				return nil
			}
			st := store.NewMemory()
			cfg := session.Config{JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: synced, OnError: func(error) {}}
			alice, err := session.New(ctx, st, srv.Network("alice@example.org"), cfg)
			if err != nil {
				t.Fatal(err)
			}
			// Every bundle of alice's now offers one pre key only.
			b, _ := srv.Bundle(twomemo.Namespace, "alice@example.org", alice.DeviceID())
			b.PreKeys = b.PreKeys[:1]
			srv.SetBundle("alice@example.org", alice.DeviceID(), b)
			bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
			carol := newClient(t, srv, "carol@example.org", twomemo.Factory)
			for _, c := range []*client{bob, carol} {
				if err := c.m.RefreshDeviceLists(ctx, "alice@example.org"); err != nil {
					t.Fatal(err)
				}
			}
			// Both use the one pre key; carol's message waits.
			send(t, srv, bob, "from bob", "alice@example.org")
			send(t, srv, carol, "from carol", "alice@example.org")
			in := srv.Inbox("alice@example.org")
			if len(in) != 2 {
				t.Fatalf("%d messages", len(in))
			}
			srv.Inbox(bob.jid)
			refuse.Store(true)
			if dec, err := alice.Decrypt(ctx, bob.jid, in[0].Message); err != nil || string(dec.Plaintext) != "from bob" {
				t.Fatalf("%v %v", dec, err)
			}
			_ = alice.Flush(ctx)
			if err := alice.Close(); err != nil { // or a crash
				t.Fatal(err)
			}
			if n := len(srv.Inbox(bob.jid)); n != 0 {
				t.Fatalf("%d messages reached bob while refused", n)
			}

			refuse.Store(false)
			cfg.StartSynced = true
			alice, err = session.New(ctx, st, srv.Network("alice@example.org"), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer alice.Close()
			if err := alice.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			owed := srv.Inbox(bob.jid)
			if len(owed) != 1 || owed[0].Message.Payload != nil {
				t.Fatalf("bob got %d messages after the restart, want the one empty reply", len(owed))
			}
			// A pre key hidden by the unfinished synchronisation is gone for
			// good: carol's key exchange on it fails. One used outside a
			// synchronisation stays for its grace period: carol's works.
			_, err = alice.Decrypt(ctx, carol.jid, in[1].Message)
			if !synced && !errors.Is(err, backends.ErrKeyExchange) {
				t.Fatalf("a key exchange on the pre key of the crashed synchronisation: %v", err)
			}
			if synced && err != nil {
				t.Fatalf("a key exchange on a pre key in its grace period: %v", err)
			}
		})
	}
}
