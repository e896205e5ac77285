package omemo

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"mellium.im/xmpp/history"
	"mellium.im/xmpp/jid"
)

// CatchUp fetches the own message archive (XEP-0313) from since on (the
// whole archive for the zero time), decrypts every OMEMO message in it
// and hands it to the Handler with Archived set, inside history
// synchronisation mode: pre keys used by archived key exchanges are kept
// until the end (a later archived message may repeat the key exchange),
// and the empty messages that complete sessions are sent once, at the end.
//
// Only results from the own archive, for the query CatchUp sent, are
// accepted. Messages already received live are skipped silently, as are
// this device's own messages. It returns after every fetched message was
// handled.
// CatchUp must be called after Start, not from the Serve goroutine.
func (p *Plugin) CatchUp(ctx context.Context, since time.Time) (err error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	mgr, err := p.manager()
	if err != nil {
		return err
	}
	if p.s == nil {
		return errors.New("omemo: CatchUp needs an XMPP session")
	}
	mgr.BeforeHistorySync()
	defer func() {
		if aerr := mgr.AfterHistorySync(ctx); aerr != nil {
			err = errors.Join(err, fmt.Errorf("omemo: leaving history synchronisation: %w", aerr))
		}
	}()

	queryID := rand.Text()
	p.mu.Lock()
	p.queries[queryID] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.queries, queryID)
		p.mu.Unlock()
	}()

	// A page never holds more results than the receive queue has room
	// for: the results are queued by the mux handler, which cannot wait.
	limit := uint64(50)
	if half := uint64(p.cfg.QueueSize / 2); half < limit {
		limit = max(half, 1)
	}
	page := ""
	for {
		q := history.Query{ID: queryID, Start: since, Limit: limit, PageID: page}
		qctx, qdone := bounded(ctx, p.cfg.NetworkTimeout)
		res, err := history.Fetch(qctx, q, jid.JID{}, p.s)
		qdone()
		if err != nil {
			return fmt.Errorf("omemo: fetching the archive: %w", err)
		}
		// The results came before the answer; wait until they are done.
		if err := p.barrier(ctx); err != nil {
			return err
		}
		if res.Complete || res.Set.Last == "" || res.Set.Last == page {
			return nil
		}
		page = res.Set.Last
	}
}
