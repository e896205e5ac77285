package pep_test

import (
	"context"
	"encoding/xml"
	"errors"
	"log"

	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// This example wires PEP notifications for the OMEMO 2 device list into a
// client, publishes the own device list and fetches a contact's.
// It needs a connected session, so it is not run.
func Example() {
	const (
		node = "urn:xmpp:omemo:2:devices"
		uri  = "https://example.org/my-client"
	)
	var s *xmpp.Session // a connected, authenticated session
	ctx := context.Background()

	updates := make(chan pep.Event, 16)
	m := mux.New(stanza.NSClient,
		// Answers disco#info, including the caps node query of the server.
		pep.HandleDisco(uri),
		// Asks the server for notifications about device lists.
		mux.Feature(pep.NotifyFeatures(node)),
		// Runs in the Serve goroutine: hand the event over, never block.
		pep.HandleEvents(func(ev pep.Event) {
			select {
			case updates <- ev:
			default: // drop rather than block; refetch later
			}
		}),
	)
	go func() { _ = s.Serve(m) }()

	// The caps presence makes the server query the features above.
	p, err := pep.CapsPresence(m, uri, stanza.Presence{})
	if err != nil {
		log.Fatal(err)
	}
	if err := s.Send(ctx, p); err != nil {
		log.Fatal(err)
	}

	// Publish the device list: open access, one item.
	var deviceList xml.TokenReader // e.g. devicelist.List{…}.TokenReader()
	err = pep.Publish(ctx, s, node, "current", deviceList, pep.PublishOptions{
		AccessModel: "open", PersistItems: true, MaxItems: "1",
	})
	if err != nil {
		log.Fatal(err)
	}

	// Fetch a contact's device list; "nothing published" is not a failure.
	it, err := pep.FetchItem(ctx, s, jid.MustParse("bob@example.org"), node, "current")
	switch {
	case errors.Is(err, pep.ErrNotFound):
		log.Print("bob has no OMEMO 2 devices")
	case err != nil:
		log.Fatal(err)
	default:
		_ = it.TokenReader() // decode with devicelist.Decode
	}

	for ev := range updates {
		if ev.Node != node {
			continue
		}
		// ev.From is the bare JID whose list changed (zero: our own).
		_ = ev
	}
}
