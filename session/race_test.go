package session_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/omemo/trust"
)

// TestConcurrentUse runs a storm of concurrent operations on established
// sessions (meant for -race): every device encrypts from several goroutines
// at once to several accounts (so several goroutines encrypt to the same
// device at the same time), every receiving device decrypts from several
// goroutines at once (so messages of the same sending device are decrypted
// concurrently, out of order), a third of the messages are delivered twice
// and both copies raced, and device list updates, device queries, trust
// changes and chain length queries run alongside.
//
// Afterwards every message was decrypted exactly once with the right
// plaintext, every duplicate failed with backends.ErrDuplicateMessage, a
// replay of everything fails the same way, and no ratchet forked: a final
// exchange in both directions between every pair of devices still works
// on the existing sessions, without a new key exchange.
func TestConcurrentUse(t *testing.T) {
	const (
		accounts   = 4
		perAccount = 2
		senders    = 3 // encrypting goroutines per device
		perSender  = 6 // messages per encrypting goroutine
		decrypters = 3 // decrypting goroutines per device
		phantom    = 4242
	)
	ctx := context.Background()
	net := newNetwork()
	for a := range accounts {
		for range perAccount {
			net.add(t, fmt.Sprintf("user%d@example.org", a), nil)
		}
	}
	net.establish(t)
	jids := net.jids()

	type msgKey struct {
		to addr
		id int
	}
	var (
		mu        sync.Mutex
		want      = map[msgKey]string{}
		wantDups  = map[msgKey]int{}
		got       = map[msgKey]int{}
		gotDups   = map[msgKey]int{}
		delivered = map[addr][]inbound{}
	)
	queue := map[addr]chan inbound{}
	for a := range net.by {
		queue[a] = make(chan inbound, 2*len(net.devs)*senders*perSender)
	}

	var nextID atomic.Int64
	var encWG, decWG, chaosWG sync.WaitGroup
	stop := make(chan struct{})

	// Receivers.
	for a, d := range net.by {
		for range decrypters {
			decWG.Add(1)
			go func() {
				defer decWG.Done()
				for in := range queue[a] {
					dec, err := d.m.Decrypt(ctx, in.from, in.msg)
					k := msgKey{a, in.id}
					mu.Lock()
					switch {
					case err == nil:
						got[k]++
						if string(dec.Plaintext) != in.want || dec.KeyExchange {
							t.Errorf("%v: message %d decrypted to %q (key exchange %v), want %q", a, in.id, dec.Plaintext, dec.KeyExchange, in.want)
						}
					case errors.Is(err, backends.ErrDuplicateMessage):
						gotDups[k]++
					default:
						t.Errorf("%v decrypting message %d from %s: %v", a, in.id, in.from, err)
					}
					mu.Unlock()
				}
			}()
		}
	}

	// Senders.
	for _, d := range net.devs {
		for range senders {
			encWG.Add(1)
			go func() {
				defer encWG.Done()
				for range perSender {
					id := int(nextID.Add(1))
					var to []string
					for i, j := range jids {
						if j != d.jid && (id>>i)&1 == 0 {
							to = append(to, j)
						}
					}
					if len(to) == 0 {
						to = []string{jids[(id+1)%len(jids)]}
						if to[0] == d.jid {
							to[0] = jids[(id+2)%len(jids)]
						}
					}
					text := fmt.Sprintf("message %d from %s/%d", id, d.jid, d.m.DeviceID())
					_, err := d.m.Encrypt(ctx, to, pt2(text), func(r *session.EncryptResult) error {
						route(r, func(a addr, msg *encrypted.Encrypted) {
							in := inbound{from: d.jid, msg: msg, want: text, id: id}
							k := msgKey{a, id}
							mu.Lock()
							want[k] = text
							delivered[a] = append(delivered[a], in)
							dup := id%3 == 0
							if dup {
								wantDups[k]++
							}
							mu.Unlock()
							queue[a] <- in
							if dup {
								queue[a] <- in
							}
						})
						return nil
					})
					if err != nil {
						t.Errorf("%s/%d encrypting message %d: %v", d.jid, d.m.DeviceID(), id, err)
					}
				}
			}()
		}
	}

	// Device list updates, device queries, trust changes and chain
	// lengths, alongside.
	for i, d := range net.devs {
		chaosWG.Add(1)
		go func() {
			defer chaosWG.Done()
			for n := 0; ; n++ {
				if n >= 4 {
					select {
					case <-stop:
						return
					default:
					}
				}
				jid := jids[(i+n)%len(jids)]
				l := net.srv.DeviceList(twomemo.Namespace, jid)
				if n%2 == 0 && jid != d.jid {
					l.Devices = append(l.Devices, devicelist.Device{ID: phantom})
				}
				if err := d.m.UpdateDeviceList(ctx, jid, l); err != nil {
					t.Errorf("UpdateDeviceList: %v", err)
					return
				}
				infos, err := d.m.Devices(ctx, jid)
				if err != nil {
					t.Errorf("Devices: %v", err)
					return
				}
				real := 0
				for _, info := range infos {
					if info.DeviceID == phantom {
						t.Errorf("Devices lists the phantom device without identity key")
						continue
					}
					real++
					if info.JID == d.jid && info.DeviceID == d.m.DeviceID() {
						continue
					}
					if info.Level != trust.Trusted {
						t.Errorf("%s/%d: trust level %v", info.JID, info.DeviceID, info.Level)
					}
					level := trust.LevelBlindlyTrusted
					if n%3 == 0 {
						level = trust.LevelTrusted
					}
					if err := d.m.SetTrust(ctx, info.JID, info.IdentityKey, level); err != nil {
						t.Errorf("SetTrust: %v", err)
					}
					lengths, err := d.m.SendingChainLength(ctx, info.JID, info.DeviceID)
					if err != nil {
						t.Errorf("SendingChainLength: %v", err)
					} else if _, ok := lengths[twomemo.Namespace]; !ok {
						t.Errorf("no session with %s/%d", info.JID, info.DeviceID)
					}
				}
				if real != perAccount {
					t.Errorf("Devices(%s) = %d devices, want %d", jid, real, perAccount)
				}
			}
		}()
	}

	encWG.Wait()
	for _, ch := range queue {
		close(ch)
	}
	decWG.Wait()
	close(stop)
	chaosWG.Wait()
	if t.Failed() {
		t.FailNow()
	}

	if len(want) == 0 {
		t.Fatal("nothing was sent")
	}
	for k, text := range want {
		if got[k] != 1 {
			t.Errorf("%v: message %d (%q) decrypted %d times, want once", k.to, k.id, text, got[k])
		}
		if gotDups[k] != wantDups[k] {
			t.Errorf("%v: message %d: %d duplicate failures, want %d", k.to, k.id, gotDups[k], wantDups[k])
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%v: unexpected message %d", k.to, k.id)
		}
	}
	t.Logf("%d messages, %d deliveries, %d concurrent duplicates", nextID.Load(), len(want), len(gotDups))

	// A replay of everything fails; no message decrypts twice.
	for a, ins := range delivered {
		for _, in := range ins {
			dec, err := net.by[a].m.Decrypt(ctx, in.from, in.msg)
			if !errors.Is(err, backends.ErrDuplicateMessage) {
				t.Errorf("%v: replay of message %d: %v (plaintext %q), want ErrDuplicateMessage", a, in.id, err, dec.Plaintext)
			}
		}
	}

	// Let the phantom device go, deliver the empty messages sent in the
	// background, then exchange messages between every pair of devices
	// in both directions, twice: the sessions survived the storm.
	for _, d := range net.devs {
		for _, j := range jids {
			if err := d.m.UpdateDeviceList(ctx, j, net.srv.DeviceList(twomemo.Namespace, j)); err != nil {
				t.Fatal(err)
			}
		}
	}
	net.exchange(t, map[addr][]inbound{})
	for round := range 2 {
		for _, d := range net.devs {
			var to []string
			for _, j := range jids {
				if j != d.jid {
					to = append(to, j)
				}
			}
			pending := map[addr][]inbound{}
			res := net.encryptTo(t, d, fmt.Sprintf("round %d from %s/%d", round, d.jid, d.m.DeviceID()), pending, to...)
			if n := len(res.Recipients); n != len(net.devs)-1 {
				t.Fatalf("%s/%d reached %d devices, want %d", d.jid, d.m.DeviceID(), n, len(net.devs)-1)
			}
			for _, k := range res.Messages[0].Keys {
				if k.KeyExchange {
					t.Fatalf("%s/%d: new key exchange with %s/%d after the storm", d.jid, d.m.DeviceID(), k.JID, k.RID)
				}
			}
			net.exchange(t, pending)
		}
	}
}
