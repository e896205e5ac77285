package main

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// contPrefix begins every continuation line of a multi-line text printed
// in text mode (a message body, a warning or an error that spans several
// lines). Every other line the command prints in text mode begins with a
// character that is not a space (a JID, "sent ", "omemo: ", a device id…),
// so a line starting with contPrefix cannot be taken for a new message,
// and since every continuation line carries it, a body cannot make a line
// that starts like a message header.
const contPrefix = "  | "

// escapeText makes untrusted text (message bodies, JIDs, device labels,
// error texts embedding remote data) safe to print on a terminal in text
// mode. Ordinary Unicode (letters of every script, digits, punctuation,
// symbols and emoji, combining marks, zero-width joiners, spaces, tabs) is
// kept. The rest is written as visible escapes:
//
//   - line breaks (LF, CR LF, U+2028 LINE SEPARATOR, U+2029 PARAGRAPH
//     SEPARATOR) become a newline followed by contPrefix;
//   - the other C0 controls (including a lone CR, which would return to the
//     start of the line and overwrite it) and DEL become \xNN (ESC is \x1b);
//   - C1 controls (U+0080 to U+009F) and the Unicode controls that reorder
//     or hide text (see isBidiControl) become \uNNNN (U+202E is \u202e);
//   - each byte of invalid UTF-8 becomes \xNN with NN from 80 to ff (a valid
//     U+0080 to U+00FF is never written that way: it is either kept or
//     \u00NN);
//   - a backslash is doubled when the text after it would otherwise read
//     as an escape: when it is followed by x, u, a backslash or a character
//     that is escaped. Elsewhere (C:\Users, ¯\_(ツ)_/¯) it is kept as is.
//
// Hex digits are lower case. The result is unambiguous: reading \\ as a
// backslash, \xNN and \uNNNN as the escaped character, any other backslash
// as itself and a newline followed by contPrefix as a line break gives the
// text back, up to the kind of line break.
func escapeText(s string) string {
	if !needsEscaping(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\r' && strings.HasPrefix(s[i+1:], "\n"):
			b.WriteString("\n" + contPrefix)
			size = 2
		case isLineBreak(r):
			b.WriteString("\n" + contPrefix)
		case r == '\\':
			b.WriteByte('\\')
			if escapeFollows(s[i+1:]) {
				b.WriteByte('\\')
			}
		case r < 0x80 && isControl(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case isControl(r) || isBidiControl(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// needsEscaping reports whether escapeText would change s.
func needsEscaping(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || r == '\\' || isLineBreak(r) || isControl(r) || isBidiControl(r) {
			return true
		}
		i += size
	}
	return false
}

// escapeFollows reports whether the escaped form of s begins like an
// escape: with x, u or a backslash (a backslash itself or an escaped
// character). A backslash before s must then be doubled.
func escapeFollows(s string) bool {
	if s == "" {
		return false
	}
	r, size := utf8.DecodeRuneInString(s)
	switch {
	case r == utf8.RuneError && size == 1:
		return true
	case r == 'x' || r == 'u' || r == '\\':
		return true
	case r == '\r':
		// CR LF is a line break, a lone CR is \x0d.
		return !strings.HasPrefix(s[1:], "\n")
	case isLineBreak(r):
		return false
	}
	return isControl(r) || isBidiControl(r)
}

// isLineBreak reports whether r ends a line: LF, U+2028 LINE SEPARATOR
// and U+2029 PARAGRAPH SEPARATOR (CR LF is handled by the caller).
func isLineBreak(r rune) bool {
	return r == '\n' || r == '\u2028' || r == '\u2029'
}

// isControl reports whether r is a control character that is escaped:
// C0 except tab and LF, DEL and C1.
func isControl(r rune) bool {
	switch {
	case r == '\t' || r == '\n':
		return false
	case r < 0x20 || r == 0x7f:
		return true
	}
	return r >= 0x80 && r <= 0x9f
}

// isBidiControl reports whether r is one of the invisible format characters
// that can reorder the text around it on a terminal or in a log viewer
// (Trojan Source, CVE-2021-42574): U+061C ARABIC LETTER MARK, U+200E and
// U+200F (LRM, RLM), U+202A to U+202E (LRE, RLE, PDF, LRO, RLO), U+2066
// to U+2069 (LRI, RLI, FSI, PDI), and the deprecated U+206A to U+206F,
// which have no legitimate use in a message. Zero-width joiners and
// non-joiners (U+200C, U+200D), variation selectors and tag characters are
// kept: emoji sequences and several scripts need them.
func isBidiControl(r rune) bool {
	switch {
	case r == '\u061c', r == '\u200e', r == '\u200f':
		return true
	case r >= '\u202a' && r <= '\u202e':
		return true
	case r >= '\u2066' && r <= '\u206f':
		return true
	}
	return false
}

// termError is an error whose message is ready for the terminal: the
// remote data it embeds is escaped and its line breaks are intended.
// safeError leaves it alone.
type termError struct {
	msg string
	err error
}

func (e *termError) Error() string { return e.msg }
func (e *termError) Unwrap() error { return e.err }

// safeError returns err with its message escaped with escapeText (errors
// of the network or the plugin can embed text chosen by a contact or a
// server). It keeps err in the chain, for errors.Is and errors.As, and
// escapes a message only once: a *termError is returned unchanged.
func safeError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*termError); ok {
		return err
	}
	msg := err.Error()
	if !needsEscaping(msg) {
		return err
	}
	return &termError{msg: escapeText(msg), err: err}
}
