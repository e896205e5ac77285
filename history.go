package omemo

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"mellium.im/omemo/store"
	"mellium.im/xmpp"
	"mellium.im/xmpp/history"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Archive positions. The plugin remembers, in the store, the XEP-0313 id
// (the archive's stanza-id) of the last message of the own archive, and of
// each room's, up to which everything was processed: CatchUp without a
// time continues from there (RSM paging after that id), so that an
// application never has to keep track of it.
//
// A position moves forward at the end of each fetched page (once every
// message of the page was handled), and with live messages that carry the
// archive's stanza-id, in the transaction that decrypts them, but only
// once a catch-up completed on the current connection (before it, a live
// message may be newer than archived ones not fetched yet) and while no
// earlier message waits for the network. Copies of one message (live,
// carbon, offline, archived) are recognised by the ratchet, which decrypts
// each message once; the others are skipped.
const (
	keyOwnPosition     = "omemo-plugin/mam/own"
	prefixRoomPosition = "omemo-plugin/mam/room/"
	// keyEpoch is when this store first started: without a position,
	// the archive is read from then on (older messages cannot be for
	// this device).
	keyEpoch = "omemo-plugin/mam/epoch"
	// prefixRoomEpoch is when a room was first joined.
	prefixRoomEpoch = "omemo-plugin/mam/room-epoch/"
)

// position is the stored value of an archive position.
type position struct {
	// ID is the archive id of the last message processed.
	ID string `json:"id"`
	// At is when it was recorded: if the archive no longer knows ID,
	// the catch-up starts from this time instead.
	At time.Time `json:"at"`
}

func roomPositionKey(room jid.JID) string { return prefixRoomPosition + room.Bare().String() }
func roomEpochKey(room jid.JID) string    { return prefixRoomEpoch + room.Bare().String() }

// positionValue encodes a position recorded now.
func (p *Plugin) positionValue(id string) string {
	b, _ := json.Marshal(position{ID: id, At: p.cfg.Now().UTC()})
	return string(b)
}

// readPosition returns the stored position of key (zero if none), and the
// time to start from without one: the room's first join (for room
// positions), else the store's first start.
func (p *Plugin) readPosition(ctx context.Context, key, epochKey string) (pos position, since time.Time, err error) {
	err = p.cfg.Store.View(ctx, func(tx store.Tx) error {
		pos, since = position{}, time.Time{}
		raw, err := tx.Get(key)
		switch {
		case err == nil:
			if jerr := json.Unmarshal(raw, &pos); jerr != nil {
				// A damaged position costs a longer catch-up, nothing more.
				pos = position{}
			}
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		for _, k := range []string{epochKey, keyEpoch} {
			if k == "" {
				continue
			}
			raw, err := tx.Get(k)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if t, perr := time.Parse(time.RFC3339Nano, string(raw)); perr == nil {
				since = t
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return position{}, time.Time{}, fmt.Errorf("omemo: reading the archive position: %w", err)
	}
	return pos, since, nil
}

// writeEpoch records now under key unless it is there already.
func (p *Plugin) writeEpoch(ctx context.Context, key string) error {
	return p.cfg.Store.Update(ctx, func(tx store.Tx) error {
		_, err := tx.Get(key)
		if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// The server's clock may be behind ours.
		at := p.cfg.Now().Add(-max(p.cfg.MaxClockSkew, 0)).UTC()
		return tx.Put(key, []byte(at.Format(time.RFC3339Nano)))
	})
}

// initPositions records the store's first start.
func (p *Plugin) initPositions(ctx context.Context) error {
	if err := p.writeEpoch(ctx, keyEpoch); err != nil {
		return fmt.Errorf("omemo: recording the first start: %w", err)
	}
	return nil
}

// CatchUp fetches the own message archive (XEP-0313), decrypts every OMEMO
// message in it and hands it to the Handler with Archived set, inside
// history synchronisation mode: pre keys used by archived key exchanges are
// kept until the end (a later archived message may repeat the key
// exchange), and the empty messages that complete sessions are sent once,
// at the end.
//
// Without since, it continues from the stored archive position (see
// above), or from the store's first start, then does the same for each
// joined room (CatchUpRoom): call it after every (re)connection, nothing
// else is needed. With since, it reads the own archive from that time on
// (the whole archive for the zero time).
//
// Only results from the own archive, for the query CatchUp sent, are
// accepted. Messages already received are skipped silently, as are this
// device's own messages. It returns after every fetched message was
// handled. CatchUp must be called after Start, not from the Serve
// goroutine.
func (p *Plugin) CatchUp(ctx context.Context, since ...time.Time) (err error) {
	if len(since) > 1 {
		return errors.New("omemo: CatchUp takes at most one time")
	}
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	mgr, err := p.manager()
	if err != nil {
		return err
	}
	s, err := p.session()
	if err != nil {
		return err
	}
	gen := p.connGen()
	mgr.BeforeHistorySync()
	defer func() {
		if aerr := mgr.AfterHistorySync(ctx); aerr != nil {
			err = errors.Join(err, fmt.Errorf("omemo: leaving history synchronisation: %w", aerr))
		}
	}()
	if len(since) == 1 {
		if err := p.readArchive(ctx, s, jid.JID{}, since[0], "", keyOwnPosition); err != nil {
			return err
		}
		p.setCaughtUp(gen, jid.JID{})
		return nil
	}
	if err := p.continueArchive(ctx, s, jid.JID{}, keyOwnPosition, ""); err != nil {
		return err
	}
	p.setCaughtUp(gen, jid.JID{})
	var errs []error
	for _, r := range p.rooms.Rooms() {
		if !r.Joined() {
			continue
		}
		if err := p.CatchUpRoom(ctx, r.JID()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// continueArchive reads an archive (the own one for the zero JID) from its
// stored position on; an archive that no longer knows the position's id
// is read from the time the position was recorded.
func (p *Plugin) continueArchive(ctx context.Context, s *xmpp.Session, archive jid.JID, key, epochKey string) error {
	pos, since, err := p.readPosition(ctx, key, epochKey)
	if err != nil {
		return err
	}
	if pos.ID == "" {
		return p.readArchive(ctx, s, archive, since, "", key)
	}
	err = p.readArchive(ctx, s, archive, time.Time{}, pos.ID, key)
	if isItemNotFound(err) {
		// Expired from the archive, or the archive was reset.
		from := pos.At.Add(-max(p.cfg.MaxClockSkew, 0))
		p.cfg.Logger.Debug("omemo: archive position unknown to the server, reading by time", "archive", archive.String(), "since", from)
		return p.readArchive(ctx, s, archive, from, "", key)
	}
	return err
}

// isItemNotFound reports an item-not-found stanza error (an RSM id the
// archive does not know).
func isItemNotFound(err error) bool {
	var se stanza.Error
	return errors.As(err, &se) && se.Condition == stanza.ItemNotFound
}

// readArchive pages through an archive (the own one for the zero JID) from
// since, or after the archive id after, and moves the position stored
// under key past each page once the page was handled.
func (p *Plugin) readArchive(ctx context.Context, s *xmpp.Session, archive jid.JID, since time.Time, after, key string) error {
	queryID := rand.Text()
	room := !archive.Equal(jid.JID{})
	p.mu.Lock()
	p.queries[queryID] = true
	if room {
		p.roomQueries[queryID] = archive
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.queries, queryID)
		delete(p.roomQueries, queryID)
		p.mu.Unlock()
	}()
	name := "the archive"
	if room {
		name = "the archive of " + archive.String()
	}
	// A page never holds more results than the receive queue has room
	// for: the results are queued by the mux handler, which cannot wait.
	limit := uint64(50)
	if half := uint64(p.cfg.QueueSize / 2); half < limit {
		limit = max(half, 1)
	}
	page := after
	for {
		q := history.Query{ID: queryID, Start: since, Limit: limit, PageID: page}
		qctx, qdone := bounded(ctx, p.cfg.NetworkTimeout)
		res, err := history.Fetch(qctx, q, archive, s)
		qdone()
		if err != nil {
			return fmt.Errorf("omemo: fetching %s: %w", name, err)
		}
		// The results came before the answer; wait until they are done.
		if err := p.barrier(ctx); err != nil {
			return err
		}
		if res.Set.Last != "" && res.Set.Last != page {
			val := p.positionValue(res.Set.Last)
			if err := p.cfg.Store.Update(ctx, func(tx store.Tx) error { return tx.Put(key, []byte(val)) }); err != nil {
				return fmt.Errorf("omemo: storing the position in %s: %w", name, err)
			}
		}
		if res.Complete || res.Set.Last == "" || res.Set.Last == page {
			return nil
		}
		page = res.Set.Last
	}
}
