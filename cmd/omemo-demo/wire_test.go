package main

import (
	"strings"
	"testing"
	"time"
)

func TestTapCapturesEncryptedMessages(t *testing.T) {
	enc := `<message xmlns='jabber:client' to='bob@localhost' id='m1' type='chat'><encrypted xmlns='urn:xmpp:omemo:2'><header sid='1'><keys jid='bob@localhost'><key rid='2' kex='true'>` +
		strings.Repeat("QUJD", 40) + `</key></keys></header><payload>cGF5bG9hZA==</payload></encrypted><body>fallback &amp; more</body></message>`
	carbon := `<message from='alice@localhost' id='c1'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m0'><encrypted xmlns='eu.siacs.conversations.axolotl'/></message></forwarded></sent></message>`
	stream := `<iq type='set' id='i1'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq> ` +
		enc + "\n" + `<message id='plain'><body>hi</body></message>` + carbon + `<presence/>`

	tp := newTap()
	_, _ = tp.Write([]byte("<stream:stream>ignored before enable"))
	tp.enable()
	// Feed the stream in awkward chunks.
	for i := 0; i < len(stream); i += 7 {
		end := min(i+7, len(stream))
		if n, err := tp.Write([]byte(stream[i:end])); n != end-i || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	var got []captured
	for len(got) < 2 {
		select {
		case c := <-tp.stanzas:
			got = append(got, c)
		case <-time.After(5 * time.Second):
			t.Fatalf("captured %d stanzas, want 2", len(got))
		}
	}
	tp.close()
	if got[0].ID != "m1" || string(got[0].Raw) != enc {
		t.Errorf("first capture %q: %q", got[0].ID, got[0].Raw)
	}
	if got[1].ID != "c1" || string(got[1].Raw) != carbon {
		t.Errorf("second capture %q: %q", got[1].ID, got[1].Raw)
	}
	if c, ok := <-tp.stanzas; ok {
		t.Errorf("unexpected capture %q", c.Raw)
	}

	out, err := pretty(got[0].Raw, "  ")
	if err != nil {
		t.Fatal(err)
	}
	want := `  <message xmlns='jabber:client' to='bob@localhost' id='m1' type='chat'>
    <encrypted xmlns='urn:xmpp:omemo:2'>
      <header sid='1'>
        <keys jid='bob@localhost'>
          <key rid='2' kex='true'>QUJDQUJDQUJDQUJDQUJDQUJDQUJDQUJD… (160 chars)</key>
        </keys>
      </header>
      <payload>cGF5bG9hZA==</payload>
    </encrypted>
    <body>fallback &amp; more</body>
  </message>
`
	if out != want {
		t.Errorf("pretty:\n%s\nwant:\n%s", out, want)
	}
}

func TestTapNeverBlocksAfterParseError(t *testing.T) {
	tp := newTap()
	tp.enable()
	_, _ = tp.Write([]byte("<a></b>"))
	// The parser stops; later writes are dropped, not blocked on.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			_, _ = tp.Write(make([]byte, 4096))
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Write blocked")
	}
	tp.close()
}

func TestRunUsage(t *testing.T) {
	var out, errOut strings.Builder
	for _, args := range [][]string{
		{"-alice", "alice@localhost", "-bob", "bob@localhost"}, // no passwords
		{"-alice", "localhost", "-alice-password", "a", "-bob-password", "b"},
		{"-alice-password", "a", "-bob-password", "b", "-alice-devices", "3"},
		{"-alice-password", "a", "-bob-password", "b", "-bob", "alice@localhost"},
		{"-alice-password", "a", "-bob-password", "b", "extra"},
	} {
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
