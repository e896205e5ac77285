package omemo

import (
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/ns"
	"mellium.im/omemo/session/sessiontest"
)

func withDelay(raw, from string, stamp time.Time) string {
	f := ""
	if from != "" {
		f = ` from='` + from + `'`
	}
	return strings.Replace(raw, "</message>", `<delay xmlns='urn:xmpp:delay'`+f+` stamp='`+stamp.UTC().Format(time.RFC3339)+`'/></message>`, 1)
}

// Only the own server's delay stamp becomes Message.Delay: a <delay> the
// sender wrote into a live message is ignored. The sender's signed sending
// time is Message.SentAt, and a sending time far from the stanza's is
// flagged.
func TestDelayAndSendingTime(t *testing.T) {
	srv := sessiontest.NewServer()
	sentAt := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	now := sentAt.Add(2 * time.Second)
	alice := newDevice(t, srv, "alice@example.org/a", both, true, func(c *Config) { c.Now = func() time.Time { return sentAt } })
	bob := newDevice(t, srv, "bob@example.net/b", both, true, func(c *Config) { c.Now = func() time.Time { return now } })
	old := sentAt.Add(-30 * 24 * time.Hour)
	// More devices of bob, with other clocks and skews (created before
	// alice's first message, so that she knows them).
	later := newDevice(t, srv, "bob@example.net/late", both, true, func(c *Config) {
		c.Now = func() time.Time { return sentAt.Add(DefaultMaxClockSkew + time.Minute) }
	})
	lenient := newDevice(t, srv, "bob@example.net/lenient", both, true, func(c *Config) {
		c.Now = func() time.Time { return sentAt.Add(DefaultMaxClockSkew + time.Minute) }
		c.MaxClockSkew = time.Hour
	})
	off := newDevice(t, srv, "bob@example.net/off", both, true, func(c *Config) {
		c.Now = func() time.Time { return sentAt.Add(100 * 24 * time.Hour) }
		c.MaxClockSkew = -1
	})
	legacy := newDevice(t, srv, "carol@example.net/c", legacyOnly, true)

	for _, tc := range []struct {
		name     string
		raw      func(string) string
		delay    time.Time
		mismatch bool
	}{
		{"live", func(r string) string { return r }, time.Time{}, false},
		{"sender's delay", func(r string) string { return withDelay(r, "alice@example.org/a", old) }, time.Time{}, false},
		{"delay without from", func(r string) string { return withDelay(r, "", old) }, time.Time{}, false},
		{"delay from the sender's server", func(r string) string { return withDelay(r, "example.org", old) }, time.Time{}, false},
		{"own server's offline delay", func(r string) string { return withDelay(r, "example.net", sentAt.Add(time.Second)) }, sentAt.Add(time.Second), false},
		{"own server's delay far from the signed time", func(r string) string { return withDelay(r, "example.net", old) }, old, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bob.deliver(tc.raw(alice.send(bob.full.Bare(), tc.name)))
			msgs, errs := bob.take()
			if len(msgs) != 1 || len(errs) != 0 {
				t.Fatalf("%+v %v", msgs, errs)
			}
			m := msgs[0]
			if m.Namespace != ns.OMEMO2 || m.Body != tc.name {
				t.Fatalf("got %+v", m)
			}
			if !m.Delay.Equal(tc.delay) {
				t.Errorf("Delay = %v, want %v", m.Delay, tc.delay)
			}
			if !m.SentAt.Equal(sentAt) {
				t.Errorf("SentAt = %v, want the signed %v", m.SentAt, sentAt)
			}
			if m.TimeMismatch != tc.mismatch {
				t.Errorf("TimeMismatch = %v, want %v", m.TimeMismatch, tc.mismatch)
			}
		})
	}

	// A live message whose signed time is far from now is flagged; the
	// allowed skew is configurable, negative turns the check off.
	raw := alice.send(bob.full.Bare(), "clock")
	for _, d := range []struct {
		d    *device
		want bool
	}{{later, true}, {lenient, false}, {off, false}} {
		d.d.deliver(raw)
		msgs, errs := d.d.take()
		if len(msgs) != 1 || len(errs) != 0 || msgs[0].TimeMismatch != d.want {
			t.Fatalf("%s: %+v %v, want TimeMismatch %v", d.d.full, msgs, errs, d.want)
		}
	}

	// Legacy OMEMO has no signed time.
	legacy.deliver(withDelay(alice.send(legacy.full.Bare(), "legacy"), "alice@example.org/a", old))
	msgs, errs := legacy.take()
	if len(msgs) != 1 || len(errs) != 0 || !msgs[0].SentAt.IsZero() || !msgs[0].Delay.IsZero() || msgs[0].TimeMismatch {
		t.Fatalf("legacy: %+v %v", msgs, errs)
	}
}
