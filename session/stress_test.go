package session_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
)

// router delivers every message to every device of the addressed account
// (as a server does for messages to a bare JID), each device reading its
// inbox in order.
type router struct {
	mu       sync.Mutex
	devices  map[string][]*stressDevice // by bare JID
	inFlight atomic.Int64               // delivered, not yet decrypted
}

func (r *router) deliver(fromDev uint32, from, to string, msg *encrypted.Encrypted) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.devices[to] {
		if to == from && d.m.DeviceID() == fromDev {
			continue
		}
		r.inFlight.Add(1)
		d.inbox <- delivered{from: from, msg: msg}
	}
}

type delivered struct {
	from string
	msg  *encrypted.Encrypted
}

// routedNetwork is a device's network: PEP on the shared server, messages
// through the router.
type routedNetwork struct {
	session.Network
	r   *router
	jid string
	dev func() uint32
}

func (n routedNetwork) SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error {
	n.r.deliver(n.dev(), n.jid, to, msg)
	return nil
}

type stressDevice struct {
	name  string
	jid   string
	m     *session.Manager
	inbox chan delivered
}

// TestStress runs, for a bounded time, many goroutines on a few devices:
// two accounts' devices send to everyone (one of them from two goroutines
// at once), every device decrypts its inbox, one device's trust in another
// account flips between trusted and distrusted, signed pre keys rotate
// under a fake clock, and one device purges a backend. Afterwards every
// message was decrypted exactly once by every device it was encrypted
// for, nothing else failed, and every trust decision is the one the test
// made last.
func TestStress(t *testing.T) {
	duration := 2 * time.Second
	if testing.Short() {
		duration = 500 * time.Millisecond
	}
	ctx := context.Background()
	clock := newFakeClock()
	srv := sessiontest.NewServer()
	r := &router{devices: map[string][]*stressDevice{}}
	var bgErrs sync.Map
	names := []string{"alice1", "alice2", "bob1", "carol1", "dave1", "eve1"}
	devs := map[string]*stressDevice{}
	for _, name := range names {
		jid := strings.TrimRight(name, "0123456789") + "@example.org"
		d := &stressDevice{name: name, jid: jid, inbox: make(chan delivered, 100000)}
		net := routedNetwork{Network: srv.Network(jid), r: r, jid: jid, dev: func() uint32 { return d.m.DeviceID() }}
		m, err := session.New(ctx, store.NewMemory(), net, session.Config{
			JID: jid, Backends: []backends.Factory{twomemo.Factory, oldmemo.Factory}, StartSynced: true, Now: clock.Now,
			OnError: func(err error) { bgErrs.Store(name+": "+err.Error(), true) },
		})
		if err != nil {
			t.Fatal(err)
		}
		d.m = m
		devs[name] = d
		r.mu.Lock()
		r.devices[jid] = append(r.devices[jid], d)
		r.mu.Unlock()
	}
	defer func() {
		for _, d := range devs {
			d.m.Close()
		}
	}()
	jids := []string{"alice@example.org", "bob@example.org", "carol@example.org", "dave@example.org", "eve@example.org"}
	// Everyone knows everyone; every key is trusted by decision of the
	// test, so the policy never has to decide.
	type trustRef struct {
		at, jid string
		ik      [32]byte
	}
	want := map[trustRef]string{}
	var wantMu sync.Mutex
	for _, d := range devs {
		for _, j := range jids {
			if err := d.m.RefreshDeviceLists(ctx, j); err != nil {
				t.Fatal(err)
			}
			infos, err := d.m.Devices(ctx, j)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range infos {
				if i.JID == d.jid && i.DeviceID == d.m.DeviceID() {
					continue
				}
				if err := d.m.SetTrust(ctx, j, i.IdentityKey, trust.LevelTrusted); err != nil {
					t.Fatal(err)
				}
				want[trustRef{d.name, j, i.IdentityKey}] = trust.LevelTrusted
			}
		}
	}
	daveIK := devs["dave1"].m.IdentityKey()

	// expected[id] lists the devices a message was encrypted for;
	// got[id+"/"+device] counts the decryptions.
	var expMu sync.Mutex
	expected := map[string][]string{}
	var got sync.Map
	var failures sync.Map
	fail := func(format string, args ...any) { failures.Store(fmt.Sprintf(format, args...), true) }
	nameOf := map[string]string{}
	for _, d := range devs {
		nameOf[fmt.Sprint(d.jid, "/", d.m.DeviceID())] = d.name
	}

	// Receivers.
	var recvWG sync.WaitGroup
	stopRecv := make(chan struct{})
	for _, d := range devs {
		recvWG.Add(1)
		go func() {
			defer recvWG.Done()
			for {
				select {
				case <-stopRecv:
					return
				case in := <-d.inbox:
					dec, err := d.m.Decrypt(ctx, in.from, in.msg)
					r.inFlight.Add(-1)
					switch {
					case errors.Is(err, session.ErrMessageNotForUs):
					case errors.Is(err, session.ErrSenderDistrusted) && d.name == "alice1" && in.from == "dave@example.org" && in.msg.Payload == nil:
						// dave's empty replies while alice1 distrusts him
					case err != nil:
						fail("%s decrypting from %s: %v", d.name, in.from, err)
					case !dec.Empty:
						c, _ := got.LoadOrStore(string(dec.Plaintext)+"/"+d.name, new(atomic.Int32))
						c.(*atomic.Int32).Add(1)
					}
				}
			}
		}()
	}
	deliverAll := func(d *stressDevice, to string, msgs []*encrypted.Encrypted) {
		for _, msg := range msgs {
			r.deliver(d.m.DeviceID(), d.jid, to, msg)
			r.deliver(d.m.DeviceID(), d.jid, d.jid, msg)
		}
	}

	// Senders.
	stop := make(chan struct{})
	var sendWG sync.WaitGroup
	var sent atomic.Int64
	sender := func(d *stressDevice, seed uint64) {
		defer sendWG.Done()
		rng := rand.New(rand.NewPCG(seed, seed))
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			to := jids[rng.IntN(len(jids))]
			if to == d.jid {
				continue
			}
			id := fmt.Sprintf("%s-%d-%d", d.name, seed, n)
			res, err := d.m.Encrypt(ctx, []string{to}, plaintexts(id), func(res *session.EncryptResult) error {
				expMu.Lock()
				for _, rc := range res.Recipients {
					expected[id] = append(expected[id], nameOf[fmt.Sprint(rc.JID, "/", rc.DeviceID)])
				}
				expMu.Unlock()
				deliverAll(d, to, res.Messages)
				return nil
			})
			switch {
			case errors.Is(err, session.ErrNoEligibleDevices) && to == "dave@example.org":
				// dave is distrusted at the moment
			case err != nil:
				fail("%s sending to %s: %v", d.name, to, err)
			default:
				sent.Add(1)
				if len(res.Failures) > 0 {
					fail("%s sending to %s: failures %v", d.name, to, res.Failures)
				}
			}
		}
	}
	for i, name := range []string{"alice1", "alice1", "bob1", "carol1"} {
		sendWG.Add(1)
		go sender(devs[name], uint64(i+1))
	}

	// Trust flips, a rotation and a purge.
	var otherWG sync.WaitGroup
	otherWG.Add(2)
	go func() {
		defer otherWG.Done()
		levels := []string{trust.LevelDistrusted, trust.LevelTrusted}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			level := levels[i%2]
			if err := devs["alice1"].m.SetTrust(ctx, "dave@example.org", daveIK, level); err != nil {
				fail("SetTrust: %v", err)
			}
			wantMu.Lock()
			want[trustRef{"alice1", "dave@example.org", daveIK}] = level
			wantMu.Unlock()
		}
	}()
	go func() {
		defer otherWG.Done()
		time.Sleep(duration / 3)
		clock.Advance(session.DefaultSignedPreKeyRotation + time.Minute)
		var wg sync.WaitGroup
		for _, d := range devs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := d.m.RotateSignedPreKeys(ctx); err != nil {
					fail("%s rotating: %v", d.name, err)
				}
			}()
		}
		if err := devs["eve1"].m.PurgeBackend(ctx, oldmemo.Namespace); err != nil {
			fail("purge: %v", err)
		}
		wg.Wait()
	}()

	time.Sleep(duration)
	close(stop)
	sendWG.Wait()
	otherWG.Wait()
	// Drain: background empty messages may still be produced.
	for deadline := time.Now().Add(30 * time.Second); ; {
		for _, d := range devs {
			_ = d.m.Flush(ctx)
		}
		if r.inFlight.Load() == 0 {
			empty := true
			for _, d := range devs {
				empty = empty && len(d.inbox) == 0
			}
			if empty {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("inboxes not drained: %d in flight", r.inFlight.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stopRecv)
	recvWG.Wait()

	failures.Range(func(k, _ any) bool { t.Error(k); return true })
	bgErrs.Range(func(k, _ any) bool { t.Errorf("background: %v", k); return true })
	total := 0
	expMu.Lock()
	for id, to := range expected {
		for _, name := range to {
			total++
			c, ok := got.Load(id + "/" + name)
			if !ok {
				t.Errorf("%s never decrypted %s", name, id)
				continue
			}
			if n := c.(*atomic.Int32).Load(); n != 1 {
				t.Errorf("%s decrypted %s %d times", name, id, n)
			}
		}
	}
	expMu.Unlock()
	got.Range(func(k, v any) bool {
		if n := v.(*atomic.Int32).Load(); n > 1 {
			t.Errorf("%s decrypted %d times", k, n)
		}
		return true
	})
	for ref, level := range want {
		infos, err := devs[ref.at].m.Devices(ctx, ref.jid)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			if i.IdentityKey == ref.ik && i.Trust != level {
				t.Errorf("%s's trust in %s/%d is %q, the test set %q", ref.at, ref.jid, i.DeviceID, i.Trust, level)
			}
		}
	}
	t.Logf("%d messages, %d decryptions checked in %v", sent.Load(), total, duration)
	if total == 0 {
		t.Fatal("nothing was sent")
	}
}
