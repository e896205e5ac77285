package omemo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

// The receive worker decrypts queued messages and applies device list
// notifications, one at a time and in order, in one goroutine. It never
// waits for the network: a message whose sender must be looked up first
// (an unknown device, an identity key not known yet) and a notification
// that needs a download are set aside with everything that arrives after
// them from the same account, while the network work runs in a goroutine
// of its own under Config.NetworkTimeout. Messages from everyone else go
// on meanwhile; when the work ends, the account's waiting jobs run in their
// order. One silent server or peer therefore never holds up anyone else.

// maxNetworkJobs bounds the lookups running at once; further ones wait
// for a slot (each ends within its timeout).
const maxNetworkJobs = 16

// maxParked bounds, in queue sizes, the messages waiting for lookups.
const maxParked = 16

// job is one unit of work of the receive worker.
type job struct {
	in      *inbound
	ev      *pep.Event
	barrier chan struct{}
}

// account is the bare JID whose jobs must keep their order with this one:
// the sender of a message, the owner of a device list.
func (j job) account(own jid.JID) string {
	switch {
	case j.in != nil:
		return j.in.senderString()
	case j.ev != nil:
		owner := j.ev.From.Bare()
		if owner.Equal(jid.JID{}) {
			owner = own
		}
		return owner.String()
	}
	return ""
}

// waiting holds the jobs of an account set aside while network work for it
// runs. Only the worker goroutine touches it.
type waiting struct {
	jobs []job
	// resolved records the devices looked up in this episode and the
	// result: a message that is still unresolved afterwards fails.
	resolved map[uint32]error
}

// networkDone reports the end of an account's network work to the worker.
type networkDone struct {
	account string
	// lookup is set for a sender lookup of device dev of namespace ns.
	lookup bool
	ns     string
	dev    uint32
	err    error
	// gen is the connection the work ran on.
	gen uint64
}

// workerState is the worker goroutine's own state.
type workerState struct {
	aside    map[string]*waiting
	parked   int // jobs in aside
	barriers []chan struct{}
	// spillBlocked: a spilled message found no room aside; the spill is
	// read again once a lookup ended.
	spillBlocked bool
	// offline holds the lookups that failed because the connection was
	// lost: their accounts' messages stay aside until the next
	// connection, when the lookups run again.
	offline map[string]networkDone
}

// enqueue hands a job to the worker without blocking.
func (p *Plugin) enqueue(j job) {
	select {
	case <-p.closing:
		return
	default:
	}
	started := p.Manager() != nil
	p.spill.mu.Lock()
	defer p.spill.mu.Unlock()
	if j.in != nil && started && p.spill.pending > 0 {
		// Earlier messages wait in the spill area: this one goes behind.
		if err := p.spillLocked(j.in); err != nil {
			p.report(&DecryptError{From: j.in.msg.From, ID: j.in.msg.ID, Err: fmt.Errorf("%w: %w", ErrQueueFull, err)})
		}
		return
	}
	select {
	case p.queue <- j:
		return
	default:
	}
	if j.in != nil && started {
		if err := p.spillLocked(j.in); err != nil {
			p.report(&DecryptError{From: j.in.msg.From, ID: j.in.msg.ID, Err: fmt.Errorf("%w: %w", ErrQueueFull, err)})
		}
		return
	}
	p.reportDropped(j)
}

// handleEvent receives PEP notifications in the Serve goroutine and
// queues the device list ones.
func (p *Plugin) handleEvent(ev pep.Event) {
	namespace := devicelist.NamespaceOfNode(ev.Node)
	if namespace == "" || !p.supports(namespace) {
		return
	}
	p.enqueue(job{ev: &ev})
}

// work is the receive worker: it waits for Start, then decrypts the
// queued messages and applies device list notifications in order.
func (p *Plugin) work() {
	defer close(p.workDone)
	// Nothing leaves the queue before Start, so that it holds exactly
	// QueueSize messages meanwhile.
	select {
	case <-p.ready:
	case <-p.closing:
		return
	}
	// What was decrypted before the last stop and not acknowledged comes
	// first, then what was spilled and not decrypted yet.
	p.redeliver()
	if spilled, err := p.mgr.Spilled(p.workCtx); err == nil {
		p.spill.mu.Lock()
		p.spill.pending += len(spilled)
		p.spill.mu.Unlock()
	}
	w := &workerState{aside: map[string]*waiting{}, offline: map[string]networkDone{}}
	for {
		select {
		case <-p.closing:
			return
		case <-p.reconnected:
			for acct, d := range w.offline {
				delete(w.offline, acct)
				p.startLookup(d)
			}
		case d := <-p.netDone:
			p.resume(w, d)
		case j := <-p.queue:
			if j.barrier != nil {
				w.barriers = append(w.barriers, j.barrier)
			} else {
				p.dispatch(w, j)
			}
		case <-p.spill.kick:
		}
		// Spilled messages are newer than everything in the queue.
		if len(p.queue) == 0 && p.spillPending() && !w.spillBlocked {
			p.drainSpill(w)
		}
		if len(w.aside) == 0 && !p.spillPending() {
			for _, b := range w.barriers {
				close(b)
			}
			w.barriers = w.barriers[:0]
		}
	}
}

// dispatch runs a job, or sets it aside behind its account's network work.
func (p *Plugin) dispatch(w *workerState, j job) {
	acct := j.account(p.own)
	if q, ok := w.aside[acct]; ok {
		if w.parked >= maxParked*p.cfg.QueueSize && j.in != nil {
			// Too much waits for lookups already: the message waits in
			// the store instead, behind the others.
			if j.in.spillSeq != 0 {
				p.spill.mu.Lock()
				delete(p.spill.inFlight, j.in.spillSeq)
				p.spill.mu.Unlock()
				w.spillBlocked = true
				return
			}
			p.spill.mu.Lock()
			err := p.spillLocked(j.in)
			p.spill.mu.Unlock()
			if err != nil {
				p.report(&DecryptError{From: j.in.msg.From, ID: j.in.msg.ID, Err: fmt.Errorf("%w: %w", ErrQueueFull, err)})
			}
			return
		}
		q.jobs = append(q.jobs, j)
		w.parked++
		return
	}
	p.run(w, acct, j, nil)
}

func (p *Plugin) reportDropped(j job) {
	if j.in != nil {
		p.report(&DecryptError{From: j.in.msg.From, ID: j.in.msg.ID, Err: ErrQueueFull})
		return
	}
	p.report(ErrQueueFull)
}

// run runs one job of acct; q is the account's aside entry when its
// waiting jobs are being drained. It reports whether the job started
// network work (the account's later jobs must wait for it).
func (p *Plugin) run(w *workerState, acct string, j job, q *waiting) (parked bool) {
	defer func() {
		if r := recover(); r != nil {
			p.report(fmt.Errorf("omemo: internal error in receive worker: %v", r))
			parked = false
		}
	}()
	switch {
	case j.ev != nil:
		f := p.applyEvent(j.ev, acct)
		if f == nil {
			return false
		}
		q = park(w, acct, q)
		p.startNetwork(networkDone{account: acct}, func(ctx context.Context) error {
			if err := f(ctx); err != nil {
				return fmt.Errorf("omemo: device list of %s: %w", acct, err)
			}
			return nil
		})
		return true
	case j.in != nil:
		if len(j.in.bookkeeping) > 0 && (w.parked > 0 || !p.caughtUp(j.in.room)) {
			// An earlier message waits for the network, or the archive
			// was not read up to now on this connection: the position
			// must not move past what was not handled (history.go).
			j.in.bookkeeping = nil
		}
		m, ok, lookup := p.decrypt(j.in, q)
		if lookup == nil && j.in.spillSeq != 0 {
			p.spillDone(j.in.spillSeq, !j.in.consumed)
		}
		if lookup != nil {
			q = park(w, acct, q)
			q.jobs = append([]job{j}, q.jobs...)
			w.parked++
			p.startLookup(networkDone{account: acct, lookup: true, ns: lookup.ns, dev: lookup.dev})
			return true
		}
		if ok {
			p.deliver(m)
		}
	}
	return false
}

// park returns the aside entry of acct, creating it.
func park(w *workerState, acct string, q *waiting) *waiting {
	if q == nil {
		q = &waiting{}
		w.aside[acct] = q
	}
	return q
}

// startLookup looks up the sender device of d.
func (p *Plugin) startLookup(d networkDone) {
	mgr := p.mgr
	p.startNetwork(d, func(ctx context.Context) error {
		return mgr.ResolveSender(ctx, d.ns, d.account, d.dev)
	})
}

// startNetwork runs f in a goroutine of its own, bounded by the network
// timeout, and reports its end to the worker.
func (p *Plugin) startNetwork(d networkDone, f func(context.Context) error) {
	d.gen = p.connGen()
	go func() {
		select {
		case p.netSlots <- struct{}{}:
		case <-p.closing:
			return
		}
		// A lookup is at most a device list and a round of bundle
		// downloads, each bounded by the session manager too.
		ctx, cancel := context.WithTimeout(p.workCtx, 3*p.cfg.NetworkTimeout)
		d.err = f(ctx)
		cancel()
		<-p.netSlots
		select {
		case p.netDone <- d:
		case <-p.closing:
		}
	}()
}

// resume runs the jobs that waited for an account's network work.
func (p *Plugin) resume(w *workerState, d networkDone) {
	w.spillBlocked = false
	q := w.aside[d.account]
	if q == nil {
		return
	}
	if d.lookup && d.err != nil && p.workCtx.Err() == nil &&
		(errors.Is(d.err, ErrDisconnected) || d.gen != p.connGen() || p.connected() != nil) {
		// The connection was lost: nothing is known about the sender.
		// The account's messages wait for the next connection.
		w.offline[d.account] = networkDone{account: d.account, lookup: true, ns: d.ns, dev: d.dev}
		if p.connected() == nil && d.gen != p.connGen() {
			// Connected again already.
			p.kickReconnected()
		}
		return
	}
	if d.lookup {
		if q.resolved == nil {
			q.resolved = map[uint32]error{}
		}
		q.resolved[d.dev] = d.err
	} else if d.err != nil && p.workCtx.Err() == nil {
		p.report(d.err)
	}
	for len(q.jobs) > 0 {
		j := q.jobs[0]
		q.jobs = q.jobs[1:]
		w.parked--
		if p.run(w, d.account, j, q) {
			return
		}
	}
	delete(w.aside, d.account)
}

// applyEvent feeds a device list notification of owner to the session
// manager. Work that needs no network is done at once and nil returned;
// otherwise the network work is returned, to run aside: fetching a list
// the notification does not carry, fetching it again after a retraction,
// and the own list (which may have to be republished).
func (p *Plugin) applyEvent(ev *pep.Event, owner string) func(context.Context) error {
	namespace, l, ok, err := devicelist.FromEvent(*ev)
	if !ok {
		return nil
	}
	mgr := p.mgr
	switch {
	case errors.Is(err, devicelist.ErrListRetracted):
		return func(ctx context.Context) error { return mgr.RefreshDeviceListAfterRetraction(ctx, namespace, owner) }
	case err != nil:
		return func(ctx context.Context) error { return mgr.RefreshDeviceList(ctx, namespace, owner) }
	case owner == p.ownStr:
		return func(ctx context.Context) error { return mgr.UpdateDeviceList(ctx, owner, l) }
	}
	if err := mgr.UpdateDeviceList(p.workCtx, owner, l); err != nil && p.workCtx.Err() == nil {
		p.report(fmt.Errorf("omemo: device list of %s: %w", owner, err))
	}
	return nil
}

// senderLookup is the network work a message waits for.
type senderLookup struct {
	ns  string
	dev uint32
}

// decrypt decrypts a queued message and checks it, without network work.
// ok is false when the message is dropped: rejected (reported to OnError)
// or empty. lookup is set when the sender must be looked up first; q holds
// what earlier lookups for the account found.
func (p *Plugin) decrypt(in *inbound, q *waiting) (_ Message, ok bool, lookup *senderLookup) {
	mgr := p.mgr
	ctx := p.workCtx
	own := p.ownStr
	enc := in.choose(own, mgr.DeviceID())
	fail := func(err error) (Message, bool, *senderLookup) {
		p.report(&DecryptError{From: in.msg.From, ID: in.msg.ID, Namespace: enc.Namespace, Err: err})
		return Message{}, false, nil
	}
	sender := in.senderString()
	if in.ownNick && enc.SID == mgr.DeviceID() && !in.archived {
		// The room's copy of a message of this device: it cannot be
		// decrypted (no key for this device), the body is the one sent.
		id := in.originID
		if id == "" {
			id = in.msg.ID
		}
		body, ok := p.takeReflection(in.room, id)
		if !ok {
			return fail(fmt.Errorf("%w: %q in %s", ErrForgedReflection, id, in.room))
		}
		return Message{Message: in.msg, Body: body, Payload: legacyPayload(body), SenderDevice: enc.SID, IdentityKey: mgr.IdentityKey(),
			Namespace: enc.Namespace, Sent: true, Reflected: true, OriginID: in.originID, Room: in.room, Nick: in.nick, RealFrom: p.own,
			Trust: trust.Trusted, TrustLevel: trust.LevelTrusted}, true, nil
	}
	if sender == own && enc.SID == mgr.DeviceID() {
		// Our own message, echoed back by the archive.
		return Message{}, false, nil
	}
	var out Message
	var buildErr error
	keep := session.Keep(func(dec *session.Decrypted) ([]byte, error) {
		if dec.Empty {
			return nil, nil // key transport: consumed by the session manager
		}
		out, buildErr = p.buildMessage(in, enc, dec)
		if buildErr != nil {
			return nil, buildErr
		}
		return marshalDelivery(&out)
	})
	opts := append([]session.DecryptOption{keep, session.Also(in.bookkeeping...)}, unspillOpt(in)...)
	dec, err := mgr.DecryptOffline(ctx, sender, enc, opts...)
	in.consumed = err == nil
	if errors.Is(err, session.ErrSenderUnresolved) {
		if q != nil {
			if lerr, tried := q.resolved[enc.SID]; tried {
				if lerr == nil {
					lerr = err
				}
				return fail(fmt.Errorf("%w: %w", session.ErrSenderNotFound, lerr))
			}
		}
		return Message{}, false, &senderLookup{ns: enc.Namespace, dev: enc.SID}
	}
	if buildErr != nil {
		return fail(buildErr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return Message{}, false, nil
		}
		dup := errors.Is(err, backends.ErrDuplicateMessage)
		notForUs := errors.Is(err, session.ErrMessageNotForUs)
		// Nothing is lost when an archived or offline message was
		// already received (the archive and offline storage overlap with
		// live delivery), an archived message was sent before this
		// device existed, or a key transport message is for another
		// device of the account (they go to the bare JID, so every
		// device sees them).
		if dup && (in.archived || !in.delay.IsZero() || enc.Payload == nil) ||
			notForUs && (in.archived || enc.Payload == nil) {
			p.cfg.Logger.Debug("omemo: skipping message", "id", in.msg.ID, "from", in.msg.From.String(), "err", err)
			return Message{}, false, nil
		}
		return fail(err)
	}
	if dec.Empty {
		return Message{}, false, nil
	}
	out.DeliveryID = dec.InboxSeq
	// The affixes the envelope check tolerated reach OnError as warnings
	// (never as a *DecryptError, which means rejected), before the Handler
	// sees the message.
	for _, bad := range out.ignored {
		p.report(fmt.Errorf("omemo: %s message %q from %s delivered, its %s affix ignored: %w", dec.Namespace, in.msg.ID, out.From, bad.Affix, bad))
	}
	out.ignored = nil
	return out, true, nil
}

// buildMessage makes the Message of a decrypted message and checks it
// (the OMEMO 2 envelope against the stanza). It runs in the transaction
// that commits the decryption: a message it refuses leaves no trace.
func (p *Plugin) buildMessage(in *inbound, enc *encrypted.Encrypted, dec *session.Decrypted) (Message, error) {
	out := Message{
		Message:      in.msg,
		SenderDevice: enc.SID,
		IdentityKey:  dec.Sender.IdentityKey,
		Namespace:    dec.Namespace,
		Trust:        dec.Sender.Level,
		TrustLevel:   dec.Sender.Trust,
		KeyExchange:  dec.KeyExchange,
		Carbon:       in.carbon,
		Sent:         in.sent,
		Archived:     in.archived,
		OriginID:     in.originID,
		ArchiveID:    in.archiveID,
		Delay:        in.delay,
		Room:         in.room,
		Nick:         in.nick,
	}
	if !in.room.Equal(jid.JID{}) {
		out.RealFrom = in.sender
	}
	if out.From.Equal(jid.JID{}) {
		out.From = in.sender
	}
	switch dec.Namespace {
	case ns.OMEMO2:
		env, err := sce.Parse(dec.Plaintext)
		if err != nil {
			return Message{}, err
		}
		to := in.msg.To.Bare()
		if to.Equal(jid.JID{}) {
			to = p.own
		}
		if !in.room.Equal(jid.JID{}) {
			// A room message names the room in <to>: a server cannot turn
			// it into a private message or the other way round.
			to = in.room
		}
		// XEP-0384 requires <rpad> (it may be empty: XEP-0420 allows a
		// 0-length padding). An affix that is present but unparseable
		// counts as absent, unless RequireAffixes makes the plugin strict.
		policy := sce.Policy{
			RequireRPad:   true,
			RequireFrom:   p.cfg.RequireAffixes,
			RequireTo:     p.cfg.RequireAffixes,
			StrictAffixes: p.cfg.RequireAffixes,
		}
		if err := env.Check(policy, in.sender, to); err != nil {
			return Message{}, err
		}
		if len(env.Dropped) > 0 {
			p.cfg.Logger.Debug("omemo: dropped server-processed elements from the envelope", "id", in.msg.ID, "from", in.sender.String(), "elements", len(env.Dropped))
		}
		body, err := contentBody(env)
		if err != nil {
			return Message{}, err
		}
		out.ignored = env.Invalid
		out.Body = body
		out.Payload = bytes.Clone(env.Content)
		out.SentAt = env.Time // zero if absent or invalid
		out.TimeMismatch = p.timeMismatch(env.Time, in.delay)
	case ns.Legacy:
		out.Body = strings.ToValidUTF8(string(dec.Plaintext), "\uFFFD")
		out.Payload = legacyPayload(out.Body)
	default:
		return Message{}, fmt.Errorf("%w: %s", session.ErrUnknownNamespace, dec.Namespace)
	}
	return out, nil
}

// timeMismatch compares the sender's signed sending time with the one the
// stanza gives (XEP-0420 <time>): the own server's delay stamp for offline
// and archived messages, the arrival for live ones.
func (p *Plugin) timeMismatch(sent, delay time.Time) bool {
	if sent.IsZero() || p.cfg.MaxClockSkew < 0 {
		return false
	}
	ref := delay
	if ref.IsZero() {
		ref = p.cfg.Now()
	}
	d := ref.Sub(sent)
	return d > p.cfg.MaxClockSkew || -d > p.cfg.MaxClockSkew
}

// barrier waits until the worker has processed everything queued before
// the call, including what waits for network work.
func (p *Plugin) barrier(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case p.queue <- job{barrier: done}:
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-p.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}
