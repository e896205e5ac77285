// Package trust implements the trust model of OMEMO: which recipient devices
// a message may be encrypted for, and which senders are accepted.
//
// Trust attaches to the pair (bare JID, Ed25519 identity key), never to a
// device id: a device is trusted only implicitly, through the identity key it
// announces. Every device of an account that uses the same identity key shares
// one trust record, across both OMEMO wire formats.
//
// Applications store custom trust level names (arbitrary strings, for example
// "blindly-trusted" or "verified"). The core library never interprets those
// names itself; it asks a [Policy] to map them to one of the three core levels
// [Trusted], [Undecided] and [Distrusted]:
//
//   - Trusted: messages are encrypted for the device and accepted from it.
//   - Undecided: before encrypting, the policy gets one chance to decide
//     (see [Policy.Decide]); a device that stays undecided aborts the
//     encryption. Messages from undecided devices are still decrypted.
//   - Distrusted: the device is silently left out when encrypting, and
//     messages from it are rejected.
//
// The ready policies [BTBV], [TOFU] and [Manual] share one vocabulary of level
// names ([LevelTrusted], [LevelBlindlyTrusted], [LevelFirstUse],
// [LevelUndecided], [LevelDistrusted]), so an application may switch between
// them without stored decisions becoming unknown. [Custom] wraps an
// application's own vocabulary.
//
// All policies returned by this package are immutable and safe for concurrent
// use, and their results do not depend on map iteration order.
package trust

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strconv"
)

// Level is a core trust level, the only thing the OMEMO core decides on.
type Level uint8

// The core trust levels.
const (
	// Undecided means no decision was made yet. Encryption asks the Policy to
	// decide and fails if the device stays undecided; decryption accepts it.
	Undecided Level = iota
	// Trusted means messages are encrypted for the device and accepted from it.
	Trusted
	// Distrusted means the device never receives keys and its messages are
	// rejected.
	Distrusted
)

// String returns "undecided", "trusted" or "distrusted", and "Level(n)" for
// values outside the defined range.
func (l Level) String() string {
	switch l {
	case Undecided:
		return "undecided"
	case Trusted:
		return "trusted"
	case Distrusted:
		return "distrusted"
	}
	return "Level(" + strconv.Itoa(int(l)) + ")"
}

// valid reports whether l is one of the three core levels.
func (l Level) valid() bool { return l <= Distrusted }

// Device is what a trust decision is about: one device of a contact (or of
// the own account) together with the identity key it announced.
type Device struct {
	// JID is the bare JID of the account, in canonical (normalized) form.
	// Trust records of different spellings of one JID are not merged.
	JID string
	// DeviceID is the OMEMO device id. It is informational only: decisions
	// are stored per Key, never per device id.
	DeviceID uint32
	// IdentityKey is the Ed25519 form of the device's identity key.
	IdentityKey [32]byte
	// Label is the device label announced by the device, if any. It is
	// chosen by the (possibly hostile) device owner and must only be shown
	// to users as a hint, never trusted.
	Label string
	// Level is the custom trust level name currently stored for Key. The
	// core sets it to Policy.Default() when nothing is stored; Decide also
	// reads an empty Level as Policy.Default().
	Level string
}

// Key identifies one trust record: the pair (bare JID, identity key).
type Key struct {
	JID         string
	IdentityKey [32]byte
}

// Key returns the trust record the device belongs to.
func (d Device) Key() Key { return Key{JID: d.JID, IdentityKey: d.IdentityKey} }

// String returns the JID and the hex encoded identity key, for logs and
// error messages. Identity keys are public; nothing secret is printed.
func (k Key) String() string {
	return k.JID + "/" + hex.EncodeToString(k.IdentityKey[:])
}

// compareKeys orders keys by JID and then by identity key bytes.
func compareKeys(a, b Key) int {
	if a.JID != b.JID {
		if a.JID < b.JID {
			return -1
		}
		return 1
	}
	return bytes.Compare(a.IdentityKey[:], b.IdentityKey[:])
}

// compareDevices orders devices by JID, device id and identity key.
func compareDevices(a, b Device) int {
	if a.JID != b.JID {
		if a.JID < b.JID {
			return -1
		}
		return 1
	}
	if a.DeviceID != b.DeviceID {
		if a.DeviceID < b.DeviceID {
			return -1
		}
		return 1
	}
	return bytes.Compare(a.IdentityKey[:], b.IdentityKey[:])
}

// Errors returned by this package. They are wrapped with context; test with
// errors.Is.
var (
	// ErrUnknownLevel is returned by Policy.Evaluate for a custom level name
	// the policy does not know.
	ErrUnknownLevel = errors.New("trust: unknown trust level")
	// ErrDecisionFailed is returned by Policy.Decide when the trust decision
	// could not be made: the prompt failed or returned invalid decisions, the
	// context was canceled, or the input was inconsistent. The encryption
	// that asked for the decision must be aborted.
	ErrDecisionFailed = errors.New("trust: trust decision failed")
	// ErrUnknownPolicy is returned by ParsePolicy for an unknown policy name.
	ErrUnknownPolicy = errors.New("trust: unknown trust policy")
	// ErrInvalidPolicy is returned by Custom for an inconsistent mapping.
	ErrInvalidPolicy = errors.New("trust: invalid trust policy")
)

// Policy maps custom levels to core levels and decides undecided devices in
// bulk before encryption.
//
// Implementations must be safe for concurrent use.
type Policy interface {
	// Default is the custom level name of an identity key nobody has
	// decided on yet. It evaluates to Undecided.
	Default() string
	// Evaluate maps a custom level name to a core level. Unknown names
	// return an error wrapping ErrUnknownLevel.
	Evaluate(name string) (Level, error)
	// Decide is called once per encryption with every recipient device
	// whose level evaluates to Undecided, together with all known devices
	// of the JIDs concerned (decided or not), and returns the new custom
	// level names to store. The returned map only holds keys of devices in
	// undecided. Devices it leaves out stay undecided (encryption then
	// fails with a still-undecided error).
	//
	// ctx allows prompting a user; an error aborts the encryption and
	// wraps ErrDecisionFailed.
	Decide(ctx context.Context, undecided []Device, known []Device) (map[Key]string, error)
}

// Custom level names used by the ready policies BTBV, TOFU and Manual. All
// three policies know all five names.
const (
	// LevelTrusted marks an identity key the user verified manually (for
	// example by comparing fingerprints). Core level Trusted.
	LevelTrusted = "trusted"
	// LevelBlindlyTrusted marks an identity key BTBV trusted automatically,
	// without verification. Core level Trusted.
	LevelBlindlyTrusted = "blindly-trusted"
	// LevelUndecided is the default of every ready policy. Core level
	// Undecided.
	LevelUndecided = "undecided"
	// LevelDistrusted marks an identity key the user rejected. Core level
	// Distrusted.
	LevelDistrusted = "distrusted"
	// LevelFirstUse marks an identity key TOFU trusted automatically because
	// it was seen on first contact. Core level Trusted.
	LevelFirstUse = "trusted-on-first-use"
)

// Prompter is the application's manual decision hook, typically asking the
// user. It gets the devices the policy could not decide automatically, sorted
// by JID, device id and identity key, and returns custom level names for
// (some of) their keys. Keys it leaves out stay undecided.
//
// Returning a key that was not asked for, or a level name the policy does not
// know, makes Decide fail with ErrDecisionFailed. The slice passed in is a
// copy the prompter may keep.
type Prompter func(ctx context.Context, undecided []Device) (map[Key]string, error)
