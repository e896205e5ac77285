package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mellium.im/omemo"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

// TestRoomUsageErrors runs command lines of the room options that are
// mistakes: exit status 2 with the hint, before connecting (the server
// address is closed: a command that connected would fail with status 1).
func TestRoomUsageErrors(t *testing.T) {
	addr := closedAddr(t)
	global := []string{"-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", filepath.Join(t.TempDir(), "alice.db")}
	const room = "team@conference.example.org"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"send", "-room", room, "-to", "bob@example.org", "hi"}, "-to and -room are mutually exclusive"},
		{[]string{"send", "-to", "bob@example.org", "-room", room, "hi"}, "-to and -room are mutually exclusive"},
		{[]string{"send", "hi"}, "-to is required"},
		{[]string{"send", "-nick", "al", "-to", "bob@example.org", "hi"}, "-nick needs -room"},
		{[]string{"send", "-room", "team", "hi"}, `-room "team" is not a room JID`},
		{[]string{"send", "-room", room + "/al", "hi"}, "give the room's bare JID"},
		{[]string{"send", "-room", room}, "no TEXT"},
		{[]string{"send", "-room", room, "-wait", "-1s", "hi"}, "-wait must not be negative"},
		{[]string{"send", "-room", room, "hi", "-nick", "al"}, `"-nick" after the text is a flag of send`},
		{[]string{"listen", "-nick", "al"}, "-nick needs -room"},
		{[]string{"listen", "-room", "@conference.example.org"}, "is not a room JID"},
		{[]string{"listen", "-room", room, "extra"}, "unexpected arguments"},
		{[]string{"chat", "-room", room, "bob@example.org"}, "give a JID or -room ROOM, not both"},
		{[]string{"chat"}, "want exactly one JID (or -room ROOM)"},
		{[]string{"chat", "-nick", "al", "bob@example.org"}, "-nick needs -room"},
		{[]string{"room"}, "room: want a subcommand: create or members"},
		{[]string{"room", "-json"}, "room: want a subcommand"},
		{[]string{"room", "destroy", room}, `unknown command "room destroy"`},
		{[]string{"room create", room}, `unknown command "room create"`},
		{[]string{"room", "create"}, "room create: want exactly one ROOM"},
		{[]string{"room", "create", room, "-members", "bob@example.org"}, "room create: want exactly one ROOM (flags go before it)"},
		{[]string{"room", "create", "-members", "bob@example.org,@@", room}, `-members: "@@" is not a valid JID`},
		{[]string{"room", "create", room + "/nick"}, "give the room's bare JID"},
		{[]string{"room", "members"}, "room members: want exactly one ROOM"},
		{[]string{"room", "members", "team"}, "is not a room JID"},
	} {
		out, errOut, code := runCLI(append(slices.Clone(global), tc.args...)...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) ||
			!strings.Contains(errOut, "Run 'omemo -h' for usage.") || strings.Contains(errOut, "connecting") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestRoomSendArgs checks the free text of send -room: its flags (-room,
// -nick) after the text are refused like the others, with the hint of
// the room form; after -- they are text.
func TestRoomSendArgs(t *testing.T) {
	const roomHint = "send -room ROOM [-nick NICK] [-wait DURATION] -- TEXT"
	for _, tc := range []struct {
		args []string
		text []string
		err  string
		hint string
	}{
		{args: []string{"-room", "r@c.example.org", "-nick", "al", "hello"}, text: []string{"hello"}},
		{args: []string{"-room", "r@c.example.org", "--", "-nick", "x", "-room", "y"}, text: []string{"-nick", "x", "-room", "y"}},
		{args: []string{"-room", "r@c.example.org", "hello", "-nick", "x"}, err: `"-nick" after the text is a flag of send`, hint: roomHint},
		{args: []string{"-room", "r@c.example.org", "hello", "--room=y"}, err: `"--room" after the text is a flag of send`, hint: roomHint},
		{args: []string{"-room", "r@c.example.org", "hello", "-json"}, err: `"-json" after the text is a global flag`, hint: roomHint},
		{args: []string{"-to", "bob@example.org", "hello", "-room", "r@c.example.org"}, err: `"-room" after the text is a flag of send`, hint: "send -to JID [-wait DURATION] -- TEXT"},
	} {
		var stderr bytes.Buffer
		args := append([]string{"-jid", "alice@example.org", "send"}, tc.args...)
		_, _, got, err := parseArgs(args, env{stderr: &stderr, getenv: func(string) string { return "" }})
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%q: %v", tc.args, err)
		case tc.err == "" && !slices.Equal(got, tc.text):
			t.Errorf("%q: text %q, want %q", tc.args, got, tc.text)
		case tc.err != "" && err == nil:
			t.Errorf("%q: accepted with the text %q, want the error %q", tc.args, got, tc.err)
		case tc.err != "":
			if msg := err.Error(); !errors.Is(err, errUsage) || !strings.Contains(msg, tc.err) || !strings.Contains(msg, tc.hint) {
				t.Errorf("%q: error %q, want %q and the hint %q", tc.args, msg, tc.err, tc.hint)
			}
		}
	}
}

// TestRoomHelp checks that the help texts show the room forms.
func TestRoomHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{
			"  send -room ROOM [-nick NICK] [-wait DURATION] TEXT\n",
			"  listen -room ROOM [-nick NICK] [-for DURATION] [-count N] [-echo]\n",
			"  chat -room ROOM [-nick NICK]  ",
			"  room create [-members JID,JID] ROOM  ",
			"  room members ROOM  ",
			// The lines of before are kept.
			"  send -to JID [-wait DURATION] TEXT     encrypt and send",
			"  listen [-for DURATION] [-count N] [-echo]   print received messages",
			"  chat JID                               interactive",
		}},
		{[]string{"send", "-h"}, []string{
			"usage: omemo [global flags] send -to JID [-wait DURATION] TEXT\n",
			"   or: omemo [global flags] send -room ROOM [-nick NICK] [-wait DURATION] TEXT\n",
			"  -room ROOM", "  -nick NICK",
			"put -- before it: omemo [global flags] send -to JID [-wait DURATION] -- TEXT\n",
			"  or: omemo [global flags] send -room ROOM [-nick NICK] [-wait DURATION] -- TEXT\n",
		}},
		{[]string{"listen", "-h"}, []string{"   or: omemo [global flags] listen -room ROOM [-nick NICK] [-for DURATION] [-count N] [-echo]\n", "  -room ROOM"}},
		{[]string{"chat", "-h"}, []string{"usage: omemo [global flags] chat JID\n", "   or: omemo [global flags] chat -room ROOM [-nick NICK]\n"}},
		{[]string{"room", "-h"}, []string{"usage: omemo [global flags] room create [-members JID,JID] ROOM\n", "   or: omemo [global flags] room members ROOM\n"}},
		{[]string{"room", "create", "-h"}, []string{"usage: omemo [global flags] room create [-members JID,JID] ROOM\n", "  -members JID,JID"}},
		{[]string{"room", "members", "--help"}, []string{"usage: omemo [global flags] room members ROOM\n"}},
	} {
		out, errOut, code := runCLI(tc.args...)
		if code != exitOK || out != "" {
			t.Errorf("%q: exit %d, stdout %q", tc.args, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%q: help lacks %q:\n%s", tc.args, w, errOut)
			}
		}
	}
}

// TestRoomReceivedText checks which room messages listen -count counts
// (and -echo answers): those with a body that somebody else sent.
func TestRoomReceivedText(t *testing.T) {
	own := jid.MustParse("alice@example.org")
	msg := func(from string, f func(*omemo.Message)) omemo.Message {
		m := omemo.Message{Body: "hi", Room: jid.MustParse("team@conference.example.org"), Nick: "x", RealFrom: jid.MustParse(from)}
		if f != nil {
			f(&m)
		}
		return m
	}
	for _, tc := range []struct {
		name string
		m    omemo.Message
		want bool
	}{
		{"message", msg("bob@example.org", nil), true},
		{"key exchange", msg("bob@example.org", func(m *omemo.Message) { m.KeyExchange = true }), true},
		{"reflection", msg("alice@example.org", func(m *omemo.Message) { m.Reflected, m.Sent = true, true }), false},
		{"own other device", msg("alice@example.org", nil), false},
		{"own other device, full JID", msg("alice@example.org/phone", nil), false},
		{"sent", msg("bob@example.org", func(m *omemo.Message) { m.Sent = true }), false},
		{"no body", msg("bob@example.org", func(m *omemo.Message) { m.Body = "" }), false},
	} {
		if got := roomReceivedText(tc.m, own); got != tc.want {
			t.Errorf("%s: roomReceivedText = %v, want %v", tc.name, got, tc.want)
		}
		c := &client{g: &globals{account: own}}
		if got := c.counted(tc.m); got != tc.want {
			t.Errorf("%s: counted = %v, want %v", tc.name, got, tc.want)
		}
	}
	// A direct message is counted as before.
	c := &client{g: &globals{account: own}}
	if !c.counted(omemo.Message{Body: "hi"}) || c.counted(omemo.Message{Body: "hi", Sent: true}) {
		t.Error("direct messages are not counted as receivedText says")
	}
}

func roomTestMessage(nick, body string) omemo.Message {
	m := omemo.Message{
		Body: body, SenderDevice: 42, Namespace: ns.OMEMO2, Trust: trust.Undecided, TrustLevel: "undecided",
		Room: jid.MustParse("team@conference.example.org"), Nick: nick, RealFrom: jid.MustParse("mallory@example.org"),
	}
	m.From = jid.MustParse("team@conference.example.org/x")
	return m
}

// TestPrintRoomMessage checks the room message lines: text mode shows the
// room, the nick (quoted with Go's escapes) and the real JID, escapes the
// body; JSON carries the exact texts; reflections are not printed.
func TestPrintRoomMessage(t *testing.T) {
	const header = `[team@conference.example.org] `
	const rest = ` (mallory@example.org) [device 42, OMEMO 2, undecided]: `
	for _, tc := range []struct{ name, nick, body, want string }{
		{"plain", "mal", "hello", header + `"mal"` + rest + "hello\n"},
		{"nick with punctuation", `x" (alice@example.org) [device 1, OMEMO 2, trusted]: `, "hi",
			header + `"x\" (alice@example.org) [device 1, OMEMO 2, trusted]: "` + rest + "hi\n"},
		{"nick with controls", "a\x1b[2K\u202eb\nc", "hi", header + `"a\x1b[2K\u202eb\nc"` + rest + "hi\n"},
		{"spoofed line", "mal", "hi\n[team@conference.example.org] \"alice\" (alice@example.org) [device 1, OMEMO 2, trusted]: fake",
			header + `"mal"` + rest + "hi\n" + contPrefix + `[team@conference.example.org] "alice" (alice@example.org) [device 1, OMEMO 2, trusted]: fake` + "\n"},
		{"body with controls", "mal", "hi\x1b[31m \u202eekaf", header + `"mal"` + rest + `hi\x1b[31m \u202eekaf` + "\n"},
	} {
		out, errOut := printed(t, false, roomTestMessage(tc.nick, tc.body))
		if out != tc.want || errOut != "" {
			t.Errorf("%s: printed\n%q\nwant\n%q (stderr %q)", tc.name, out, tc.want, errOut)
		}
	}

	// Flags: key exchange, another device of the own account.
	m := roomTestMessage("mal", "x")
	m.KeyExchange = true
	var o bytes.Buffer
	c := &client{g: &globals{account: jid.MustParse("mallory@example.org")}, out: newOutput(false, &o, &o)}
	c.printMessage(m)
	if want := header + `"mal" (mallory@example.org) [device 42, OMEMO 2, undecided, key exchange, sent by own device]: x` + "\n"; o.String() != want {
		t.Errorf("own device's message printed %q, want %q", o.String(), want)
	}

	// The reflection of an own message is not printed.
	m = roomTestMessage("mal", "x")
	m.Reflected, m.Sent = true, true
	for _, jsonOut := range []bool{false, true} {
		if out, errOut := printed(t, jsonOut, m); out != "" || errOut != "" {
			t.Errorf("reflection printed %q %q", out, errOut)
		}
	}

	// JSON: the exact texts, the fields of the contract.
	body := "hi\r\nfake \x1b[31m \u202e <b>&amp;"
	out, _ := printed(t, true, roomTestMessage("a\"b\u202e", body))
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	want := map[string]any{"room": "team@conference.example.org", "nick": "a\"b\u202e", "from": "mallory@example.org",
		"device": float64(42), "backend": ns.OMEMO2, "body": body, "trust": "undecided"}
	if len(got) != len(want) {
		t.Errorf("JSON %s: fields %v, want %v", out, got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("JSON %s: %s = %v, want %v", out, k, got[k], v)
		}
	}
	if !strings.HasPrefix(out, `{"room":"team@conference.example.org","nick":`) || strings.Count(out, "\n") != 1 {
		t.Errorf("JSON line %q", out)
	}
}

// TestPrintRoomSent checks the result line of a message sent to a room.
func TestPrintRoomSent(t *testing.T) {
	res := &omemo.SendResult{ID: "abc", Recipients: []session.Recipient{
		{JID: "bob@example.org", DeviceID: 7, Namespace: ns.OMEMO2},
		{JID: "carol@example.org", DeviceID: 9, Namespace: ns.Legacy},
	}}
	room := jid.MustParse("team@conference.example.org")
	var o, e bytes.Buffer
	c := &client{out: newOutput(false, &o, &e)}
	c.printRoomSent(room, res)
	if want := "sent abc to room team@conference.example.org, encrypted for 2 device(s): bob@example.org/7 (OMEMO 2), carol@example.org/9 (OMEMO 0.3 (legacy))\n"; o.String() != want || e.String() != "" {
		t.Errorf("text %q (stderr %q), want %q", o.String(), e.String(), want)
	}
	o.Reset()
	c = &client{out: newOutput(true, &o, &e)}
	c.printRoomSent(room, res)
	if want := `{"room":"team@conference.example.org","id":"abc","devices":[{"jid":"bob@example.org","device":7,"backend":"urn:xmpp:omemo:2"},{"jid":"carol@example.org","device":9,"backend":"eu.siacs.conversations.axolotl"}],"errors":[]}` + "\n"; o.String() != want {
		t.Errorf("JSON %q, want %q", o.String(), want)
	}
}
