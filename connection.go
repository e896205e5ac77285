package omemo

import (
	"errors"
	"fmt"
	"sync"

	"mellium.im/omemo/session"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
)

// The plugin outlives its XMPP sessions: the session manager, the store,
// the receive worker and the tracked rooms stay, and Attach moves the
// plugin to a new *xmpp.Session after a reconnection (package reconnect
// does it in a loop). While detached, every operation that needs the
// server fails at once with ErrDisconnected, before anything is encrypted.

// ErrDisconnected is returned by the operations that need the server while
// the plugin has no XMPP session (after Detach, before Attach). Nothing was
// sent and no ratchet step was used: the call can be repeated once
// connected. It wraps session.ErrNotSent.
var ErrDisconnected = fmt.Errorf("omemo: not connected to the server: %w", session.ErrNotSent)

// errNoXMPP is returned by the operations that need XMPP (IQs, rooms) on a
// plugin built without a session (unit tests).
var errNoXMPP = errors.New("omemo: no XMPP session")

// connection is the plugin's current XMPP session.
type connection struct {
	mu sync.RWMutex
	// s is the session; nil while detached (and always without XMPP).
	s *xmpp.Session
	// overXMPP is false for plugins built without a session (unit tests).
	overXMPP bool
	detached bool
	// gen counts the attachments; started is the gen Start last ran for.
	gen     uint64
	started uint64
	// caughtUp: a catch-up of the own archive completed on this
	// connection, so live messages may move the archive position.
	caughtUp bool
	// roomsCaughtUp: the same per room (bare JID).
	roomsCaughtUp map[string]bool
}

// session returns the current XMPP session, ErrDisconnected while
// detached.
func (p *Plugin) session() (*xmpp.Session, error) {
	p.conn.mu.RLock()
	defer p.conn.mu.RUnlock()
	switch {
	case p.conn.detached:
		return nil, ErrDisconnected
	case p.conn.s == nil:
		return nil, errNoXMPP
	}
	return p.conn.s, nil
}

// connected fails with ErrDisconnected while the plugin is detached.
func (p *Plugin) connected() error {
	p.conn.mu.RLock()
	defer p.conn.mu.RUnlock()
	if p.conn.detached {
		return ErrDisconnected
	}
	return nil
}

// Attach moves the plugin to s, a new session of the same account (after
// the previous one ended): call it before s.Serve runs with the same mux,
// then Start again, which sets the new session up (carbons, presence, the
// own device lists and bundles checked, rooms joined again) without
// opening anything anew, then CatchUp. Package reconnect does all of this.
func (p *Plugin) Attach(s *xmpp.Session) error {
	if s == nil {
		return fmt.Errorf("%w: nil session", session.ErrInvalidConfig)
	}
	if got := s.LocalAddr().Bare(); !got.Equal(p.own) {
		return fmt.Errorf("%w: session of %s, plugin of %s", session.ErrInvalidConfig, got, p.own)
	}
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	p.conn.mu.Lock()
	defer p.conn.mu.Unlock()
	if !p.conn.overXMPP {
		return fmt.Errorf("%w: plugin without XMPP", session.ErrInvalidConfig)
	}
	p.conn.s = s
	p.conn.detached = false
	p.conn.gen++
	p.conn.caughtUp = false
	p.conn.roomsCaughtUp = nil
	// The new session is in no room yet: Start joins them again.
	p.rooms.Reset()
	return nil
}

// Detach tells the plugin that its session ended: until Attach, Send and
// every other operation that needs the server fail with ErrDisconnected,
// and received work that needs the server waits. Call it as soon as Serve
// returned.
func (p *Plugin) Detach() {
	p.conn.mu.Lock()
	p.conn.detached = true
	p.conn.s = nil
	p.conn.caughtUp = false
	p.conn.roomsCaughtUp = nil
	p.conn.mu.Unlock()
	p.rooms.Reset()
}

// freshConnection reports whether Start has not set the current session
// up yet.
func (p *Plugin) freshConnection() bool {
	p.conn.mu.RLock()
	defer p.conn.mu.RUnlock()
	return p.conn.started != p.conn.gen
}

// markConnectionStarted records that Start set the current session up,
// and lets the receive worker retry what waited for it.
func (p *Plugin) markConnectionStarted() {
	p.conn.mu.Lock()
	p.conn.started = p.conn.gen
	p.conn.mu.Unlock()
	p.kickReconnected()
}

// kickReconnected wakes the receive worker for the lookups that wait for a
// connection.
func (p *Plugin) kickReconnected() {
	select {
	case p.reconnected <- struct{}{}:
	default:
	}
}

// caughtUp reports whether live messages may move the own archive
// position, or that of room (when not the zero JID).
func (p *Plugin) caughtUp(room jid.JID) bool {
	p.conn.mu.RLock()
	defer p.conn.mu.RUnlock()
	if p.conn.detached {
		return false
	}
	if room.Equal(jid.JID{}) {
		return p.conn.caughtUp
	}
	return p.conn.roomsCaughtUp[room.String()]
}

// setCaughtUp records a completed catch-up on connection gen.
func (p *Plugin) setCaughtUp(gen uint64, room jid.JID) {
	p.conn.mu.Lock()
	defer p.conn.mu.Unlock()
	if p.conn.gen != gen || p.conn.detached {
		return
	}
	if room.Equal(jid.JID{}) {
		p.conn.caughtUp = true
		return
	}
	if p.conn.roomsCaughtUp == nil {
		p.conn.roomsCaughtUp = map[string]bool{}
	}
	p.conn.roomsCaughtUp[room.String()] = true
}

// connGen returns the current connection's generation.
func (p *Plugin) connGen() uint64 {
	p.conn.mu.RLock()
	defer p.conn.mu.RUnlock()
	return p.conn.gen
}
