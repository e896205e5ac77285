package omemo_test

import (
	"context"
	"fmt"
	"log"

	"mellium.im/omemo"
	"mellium.im/omemo/store"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// Alice logs in, keeps her OMEMO state in the default store file, receives
// decrypted messages in a handler and sends Bob an encrypted message.
func Example() {
	ctx := context.Background()
	s, err := xmpp.DialClientSession(ctx, jid.MustParse("alice@example.org"), xmpp.StartTLS(nil),
		xmpp.SASL("", "password", sasl.ScramSha256, sasl.ScramSha1), xmpp.BindResource())
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	path, err := store.DefaultPath(s.LocalAddr().String()) // ~/.config/omemo/alice@example.org.db
	if err != nil {
		log.Fatal(err)
	}
	st, err := store.Open(path, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	p, err := omemo.New(s, omemo.Config{Store: st, SendPresence: true})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	show := func(m omemo.Message) { fmt.Printf("%s (device %d): %s\n", m.From, m.SenderDevice, m.Body) }
	go s.Serve(mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(show))))
	if err := p.Start(ctx); err != nil { // publishes this device, enables carbons
		log.Fatal(err)
	}
	if _, err := p.Send(ctx, jid.MustParse("bob@example.org"), "Hello, Bob!"); err != nil {
		log.Fatal(err)
	}
}
