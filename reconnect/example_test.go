package reconnect_test

import (
	"context"
	"crypto/tls"
	"log"
	"os/signal"
	"syscall"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/reconnect"
	"mellium.im/omemo/store"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/dial"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// A bot that runs for months: it reconnects by itself, reads what arrived
// while it was away from the archives, and hands every message to its
// handler exactly once per DeliveryID, across crashes too.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	account := jid.MustParse("bot@example.org")
	st, err := store.Open("bot.omemo", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	p, err := omemo.NewDetached(account, omemo.Config{Store: st, SendPresence: true})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close() // after Run: commits the last acknowledgements
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(m omemo.Message) {
		// At least once: after a crash, a message comes again with
		// m.Redelivered and the same m.DeliveryID. Store it with its
		// DeliveryID (or use Config.ManualAck and Plugin.Ack).
		log.Printf("%d from %s: %s", m.DeliveryID, m.From.Bare(), m.Body)
	})))
	err = reconnect.Run(ctx, p, reconnect.Config{
		Dial: func(ctx context.Context) (*xmpp.Session, error) {
			conn, err := dial.Client(ctx, "tcp", account)
			if err != nil {
				return nil, err
			}
			// Bound the login by a deadline: ctx lives as long as Run.
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
			s, err := xmpp.NewClientSession(ctx, account, conn,
				xmpp.StartTLS(&tls.Config{ServerName: account.Domainpart(), MinVersion: tls.VersionTLS12}),
				xmpp.SASL("", "password", sasl.ScramSha256Plus, sasl.ScramSha256),
				xmpp.BindResource())
			if err != nil {
				_ = conn.Close()
				return nil, err
			}
			_ = conn.SetDeadline(time.Time{})
			return s, nil
		},
		Handler: m,
		OnEvent: func(e reconnect.Event) { log.Printf("connected: %v (%v)", e.Connected, e.Err) },
	})
	if err != nil {
		log.Fatal(err)
	}
}
