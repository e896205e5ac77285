package omemo

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"sync"
	"time"

	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
	"mellium.im/xmlstream"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Received messages beyond the in-memory queue are not dropped: once Start
// has run, they are stored in the spill area of the store, in arrival
// order, and every message that arrives after them goes there too until
// the worker has caught up, so that the order is kept. The spill write
// happens in the goroutine of Serve and takes none of the Manager's locks:
// a Handler that calls Send (whose IQs need Serve) cannot deadlock with it.

// spillState tracks the spill area. The mutex is held while Serve decides
// between the queue and the spill and writes a spill entry.
type spillState struct {
	mu       sync.Mutex
	pending  int             // spilled messages not processed yet
	inFlight map[uint64]bool // spilled messages handed to the worker
	kick     chan struct{}
}

// spillRecord is a received message as the spill area stores it.
type spillRecord struct {
	From, To, ID, Type string
	Sender             string
	Encs               [][]byte // <encrypted> elements, XML
	OriginID           string
	ArchiveID          string
	Delay              time.Time
	Carbon, Sent       bool
	Archived           bool
	Room, Nick         string
	OwnNick            bool
	Bookkeeping        [][2]string
}

func marshalSpill(in *inbound) ([]byte, error) {
	r := spillRecord{
		From: in.msg.From.String(), To: in.msg.To.String(), ID: in.msg.ID, Type: string(in.msg.Type),
		Sender: in.sender.String(), OriginID: in.originID, ArchiveID: in.archiveID, Delay: in.delay,
		Carbon: in.carbon, Sent: in.sent, Archived: in.archived, Room: in.room.String(), Nick: in.nick, OwnNick: in.ownNick,
		Bookkeeping: in.bookkeeping,
	}
	for _, e := range in.encs {
		toks, err := xmlstream.ReadAll(e.TokenReader())
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		enc := xml.NewEncoder(&b)
		for _, t := range toks {
			if err := enc.EncodeToken(t); err != nil {
				return nil, err
			}
		}
		if err := enc.Flush(); err != nil {
			return nil, err
		}
		r.Encs = append(r.Encs, b.Bytes())
	}
	return json.Marshal(r)
}

func unmarshalSpill(raw []byte) (*inbound, error) {
	var r spillRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, err
	}
	parse := func(s string) (jid.JID, error) {
		if s == "" {
			return jid.JID{}, nil
		}
		return jid.Parse(s)
	}
	in := &inbound{originID: r.OriginID, archiveID: r.ArchiveID, delay: r.Delay, carbon: r.Carbon, sent: r.Sent,
		archived: r.Archived, nick: r.Nick, ownNick: r.OwnNick, bookkeeping: r.Bookkeeping}
	var err error
	if in.msg.From, err = parse(r.From); err != nil {
		return nil, err
	}
	if in.msg.To, err = parse(r.To); err != nil {
		return nil, err
	}
	if in.sender, err = parse(r.Sender); err != nil {
		return nil, err
	}
	if in.room, err = parse(r.Room); err != nil {
		return nil, err
	}
	in.msg.ID, in.msg.Type = r.ID, stanza.MessageType(r.Type)
	for _, x := range r.Encs {
		d := xml.NewDecoder(bytes.NewReader(x))
		tok, err := d.Token()
		if err != nil {
			return nil, err
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			return nil, fmt.Errorf("%w: spilled element", ErrMalformedStanza)
		}
		e, err := encrypted.Parse(d, start)
		if err != nil {
			return nil, err
		}
		in.encs = append(in.encs, e)
	}
	if len(in.encs) == 0 {
		return nil, fmt.Errorf("%w: spilled message without <encrypted>", ErrMalformedStanza)
	}
	return in, nil
}

// trySpill stores a received message that found the queue full, or came
// while earlier ones wait in the spill area. It reports false when the
// message must take the queue instead (nothing spilled). The caller holds
// p.spill.mu.
func (p *Plugin) spillLocked(in *inbound) error {
	mgr := p.mgr
	raw, err := marshalSpill(in)
	if err != nil {
		return err
	}
	ctx, done := bounded(p.workCtx, p.cfg.NetworkTimeout)
	defer done()
	if _, err := mgr.Spill(ctx, raw); err != nil {
		return err
	}
	p.spill.pending++
	select {
	case p.spill.kick <- struct{}{}:
	default:
	}
	return nil
}

// drainSpill hands the spilled messages to the worker, in order. It returns
// when none is left that the worker does not have already.
func (p *Plugin) drainSpill(w *workerState) {
	for {
		entries, err := p.mgr.Spilled(p.workCtx)
		if err != nil {
			p.report(fmt.Errorf("omemo: reading the spilled messages: %w", err))
			return
		}
		handed := 0
		for _, e := range entries {
			p.spill.mu.Lock()
			busy := p.spill.inFlight[e.Seq]
			if !busy {
				p.spill.inFlight[e.Seq] = true
			}
			p.spill.mu.Unlock()
			if busy {
				continue
			}
			handed++
			in, err := unmarshalSpill(e.Record)
			if err != nil {
				p.report(fmt.Errorf("omemo: spilled message %d unreadable, dropped: %w", e.Seq, err))
				p.spillDone(e.Seq, true)
				continue
			}
			in.spillSeq = e.Seq
			p.dispatch(w, job{in: in})
			if w.spillBlocked {
				return
			}
		}
		if handed == 0 {
			return
		}
	}
}

// spillDone forgets a processed spill entry; drop removes it from the
// store too (when its decryption did not).
func (p *Plugin) spillDone(seq uint64, drop bool) {
	if drop {
		ctx, done := bounded(p.workCtx, p.cfg.NetworkTimeout)
		if err := p.mgr.DropSpilled(ctx, seq); err != nil && p.workCtx.Err() == nil {
			p.report(fmt.Errorf("omemo: removing spilled message %d: %w", seq, err))
		}
		done()
	}
	p.spill.mu.Lock()
	delete(p.spill.inFlight, seq)
	p.spill.pending--
	p.spill.mu.Unlock()
}

// spillPending reports whether spilled messages wait.
func (p *Plugin) spillPending() bool {
	p.spill.mu.Lock()
	defer p.spill.mu.Unlock()
	return p.spill.pending > 0
}

// unspillOpt removes the spill entry of in with its decryption.
func unspillOpt(in *inbound) []session.DecryptOption {
	if in.spillSeq == 0 {
		return nil
	}
	return []session.DecryptOption{session.Unspill(in.spillSeq)}
}
