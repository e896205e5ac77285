package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/store"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/dial"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// client is one device: an XMPP session with the OMEMO plugin, and taps on
// both directions of its stream.
type client struct {
	name string // "alice (laptop)"
	s    *xmpp.Session
	p    *omemo.Plugin
	out  *tap // what this device sends
	in   *tap // what the server sends this device
	msgs chan omemo.Message

	mu   sync.Mutex
	errs []error

	serveDone chan struct{}
	cancel    context.CancelFunc
}

type account struct {
	jid      jid.JID
	password string
}

type dialConfig struct {
	addr     string // host:port; "" looks the server up in DNS
	insecure bool   // skip certificate verification
}

// connect logs a device in, registers the plugin and runs Serve; the
// plugin is not started yet.
// backends nil means the library's default (OMEMO 2, then legacy OMEMO).
func connect(dc dialConfig, name string, acc account, backends []backends.Factory, logger *slog.Logger) (*client, error) {
	// The dial context stays alive until the session is closed: mellium
	// v0.23.0 can still apply its deadline to the connection after the
	// call returned.
	ctx, cancel := context.WithCancel(context.Background())
	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	conn, err := dialConn(dctx, dc, acc.jid)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: connecting: %w", name, err)
	}
	c := &client{
		name:      name,
		out:       newTap(),
		in:        newTap(),
		msgs:      make(chan omemo.Message, 32),
		serveDone: make(chan struct{}),
		cancel:    cancel,
	}
	features := []xmpp.StreamFeature{
		xmpp.StartTLS(&tls.Config{
			ServerName: acc.jid.Domainpart(),
			// #nosec G402 -- only with -insecure-skip-verify, for a local test server.
			InsecureSkipVerify: dc.insecure,
			MinVersion:         tls.VersionTLS12,
		}),
		xmpp.SASL("", acc.password, sasl.ScramSha256Plus, sasl.ScramSha1Plus, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	}
	s, err := xmpp.NewSession(dctx, acc.jid.Domain(), acc.jid, conn, 0, xmpp.NewNegotiator(func(*xmpp.Session, *xmpp.StreamConfig) xmpp.StreamConfig {
		// The tee sees the bytes inside TLS. It also sees the SASL
		// exchange, which is why the taps only start parsing after
		// the negotiation.
		return xmpp.StreamConfig{Features: features, TeeIn: c.in, TeeOut: c.out}
	}))
	if err != nil {
		_ = conn.Close()
		c.out.close()
		c.in.close()
		cancel()
		return nil, fmt.Errorf("%s: logging in as %s: %w", name, acc.jid, err)
	}
	c.s = s
	c.out.enable()
	c.in.enable()

	p, err := omemo.New(s, omemo.Config{
		Store:        store.NewMemory(),
		Backends:     backends,
		SendPresence: true, // messages to the bare JID reach available devices only
		Logger:       logger.With("device", name),
		OnError: func(err error) {
			c.mu.Lock()
			c.errs = append(c.errs, err)
			c.mu.Unlock()
			var de *omemo.DecryptError
			if errors.As(err, &de) {
				fmt.Printf("  !! %s rejected a message: %v\n", name, err)
			}
		},
	})
	if err != nil {
		c.close()
		return nil, err
	}
	c.p = p
	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(func(msg omemo.Message) {
		select {
		case c.msgs <- msg:
		default:
			fmt.Printf("  !! %s: too many unread messages, dropped one\n", name)
		}
	})))
	go func() {
		defer close(c.serveDone)
		if err := s.Serve(m); err != nil && !errors.Is(err, io.EOF) {
			logger.Debug("serve", "device", name, "err", err)
		}
	}()
	return c, nil
}

func dialConn(ctx context.Context, dc dialConfig, j jid.JID) (net.Conn, error) {
	if dc.addr == "" {
		// SRV lookup, STARTTLS on the c2s port.
		d := dial.Dialer{NoTLS: true}
		return d.Dial(ctx, "tcp", j)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", dc.addr)
}

// start starts the plugin: the device publishes its keys and device list.
func (c *client) start(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.p.Start(ctx); err != nil {
		return fmt.Errorf("%s: starting OMEMO: %w", c.name, err)
	}
	return nil
}

func (c *client) deviceID() uint32 { return c.p.Manager().DeviceID() }

// close stops the plugin and the session.
func (c *client) close() {
	if c.p != nil {
		_ = c.p.Close()
	}
	if c.s != nil {
		_ = c.s.Close()
		select {
		case <-c.serveDone:
		case <-time.After(3 * time.Second):
			_ = c.s.Conn().Close()
		}
	}
	c.out.close()
	c.in.close()
	c.cancel()
}

// expect waits for the next decrypted message.
func (c *client) expect(timeout time.Duration) (omemo.Message, error) {
	select {
	case m := <-c.msgs:
		return m, nil
	case <-time.After(timeout):
		return omemo.Message{}, fmt.Errorf("%s: no message within %v", c.name, timeout)
	}
}

// wire waits for the stanza with the given id on the outgoing tap.
func (c *client) wire(id string, timeout time.Duration) (captured, bool) {
	deadline := time.After(timeout)
	for {
		select {
		case st, ok := <-c.out.stanzas:
			if !ok {
				return captured{}, false
			}
			if st.ID == id {
				return st, true
			}
		case <-deadline:
			return captured{}, false
		}
	}
}
