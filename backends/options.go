package backends

import (
	"crypto/rand"
	"fmt"
	"io"
	"time"
)

// Defaults for the skipped-message-key limits, as in python-omemo.
const (
	DefaultMaxSkippedPerMessage = 1000
	DefaultMaxSkippedPerSession = 1000
)

// Options configure a backend. The zero value selects the defaults.
type Options struct {
	// Rand is the source of all key material and nonces; crypto/rand if nil.
	// Tests inject a deterministic reader to reproduce known answers.
	Rand io.Reader
	// Now is the clock used for signed pre key ages; time.Now if nil.
	Now func() time.Time
	// MaxSkippedPerMessage bounds how many message keys one incoming message
	// may make us skip (and store) in the current receiving chain; a message
	// beyond the bound is rejected. Zero selects the default, 1000. With
	// MaxSkippedPerSession set to -1 (no skipped keys at all) it must be 0.
	MaxSkippedPerMessage int
	// MaxSkippedPerSession bounds the skipped message keys kept per session;
	// the oldest are evicted first. Zero selects the default, 1000; -1 keeps
	// none.
	MaxSkippedPerSession int
}

// ErrInvalidOptions reports options that cannot work together.
var ErrInvalidOptions = fmt.Errorf("omemo: invalid backend options")

// Resolved returns the options with defaults filled in, validated. The rule
// python-omemo intends (and its operator-precedence bug breaks): per-session
// may be zero only together with per-message zero; otherwise
// 1 ≤ per-message ≤ per-session.
func (o *Options) Resolved() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Rand == nil {
		r.Rand = rand.Reader
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	switch {
	case r.MaxSkippedPerSession == -1:
		r.MaxSkippedPerSession = 0
		if r.MaxSkippedPerMessage != 0 {
			return r, fmt.Errorf("%w: per-message skipped keys %d with no per-session skipped keys", ErrInvalidOptions, r.MaxSkippedPerMessage)
		}
		return r, nil
	case r.MaxSkippedPerSession == 0:
		r.MaxSkippedPerSession = DefaultMaxSkippedPerSession
	case r.MaxSkippedPerSession < 0:
		return r, fmt.Errorf("%w: per-session skipped keys %d", ErrInvalidOptions, r.MaxSkippedPerSession)
	}
	if r.MaxSkippedPerMessage == 0 {
		r.MaxSkippedPerMessage = min(DefaultMaxSkippedPerMessage, r.MaxSkippedPerSession)
	}
	if r.MaxSkippedPerMessage < 1 || r.MaxSkippedPerMessage > r.MaxSkippedPerSession {
		return r, fmt.Errorf("%w: per-message skipped keys %d not in 1..%d", ErrInvalidOptions, r.MaxSkippedPerMessage, r.MaxSkippedPerSession)
	}
	return r, nil
}
