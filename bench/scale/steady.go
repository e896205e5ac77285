package main

import (
	"context"
	"errors"
	"fmt"

	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/omemo/store"
)

// chainLength is how many messages the peer sends in one sending chain
// before the account answers: below the heartbeat threshold, so that the
// account never sends a heartbeat, and only the first message of a chain
// (untimed) makes a DH ratchet step.
const chainLength = 50

// device is a Manager and the JID it serves.
type device struct {
	jid string
	m   *session.Manager
	st  store.Store
}

// pair is the account under test (on the store of the case) and one peer
// (in memory) on one server, with a confirmed session both ways.
type pair struct {
	srv        *sessiontest.Server
	alice, bob *device
}

func (p *pair) other(d *device) *device {
	if d == p.alice {
		return p.bob
	}
	return p.alice
}

// send encrypts a message from d to the other device and returns what the
// other device receives.
func (p *pair) send(ctx context.Context, d *device, text string) (*encrypted.Encrypted, error) {
	pts := map[string][]byte{}
	for ns, v := range plaintext {
		pts[ns] = append([]byte(text+": "), v...)
	}
	res, err := d.m.Encrypt(ctx, []string{p.other(d).jid}, pts, nil)
	if err != nil {
		return nil, err
	}
	if len(res.Messages) != 1 || len(res.Messages[0].Keys) != 1 {
		return nil, fmt.Errorf("%s: Encrypt produced %d messages", d.jid, len(res.Messages))
	}
	return res.Messages[0], nil
}

// drain delivers the messages the Managers sent in the background (key
// exchange answers, heartbeats) until there are none.
func (p *pair) drain(ctx context.Context) error {
	for {
		n := 0
		for _, d := range []*device{p.alice, p.bob} {
			if err := d.m.Flush(ctx); err != nil {
				return err
			}
		}
		for _, d := range []*device{p.alice, p.bob} {
			for _, dl := range p.srv.Inbox(d.jid) {
				n++
				if _, err := d.m.Decrypt(ctx, dl.From, dl.Message); err != nil {
					return fmt.Errorf("%s decrypting a background message: %w", d.jid, err)
				}
			}
		}
		if n == 0 {
			return nil
		}
	}
}

// exchange sends text from d to the other device, which decrypts it.
func (p *pair) exchange(ctx context.Context, d *device, text string) error {
	msg, err := p.send(ctx, d, text)
	if err != nil {
		return err
	}
	if _, err := p.other(d).m.Decrypt(ctx, d.jid, msg); err != nil {
		return err
	}
	return p.drain(ctx)
}

// run measures the steady state of the account of a pair on st.
type run struct {
	p     *pair
	st    store.Store
	trips func() int64 // round trips to the store's server, nil if none
	queue []*encrypted.Encrypted
	floor samples
}

// count is the outcome of repeated operations.
type count struct {
	s       samples
	commits uint64 // store commits
	trips   int64  // round trips to the server
	n       int
}

func (c *count) perOp() (commits, trips float64) {
	commits, trips = float64(c.commits)/float64(c.n), float64(c.trips)/float64(c.n)
	if c.trips < 0 {
		trips = -1
	}
	return commits, trips
}

// op runs f once, counting its commits and round trips, and with probe the
// commit floor after it.
func (r *run) op(c *count, probe bool, f func() error) error {
	c0 := commits(r.st)
	var t0 int64
	if r.trips != nil {
		t0 = r.trips()
	}
	if err := c.s.measure(f); err != nil {
		return err
	}
	c.commits += commits(r.st) - c0
	if r.trips != nil {
		c.trips += r.trips() - t0
	} else {
		c.trips = -1
	}
	c.n++
	if probe {
		return r.floor.measure(func() error { return floorCommit(context.Background(), r.st) })
	}
	return nil
}

// encrypts encrypts n messages to the peer, which decrypts them (untimed)
// afterwards.
func (r *run) encrypts(ctx context.Context, n int, probe bool) (*count, error) {
	c := &count{}
	var sent []*encrypted.Encrypted
	for range n {
		err := r.op(c, probe, func() error {
			res, err := r.p.alice.m.Encrypt(ctx, []string{r.p.bob.jid}, plaintext, nil)
			if err == nil {
				sent = append(sent, res.Messages[0])
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	for _, msg := range sent {
		if _, err := r.p.bob.m.Decrypt(ctx, r.p.alice.jid, msg); err != nil {
			return nil, err
		}
	}
	return c, r.p.drain(ctx)
}

// refill starts a new sending chain of the peer: the account answers, the
// peer sends chainLength messages, and the account decrypts the first
// (a DH ratchet step).
func (r *run) refill(ctx context.Context) error {
	if err := r.p.exchange(ctx, r.p.alice, "next chain"); err != nil {
		return err
	}
	for range chainLength {
		msg, err := r.p.send(ctx, r.p.bob, "steady")
		if err != nil {
			return err
		}
		r.queue = append(r.queue, msg)
	}
	_, err := r.p.alice.m.Decrypt(ctx, r.p.bob.jid, r.queue[0])
	r.queue = r.queue[1:]
	return err
}

// decrypts decrypts n messages of the peer in chains of chainLength; with
// inbox each is stored in the inbox and acknowledged, as the plugin does
// (the acknowledgement rides on the next decryption's commit).
func (r *run) decrypts(ctx context.Context, n int, inbox, probe bool) (*count, error) {
	var opts []session.DecryptOption
	if inbox {
		opts = append(opts, session.Keep(func(dec *session.Decrypted) ([]byte, error) {
			return append([]byte("record of "), dec.Plaintext...), nil
		}))
	}
	c := &count{}
	r.queue = nil
	for range n {
		if len(r.queue) == 0 {
			if err := r.refill(ctx); err != nil {
				return nil, err
			}
		}
		var dec *session.Decrypted
		err := r.op(c, probe, func() (err error) {
			dec, err = r.p.alice.m.Decrypt(ctx, r.p.bob.jid, r.queue[0], opts...)
			if err == nil && inbox {
				r.p.alice.m.Ack(dec.InboxSeq)
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if dec.Empty || dec.KeyExchange || inbox && dec.InboxSeq == 0 {
			return nil, fmt.Errorf("unexpected message: %+v", dec)
		}
		r.queue = r.queue[1:]
	}
	return c, nil
}

// runSteady measures steady-state Encrypt and Decrypt of an account on the
// store of the case, with one peer device: latency (interleaved with the
// commit floor), store commits and, for PostgreSQL, round trips to the
// server per message. The round trips are counted in a second pass through
// a counting proxy, so that the proxy's own delay is not in the latency.
func runSteady(ctx context.Context, o *options, b backing) (*result, error) {
	res := &result{Kind: "steady", Store: b.name(), Backends: len(factories)}
	errs := &errorSink{}
	p := &pair{srv: sessiontest.NewServer()}
	st, err := b.single(ctx, false)
	if err != nil {
		return nil, err
	}
	p.alice = &device{jid: ownJID, st: st}
	if p.alice.m, err = session.New(ctx, st, p.srv.Network(ownJID), config(ownJID, errs)); err != nil {
		st.Close()
		return nil, err
	}
	p.bob = &device{jid: "bob@example.net", st: store.NewMemory()}
	if p.bob.m, err = session.New(ctx, p.bob.st, p.srv.Network(p.bob.jid), config(p.bob.jid, errs)); err != nil {
		return nil, err
	}
	defer p.bob.m.Close()
	for _, d := range []*device{p.alice, p.bob} {
		if err := d.m.RefreshDeviceLists(ctx, p.other(d).jid); err != nil {
			return nil, err
		}
	}
	if err := p.exchange(ctx, p.alice, "hello"); err != nil {
		return nil, err
	}
	if err := p.exchange(ctx, p.bob, "hello"); err != nil {
		return nil, err
	}

	if err := o.startProfile(); err != nil {
		return nil, err
	}
	r := &run{p: p, st: st}
	enc, err := r.encrypts(ctx, o.messages, true)
	if err != nil {
		return nil, err
	}
	dec, err := r.decrypts(ctx, o.messages, false, true)
	if err != nil {
		return nil, err
	}
	inbox, err := r.decrypts(ctx, o.messages, true, true)
	if err != nil {
		return nil, err
	}
	res.Enc, res.Dec, res.Inbox, res.Floor = enc.s.stat(), dec.s.stat(), inbox.s.stat(), r.floor.stat()
	res.EncCommits, res.EncTrips = enc.perOp()
	res.DecCommits, res.DecTrips = dec.perOp()
	res.InboxCommits, res.InboxTrips = inbox.perOp()
	p.alice.m.Close()
	if err := st.Close(); err != nil {
		return nil, err
	}

	// The round trips, through the counting proxy.
	cs, err := b.counted(ctx)
	if err != nil || cs == nil {
		return res, errors.Join(err, errs.err())
	}
	defer cs.Close()
	if p.alice.m, err = session.New(ctx, cs, p.srv.Network(ownJID), config(ownJID, errs)); err != nil {
		return nil, err
	}
	defer p.alice.m.Close()
	r = &run{p: p, st: cs, trips: cs.trips}
	// Warm the caches first, as in the first pass.
	if _, err := r.encrypts(ctx, 10, false); err != nil {
		return nil, err
	}
	if enc, err = r.encrypts(ctx, o.messages, false); err != nil {
		return nil, err
	}
	if dec, err = r.decrypts(ctx, o.messages, false, false); err != nil {
		return nil, err
	}
	if inbox, err = r.decrypts(ctx, o.messages, true, false); err != nil {
		return nil, err
	}
	_, res.EncTrips = enc.perOp()
	_, res.DecTrips = dec.perOp()
	_, res.InboxTrips = inbox.perOp()
	return res, errs.err()
}
