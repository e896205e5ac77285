// Package reconnect keeps an OMEMO plugin connected: it dials a new XMPP
// session whenever the last one ended, moves the plugin to it, sets it up
// and reads what was missed from the archives, with an exponential backoff
// between attempts. mellium has no reconnecting client; this is one, for
// applications that run for months.
//
// What was received is never lost across reconnections: the plugin's
// state (ratchets, the durable inbox, the archive positions) stays in its
// store, and each new connection continues the own and the rooms' archives
// from where the last one stopped (omemo.Plugin.CatchUp). Sending while
// disconnected fails at once with omemo.ErrDisconnected, before anything is
// encrypted.
//
// Typical use:
//
//	p, _ := omemo.NewDetached(account, omemo.Config{Store: st, SendPresence: true})
//	m := mux.New(stanza.NSClient, p.Handle(h))
//	err := reconnect.Run(ctx, p, reconnect.Config{
//		Dial:    func(ctx context.Context) (*xmpp.Session, error) { return dial(ctx) },
//		Handler: m,
//		OnEvent: func(e reconnect.Event) { log.Print(e) },
//	})
//	p.Close()
package reconnect

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"

	"mellium.im/omemo"
	"mellium.im/xmpp"
)

// Defaults of Config.
const (
	DefaultMinDelay = time.Second
	DefaultMaxDelay = time.Minute
	// DefaultCloseTimeout bounds the clean end of a session when Run
	// stops.
	DefaultCloseTimeout = time.Second
)

// Event reports a change of the connection.
type Event struct {
	// Connected is true once a session is set up (the plugin started on
	// it and, unless NoCatchUp, the archives were read), false when a
	// session ended or could not be made.
	Connected bool
	// Err says why the session ended or could not be made (nil when Run
	// stops it); on a Connected event, a catch-up that failed (the
	// connection is kept).
	Err error
	// Retry is the delay before the next attempt (disconnected events).
	Retry time.Duration
}

// Config configures Run.
type Config struct {
	// Dial connects and negotiates a new session of the plugin's account
	// (TLS, authentication, resource binding). Its context is Run's: it
	// ends only when Run stops, so the session may keep it (mellium
	// watches the negotiation context for as long as the connection
	// lives); Dial must bound the negotiation itself.
	Dial func(ctx context.Context) (*xmpp.Session, error)
	// Handler serves every session: the mux built with Plugin.Handle.
	Handler xmpp.Handler
	// OnEvent receives the connection events, in order, from Run's
	// goroutine; it must return quickly.
	OnEvent func(Event)
	// OnConnect, if set, runs on every new session after the plugin was
	// set up and the archives were read (the application's own setup).
	// An error ends the session; Run dials again.
	OnConnect func(ctx context.Context, s *xmpp.Session) error
	// GiveUp, if set, is asked after every failed attempt whether Run
	// should stop and return the error (for example an authentication
	// failure, or any error before the first connection);
	// connectedBefore tells whether a session was ever set up.
	GiveUp func(err error, connectedBefore bool) bool
	// NoCatchUp leaves the archives alone.
	NoCatchUp bool
	// MinDelay and MaxDelay bound the exponential backoff between
	// attempts (DefaultMinDelay and DefaultMaxDelay if zero); each delay
	// gets up to a fifth more, at random, so that clients that lost the
	// same server do not come back together.
	MinDelay, MaxDelay time.Duration
	// CloseTimeout bounds the clean end of the session when Run stops
	// (DefaultCloseTimeout if zero).
	CloseTimeout time.Duration
}

// Run keeps p connected until ctx is done: it dials, moves p to the new
// session (Plugin.Attach), serves it with cfg.Handler, starts p on it
// (Plugin.Start: on the first session this opens the session manager; on
// later ones it checks the own device and joins the rooms again), catches
// up (Plugin.CatchUp without a time: the own archive and every joined
// room, from the stored positions) and waits until the session ends; then
// it detaches p and dials again after a backoff (1 s doubling up to 60 s,
// plus jitter; back to the start after each successful setup).
//
// When ctx is done, Run ends the session cleanly (within CloseTimeout)
// and returns nil; the caller then closes p. It returns an error only when
// GiveUp says so or the configuration is unusable. p must not be used
// with another session meanwhile.
func Run(ctx context.Context, p *omemo.Plugin, cfg Config) error {
	if p == nil || cfg.Dial == nil || cfg.Handler == nil {
		return errors.New("reconnect: plugin, Dial and Handler are required")
	}
	if cfg.MinDelay <= 0 {
		cfg.MinDelay = DefaultMinDelay
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultMaxDelay
	}
	cfg.MaxDelay = max(cfg.MaxDelay, cfg.MinDelay)
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	event := func(e Event) {
		if cfg.OnEvent != nil {
			cfg.OnEvent(e)
		}
	}
	delay := cfg.MinDelay
	connectedBefore := false
	for {
		if ctx.Err() != nil {
			return nil
		}
		up, err := session(ctx, p, cfg, event)
		if up {
			connectedBefore = true
			delay = cfg.MinDelay
		}
		if ctx.Err() != nil {
			return nil
		}
		if cfg.GiveUp != nil && err != nil && cfg.GiveUp(err, connectedBefore) {
			event(Event{Err: err})
			return err
		}
		wait := jittered(delay)
		event(Event{Err: err, Retry: wait})
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		delay = min(2*delay, cfg.MaxDelay)
	}
}

// jittered returns d plus up to a fifth of it, at random.
func jittered(d time.Duration) time.Duration {
	return d + rand.N(d/5+1)
}

// session runs one session from dial to end. It reports whether the
// session was set up, and why it ended.
func session(ctx context.Context, p *omemo.Plugin, cfg Config, event func(Event)) (up bool, err error) {
	s, err := cfg.Dial(ctx)
	if err != nil {
		return false, fmt.Errorf("reconnect: connecting: %w", err)
	}
	if err := p.Attach(s); err != nil {
		closeSession(s, nil, cfg.CloseTimeout)
		return false, err
	}
	var serveErr error
	serveDone := make(chan struct{})
	go func() {
		serveErr = s.Serve(cfg.Handler)
		close(serveDone)
	}()
	// The setup's context ends with the session, so that a setup stuck
	// on a dead connection gives up at once.
	setupCtx, cancelSetup := context.WithCancel(ctx)
	go func() {
		select {
		case <-serveDone:
			cancelSetup()
		case <-setupCtx.Done():
		}
	}()
	defer func() {
		p.Detach()
		cancelSetup()
		closeSession(s, serveDone, cfg.CloseTimeout)
	}()
	lost := func(err error) error {
		// If the session ended, that is why the setup failed.
		select {
		case <-serveDone:
			return ended(serveErr)
		default:
			return err
		}
	}
	if err := p.Start(setupCtx); err != nil && !errors.Is(err, omemo.ErrStarted) {
		return false, lost(fmt.Errorf("reconnect: starting OMEMO: %w", err))
	}
	var warn error
	if !cfg.NoCatchUp {
		if err := p.CatchUp(setupCtx); err != nil {
			if setupCtx.Err() != nil {
				return false, lost(fmt.Errorf("reconnect: catching up: %w", err))
			}
			warn = fmt.Errorf("reconnect: catching up: %w", err)
		}
	}
	if cfg.OnConnect != nil {
		if err := cfg.OnConnect(setupCtx, s); err != nil {
			return false, lost(err)
		}
	}
	event(Event{Connected: true, Err: warn})
	select {
	case <-ctx.Done():
		return true, nil
	case <-serveDone:
		return true, ended(serveErr)
	}
}

// errClosedByServer is the end of a session that the server closed
// without an error.
var errClosedByServer = errors.New("reconnect: the server closed the session")

func ended(err error) error {
	if err == nil {
		return errClosedByServer
	}
	return fmt.Errorf("reconnect: session lost: %w", err)
}

// closeSession ends the stream and closes the connection, waiting at most
// timeout for the end of the stream and of Serve (serveDone, if it runs).
func closeSession(s *xmpp.Session, serveDone <-chan struct{}, timeout time.Duration) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	closed := make(chan struct{})
	go func() {
		_ = s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-deadline.C:
	}
	var conn net.Conn = s.Conn()
	_ = conn.Close()
	if serveDone != nil {
		// Closing the connection ends Serve, unless a handler of the
		// application is stuck.
		select {
		case <-serveDone:
		case <-time.After(timeout):
		}
	}
}
