package session_test

import (
	"context"
	"errors"
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
