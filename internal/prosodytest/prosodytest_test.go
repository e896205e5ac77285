package prosodytest_test

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/ping"
	"mellium.im/xmpp/roster"
)

func TestStartDialPingRoster(t *testing.T) {
	start := time.Now()
	srv := prosodytest.Start(t,
		prosodytest.User{Name: "alice", Contacts: []string{"bob"}},
		prosodytest.User{Name: "bob", Password: "secret"},
		prosodytest.User{Name: "carol"},
	)
	t.Logf("server ready after %v", time.Since(start))

	alice := srv.Dial(t, "alice", nil)
	if got := alice.LocalAddr(); !got.Bare().Equal(srv.JID("alice")) || got.Resourcepart() == "" {
		t.Fatalf("alice bound as %v", got)
	}
	if cs := alice.ConnectionState(); cs.Version < tls.VersionTLS12 {
		t.Fatalf("TLS version %x", cs.Version)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ping.Send(ctx, alice, jid.MustParse(srv.Domain)); err != nil {
		t.Fatalf("ping: %v", err)
	}

	rosterOf := func(name string) map[string]string {
		s := srv.Dial(t, name, nil)
		iter := roster.Fetch(ctx, s)
		defer iter.Close()
		got := map[string]string{}
		for iter.Next() {
			it := iter.Item()
			got[it.JID.String()] = it.Subscription
		}
		if err := iter.Err(); err != nil {
			t.Fatalf("roster of %s: %v", name, err)
		}
		return got
	}
	if r := rosterOf("alice"); len(r) != 1 || r["bob@localhost"] != "both" {
		t.Fatalf("alice roster = %v", r)
	}
	if r := rosterOf("bob"); len(r) != 1 || r["alice@localhost"] != "both" {
		t.Fatalf("bob roster = %v", r)
	}
	if r := rosterOf("carol"); len(r) != 0 {
		t.Fatalf("carol roster = %v", r)
	}

	// An account that was not created cannot be dialled.
	if _, err := srv.DialSession(ctx, "nobody"); err == nil {
		t.Fatal("unknown user accepted")
	}
	t.Logf("total %v", time.Since(start))
}
