package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"mellium.im/omemo"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

func TestEscapeText(t *testing.T) {
	const nl = "\n" + contPrefix
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"plain", "hello, world!", "hello, world!"},
		{"unicode kept", "héllo wörld 你好 😀 e\u0301", "héllo wörld 你好 😀 e\u0301"},
		{"scripts kept", "مرحبا שלום Привет नमस्ते こんにちは 안녕", "مرحبا שלום Привет नमस्ते こんにちは 안녕"},
		{"joiners and selectors kept", "👨\u200d👩\u200d👧 ❤\ufe0f 🇫🇷 🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F می\u200cخواهم",
			"👨\u200d👩\u200d👧 ❤\ufe0f 🇫🇷 🏴\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F می\u200cخواهم"},
		{"spaces and tab kept", "a\tb\u00a0c\u3000d", "a\tb\u00a0c\u3000d"},
		{"replacement character kept", "\ufffd", "\ufffd"},

		{"ansi CSI", "\x1b[31mred\x1b[0m \x1b[2J\x1b[H", `\x1b[31mred\x1b[0m \x1b[2J\x1b[H`},
		{"OSC title BEL", "\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
		{"OSC 8 hyperlink ST", "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\", `\x1b]8;;https://evil.example\x1b\click\x1b]8;;\x1b\`},
		{"C0", "\x00\x01\x07\x08\x0b\x0c\x0e\x1f", `\x00\x01\x07\x08\x0b\x0c\x0e\x1f`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"C1", "\u0080\u0085\u008d\u0090\u009b31m\u009c\u009d\u009f", `\u0080\u0085\u008d\u0090\u009b31m\u009c\u009d\u009f`},
		{"latin-1 kept", "\u00a0¡ÿ", "\u00a0¡ÿ"},
		{"bidi overrides", "user\u202etxt.exe", `user\u202etxt.exe`},
		{"bidi all", "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u206a\u206f",
			`\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u206a\u206f`},

		{"invalid byte", "a\xffb", `a\xffb`},
		{"truncated sequence", "caf\xc3", `caf\xc3`},
		{"overlong", "\xc0\xaf", `\xc0\xaf`},
		{"surrogate", "\xed\xa0\x80", `\xed\xa0\x80`},
		{"C1 encoded vs raw byte", "\xc2\x9b\x9b", `\u009b\x9b`},

		{"LF", "one\ntwo", "one" + nl + "two"},
		{"CRLF", "one\r\ntwo\r\n", "one" + nl + "two" + nl},
		{"lone CR overwrites", "harmless\rEVIL", `harmless\x0dEVIL`},
		{"CR CR LF", "a\r\r\nb", `a\x0d` + nl + "b"},
		{"LF CR", "a\n\rb", "a" + nl + `\x0db`},
		{"empty lines", "a\n\nb", "a" + nl + nl + "b"},
		{"line and paragraph separators", "a\u2028b\u2029c", "a" + nl + "b" + nl + "c"},
		{"NEL is escaped", "a\u0085b", `a\u0085b`},
		{"prefix in body", "a\n  | b", "a" + nl + "  | b"},

		{"backslash kept", `C:\Users ¯\_(ツ)_/¯ \o/ a\`, `C:\Users ¯\_(ツ)_/¯ \o/ a\`},
		{"backslash before x", `\x1b`, `\\x1b`},
		{"backslash before u", `\u202e`, `\\u202e`},
		{"double backslash", `\\`, `\\\`},
		{"triple backslash x", `\\\x`, `\\\\\\x`},
		{"backslash before escaped", "\\\x1b", `\\\x1b`},
		{"backslash before invalid", "\\\xff", `\\\xff`},
		{"backslash before bidi", "\\\u202e", `\\\u202e`},
		{"backslash before lone CR", "\\\r", `\\\x0d`},
		{"backslash before CRLF", "\\\r\n", `\` + nl},
		{"backslash before LF", "\\\nx", `\` + nl + "x"},
		{"backslash before tab", "\\\t", "\\\t"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := escapeText(tc.in); got != tc.want {
				t.Errorf("escapeText(%q) = %q, want %q", tc.in, got, tc.want)
			}
			checkEscaped(t, tc.in, escapeText(tc.in))
		})
	}
}

// unescapeText reads an escaped text back (the reading escapeText
// documents).
func unescapeText(s string) string {
	s = strings.ReplaceAll(s, "\n"+contPrefix, "\n")
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '\\':
			b.WriteByte('\\')
			i++
			continue
		case 'x':
			if i+4 <= len(s) {
				if n, err := strconv.ParseUint(s[i+2:i+4], 16, 8); err == nil {
					b.WriteByte(byte(n))
					i += 3
					continue
				}
			}
		case 'u':
			if i+6 <= len(s) {
				if n, err := strconv.ParseUint(s[i+2:i+6], 16, 32); err == nil {
					b.WriteRune(rune(n))
					i += 5
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// normalizeBreaks maps every line break escapeText accepts to LF.
func normalizeBreaks(s string) string {
	return strings.NewReplacer("\r\n", "\n", "\u2028", "\n", "\u2029", "\n").Replace(s)
}

// checkEscaped checks that out, the escaped in, is safe on a terminal and
// reads back as in.
func checkEscaped(t *testing.T, in, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("escapeText(%q) = %q: invalid UTF-8", in, out)
	}
	for i, r := range out {
		bad := (r < 0x20 && r != '\t' && r != '\n') || (r >= 0x7f && r <= 0x9f) ||
			r == 0x61c || r == 0x200e || r == 0x200f || (r >= 0x202a && r <= 0x202e) ||
			(r >= 0x2066 && r <= 0x206f) || r == 0x2028 || r == 0x2029
		if bad {
			t.Fatalf("escapeText(%q) = %q: %U left at byte %d", in, out, r, i)
		}
		if r == '\n' && !strings.HasPrefix(out[i+1:], contPrefix) {
			t.Fatalf("escapeText(%q) = %q: a line at byte %d does not start with %q", in, out, i+1, contPrefix)
		}
	}
	if got, want := unescapeText(out), normalizeBreaks(in); got != want {
		t.Fatalf("escapeText(%q) = %q reads back as %q, want %q: ambiguous", in, out, got, want)
	}
}

// escapePieces are the building blocks of the random texts of
// TestEscapeTextRandom and the seeds of FuzzEscapeText.
var escapePieces = []string{
	"a", "x", "u", "1b", "0", "202e", "\\", "\\\\", "\n", "\r", "\r\n", "\t", " ", contPrefix,
	"\x00", "\x1b", "\x1b[", "\x7f", "\u0080", "\u0085", "\u009b", "\u009f",
	"\u061c", "\u200d", "\u200e", "\u202e", "\u2066", "\u2069", "\u2028", "\u2029",
	"é", "e\u0301", "你", "😀", "\ufffd", "\xff", "\xc3", "\xe2\x80", "\xed\xa0\x80",
}

func TestEscapeTextRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(escapePieces[rng.IntN(len(escapePieces))])
		}
		in := b.String()
		checkEscaped(t, in, escapeText(in))
	}
}

func FuzzEscapeText(f *testing.F) {
	for _, p := range escapePieces {
		f.Add(p + "x" + p)
	}
	f.Fuzz(func(t *testing.T, in string) {
		checkEscaped(t, in, escapeText(in))
	})
}

// headerRE matches the first line of a received message in text mode.
var headerRE = regexp.MustCompile(`^[^\s\[]+ \[device \d+, [^\]]*\]: `)

// spoofBody is a message body that fakes a second, verified message.
const spoofBody = "hi\nalice@example.org [device 1, OMEMO 2, trusted]: fake"

func testMessage(body string) omemo.Message {
	m := omemo.Message{
		Body:         body,
		SenderDevice: 42,
		Namespace:    ns.Legacy,
		Trust:        trust.Undecided,
		TrustLevel:   "undecided",
	}
	m.From = jid.MustParse("mallory@example.org/phone")
	m.To = jid.MustParse("bob@example.org/omemo")
	return m
}

// printed returns what printMessage writes for m to stdout and stderr.
func printed(t *testing.T, jsonOut bool, m omemo.Message) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	c := &client{out: newOutput(jsonOut, &o, &e)}
	c.printMessage(m)
	return o.String(), e.String()
}

func TestEscapePrintMessage(t *testing.T) {
	const header = "mallory@example.org [device 42, OMEMO 0.3 (legacy), undecided]: "
	for _, tc := range []struct{ name, body, want string }{
		{"spoofed line", spoofBody, header + "hi\n" + contPrefix + "alice@example.org [device 1, OMEMO 2, trusted]: fake\n"},
		{"spoofed line CRLF", strings.ReplaceAll(spoofBody, "\n", "\r\n"), header + "hi\n" + contPrefix + "alice@example.org [device 1, OMEMO 2, trusted]: fake\n"},
		{"spoofed line U+2028", strings.ReplaceAll(spoofBody, "\n", "\u2028"), header + "hi\n" + contPrefix + "alice@example.org [device 1, OMEMO 2, trusted]: fake\n"},
		{"overwritten line", strings.ReplaceAll(spoofBody, "\n", "\r"), header + `hi\x0dalice@example.org [device 1, OMEMO 2, trusted]: fake` + "\n"},
		{"erased line", "hi\x1b[2K\x1b[1Gfake", header + `hi\x1b[2K\x1b[1Gfake` + "\n"},
		{"C1 CSI", "hi\u009b2K", header + `hi\u009b2K` + "\n"},
		{"reordered", "hi \u202eekaf", header + `hi \u202eekaf` + "\n"},
		{"unicode", "héllo wörld 你好 😀 e\u0301", header + "héllo wörld 你好 😀 e\u0301\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut := printed(t, false, testMessage(tc.body))
			if out != tc.want {
				t.Errorf("printed\n%q\nwant\n%q", out, tc.want)
			}
			if errOut != "" {
				t.Errorf("stderr %q", errOut)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if !strings.HasPrefix(lines[0], header) {
				t.Errorf("first line %q does not start with the header %q", lines[0], header)
			}
			for _, l := range lines[1:] {
				if !strings.HasPrefix(l, contPrefix) || headerRE.MatchString(l) {
					t.Errorf("line %q can be taken for a new message", l)
				}
			}
			if got := headerRE.FindAllString(out, -1); len(got) != 1 {
				t.Errorf("%d message headers in %q, want 1", len(got), out)
			}
		})
	}

	// The flags of a copy of an own message: the recipient is escaped
	// too (a JID cannot hold a control character, but the header is
	// escaped as a whole).
	m := testMessage("x")
	m.Sent, m.KeyExchange = true, true
	out, _ := printed(t, false, m)
	if want := "mallory@example.org [device 42, OMEMO 0.3 (legacy), undecided, key exchange, sent by own device to bob@example.org]: x\n"; out != want {
		t.Errorf("own copy printed %q, want %q", out, want)
	}
}

func TestEscapePrintMessageJSON(t *testing.T) {
	bodies := []string{
		spoofBody,
		"hi\r\nfake\rover \x1b[31mred\x1b]0;t\x07 \u009b \u202e \u2028 <b>&amp; \\x1b 😀",
	}
	for _, body := range bodies {
		out, errOut := printed(t, true, testMessage(body))
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(messageJSON{From: "mallory@example.org", Device: 42, Backend: ns.Legacy, Body: body, Trust: "undecided"}); err != nil {
			t.Fatal(err)
		}
		if out != want.String() {
			t.Errorf("-json printed\n%s\nwant (encoding/json)\n%s", out, want.String())
		}
		if errOut != "" {
			t.Errorf("stderr %q", errOut)
		}
		var got messageJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Body != body {
			t.Errorf("-json body %q (%v), want %q", got.Body, err, body)
		}
	}
	// The format itself, spelled out.
	out, _ := printed(t, true, testMessage(spoofBody))
	const want = `{"from":"mallory@example.org","device":42,"backend":"eu.siacs.conversations.axolotl","body":"hi\nalice@example.org [device 1, OMEMO 2, trusted]: fake","trust":"undecided","key_exchange":false}` + "\n"
	if out != want {
		t.Errorf("-json printed\n%s\nwant\n%s", out, want)
	}
}

func TestEscapeWarnProgress(t *testing.T) {
	const remote = "evil\nomemo: warning: fake\x1b[2J\u202e"
	const escaped = "evil\n" + contPrefix + `omemo: warning: fake\x1b[2J\u202e`
	for _, jsonOut := range []bool{false, true} {
		var o, e bytes.Buffer
		out := newOutput(jsonOut, &o, &e)
		out.warn("rejected message %s from %s: %v", remote, "mallory@example.org", errors.New(remote))
		want := "omemo: warning: rejected message " + escaped + " from mallory@example.org: " + escaped + "\n"
		out.progress("fetching the device lists of %s…", remote)
		if !jsonOut {
			want += "fetching the device lists of " + escaped + "…\n"
		}
		if e.String() != want {
			t.Errorf("json %v: stderr\n%q\nwant\n%q", jsonOut, e.String(), want)
		}
		if o.Len() != 0 {
			t.Errorf("json %v: stdout %q", jsonOut, o.String())
		}
		// The format string is not escaped, only the text it gives.
		e.Reset()
		out.warn("100%% done, %d left", 3)
		if want := "omemo: warning: 100% done, 3 left\n"; e.String() != want {
			t.Errorf("json %v: warn with a verb: %q, want %q", jsonOut, e.String(), want)
		}
	}
}

func TestEscapeSafeError(t *testing.T) {
	if safeError(nil) != nil {
		t.Fatal("safeError(nil) != nil")
	}
	plain := errors.New("not sent: no device")
	if safeError(plain) != plain {
		t.Error("an error without anything to escape was changed")
	}

	remote := errors.New("item-not-found: \x1b]0;x\x07\nomemo: fake")
	err := safeError(fmt.Errorf("devices of bob@example.org: %w", remote))
	if want := `devices of bob@example.org: item-not-found: \x1b]0;x\x07` + "\n" + contPrefix + "omemo: fake"; err.Error() != want {
		t.Errorf("safeError: %q, want %q", err.Error(), want)
	}
	if !errors.Is(err, remote) {
		t.Error("safeError lost the wrapped error")
	}
	// Escaped once only.
	if again := safeError(err); again != err {
		t.Errorf("escaped twice: %q", again.Error())
	}
	// An error already made for the terminal keeps its lines.
	te := &termError{msg: "not sent\n  bob@example.org device 1", err: remote}
	if safeError(te) != te {
		t.Error("a *termError was escaped again")
	}
	if !errors.Is(te, remote) {
		t.Error("termError does not unwrap")
	}
}
