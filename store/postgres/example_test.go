package postgres_test

import (
	"context"
	"errors"
	"log"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
)

// A gateway opens the database once and one Store per account it serves.
// An account served by another gateway process is locked; a Store whose
// lease was lost is closed and the account opened again.
func Example() {
	ctx := context.Background()
	db, err := postgres.Open(ctx, "postgres://omemo@db.example.net/omemo?pool_max_conns=20", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close() // also closes the Stores

	// The XMPP connection of each account (see session.Network).
	var networks map[string]session.Network

	managers := map[string]*session.Manager{}
	for _, jid := range []string{"alice@example.org", "bob@example.org"} {
		st, err := db.Account(ctx, jid)
		if errors.Is(err, store.ErrLocked) {
			log.Printf("%s is served by another process", jid)
			continue
		}
		if err != nil {
			log.Fatal(err)
		}
		m, err := session.New(ctx, st, networks[jid], session.Config{
			JID:      jid,
			Backends: []backends.Factory{twomemo.Factory},
			OnError: func(err error) {
				if errors.Is(err, postgres.ErrLeaseLost) {
					// Close the Manager and the Store, then open both
					// again: they start from the committed state.
				}
			},
		})
		if err != nil {
			log.Fatal(err)
		}
		defer m.Close()
		managers[jid] = m
	}
	_ = managers
}
