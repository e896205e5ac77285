package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mellium.im/omemo"
)

// TestSendArgs parses send command lines: a word after the text that is a
// flag of send or a global flag is a usage error (it would be sent to the
// contact), unless the text follows "--".
func TestSendArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string // after "omemo -jid alice@example.org send"
		text []string // the words of the text, if accepted
		err  string   // the usage error, if refused
	}{
		{args: []string{"-to", "bob@example.org", "hello", "world"}, text: []string{"hello", "world"}},
		{args: []string{"-to", "bob@example.org", "-wait", "5s", "hello"}, text: []string{"hello"}},
		{args: []string{"-to=bob@example.org", "--wait=5s", "hello"}, text: []string{"hello"}},
		// The escape: everything after -- is the text.
		{args: []string{"-to", "bob@example.org", "--", "-wait", "is", "a", "flag"}, text: []string{"-wait", "is", "a", "flag"}},
		{args: []string{"-to", "bob@example.org", "-wait", "5s", "--", "-to", "x", "--wait=1s", "-json", "-h"}, text: []string{"-to", "x", "--wait=1s", "-json", "-h"}},
		{args: []string{"-to", "bob@example.org", "--", "--"}, text: []string{"--"}},
		{args: []string{"-to", "bob@example.org", "--", "hello"}, text: []string{"hello"}},
		// Words that are no flag of omemo stay text.
		{args: []string{"-to", "bob@example.org", "hello", "--", "world"}, text: []string{"hello", "--", "world"}},
		{args: []string{"-to", "bob@example.org", "it", "is", "-5", "degrees", "-", "brr"}, text: []string{"it", "is", "-5", "degrees", "-", "brr"}},
		{args: []string{"-to", "bob@example.org", "hello", "-x", "-Wait", "---wait", "-=wait", "-towards"}, text: []string{"hello", "-x", "-Wait", "---wait", "-=wait", "-towards"}},
		// A quoted argument is one word: it starts with "h".
		{args: []string{"-to", "bob@example.org", "hello -wait 5s"}, text: []string{"hello -wait 5s"}},

		// Flags after the text.
		{args: []string{"-to", "bob@example.org", "hello", "-wait", "5s"}, err: `"-wait" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "--wait", "5s"}, err: `"--wait" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "-wait=5s"}, err: `"-wait" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "-to", "carol@example.org"}, err: `"-to" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "world", "-h"}, err: `"-h" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "--help"}, err: `"--help" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "--", "-wait", "5s"}, err: `"-wait" after the text is a flag of send`},
		{args: []string{"-to", "bob@example.org", "hello", "-json"}, err: `"-json" after the text is a global flag`},
		{args: []string{"-to", "bob@example.org", "hello", "-password=secret"}, err: `"-password" after the text is a global flag`},
		{args: []string{"-to", "bob@example.org", "hello", "--store", "x.db"}, err: `"--store" after the text is a global flag`},
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
			msg := err.Error()
			if !errors.Is(err, errUsage) || !strings.Contains(msg, tc.err) ||
				!strings.Contains(msg, "put -- before the text") || !strings.Contains(msg, "send -to JID [-wait DURATION] -- TEXT") {
				t.Errorf("%q: error %q (usage error: %v), want %q and the hint", tc.args, msg, errors.Is(err, errUsage), tc.err)
			}
			if strings.Contains(msg, "secret") {
				t.Errorf("%q: the error shows a flag's value: %q", tc.args, msg)
			}
		}
	}
}

// TestTerminated checks that "--" is recognised as the terminator only
// where the flag package consumed it as such, not as a flag's value.
func TestTerminated(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"hello"}, false},
		{[]string{"--", "hello"}, true},
		{[]string{"-to", "b@x", "--", "hello"}, true},
		{[]string{"-to", "--", "hello"}, false},      // "--" is the value of -to
		{[]string{"-to", "--", "--", "-wait"}, true}, // the value, then the terminator
		{[]string{"-to=--", "hello"}, false},
		{[]string{"-wait", "1s", "--"}, true},
		{[]string{"-echo", "--", "x"}, true}, // a bool flag takes no value
		{[]string{"-echo=true", "x"}, false},
		{[]string{}, false},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.String("to", "", "")
		fs.Duration("wait", 0, "")
		fs.Bool("echo", false, "")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		if got := terminated(fs, tc.args); got != tc.want {
			t.Errorf("terminated(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestSendFlagAfterText runs the refused and the escaped command lines:
// the refused one is a usage error (exit status 2, the hint, no
// connection), the escaped one goes on to connect.
func TestSendFlagAfterText(t *testing.T) {
	addr := closedAddr(t)
	path := filepath.Join(t.TempDir(), "alice.db")
	global := []string{"-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", path}

	out, errOut, code := runCLI(append(global, "send", "-to", "bob@example.org", "hello", "-wait", "5s")...)
	if code != exitUsage || out != "" || !strings.Contains(errOut, `"-wait" after the text is a flag of send`) ||
		!strings.Contains(errOut, "Run 'omemo -h' for usage.") || strings.Contains(errOut, "connecting") {
		t.Fatalf("flag after the text: exit %d, stdout %q, stderr:\n%s", code, out, errOut)
	}

	_, errOut, code = runCLI(append(global, "send", "-to", "bob@example.org", "--", "-wait", "is", "a", "flag")...)
	if code != exitError || !strings.Contains(errOut, "connecting to "+addr) {
		t.Fatalf("text after --: exit %d, stderr:\n%s", code, errOut)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed connection left a state file (%v)", err)
	}

	// The help texts tell the rule.
	_, errOut, code = runCLI("send", "-h")
	if code != exitOK || !strings.Contains(errOut, "put -- before it: omemo [global flags] send -to JID [-wait DURATION] -- TEXT") {
		t.Errorf("send -h: exit %d, stderr:\n%s", code, errOut)
	}
	_, errOut, code = runCLI("-h")
	if code != exitOK || !strings.Contains(errOut, "omemo -jid alice@example.org send -to bob@example.org -- -wait is a flag") {
		t.Errorf("-h: exit %d, stderr:\n%s", code, errOut)
	}
}

// TestReceivedText checks which received messages listen -count counts
// (and -echo answers): those with a body, not the copies of messages
// that the account's other devices sent.
func TestReceivedText(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    omemo.Message
		want bool
	}{
		{"message", omemo.Message{Body: "hi"}, true},
		{"received carbon", omemo.Message{Body: "hi", Carbon: true}, true},
		{"offline", omemo.Message{Body: "hi", KeyExchange: true}, true},
		{"sent carbon", omemo.Message{Body: "hi", Carbon: true, Sent: true}, false},
		{"archived own message", omemo.Message{Body: "hi", Archived: true, Sent: true}, false},
		{"no body", omemo.Message{Payload: []byte("<active xmlns='http://jabber.org/protocol/chatstates'/>")}, false},
		{"no body, sent", omemo.Message{Sent: true}, false},
	} {
		if got := receivedText(tc.m); got != tc.want {
			t.Errorf("%s: receivedText = %v, want %v", tc.name, got, tc.want)
		}
	}
}
