package omemo

import (
	"context"
	"encoding/json"
	"fmt"
	"mellium.im/omemo/media"
	"time"

	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Delivery: every decrypted message is stored with the ratchet step that
// decrypted it (session.Keep) and handed to the Handler with its
// DeliveryID; acknowledged, the stored copy (and its plaintext) is
// deleted. Messages not acknowledged when the process ended are handed
// over again, flagged Redelivered, at the next Start, before new ones.

// ackFlushDelay is how long acknowledgements wait for a write to ride on
// before they are committed on their own.
const ackFlushDelay = 200 * time.Millisecond

// deliveryRecord is what the inbox stores of a Message.
type deliveryRecord struct {
	From, To, ID, Type string
	Body               string
	Payload            []byte
	SenderDevice       uint32
	IdentityKey        []byte
	Namespace          string
	Trust              trust.Level
	TrustLevel         string
	KeyExchange        bool
	Carbon, Sent       bool
	Archived           bool
	OriginID           string
	ArchiveID          string
	Delay, SentAt      time.Time
	TimeMismatch       bool
	Room, RealFrom     string
	Nick               string
}

func marshalDelivery(m *Message) ([]byte, error) {
	return json.Marshal(deliveryRecord{
		From: m.From.String(), To: m.To.String(), ID: m.ID, Type: string(m.Type),
		Body: m.Body, Payload: m.Payload, SenderDevice: m.SenderDevice, IdentityKey: m.IdentityKey[:],
		Namespace: m.Namespace, Trust: m.Trust, TrustLevel: m.TrustLevel, KeyExchange: m.KeyExchange,
		Carbon: m.Carbon, Sent: m.Sent, Archived: m.Archived, OriginID: m.OriginID, ArchiveID: m.ArchiveID,
		Delay: m.Delay, SentAt: m.SentAt, TimeMismatch: m.TimeMismatch,
		Room: m.Room.String(), RealFrom: m.RealFrom.String(), Nick: m.Nick,
	})
}

func unmarshalDelivery(raw []byte) (Message, error) {
	var r deliveryRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return Message{}, err
	}
	parse := func(s string) (jid.JID, error) {
		if s == "" {
			return jid.JID{}, nil
		}
		return jid.Parse(s)
	}
	var m Message
	var err error
	if m.From, err = parse(r.From); err != nil {
		return Message{}, err
	}
	if m.To, err = parse(r.To); err != nil {
		return Message{}, err
	}
	if m.Room, err = parse(r.Room); err != nil {
		return Message{}, err
	}
	if m.RealFrom, err = parse(r.RealFrom); err != nil {
		return Message{}, err
	}
	m.ID, m.Type = r.ID, stanza.MessageType(r.Type)
	m.Body, m.Payload, m.SenderDevice = r.Body, r.Payload, r.SenderDevice
	copy(m.IdentityKey[:], r.IdentityKey)
	m.Namespace, m.Trust, m.TrustLevel, m.KeyExchange = r.Namespace, r.Trust, r.TrustLevel, r.KeyExchange
	m.Carbon, m.Sent, m.Archived, m.OriginID, m.ArchiveID = r.Carbon, r.Sent, r.Archived, r.OriginID, r.ArchiveID
	m.Delay, m.SentAt, m.TimeMismatch, m.Nick = r.Delay, r.SentAt, r.TimeMismatch, r.Nick
	return m, nil
}

// deliver hands a message to the Handler and, unless the application
// acknowledges itself, acknowledges it when the Handler returns.
func (p *Plugin) deliver(m Message) {
	if l, err := media.ParseBody(m.Body); err == nil {
		m.File = l
	}
	h := p.currentHandler()
	if h != nil {
		h.HandleOMEMO(m)
	}
	if m.DeliveryID != 0 && !p.cfg.ManualAck {
		p.ack(m.DeliveryID)
	}
}

// Ack acknowledges messages by DeliveryID (with Config.ManualAck): their
// stored copies are deleted and they are not handed over again. It may be
// called from any goroutine, also from the Handler.
func (p *Plugin) Ack(ids ...uint64) error {
	if _, err := p.manager(); err != nil {
		return err
	}
	p.ack(ids...)
	return nil
}

func (p *Plugin) ack(ids ...uint64) {
	p.mgr.Ack(ids...)
	p.ackMu.Lock()
	defer p.ackMu.Unlock()
	if p.ackTimer == nil {
		p.ackTimer = time.AfterFunc(ackFlushDelay, p.flushAcks)
	}
}

// flushAcks commits pending acknowledgements that no decryption carried.
func (p *Plugin) flushAcks() {
	p.ackMu.Lock()
	p.ackTimer = nil
	p.ackMu.Unlock()
	ctx, done := bounded(p.workCtx, p.cfg.NetworkTimeout)
	defer done()
	if err := p.mgr.FlushAcks(ctx); err != nil && p.workCtx.Err() == nil {
		p.report(fmt.Errorf("omemo: committing acknowledgements: %w", err))
	}
}

// redeliver hands over, in order, the stored messages that were not
// acknowledged before the last stop.
func (p *Plugin) redeliver() {
	entries, err := p.mgr.Inbox(p.workCtx)
	if err != nil {
		if p.workCtx.Err() == nil {
			p.report(fmt.Errorf("omemo: reading the stored messages: %w", err))
		}
		return
	}
	for _, e := range entries {
		m, err := unmarshalDelivery(e.Record)
		if err != nil {
			// A record this version cannot read: drop it rather than
			// block every start.
			p.report(fmt.Errorf("omemo: stored message %d unreadable, dropped: %w", e.Seq, err))
			p.mgr.Ack(e.Seq)
			continue
		}
		m.DeliveryID, m.Redelivered = e.Seq, true
		p.deliver(m)
	}
}

// closeAcks commits the pending acknowledgements at Close.
func (p *Plugin) closeAcks(ctx context.Context) {
	p.ackMu.Lock()
	if p.ackTimer != nil {
		p.ackTimer.Stop()
		p.ackTimer = nil
	}
	p.ackMu.Unlock()
	if p.mgr != nil {
		_ = p.mgr.FlushAcks(ctx)
	}
}
