// Package session is the OMEMO core: the counterpart of python-omemo's
// SessionManager, free of XMPP details.
//
// A Manager keeps the device lists of all contacts, the own bundles and
// pre keys, and one Double Ratchet session per peer device and backend. It
// decides which devices get a key, builds sessions when they are needed,
// refills and republishes pre keys, answers key exchanges and keeps
// sessions alive with heartbeats. Its network side is the small Network
// interface, which the mellium plugin implements with PEP and tests
// implement in memory.
//
// Every operation commits its state changes to the store atomically, all or
// nothing: a crash or a failed write never leaves a half-updated session or
// a reused pre key behind. A Manager is safe for concurrent use; work on
// one peer device is serialised so that a ratchet can never fork.
package session

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/trust"
)

// Network is what the Manager needs from XMPP. Every method may be called
// concurrently. Implementations return errors that wrap ErrBundleNotFound
// for missing bundles; any other error is treated as a technical failure.
type Network interface {
	// UploadBundle publishes the own bundle of b.Namespace for deviceID.
	UploadBundle(ctx context.Context, deviceID uint32, b bundle.Bundle) error
	// DownloadBundle fetches the bundle of a device; ErrBundleNotFound if
	// there is none.
	DownloadBundle(ctx context.Context, namespace, jid string, deviceID uint32) (bundle.Bundle, error)
	// DeleteBundle removes the own bundle; a missing bundle is not an error.
	DeleteBundle(ctx context.Context, namespace string, deviceID uint32) error
	// UploadDeviceList publishes the own device list of l.Namespace.
	UploadDeviceList(ctx context.Context, l devicelist.List) error
	// DownloadDeviceList fetches the device list of an account; an empty
	// list (not an error) if there is none.
	DownloadDeviceList(ctx context.Context, namespace, jid string) (devicelist.List, error)
	// SendMessage sends an OMEMO message without payload (a key exchange
	// answer or a heartbeat) to a bare JID.
	SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error
}

// Defaults, as in python-omemo.
const (
	DefaultSignedPreKeyRotation  = 7 * 24 * time.Hour
	DefaultPreKeyRefillThreshold = 99
	// DefaultPreKeyGrace is Config.PreKeyGrace when it is zero.
	DefaultPreKeyGrace = 5 * time.Minute
	// NumPreKeys is how many pre keys a bundle holds after a refill.
	NumPreKeys = 100
	// HeartbeatThreshold: an empty message is sent when a receiving chain
	// grows past this many messages, so that the peer's session does not
	// go stale.
	HeartbeatThreshold = 53
	// MaxDeviceID is the largest device id drawn (ids are in 1..2^31-1).
	MaxDeviceID = 1<<31 - 1
)

// Config configures a Manager. JID, Backends and a Network are required.
type Config struct {
	// JID is the own bare JID.
	JID string
	// Backends in priority order: when a device supports several, the
	// first one is used. Namespaces must be unique.
	Backends []backends.Factory
	// Label is the own device label used on the first run (see SetOwnLabel).
	Label string
	// Trust decides which devices are encrypted for; trust.BTBV(nil) if nil.
	Trust trust.Policy
	// SignedPreKeyRotation is the signed pre key lifetime (default 7 days).
	SignedPreKeyRotation time.Duration
	// PreKeyRefillThreshold: pre keys are refilled to 100 when at most this
	// many are left (default 99, allowed 25 to 99).
	PreKeyRefillThreshold int
	// PreKeyGrace is how long a pre key that a key exchange used stays
	// (hidden from the bundle) before it is deleted, so that another
	// peer's key exchange from the same bundle, fetched before the
	// republished one, still works (DefaultPreKeyGrace if zero; negative:
	// delete at once, as python-omemo does). During history
	// synchronisation used pre keys are kept until it ends.
	PreKeyGrace time.Duration
	// MaxSkippedPerMessage and MaxSkippedPerSession bound skipped message
	// keys (defaults 1000 and 1000; see backends.Options).
	MaxSkippedPerMessage int
	MaxSkippedPerSession int
	// Now is the clock (time.Now if nil); tests replace it.
	Now func() time.Time
	// Rand is the randomness source (crypto/rand if nil).
	Rand io.Reader
	// Logger receives diagnostics; never secrets. slog.Default() if nil.
	Logger *slog.Logger
	// OnError receives failures of background work (republishing bundles,
	// answering key exchanges, heartbeats, signed pre key rotation).
	OnError func(error)
	// NetworkTimeout bounds every call of the Network (each download,
	// upload and sent message), DefaultNetworkTimeout if zero. A server
	// that never answers then costs one failed operation, not a stalled
	// Manager.
	NetworkTimeout time.Duration
	// CacheBudget bounds, in bytes, the memory the Manager keeps across
	// calls about its peers (DefaultCacheBudget, 16 MiB, if zero): device
	// records and device information, trust decisions, which sessions
	// exist, deserialised sessions and bundle misses share it, and the
	// least recently used are dropped first. Sizes are estimates that err
	// on the large side. What is not in memory is read from the store, so
	// the budget changes speed, never behaviour. A peer device in steady
	// use takes about 1 KiB (most of it its deserialised session, more if
	// the session holds skipped message keys), so the default keeps some
	// 15000 in memory; a component talking to many more devices may raise
	// it, a small client lower it. Negative values are invalid.
	CacheBudget int64
	// StartSynced starts outside history synchronisation mode. By default a
	// Manager starts in it, as python-omemo does: call AfterHistorySync
	// once the catch-up (MAM) after login is done.
	StartSynced bool
	// Scheduler runs the Manager's background work (see Scheduler), on a
	// pool of goroutines shared with the other Managers that use it; an
	// idle Manager runs no goroutine of its own. If nil, the Manager uses
	// a Scheduler shared by the whole process, with
	// DefaultSchedulerWorkers workers. Give the Managers of a server with
	// many accounts a Scheduler of their own to set their bound on
	// concurrent background work (and so on the network calls that it has
	// in flight), or to keep them apart from other Managers.
	Scheduler *Scheduler
}

func (c *Config) resolve() (Config, error) {
	r := *c
	if r.JID == "" {
		return r, fmt.Errorf("%w: no own JID", ErrInvalidConfig)
	}
	if len(r.Backends) == 0 {
		return r, fmt.Errorf("%w: no backends", ErrInvalidConfig)
	}
	seen := map[string]bool{}
	for _, f := range r.Backends {
		if f.Namespace == "" || f.New == nil {
			return r, fmt.Errorf("%w: incomplete backend factory", ErrInvalidConfig)
		}
		if seen[f.Namespace] {
			return r, fmt.Errorf("%w: two backends for namespace %s", ErrInvalidConfig, f.Namespace)
		}
		seen[f.Namespace] = true
	}
	if r.Trust == nil {
		r.Trust = trust.BTBV(nil)
	}
	if r.SignedPreKeyRotation == 0 {
		r.SignedPreKeyRotation = DefaultSignedPreKeyRotation
	}
	if r.SignedPreKeyRotation < time.Minute {
		return r, fmt.Errorf("%w: signed pre key rotation period %v too short", ErrInvalidConfig, r.SignedPreKeyRotation)
	}
	if r.PreKeyRefillThreshold == 0 {
		r.PreKeyRefillThreshold = DefaultPreKeyRefillThreshold
	}
	if r.PreKeyRefillThreshold < 25 || r.PreKeyRefillThreshold > 99 {
		return r, fmt.Errorf("%w: pre key refill threshold %d not in 25..99", ErrInvalidConfig, r.PreKeyRefillThreshold)
	}
	if r.PreKeyGrace == 0 {
		r.PreKeyGrace = DefaultPreKeyGrace
	}
	if r.CacheBudget == 0 {
		r.CacheBudget = DefaultCacheBudget
	}
	if r.CacheBudget < 0 {
		return r, fmt.Errorf("%w: negative cache budget", ErrInvalidConfig)
	}
	if r.NetworkTimeout == 0 {
		r.NetworkTimeout = DefaultNetworkTimeout
	}
	if r.NetworkTimeout < 0 {
		return r, fmt.Errorf("%w: negative network timeout", ErrInvalidConfig)
	}
	if r.Scheduler == nil {
		r.Scheduler = defaultScheduler()
	}
	if r.Now == nil {
		r.Now = time.Now
	}
	if r.Rand == nil {
		r.Rand = rand.Reader
	}
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.OnError == nil {
		logger := r.Logger
		r.OnError = func(err error) { logger.Warn("omemo background work failed", "err", err) }
	}
	o := r.backendOptions()
	if _, err := o.Resolved(); err != nil {
		return r, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return r, nil
}

func (c *Config) backendOptions() *backends.Options {
	return &backends.Options{
		Rand:                 c.Rand,
		Now:                  c.Now,
		MaxSkippedPerMessage: c.MaxSkippedPerMessage,
		MaxSkippedPerSession: c.MaxSkippedPerSession,
	}
}
