package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// slowNetwork delays bundle downloads and records how many run at once.
type slowNetwork struct {
	session.Network
	inFlight, peak atomic.Int64
}

func (n *slowNetwork) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	cur := n.inFlight.Add(1)
	defer n.inFlight.Add(-1)
	for {
		p := n.peak.Load()
		if cur <= p || n.peak.CompareAndSwap(p, cur) {
			break
		}
	}
	time.Sleep(time.Millisecond)
	return n.Network.DownloadBundle(ctx, ns, jid, id)
}

// A contact publishing thousands of devices without bundles costs bounded
// parallelism, gives one failure per device and sends nothing.
func TestHostileDeviceList(t *testing.T) {
	ctx := context.Background()
	srv := sessiontest.NewServer()
	const jid, mallory = "alice@example.org", "mallory@example.org"
	net := &slowNetwork{Network: srv.Network(jid)}
	m, err := session.New(ctx, store.NewMemory(), net, session.Config{
		JID: jid, Backends: []backends.Factory{twomemo.Factory}, StartSynced: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l := devicelist.List{Namespace: twomemo.Namespace}
	for id := uint32(1); id <= 3000; id++ {
		l.Devices = append(l.Devices, devicelist.Device{ID: id})
	}
	if err := m.UpdateDeviceList(ctx, mallory, l); err != nil {
		t.Fatal(err)
	}
	delivered := false
	_, err = m.Encrypt(ctx, []string{mallory}, plaintexts("hi"), func(*session.EncryptResult) error {
		delivered = true
		return nil
	})
	var ne *session.NoEligibleDevicesError
	if !errors.As(err, &ne) || len(ne.JIDs) != 1 || ne.JIDs[0] != mallory {
		t.Fatalf("err = %v, want no eligible devices for mallory", err)
	}
	if delivered {
		t.Fatal("something was delivered")
	}
	if p := net.peak.Load(); p > 32 || p < 2 {
		t.Fatalf("peak parallel bundle downloads %d, want 2..32", p)
	}
}
