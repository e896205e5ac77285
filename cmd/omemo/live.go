package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/reconnect"
	"mellium.im/omemo/session"
	"mellium.im/xmpp"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// listen and chat stay connected: reconnect.Run redials after a lost
// connection (1 s, doubling up to 60 s, plus jitter), moves the plugin to
// the new session, joins the rooms again and reads what was missed from
// the own archive and the rooms' archives. The command prints a
// "disconnected" line when a connection is lost and a "connected" line
// once a new one is set up and caught up (not for the first connection).

// closeTimeout bounds the clean end of the stream when the command stops
// (reconnect.Config.CloseTimeout), so that an interrupted listen or chat
// ends within about a second.
const closeTimeout = 500 * time.Millisecond

// liveState is the state of a client kept connected by reconnect.Run.
type liveState struct {
	runDone   chan struct{} // closed when Run returned
	runErr    error         // Run's error; read after runDone is closed
	runCancel context.CancelFunc
	firstUp   chan struct{} // closed on the first Connected event
	upOnce    sync.Once

	mu sync.Mutex
	// first is the session of the first login, until Run's Dial takes
	// it.
	first *xmpp.Session
	// negCancel cancels the negotiation context of the current session
	// (see connect); called once that session is closed.
	negCancel context.CancelFunc

	// storeErr is set (once, before runCancel) when the account's
	// PostgreSQL lease was lost; read after runDone is closed.
	storeErr  error
	storeOnce sync.Once

	// The command's goroutine only:
	// offline is set from a "disconnected" line to the next "connected".
	offline bool
	// echoes wait for the next connection (listen -echo).
	echoes []omemo.Message
}

// storeLostError ends listen and chat when the account's lease in the
// PostgreSQL state database was lost (it wraps postgres.ErrLeaseLost).
type storeLostError struct{ err error }

func (e *storeLostError) Error() string {
	return "lost the account in the state database (its database connection broke, or another process took the account over); " +
		"start the command again: " + e.err.Error()
}

func (e *storeLostError) Unwrap() error { return e.err }

// loseStore ends reconnect.Run, and so the command, with a
// storeLostError.
func (l *liveState) loseStore(err error) {
	l.storeOnce.Do(func() {
		l.storeErr = &storeLostError{err: err}
		l.runCancel()
	})
}

// errInterrupted: the command was interrupted before the first connection
// was set up; it ends cleanly.
var errInterrupted = errors.New("interrupted")

// withLive is withClient for the commands that stay connected (listen,
// chat): openLive instead of open.
func withLive(ctx context.Context, g *globals, e env, f func(c *client) error) error {
	out := newOutput(g.json, e.stdout, e.stderr)
	c, err := openLive(ctx, g, out)
	if errors.Is(err, errInterrupted) {
		return nil
	}
	if err != nil {
		return safeError(err)
	}
	ferr := f(c)
	if serr := c.shutdown(); ferr == nil {
		ferr = serr
	}
	return safeError(ferr)
}

// openLive is open for a client kept connected by reconnect.Run: it logs
// in as open does (the state file rules are the same, and a first login
// that fails fails the command with the same errors), then hands the
// session to reconnect.Run, which starts the plugin on it and catches up
// with the archive, and returns once that is done. If setting up the
// first session fails, Run gives up and openLive returns the error; later
// failures only make Run dial again.
//
// The inbox has no limit until the caller sets one (inbox.setLimit) once
// its own setup (joining a room, reading its archive) is done.
func openLive(ctx context.Context, g *globals, out *output) (*client, error) {
	s, err := openExisting(ctx, g)
	if err != nil {
		return nil, err
	}
	sess, cancel, err := connect(ctx, g, out)
	if err != nil {
		_ = s.close()
		return nil, err
	}
	l := &liveState{
		runDone: make(chan struct{}),
		firstUp: make(chan struct{}),
		first:   sess,
		// Until Run starts: cancelled by shutdownLive.
		runCancel: func() {},
		negCancel: cancel,
	}
	c := &client{g: g, out: out, state: s, inbox: newInbox(0), http: httpClient(g), live: l}
	// fail undoes what was done when the plugin could not be made.
	fail := func(err error) (*client, error) {
		_ = sess.Close()
		_ = sess.Conn().Close()
		cancel()
		_ = s.close()
		return nil, err
	}
	if err := s.create(out); err != nil {
		return fail(err)
	}
	p, err := omemo.NewDetached(g.account.Bare(), c.pluginConfig())
	if err != nil {
		return fail(err)
	}
	c.plugin = p
	m := mux.New(stanza.NSClient, p.Handle(c.inbox))
	runCtx, runCancel := context.WithCancel(context.WithoutCancel(ctx))
	l.runCancel = runCancel
	out.progress("publishing device and fetching device lists…")
	go func() {
		defer close(l.runDone)
		l.runErr = reconnect.Run(runCtx, p, reconnect.Config{
			Dial:    c.dial,
			Handler: m,
			OnEvent: c.onEvent,
			// The first session must come up, as with open: its
			// failure ends the command. Afterwards Run redials
			// forever.
			GiveUp:       func(_ error, connectedBefore bool) bool { return !connectedBefore },
			CloseTimeout: closeTimeout,
		})
	}()
	select {
	case <-l.firstUp:
	case <-l.runDone:
		err := l.runErr
		if l.storeErr != nil {
			err = l.storeErr
		}
		if err == nil {
			err = errors.New("the connection ended while starting")
		}
		_ = c.shutdownLive()
		return nil, trimReconnect(err)
	case <-ctx.Done():
		_ = c.shutdownLive()
		return nil, errInterrupted
	}
	out.progress("device %d of %s ready", p.Manager().DeviceID(), g.account.Bare())
	return c, nil
}

// dial is reconnect.Config.Dial: the session of the first login, then a
// new login each time. The negotiation context of the previous session is
// cancelled only now that Run closed that session (see connect).
func (c *client) dial(ctx context.Context) (*xmpp.Session, error) {
	l := c.live
	l.mu.Lock()
	if s := l.first; s != nil {
		l.first = nil
		l.mu.Unlock()
		return s, nil
	}
	prev := l.negCancel
	l.negCancel = nil
	l.mu.Unlock()
	if prev != nil {
		prev()
	}
	s, cancel, err := connect(ctx, c.g, c.out)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.negCancel = cancel
	l.mu.Unlock()
	return s, nil
}

// onEvent is reconnect.Config.OnEvent: the first connection is only
// reported to openLive, the other events are queued behind the messages
// received before them, for the command's goroutine (connEvent).
func (c *client) onEvent(e reconnect.Event) {
	if e.Connected {
		first := false
		c.live.upOnce.Do(func() {
			first = true
			close(c.live.firstUp)
		})
		if first {
			if e.Err != nil {
				c.out.warn("%v", trimReconnect(e.Err))
			}
			return
		}
	}
	c.inbox.event(e)
}

// connEventJSON is a connection status line with -json (it has no
// "body").
type connEventJSON struct {
	Event string `json:"event"`
	Error string `json:"error,omitempty"`
}

// connEvent prints a connection event in the command's goroutine: a
// "disconnected" line when the connection was lost, a "connected" line
// once a new one is set up; the failed attempts in between are progress.
// Echoes that waited for the connection are sent.
func (c *client) connEvent(ctx context.Context, e reconnect.Event) {
	l := c.live
	if e.Connected {
		if e.Err != nil {
			c.out.warn("%v", trimReconnect(e.Err))
		}
		if l.offline {
			l.offline = false
			c.out.result(connEventJSON{Event: "connected"}, "* connected again")
		}
		echoes := l.echoes
		l.echoes = nil
		for _, m := range echoes {
			c.echoAny(ctx, m)
		}
		return
	}
	why := "connection lost"
	if e.Err != nil {
		why = trimReconnect(e.Err).Error()
	}
	if !l.offline {
		l.offline = true
		c.out.result(connEventJSON{Event: "disconnected", Error: why},
			escapeText("* disconnected: "+why)+"; reconnecting…")
		c.out.progress("reconnecting in %v…", e.Retry.Round(100*time.Millisecond))
		return
	}
	c.out.progress("reconnecting failed (%s); next attempt in %v…", why, e.Retry.Round(100*time.Millisecond))
}

// shutdownLive ends the command: the inbox (the messages not printed yet
// are not acknowledged and come again at the next start), reconnect.Run
// (which ends the stream), the plugin (which commits the
// acknowledgements), then the store.
func (c *client) shutdownLive() error {
	l := c.live
	c.inbox.close()
	l.runCancel()
	if c.plugin != nil {
		<-l.runDone
	}
	l.mu.Lock()
	first, cancel := l.first, l.negCancel
	l.first, l.negCancel = nil, nil
	l.mu.Unlock()
	if first != nil {
		// Run did not take it.
		_ = first.Close()
		_ = first.Conn().Close()
	}
	if cancel != nil {
		cancel()
	}
	var perr error
	if c.plugin != nil {
		perr = c.plugin.Close()
	}
	serr := c.state.close()
	if perr != nil && !errors.Is(perr, omemo.ErrClosed) {
		return fmt.Errorf("closing OMEMO: %w", perr)
	}
	return serr
}

// echoAny answers m, in its room or to its sender (listen -echo).
func (c *client) echoAny(ctx context.Context, m omemo.Message) {
	if isRoom(m) {
		c.echoRoom(ctx, m)
	} else {
		c.echo(ctx, m)
	}
}

// echoLater keeps an echo that failed because the connection was down
// for the next connection, and reports whether it did.
func (c *client) echoLater(m omemo.Message, err error) bool {
	if c.live == nil || !connectionError(err) {
		return false
	}
	c.live.echoes = append(c.live.echoes, m)
	c.out.progress("the echo waits for the connection: %v", err)
	return true
}

// connectionError reports an error of a send that failed because the
// connection was down or broke: nothing was sent (omemo.ErrDisconnected
// and the other session.ErrNotSent), or it may have been lost with the
// connection.
func connectionError(err error) bool {
	return errors.Is(err, session.ErrNotSent) || errors.Is(err, session.ErrNetwork) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded)
}

// reconnectError is an error of package reconnect without its
// "reconnect: " prefix (the command is not a package).
type reconnectError struct {
	msg string
	err error
}

func (e *reconnectError) Error() string { return e.msg }
func (e *reconnectError) Unwrap() error { return e.err }

func trimReconnect(err error) error {
	msg := err.Error()
	// "reconnect: connecting: " wraps the errors of dial, which say
	// "connecting to …" already.
	for _, prefix := range []string{"reconnect: connecting: ", "reconnect: "} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			return &reconnectError{msg: rest, err: err}
		}
	}
	return err
}
