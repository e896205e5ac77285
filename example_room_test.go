package omemo_test

import (
	"context"
	"fmt"
	"log"

	"mellium.im/omemo"
	"mellium.im/xmpp/jid"
)

// A bot joins a room (non-anonymous, as OMEMO requires), prints what its
// members write and posts an encrypted alert to every device of every
// member.
func ExamplePlugin_SendGroup() {
	var p *omemo.Plugin // from omemo.New, registered with Handle and started
	ctx := context.Background()
	room := jid.MustParse("ops@conference.example.org")
	nick := jid.MustParse("ops@conference.example.org/alertbot")
	// Decrypted room messages reach the Handler with Room, Nick and the
	// sender's real JID:
	//   fmt.Printf("%s in %s: %s\n", m.RealFrom, m.Room, m.Body)
	if _, err := p.JoinRoom(ctx, nick); err != nil {
		log.Fatal(err)
	}
	res, err := p.SendGroup(ctx, room, "disk almost full on db1")
	if err != nil { // nothing was sent: anonymous room, a member without OMEMO, …
		log.Fatal(err)
	}
	fmt.Printf("encrypted for %d devices\n", len(res.Recipients))
}
