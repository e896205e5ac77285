package store_test

import (
	"context"
	"path/filepath"
	"testing"

	"mellium.im/omemo/store"
)

// An Update that writes nothing commits nothing to the file (no meta page,
// no fdatasync), yet counts as a commit; one that writes does both.
func TestBoltUpdateWithoutWrites(t *testing.T) {
	ctx := context.Background()
	b, err := store.Open(filepath.Join(t.TempDir(), "s.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Update(ctx, func(tx store.Tx) error { return tx.Put("k", []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	id, stats := store.BoltTxID(b), b.Stats()
	if err := b.Update(ctx, func(tx store.Tx) error {
		_, err := tx.Get("k")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := store.BoltTxID(b); got != id {
		t.Fatalf("a read-only Update wrote transaction %d after %d", got, id)
	}
	if got := b.Stats(); got.Commits != stats.Commits+1 || got.Rollbacks != stats.Rollbacks {
		t.Fatalf("stats %+v after %+v, want one more commit", got, stats)
	}
	if err := b.Update(ctx, func(tx store.Tx) error { return tx.Delete("k") }); err != nil {
		t.Fatal(err)
	}
	if got := store.BoltTxID(b); got != id+1 {
		t.Fatalf("a deleting Update left transaction %d after %d", got, id)
	}
}
