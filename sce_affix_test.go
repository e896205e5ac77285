package omemo

import (
	"errors"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/ns"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session/sessiontest"
)

// Affixes of OMEMO 2 envelopes that other senders produce and that are
// legal, or harmless, are accepted: an empty <rpad/> (XEP-0420 allows a
// padding of length 0; XEP-0384 only requires the element) and, unless
// Config.RequireAffixes makes the plugin strict, an optional affix whose
// value cannot be parsed. Such an affix is ignored: the message is
// delivered with its body, and OnError receives a warning that wraps
// sce.ErrInvalidAffix and is not a *DecryptError.
// A present affix that parses and contradicts the stanza still rejects.
func TestSCEAffixTolerance(t *testing.T) {
	srv := sessiontest.NewServer()
	alice := newDevice(t, srv, "alice@example.org/a", both, true)
	// Two devices of bob's account, one lenient, one strict: each stanza
	// is encrypted for both and delivered to both.
	bob := newDevice(t, srv, "bob@example.org/b", both, true)
	strict := newDevice(t, srv, "bob@example.org/strict", both, true, func(c *Config) { c.RequireAffixes = true })
	setup := alice.send(bob.full.Bare(), "setup")
	for _, d := range []*device{bob, strict} {
		d.deliver(setup)
		if msgs, errs := d.take(); len(msgs) != 1 || len(errs) != 0 {
			t.Fatalf("%v: setup message: %+v %v", d.full, msgs, errs)
		}
	}

	const (
		head    = `<envelope xmlns='urn:xmpp:sce:1'><content><body xmlns='jabber:client'>ok &amp; intact</body></content>`
		body    = "ok & intact"
		affixes = `<to jid='bob@example.org'/><from jid='alice@example.org'/>`
	)
	now := time.Now().UTC().Truncate(time.Second)
	stamp := now.Format(time.RFC3339)

	type outcome struct {
		delivered bool
		warning   string // affix named by the *sce.InvalidAffixError reported while delivering
		reject    error  // cause of the *DecryptError when not delivered
		sentAt    time.Time
	}
	for i, c := range []struct {
		name          string
		envelope      string
		lenient, strc outcome
	}{
		{
			name:     "empty rpad",
			envelope: head + `<rpad/><time stamp='` + stamp + `'/>` + affixes + `</envelope>`,
			lenient:  outcome{delivered: true, sentAt: now},
			strc:     outcome{delivered: true, sentAt: now},
		},
		{
			name:     "empty rpad, start and end tags",
			envelope: head + `<rpad></rpad>` + affixes + `</envelope>`,
			lenient:  outcome{delivered: true},
			strc:     outcome{delivered: true},
		},
		{
			name:     "absent rpad",
			envelope: head + affixes + `</envelope>`,
			lenient:  outcome{reject: sce.ErrMissingAffix},
			strc:     outcome{reject: sce.ErrMissingAffix},
		},
		{
			name:     "unparseable time",
			envelope: head + `<rpad>pad</rpad><time stamp='garbage'/>` + affixes + `</envelope>`,
			lenient:  outcome{delivered: true, warning: "time"},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			name:     "unparseable time, empty rpad",
			envelope: head + `<rpad/><time stamp='garbage'/>` + affixes + `</envelope>`,
			lenient:  outcome{delivered: true, warning: "time"},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			name:     "time without stamp",
			envelope: head + `<rpad>pad</rpad><time/>` + affixes + `</envelope>`,
			lenient:  outcome{delivered: true, warning: "time"},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			name:     "unparseable from",
			envelope: head + `<rpad>pad</rpad><to jid='bob@example.org'/><from jid='@'/></envelope>`,
			lenient:  outcome{delivered: true, warning: "from"},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			name:     "unparseable to",
			envelope: head + `<rpad>pad</rpad><to jid=''/><from jid='alice@example.org'/></envelope>`,
			lenient:  outcome{delivered: true, warning: "to"},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			// The security check stays: a valid from naming someone else.
			name:     "contradicting from next to an unparseable time",
			envelope: head + `<rpad/><time stamp='garbage'/><to jid='bob@example.org'/><from jid='mallory@example.org'/></envelope>`,
			lenient:  outcome{reject: sce.ErrAffixMismatch},
			strc:     outcome{reject: sce.ErrAffixMismatch},
		},
		{
			name:     "contradicting to next to an unparseable from",
			envelope: head + `<rpad/><to jid='carol@example.org'/><from jid='@'/></envelope>`,
			lenient:  outcome{reject: sce.ErrAffixMismatch},
			strc:     outcome{reject: sce.ErrInvalidAffix},
		},
		{
			// Structural errors are no affix values: rejected.
			name:     "repeated time",
			envelope: head + `<rpad/><time stamp='garbage'/><time stamp='` + stamp + `'/>` + affixes + `</envelope>`,
			lenient:  outcome{reject: sce.ErrMalformed},
			strc:     outcome{reject: sce.ErrMalformed},
		},
	} {
		raw := alice.encryptRaw(bob.full.Bare(), map[string][]byte{ns.OMEMO2: []byte(c.envelope)})
		for _, r := range []struct {
			d    *device
			want outcome
		}{{bob, c.lenient}, {strict, c.strc}} {
			r.d.deliver(raw)
			msgs, errs := r.d.take()
			what := c.name + " at " + r.d.full.String()
			if !r.want.delivered {
				var de *DecryptError
				if len(msgs) != 0 || len(errs) != 1 || !errors.As(errs[0], &de) || !errors.Is(errs[0], r.want.reject) || de.Namespace != ns.OMEMO2 {
					t.Errorf("%d, %s: %d messages, errors %v; want a DecryptError wrapping %v", i, what, len(msgs), errs, r.want.reject)
				}
				continue
			}
			if len(msgs) != 1 {
				t.Errorf("%d, %s: %d messages, errors %v; want it delivered", i, what, len(msgs), errs)
				continue
			}
			m := msgs[0]
			if m.Body != body || m.Namespace != ns.OMEMO2 || !m.From.Equal(alice.full) {
				t.Errorf("%d, %s: delivered %+v", i, what, m)
			}
			if !m.SentAt.Equal(r.want.sentAt) || m.TimeMismatch {
				t.Errorf("%d, %s: SentAt %v, TimeMismatch %v; want %v, false", i, what, m.SentAt, m.TimeMismatch, r.want.sentAt)
			}
			if r.want.warning == "" {
				if len(errs) != 0 {
					t.Errorf("%d, %s: unexpected errors %v", i, what, errs)
				}
				continue
			}
			var de *DecryptError
			var ie *sce.InvalidAffixError
			switch {
			case len(errs) != 1:
				t.Errorf("%d, %s: errors %v; want one warning", i, what, errs)
			case errors.As(errs[0], &de):
				t.Errorf("%d, %s: warning %v is a DecryptError, but the message was delivered", i, what, errs[0])
			case !errors.Is(errs[0], sce.ErrInvalidAffix) || !errors.As(errs[0], &ie) || ie.Affix != r.want.warning:
				t.Errorf("%d, %s: warning %#v; want an *sce.InvalidAffixError for %s", i, what, errs[0], r.want.warning)
			case !strings.Contains(errs[0].Error(), `"raw"`) || !strings.Contains(errs[0].Error(), alice.full.String()):
				t.Errorf("%d, %s: warning %q names neither the message nor its sender", i, what, errs[0])
			case strings.Contains(errs[0].Error(), "garbage"):
				t.Errorf("%d, %s: warning %q quotes the decrypted affix", i, what, errs[0])
			}
		}
	}
}
