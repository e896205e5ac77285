package session

import (
	"errors"
	"fmt"
	"strings"

	"mellium.im/omemo/backends"
)

// Errors of the session manager. They are wrapped with context; test with
// errors.Is. Errors of the backends (package backends) pass through wrapped,
// so errors.Is(err, backends.ErrDuplicateMessage) works on a Decrypt error.
var (
	// ErrInvalidConfig reports a Config that cannot work.
	ErrInvalidConfig = errors.New("omemo: invalid configuration")
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("omemo: session manager closed")
	// ErrUnknownNamespace means a namespace no loaded backend handles.
	ErrUnknownNamespace = errors.New("omemo: unknown namespace")
	// ErrUnknownTrustLevel means a stored custom trust level the policy does not know.
	ErrUnknownTrustLevel = errors.New("omemo: unknown trust level")
	// ErrStillUndecided means recipient devices remained undecided after
	// the trust decision; nothing was encrypted.
	ErrStillUndecided = errors.New("omemo: devices still undecided")
	// ErrMessageNotForUs means the message carries no key for this device.
	ErrMessageNotForUs = errors.New("omemo: message not encrypted for this device")
	// ErrSenderNotFound means the sending device is not in the sender's
	// device list, even after a refresh, or its identity is unknown.
	ErrSenderNotFound = errors.New("omemo: sender device not found")
	// ErrSenderUnresolved means that DecryptOffline found the sending
	// device, or its identity key, not stored: ResolveSender (which needs
	// the network) must run first. Nothing was changed.
	ErrSenderUnresolved = errors.New("omemo: sender device not resolved yet")
	// ErrSenderDistrusted means the sending device's identity key is distrusted.
	ErrSenderDistrusted = errors.New("omemo: sender distrusted")
	// ErrNoSession means a message that is not a key exchange came from a
	// device we have no session with.
	ErrNoSession = errors.New("omemo: no session with the sender")
	// ErrPublicDataInconsistency means a key exchange carried an identity
	// key other than the one known for the device.
	ErrPublicDataInconsistency = errors.New("omemo: identity key differs from the known one")
	// ErrBundleNotFound means the device has no bundle published.
	ErrBundleNotFound = errors.New("omemo: bundle not found")
	// ErrNetwork wraps failures of the Network (bundle or device list
	// upload, download or deletion, sending a message).
	ErrNetwork = errors.New("omemo: network operation failed")
	// ErrStorage wraps failures of the store.
	ErrStorage = errors.New("omemo: storage failed")
	// ErrNotSent is wrapped by a delivery error (of Encrypt's deliver)
	// that is certain nothing left the process: only then is the ratchet
	// state reverted. Any other delivery error may have let the message
	// out (a write that failed half-way), so its ratchet step stays
	// used: reverting would encrypt the next message with the same
	// message key.
	ErrNotSent = errors.New("omemo: message not sent")
	// ErrNoEligibleDevices is matched by every *NoEligibleDevicesError.
	ErrNoEligibleDevices = errors.New("omemo: no eligible devices")
)

// NoEligibleDevicesError reports recipients none of whose devices could be
// encrypted for: no known device, all inactive, all distrusted, or all
// failed. Nothing was encrypted or sent.
type NoEligibleDevicesError struct {
	JIDs []string
	// Failures are the per-device errors that contributed, if any.
	Failures []DeviceError
}

func (e *NoEligibleDevicesError) Error() string {
	return fmt.Sprintf("omemo: no eligible devices for %s", strings.Join(e.JIDs, ", "))
}

// Is makes errors.Is(err, ErrNoEligibleDevices) true.
func (e *NoEligibleDevicesError) Is(target error) bool { return target == ErrNoEligibleDevices }

// DeviceError is a failure to encrypt for one device. Encryption goes on
// for the other devices; the failures are returned next to the result.
type DeviceError struct {
	Namespace string
	JID       string
	DeviceID  uint32
	Err       error
}

func (e DeviceError) Error() string {
	return fmt.Sprintf("omemo: device %d of %s (%s): %v", e.DeviceID, e.JID, e.Namespace, e.Err)
}

func (e DeviceError) Unwrap() error { return e.Err }

// IdentityMismatchError reports a downloaded bundle whose identity key is
// not the one stored for the device, the key every trust decision on the
// device was made on. The bundle is never used: encrypting for it would
// hand the message key to whoever published it (a hostile server, or
// anyone who can write the contact's bundle node). The stored key and its
// trust stay as they were. It matches ErrPublicDataInconsistency.
//
// Identity keys are public; the error carries both for the user to see.
type IdentityMismatchError struct {
	Namespace string
	JID       string
	DeviceID  uint32
	// Stored is the identity key on record, Published the bundle's (both
	// Ed25519).
	Stored, Published [32]byte
}

func (e *IdentityMismatchError) Error() string {
	stored, _ := backends.Fingerprint(e.Stored)
	published, _ := backends.Fingerprint(e.Published)
	return fmt.Sprintf("omemo: the %s bundle of device %d of %s carries identity key %s, not the stored %s: bundle not used",
		e.Namespace, e.DeviceID, e.JID, published, stored)
}

// Is makes errors.Is(err, ErrPublicDataInconsistency) true.
func (e *IdentityMismatchError) Is(target error) bool { return target == ErrPublicDataInconsistency }

// IdentityClaimedError reports a device that announces an identity key
// another account announced first. An identity key belongs to one account:
// one that republishes another account's device id and key (which are
// public) could otherwise have a hostile server re-attribute that
// account's messages to it (legacy OMEMO binds no sender JID into a
// message; OMEMO 2 only through the optional <from> affix). The device is
// left without an identity key, so nothing is encrypted for it and no
// message from it is accepted. It matches ErrPublicDataInconsistency.
type IdentityClaimedError struct {
	JID      string
	DeviceID uint32
	// Owner is the account that announced the key first.
	Owner       string
	IdentityKey [32]byte
}

func (e *IdentityClaimedError) Error() string {
	fp, _ := backends.Fingerprint(e.IdentityKey)
	return fmt.Sprintf("omemo: device %d of %s announces identity key %s, which belongs to %s", e.DeviceID, e.JID, fp, e.Owner)
}

// Is makes errors.Is(err, ErrPublicDataInconsistency) true.
func (e *IdentityClaimedError) Is(target error) bool { return target == ErrPublicDataInconsistency }
