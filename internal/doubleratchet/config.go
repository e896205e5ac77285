package doubleratchet

import (
	"errors"
	"fmt"
)

// DefaultMaxSkipped is the default for both Config.MaxSkippedPerMessage and
// Config.MaxSkippedPerSession (python-omemo's default).
const DefaultMaxSkipped = 1000

// Errors returned by this package. They are sentinel values to be tested
// with errors.Is; returned errors may wrap them with context. No error string
// ever contains key material.
var (
	// ErrDuplicate reports a message whose key was already used or
	// discarded: its counter lies below the position of its receiving chain
	// (current or superseded) and no skipped key is stored for it.
	ErrDuplicate = errors.New("doubleratchet: duplicate or expired message")
	// ErrTooManySkipped reports a message that would require deriving more
	// than Config.MaxSkippedPerMessage skipped keys in its receiving chain.
	ErrTooManySkipped = errors.New("doubleratchet: too many skipped messages")
	// ErrInvalidConfig reports an invalid Config.
	ErrInvalidConfig = errors.New("doubleratchet: invalid configuration")
	// ErrCorruptState reports serialized state that cannot be decoded.
	ErrCorruptState = errors.New("doubleratchet: corrupt state")
	// ErrNoReceivingChain reports a message that cannot be mapped to a
	// receiving chain (its ratchet key equals the peer key this state was
	// initialised with, but no chain was ever derived for it).
	ErrNoReceivingChain = errors.New("doubleratchet: no receiving chain")
	// ErrNoSendingChain reports an attempt to encrypt with a passive state
	// that has not decrypted its first message yet.
	ErrNoSendingChain = errors.New("doubleratchet: no sending chain")
	// ErrInvalidKey reports an X25519 exchange with a low-order peer key
	// (all-zero shared secret).
	ErrInvalidKey = errors.New("doubleratchet: invalid ratchet key")
	// ErrChainExhausted reports a chain counter that would overflow uint32.
	ErrChainExhausted = errors.New("doubleratchet: chain counter exhausted")
)

// Config holds the parameters of a Double Ratchet session. It is copied by
// the constructors; later changes do not affect existing states.
//
// The limits bound the work and memory an attacker (or heavy message loss)
// can force on the receiver: at most MaxSkippedPerMessage chain steps are
// derived for one incoming message in its receiving chain, and at most
// MaxSkippedPerSession skipped message keys are kept (oldest evicted first).
// Values are taken literally: zero for both disables skipped message keys
// entirely. Use DefaultConfig for the python-omemo defaults.
type Config struct {
	// RootInfo is the HKDF info of the root chain (RootInfoOMEMO2 or
	// RootInfoLegacy). It must not be empty.
	RootInfo []byte
	// MaxSkippedPerMessage is the maximum number of message keys skipped in
	// the current receiving chain by one message (default 1000).
	MaxSkippedPerMessage int
	// MaxSkippedPerSession is the maximum number of skipped message keys
	// stored per session (default 1000).
	MaxSkippedPerSession int
}

// DefaultConfig returns a Config with the given root info and the default
// limits (DefaultMaxSkipped for both).
func DefaultConfig(rootInfo []byte) *Config {
	return &Config{
		RootInfo:             append([]byte(nil), rootInfo...),
		MaxSkippedPerMessage: DefaultMaxSkipped,
		MaxSkippedPerSession: DefaultMaxSkipped,
	}
}

// Validate reports whether c is usable. The rules are the ones python-omemo
// intends (its check has an operator-precedence bug that rejects valid
// settings): MaxSkippedPerSession >= 0; if it is 0 then MaxSkippedPerMessage
// must be 0, else 1 <= MaxSkippedPerMessage <= MaxSkippedPerSession.
// RootInfo must be non-empty. The error wraps ErrInvalidConfig.
func (c *Config) Validate() error {
	switch {
	case c == nil:
		return fmt.Errorf("%w: nil config", ErrInvalidConfig)
	case len(c.RootInfo) == 0:
		return fmt.Errorf("%w: empty root info", ErrInvalidConfig)
	case c.MaxSkippedPerSession < 0:
		return fmt.Errorf("%w: negative per-session limit", ErrInvalidConfig)
	case c.MaxSkippedPerSession == 0 && c.MaxSkippedPerMessage != 0:
		return fmt.Errorf("%w: per-message limit must be 0 when the per-session limit is 0", ErrInvalidConfig)
	case c.MaxSkippedPerSession > 0 && (c.MaxSkippedPerMessage < 1 || c.MaxSkippedPerMessage > c.MaxSkippedPerSession):
		return fmt.Errorf("%w: per-message limit must be between 1 and the per-session limit", ErrInvalidConfig)
	}
	return nil
}

// config is the validated, private copy of a Config kept in a State.
type config struct {
	rootInfo   []byte // never mutated after construction; may be shared by clones
	maxMsg     uint32
	maxSession int
}

func newConfig(c *Config) (config, error) {
	if err := c.Validate(); err != nil {
		return config{}, err
	}
	maxMsg := c.MaxSkippedPerMessage
	// The per-message limit is compared with uint32 counter differences.
	if uint64(maxMsg) > 1<<32-1 {
		maxMsg = 1<<32 - 1
	}
	return config{
		rootInfo:   append([]byte(nil), c.RootInfo...),
		maxMsg:     uint32(maxMsg),
		maxSession: c.MaxSkippedPerSession,
	}, nil
}
