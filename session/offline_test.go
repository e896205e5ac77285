package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// DecryptOffline never touches the network: a message from a device that
// is not stored yet is refused with ErrSenderUnresolved (nothing changes),
// decrypts after ResolveSender, and ResolveSender reports a device that is
// not in the sender's list.
func TestDecryptOfflineAndResolveSender(t *testing.T) {
	for _, be := range singleBackends {
		t.Run(be.name, func(t *testing.T) {
			ctx := context.Background()
			srv := sessiontest.NewServer()
			alice := newClient(t, srv, "alice@example.org", be.f)
			bob := newClient(t, srv, "bob@example.org", be.f)
			if err := bob.m.RefreshDeviceLists(ctx, alice.jid); err != nil {
				t.Fatal(err)
			}
			send(t, srv, bob, "first", alice.jid)
			in := srv.Inbox(alice.jid)
			if len(in) != 1 {
				t.Fatalf("%d messages", len(in))
			}
			before := srv.CallCount("DownloadDeviceList") + srv.CallCount("DownloadBundle")
			_, err := alice.m.DecryptOffline(ctx, bob.jid, in[0].Message)
			if !errors.Is(err, session.ErrSenderUnresolved) {
				t.Fatalf("DecryptOffline = %v, want ErrSenderUnresolved", err)
			}
			if after := srv.CallCount("DownloadDeviceList") + srv.CallCount("DownloadBundle"); after != before {
				t.Fatalf("DecryptOffline made %d downloads", after-before)
			}
			if err := alice.m.ResolveSender(ctx, be.f.Namespace, bob.jid, bob.m.DeviceID()); err != nil {
				t.Fatal(err)
			}
			dec, err := alice.m.DecryptOffline(ctx, bob.jid, in[0].Message)
			if err != nil || string(dec.Plaintext) != "first" {
				t.Fatalf("after ResolveSender: %v, %v", dec, err)
			}
			err = alice.m.ResolveSender(ctx, be.f.Namespace, bob.jid, bob.m.DeviceID()+1)
			if !errors.Is(err, session.ErrSenderNotFound) {
				t.Fatalf("ResolveSender of an unlisted device = %v", err)
			}
		})
	}
}

// hangingNetwork never answers device list downloads of one account.
type hangingNetwork struct {
	session.Network
	jid string
}

func (n hangingNetwork) DownloadDeviceList(ctx context.Context, ns, jid string) (l devicelist.List, err error) {
	if jid == n.jid {
		<-ctx.Done()
		return l, ctx.Err()
	}
	return n.Network.DownloadDeviceList(ctx, ns, jid)
}

// Every Network call has a deadline: a server that never answers costs
// one failed operation after Config.NetworkTimeout.
func TestNetworkTimeout(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	const timeout = 200 * time.Millisecond
	m, err := session.New(ctx, store.NewMemory(), hangingNetwork{srv.Network("alice@example.org"), "bob@example.org"}, session.Config{
		JID: "alice@example.org", Backends: []backends.Factory{twomemo.Factory}, StartSynced: true, NetworkTimeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	began := time.Now()
	err = m.RefreshDeviceLists(ctx, "bob@example.org")
	if took := time.Since(began); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, session.ErrNetwork) || took > 10*timeout {
		t.Fatalf("RefreshDeviceLists = %v after %v; want a network deadline error after ~%v", err, took, timeout)
	}
	if _, err := session.New(ctx, store.NewMemory(), srv.Network("carol@example.org"), session.Config{
		JID: "carol@example.org", Backends: []backends.Factory{twomemo.Factory}, NetworkTimeout: -1,
	}); !errors.Is(err, session.ErrInvalidConfig) {
		t.Fatalf("negative timeout: %v", err)
	}
}

// An OMEMO 2 key exchange from a listed device whose identity key is not
// stored decrypts without a bundle download (converse.js devices once had
// bundles we could not read): the key in the key exchange is taken, once
// the message decrypted, and stored for the device. It is still checked:
// a key that belongs to another account is refused.
func TestKeyExchangeTeachesIdentityKey(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	var noBundles atomic.Bool
	srv.Fail = func(op, account string) error {
		if op == "DownloadBundle" && account == "alice@example.org" && noBundles.Load() {
			return errors.New("injected: bundle unreadable")
		}
		return nil
	}
	alice := newClient(t, srv, "alice@example.org", twomemo.Factory)
	bob := newClient(t, srv, "bob@example.org", twomemo.Factory)
	mallory := newClient(t, srv, "mallory@example.org", twomemo.Factory)
	if err := bob.m.RefreshDeviceLists(ctx, alice.jid); err != nil {
		t.Fatal(err)
	}
	noBundles.Store(true)
	if err := alice.m.RefreshDeviceLists(ctx, bob.jid); err != nil {
		t.Fatal(err)
	}
	send(t, srv, bob, "first", alice.jid)
	in := srv.Inbox(alice.jid)
	if len(in) != 1 {
		t.Fatalf("%d messages", len(in))
	}
	before := srv.CallCount("DownloadBundle")
	dec, err := alice.m.DecryptOffline(ctx, bob.jid, in[0].Message)
	if err != nil || string(dec.Plaintext) != "first" || dec.Sender.IdentityKey != bob.m.IdentityKey() {
		t.Fatalf("DecryptOffline = %+v, %v", dec, err)
	}
	if n := srv.CallCount("DownloadBundle") - before; n != 0 {
		t.Fatalf("%d bundle downloads", n)
	}
	if d := deviceOf(t, alice, bob.jid, bob.m.DeviceID()); d.IdentityKey != bob.m.IdentityKey() {
		t.Fatal("the identity key was not stored")
	}

	// A hostile server re-attributes bob's next key exchange to mallory,
	// who lists bob's device id (alice cannot read her bundles): the key
	// in it is bob's, so it is refused for mallory.
	l := srv.DeviceList(twomemo.Namespace, mallory.jid)
	l.Devices = append(l.Devices, devicelist.Device{ID: bob.m.DeviceID()})
	srv.SetDeviceList(mallory.jid, l)
	if err := alice.m.RefreshDeviceLists(ctx, mallory.jid); err != nil {
		t.Fatal(err)
	}
	// bob starts a new session with alice: a key exchange again.
	if errs := bob.m.ReplaceSession(ctx, alice.jid, alice.m.DeviceID()); len(errs) != 0 {
		t.Fatal(errs)
	}
	in = srv.Inbox(alice.jid)
	if len(in) != 1 || !in[0].Message.Keys[0].KeyExchange {
		t.Fatalf("%d messages", len(in))
	}
	_, err = alice.m.DecryptOffline(ctx, mallory.jid, in[0].Message)
	var claimed *session.IdentityClaimedError
	if !errors.As(err, &claimed) || claimed.Owner != bob.jid || !errors.Is(err, session.ErrSenderNotFound) {
		t.Fatalf("bob's key exchange attributed to mallory: %v", err)
	}
}
