package session

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"mellium.im/omemo/store"
)

// The durable inbox. A decrypted message that the application must get
// is stored in the transaction that commits the ratchet step which
// decrypted it, so that a crash between the decryption and the
// application loses nothing: the message key is gone, but the plaintext is
// kept until the application acknowledged it. Acknowledgements are applied
// with the next write transaction of the Manager (or FlushAcks), so that a
// steady stream of messages costs no commit beyond the decryption's own.
//
// A spill area holds received messages that did not fit the receiver's
// memory, not decrypted yet, in arrival order.

const (
	prefixInbox   = "omemo/inbox/"
	keyInboxNext  = "omemo/inbox-next"
	prefixSpill   = "omemo/spill/"
	keySpillNext  = "omemo/spill-next"
	inboxKeyWidth = 20
)

func keyInbox(seq uint64) string {
	return prefixInbox + fmt.Sprintf("%0*d", inboxKeyWidth, seq)
}

func keySpill(seq uint64) string {
	return prefixSpill + fmt.Sprintf("%0*d", inboxKeyWidth, seq)
}

// Stored is an entry of the inbox or the spill area: what the application
// stored with the message, under a sequence number that never changes and
// never repeats.
type Stored struct {
	Seq    uint64
	Record []byte
}

// DecryptOption changes what Decrypt and DecryptOffline store.
type DecryptOption func(*decryptOptions)

type decryptOptions struct {
	keep    func(*Decrypted) ([]byte, error)
	puts    [][2]string
	unspill []uint64
}

// Keep stores, in the transaction that commits the decryption, the record
// that build makes of the decrypted message in the inbox, and sets
// Decrypted.InboxSeq. build runs under the Manager's lock: it must be quick
// and must not call the Manager. If it returns an error, nothing is
// committed (the message stays undecrypted, its key unused) and Decrypt
// returns the error; a nil record stores nothing (an empty message, a
// message the application does not want).
func Keep(build func(*Decrypted) ([]byte, error)) DecryptOption {
	return func(o *decryptOptions) { o.keep = build }
}

// Also writes key=value pairs (the application's bookkeeping, such as the
// position in an archive) in the same transaction, if the message decrypts.
// Keys must not start with "omemo/".
func Also(kv ...[2]string) DecryptOption {
	return func(o *decryptOptions) { o.puts = append(o.puts, kv...) }
}

// Unspill removes spill entries in the same transaction: the message came
// from there.
func Unspill(seqs ...uint64) DecryptOption {
	return func(o *decryptOptions) { o.unspill = append(o.unspill, seqs...) }
}

// next returns and advances a persistent counter.
func next(tx store.Tx, key string) (uint64, error) {
	n, err := readCounter(tx, key)
	if err != nil {
		return 0, err
	}
	return n, tx.Put(key, binary.BigEndian.AppendUint64(nil, n+1))
}

// readCounter returns the value of the counter at key: 1 if it was never
// written.
func readCounter(tx store.Tx, key string) (uint64, error) {
	raw, err := tx.Get(key)
	switch {
	case err == nil && len(raw) == 8:
		return binary.BigEndian.Uint64(raw), nil
	case err == nil:
		return 0, fmt.Errorf("%w: counter %s", store.ErrCorrupt, key)
	case !errors.Is(err, store.ErrNotFound):
		return 0, err
	}
	return 1, nil
}

// applyOptions writes what the options ask for into tx, once the message
// decrypted into out.
func (m *Manager) applyOptions(tx store.Tx, o *decryptOptions, out *Decrypted) error {
	for _, kv := range o.puts {
		if len(kv[0]) >= 6 && kv[0][:6] == "omemo/" {
			return fmt.Errorf("%w: bookkeeping key in the manager's space", ErrInvalidConfig)
		}
		if err := tx.Put(kv[0], []byte(kv[1])); err != nil {
			return err
		}
	}
	for _, seq := range o.unspill {
		if err := tx.Delete(keySpill(seq)); err != nil {
			return err
		}
	}
	if o.keep == nil {
		return nil
	}
	rec, err := o.keep(out)
	if err != nil {
		return keepError{err}
	}
	if rec == nil {
		return nil
	}
	// The counter as last committed, if known: only this Manager writes
	// it, under mu (the store is leased to it).
	seq := m.inboxNext
	if seq == 0 {
		if seq, err = readCounter(tx, keyInboxNext); err != nil {
			return err
		}
	}
	if err := tx.Put(keyInboxNext, binary.BigEndian.AppendUint64(nil, seq+1)); err != nil {
		return err
	}
	m.inboxPending = seq + 1
	out.InboxSeq = seq
	return tx.Put(keyInbox(seq), rec)
}

// Inbox returns the stored messages the application has not acknowledged,
// in the order they were stored.
func (m *Manager) Inbox(ctx context.Context) ([]Stored, error) {
	return m.scanStored(ctx, prefixInbox, true)
}

func (m *Manager) scanStored(ctx context.Context, prefix string, skipAcked bool) ([]Stored, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	acked := slices.Clone(m.acks)
	m.mu.Unlock()
	var out []Stored
	err := m.store.View(ctx, func(tx store.Tx) error {
		return tx.Scan(prefix, func(key string, v []byte) error {
			seq, err := strconv.ParseUint(key[len(prefix):], 10, 64)
			if err != nil {
				return nil
			}
			if skipAcked && slices.Contains(acked, seq) {
				return nil
			}
			out = append(out, Stored{Seq: seq, Record: v})
			return nil
		})
	})
	return out, storageErr(err)
}

// Ack acknowledges inbox entries: they are deleted (and with them the
// plaintext they hold) with the next write transaction of the Manager, or
// by FlushAcks. Until then a crash hands them over again.
func (m *Manager) Ack(seqs ...uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks = append(m.acks, seqs...)
}

// FlushAcks commits the pending acknowledgements now.
func (m *Manager) FlushAcks(ctx context.Context) error {
	if err := m.check(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.acks) == 0 {
		return nil
	}
	return storageErr(m.updateLocked(ctx, func(store.Tx) error { return nil }))
}

// applyAcksLocked deletes the acknowledged entries in tx; the caller
// forgets them once tx committed.
func (m *Manager) applyAcksLocked(tx store.Tx) (int, error) {
	for _, seq := range m.acks {
		if err := tx.Delete(keyInbox(seq)); err != nil {
			return 0, err
		}
	}
	return len(m.acks), nil
}

// Spill stores a received message that does not fit in memory, not
// decrypted yet, in arrival order, and returns its sequence number. It
// takes no lock of the Manager (it may run where the Manager's work waits,
// such as the goroutine reading the connection).
func (m *Manager) Spill(ctx context.Context, record []byte) (uint64, error) {
	if err := m.check(); err != nil {
		return 0, err
	}
	var seq uint64
	err := m.store.Update(ctx, func(tx store.Tx) error {
		var err error
		if seq, err = next(tx, keySpillNext); err != nil {
			return err
		}
		return tx.Put(keySpill(seq), record)
	})
	return seq, storageErr(err)
}

// Spilled returns the spilled messages, in arrival order.
func (m *Manager) Spilled(ctx context.Context) ([]Stored, error) {
	return m.scanStored(ctx, prefixSpill, false)
}

// DropSpilled removes spill entries whose message could not be decrypted.
func (m *Manager) DropSpilled(ctx context.Context, seqs ...uint64) error {
	if err := m.check(); err != nil {
		return err
	}
	return storageErr(m.store.Update(ctx, func(tx store.Tx) error {
		for _, seq := range seqs {
			if err := tx.Delete(keySpill(seq)); err != nil {
				return err
			}
		}
		return nil
	}))
}

// keepError carries the error of a Keep callback out of the transaction
// unchanged (it is the application's, not the store's).
type keepError struct{ err error }

func (e keepError) Error() string { return e.err.Error() }
func (e keepError) Unwrap() error { return e.err }
