package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/reconnect"
	"mellium.im/omemo/store"
	"mellium.im/omemo/store/postgres"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/dial"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// deviceLabel is the label of a device created by this command: none. A
// label makes the OMEMO 2 device list carry a labelsig (XEP-0384 0.9),
// which python-omemo 1.0.x based clients reject together with the whole
// list, so the command-line client stays unlabelled.
const deviceLabel = ""

// output writes results to stdout (text or JSON lines) and progress and
// warnings to stderr. It is safe for concurrent use.
type output struct {
	json bool
	// tty is set when stderr is a terminal: progress bars are drawn.
	tty    bool
	mu     sync.Mutex
	stdout io.Writer
	stderr io.Writer
	enc    *json.Encoder
}

func newOutput(jsonOut bool, stdout, stderr io.Writer) *output {
	enc := json.NewEncoder(stdout)
	enc.SetEscapeHTML(false)
	return &output{json: jsonOut, tty: isTerminal(stderr), stdout: stdout, stderr: stderr, enc: enc}
}

// progress reports a long step on stderr, unless -json is set. The line
// is escaped with escapeText (its arguments can be remote data).
func (o *output) progress(format string, args ...any) {
	if o.json {
		return
	}
	line := escapeText(fmt.Sprintf(format, args...))
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintln(o.stderr, line)
}

// warn writes a warning to stderr (also with -json). The warning is
// escaped with escapeText: it often embeds remote data (a rejected
// message's sender and id, a server's error text).
func (o *output) warn(format string, args ...any) {
	line := escapeText(fmt.Sprintf(format, args...))
	o.mu.Lock()
	defer o.mu.Unlock()
	fmt.Fprintln(o.stderr, "omemo: warning: "+line)
}

// result writes v as one JSON line with -json, text otherwise. text is
// written as is: the caller escapes the untrusted parts of it with
// escapeText (it may span lines on purpose).
func (o *output) result(v any, text string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.json {
		_ = o.enc.Encode(v)
		return
	}
	fmt.Fprintln(o.stdout, text)
}

// backendName is the human-readable name of an OMEMO namespace.
func backendName(namespace string) string {
	switch namespace {
	case ns.OMEMO2:
		return "OMEMO 2"
	case ns.Legacy:
		return "OMEMO 0.3 (legacy)"
	}
	return namespace
}

// inboxLimit is the number of received messages the inbox holds before
// the plugin's worker waits for the command (see inbox).
const inboxLimit = 64

// item is what the inbox hands to the command: a decrypted message or,
// for a client kept connected by reconnect.Run, a connection event.
type item struct {
	m  omemo.Message
	ev *reconnect.Event // nil for a message
}

// inbox hands decrypted messages from the plugin's worker, and connection
// events from reconnect.Run, to the command, in the order they came, on
// ch. Once limit messages wait, HandleOMEMO waits too (the plugin's worker
// then decrypts nothing more); events never wait. A limit of 0 means no
// limit: a client kept connected starts that way, so that the first
// catch-up (which waits until its messages were handed over) completes
// before the command reads.
type inbox struct {
	ch chan item // fed by pump

	mu     sync.Mutex
	queue  []item
	msgs   int // messages in queue or held by pump
	limit  int
	pushed chan struct{} // capacity 1
	popped chan struct{} // capacity 1

	closing   chan struct{}
	closeOnce sync.Once
}

func newInbox(limit int) *inbox {
	b := &inbox{
		ch:      make(chan item),
		limit:   limit,
		pushed:  make(chan struct{}, 1),
		popped:  make(chan struct{}, 1),
		closing: make(chan struct{}),
	}
	go b.pump()
	return b
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// HandleOMEMO implements omemo.Handler. It waits while the command is busy
// and gives up once the command shuts down, so that Plugin.Close never
// waits for it. A message dropped then was not acknowledged: the plugin
// hands it over again at the next start (Config.ManualAck).
func (b *inbox) HandleOMEMO(m omemo.Message) {
	for {
		select {
		case <-b.closing:
			return
		default:
		}
		b.mu.Lock()
		if b.limit == 0 || b.msgs < b.limit {
			b.queue = append(b.queue, item{m: m})
			b.msgs++
			b.mu.Unlock()
			notify(b.pushed)
			return
		}
		b.mu.Unlock()
		select {
		case <-b.popped:
		case <-b.closing:
			return
		}
	}
}

// event queues a connection event behind the messages received before it.
func (b *inbox) event(e reconnect.Event) {
	b.mu.Lock()
	b.queue = append(b.queue, item{ev: &e})
	b.mu.Unlock()
	notify(b.pushed)
}

// setLimit sets the number of messages held before HandleOMEMO waits.
func (b *inbox) setLimit(n int) {
	b.mu.Lock()
	b.limit = n
	b.mu.Unlock()
	notify(b.popped)
}

// pump moves the queue to ch, in order, until the inbox is closed.
func (b *inbox) pump() {
	for {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.mu.Unlock()
			select {
			case <-b.pushed:
				continue
			case <-b.closing:
				return
			}
		}
		it := b.queue[0]
		b.queue[0] = item{}
		b.queue = b.queue[1:]
		b.mu.Unlock()
		select {
		case b.ch <- it:
		case <-b.closing:
			return
		}
		if it.ev == nil {
			b.mu.Lock()
			b.msgs--
			b.mu.Unlock()
			notify(b.popped)
		}
	}
}

func (b *inbox) close() { b.closeOnce.Do(func() { close(b.closing) }) }

// client is a logged-in account with a started OMEMO plugin: on one
// session (open), or kept connected by reconnect.Run (openLive: listen
// and chat).
type client struct {
	g      *globals
	out    *output
	state  *state
	sess   *xmpp.Session // the session of open; nil for openLive
	plugin *omemo.Plugin
	inbox  *inbox
	// http does the HTTPS transfers of files (nil: media's default
	// client, which verifies certificates).
	http *http.Client
	// downloadDir is listen -download's DIR (absolute), "" otherwise.
	downloadDir string

	serveDone chan struct{}
	serveErr  error // why Serve returned; read only after serveDone is closed
	// sessCancel cancels the context the session was negotiated with;
	// it is called only after the session is closed (see connect).
	sessCancel context.CancelFunc

	// live is set for a client kept connected by reconnect.Run.
	live *liveState
}

// open opens the store, logs in, registers the plugin and starts it (which
// publishes this device), then sends the available presence.
//
// An existing state file is opened before connecting, so that a damaged,
// locked or unreadable one fails at once, without a login. A new one is
// created only after the login succeeded: a wrong password or an
// unreachable server must not leave a new file (and with it a device
// identity) behind. That it could be created is checked before connecting.
// An account of a PostgreSQL store (-store postgres://…) is opened, and
// its lease taken, before connecting too; a new one is only written to
// once the plugin starts, after the login.
func open(ctx context.Context, g *globals, out *output) (*client, error) {
	s, err := openExisting(ctx, g)
	if err != nil {
		return nil, err
	}
	sess, cancel, err := connect(ctx, g, out)
	if err != nil {
		_ = s.close()
		return nil, err
	}
	c := &client{
		g:          g,
		out:        out,
		state:      s,
		sess:       sess,
		inbox:      newInbox(inboxLimit),
		http:       httpClient(g),
		serveDone:  make(chan struct{}),
		sessCancel: cancel,
	}
	if err := s.create(out); err != nil {
		c.closeSession()
		return nil, err
	}
	p, err := omemo.New(sess, c.pluginConfig())
	if err != nil {
		c.closeSession()
		_ = s.close()
		return nil, err
	}
	c.plugin = p
	m := mux.New(stanza.NSClient, p.Handle(c.inbox))
	go func() {
		defer close(c.serveDone)
		err := sess.Serve(m)
		select {
		case <-c.inbox.closing:
			// Errors while shutting down are expected (the stream
			// was closed under a pending write).
		default:
			c.serveErr = err
		}
	}()
	out.progress("publishing device and fetching device lists…")
	sctx, scancel := context.WithTimeout(ctx, opTimeout)
	defer scancel()
	if err := p.Start(sctx); err != nil {
		_ = c.shutdown()
		return nil, fmt.Errorf("starting OMEMO: %w", err)
	}
	mgr := p.Manager()
	out.progress("device %d of %s ready", mgr.DeviceID(), g.account.Bare())
	return c, nil
}

// pluginConfig is the plugin's configuration. Messages are acknowledged
// by the command (ManualAck) once it printed them (see client.ack): a
// message that was not printed (the command ended before, or does not
// print messages) is handed over again at the next start.
func (c *client) pluginConfig() omemo.Config {
	logger := slog.New(slog.NewTextHandler(c.out.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return omemo.Config{
		Store:        c.state.st,
		Backends:     c.g.backends,
		Trust:        c.g.policy,
		Label:        deviceLabel,
		SendPresence: true,
		Logger:       logger,
		OnError:      c.onError,
		ManualAck:    true,
	}
}

// onError is the plugin's Config.OnError: a warning. A command kept
// connected (listen, chat) also ends when it lost its account in a
// PostgreSQL state database (postgres.ErrLeaseLost: the database
// connection holding it broke, or another process took the account
// over), since the plugin can store nothing from then on: it fails with
// an errStoreLost, and what it did not print is printed by the next run.
func (c *client) onError(err error) {
	c.out.warn("%v", err)
	if c.live != nil && errors.Is(err, postgres.ErrLeaseLost) {
		c.live.loseStore(err)
	}
}

// openState opens (or creates) the state file at path and explains the
// errors a user can do something about.
func openState(path string) (*store.Bolt, error) {
	st, err := store.Open(path, nil)
	if err != nil {
		switch {
		case errors.Is(err, store.ErrLocked):
			return nil, fmt.Errorf("state file %s is in use by another omemo process: %w", path, err)
		case errors.Is(err, store.ErrCorrupt):
			// store.Open leaves a damaged file as it is, and so does the
			// command: replacing it would silently give the account a
			// new device identity and lose its sessions.
			// An older copy is no remedy: its ratchet state is behind the
			// peers' (see the README on backups).
			return nil, fmt.Errorf("state file %s is corrupt (damaged, or not an omemo state file) and was left unchanged; "+
				"move it away to start over as a new device with new keys (an older copy of it would reuse message keys): %w", path, err)
		case errors.Is(err, store.ErrVersion):
			return nil, fmt.Errorf("state file %s was written by a newer version of omemo: %w", path, err)
		}
		return nil, fmt.Errorf("opening state file %s: %w", path, err)
	}
	return st, nil
}

// checkCreatable checks, without creating anything, that the state file
// path, which does not exist, could be created: its directory exists and
// (where the system can tell) is writable.
func checkCreatable(path string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state file %s cannot be created: %w", path, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state file %s cannot be created: %s is not a directory", path, dir)
	}
	if err := dirWritable(dir); err != nil {
		return fmt.Errorf("state file %s cannot be created: %w", path, err)
	}
	return nil
}

// connect resolves the server, connects and negotiates the session
// (STARTTLS, SASL, resource binding).
//
// The returned cancel function must be called only after the session is
// closed: mellium (v0.23.0) watches the negotiation context in a goroutine
// that can put the connection's deadline in the past when the context is
// cancelled, even after negotiation returned, which would break a later
// write. The negotiation is still bounded by opTimeout and by ctx, but
// only while it runs.
func connect(ctx context.Context, g *globals, out *output) (*xmpp.Session, context.CancelFunc, error) {
	negCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu   sync.Mutex
		done bool
	)
	cancelIfRunning := func() {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			cancel()
		}
	}
	timer := time.AfterFunc(opTimeout, cancelIfRunning)
	stop := context.AfterFunc(ctx, cancelIfRunning)
	finish := func() {
		mu.Lock()
		done = true
		mu.Unlock()
		timer.Stop()
		stop()
	}

	domain := g.account.Domainpart()
	var (
		conn net.Conn
		err  error
	)
	if g.addr != "" {
		out.progress("connecting to %s…", g.addr)
		var d net.Dialer
		conn, err = d.DialContext(negCtx, "tcp", g.addr)
	} else {
		out.progress("connecting to %s (DNS SRV _xmpp-client._tcp, else %s:5222)…", domain, domain)
		// STARTTLS only: SRV records of _xmpp-client._tcp, falling
		// back to the domain on port 5222.
		d := dial.Dialer{NoTLS: true}
		conn, err = d.Dial(negCtx, "tcp", g.account)
	}
	if err != nil {
		finish()
		cancel()
		return nil, nil, fmt.Errorf("connecting to %s: %w", serverName(g), err)
	}
	out.progress("logging in as %s…", g.account)
	tlsCfg := &tls.Config{
		ServerName: domain,
		MinVersion: tls.VersionTLS12,
		// #nosec G402 -- only with -insecure-skip-verify, for test servers.
		InsecureSkipVerify: g.insecure,
	}
	sess, err := xmpp.NewClientSession(negCtx, g.account, conn,
		xmpp.StartTLS(tlsCfg),
		xmpp.SASL("", g.password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	)
	finish()
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, nil, fmt.Errorf("logging in to %s as %s: %w", serverName(g), g.account, err)
	}
	out.progress("logged in as %s", sess.LocalAddr())
	return sess, cancel, nil
}

func serverName(g *globals) string {
	if g.addr != "" {
		return g.addr
	}
	return g.account.Domainpart()
}

// closeSession ends the XMPP stream and the connection.
func (c *client) closeSession() {
	_ = c.sess.Close()
	if c.serveDone != nil && c.plugin != nil {
		select {
		case <-c.serveDone:
		case <-time.After(3 * time.Second):
		}
	}
	_ = c.sess.Conn().Close()
	if c.serveDone != nil && c.plugin != nil {
		<-c.serveDone
	}
	c.sessCancel()
}

// done is closed when the connection ended for good: Serve returned (open),
// or reconnect.Run gave up (openLive).
func (c *client) done() <-chan struct{} {
	if c.live != nil {
		return c.live.runDone
	}
	return c.serveDone
}

// lost returns the error to report when the connection ended before the
// command did. It must be called only after done was closed.
func (c *client) lost() error {
	if c.live != nil {
		if c.live.storeErr != nil {
			return c.live.storeErr
		}
		if c.live.runErr != nil {
			return trimReconnect(c.live.runErr)
		}
		return errors.New("connection closed")
	}
	if c.serveErr != nil {
		return fmt.Errorf("connection lost: %w", c.serveErr)
	}
	return errors.New("connection closed by the server")
}

// shutdown closes the plugin, the session and the store, in that order.
func (c *client) shutdown() error {
	if c.live != nil {
		return c.shutdownLive()
	}
	c.inbox.close()
	perr := c.plugin.Close()
	c.closeSession()
	serr := c.state.close()
	if perr != nil && !errors.Is(perr, omemo.ErrClosed) {
		return fmt.Errorf("closing OMEMO: %w", perr)
	}
	return serr
}

// messageJSON is a received message with -json.
type messageJSON struct {
	From        string    `json:"from"`
	Device      uint32    `json:"device"`
	Backend     string    `json:"backend"`
	Body        string    `json:"body"`
	Trust       string    `json:"trust"`
	KeyExchange bool      `json:"key_exchange"`
	File        *fileJSON `json:"file,omitempty"`
}

// trustName is the stored trust level name of a message's sender.
func trustName(m omemo.Message) string {
	if m.TrustLevel != "" {
		return m.TrustLevel
	}
	return m.Trust.String()
}

// shownBody is the text printed (and echoed) for a message: its body, or
// for an encrypted file (an aesgcm link, which holds the file's key) the
// file's name.
func shownBody(m omemo.Message) string {
	if m.File != nil {
		return m.File.Name()
	}
	return m.Body
}

// printMessage writes a received message (a room message as
// printRoomMessage does); a file is shown with its name and URL, not
// fetched.
func (c *client) printMessage(m omemo.Message) {
	c.printMessageFile(m, linkJSON(m))
}

// printMessageFile writes a received message with f, the description of
// its file (nil if it has none).
func (c *client) printMessageFile(m omemo.Message, f *fileJSON) {
	if isRoom(m) {
		c.printRoomMessageFile(m, f)
		return
	}
	from := m.From.Bare().String()
	v := messageJSON{
		From:        from,
		Device:      m.SenderDevice,
		Backend:     m.Namespace,
		Body:        shownBody(m),
		Trust:       trustName(m),
		KeyExchange: m.KeyExchange,
		File:        f,
	}
	var flags string
	if m.KeyExchange {
		flags += ", key exchange"
	}
	if m.Sent {
		flags += ", sent by own device to " + m.To.Bare().String()
	}
	if m.Archived || !m.Delay.IsZero() {
		flags += ", delayed"
	}
	// Remote data is escaped: the sender's JID and the body, whose
	// continuation lines start with contPrefix (see escapeText).
	text := escapeText(fmt.Sprintf("%s [device %d, %s, %s%s]: ", from, m.SenderDevice, backendName(m.Namespace), v.Trust, flags)) +
		escapeText(v.Body) + f.note()
	c.out.result(v, text)
}

// ack acknowledges a message the command printed (see pluginConfig).
func (c *client) ack(m omemo.Message) {
	if c.plugin != nil && m.DeliveryID != 0 {
		_ = c.plugin.Ack(m.DeliveryID)
	}
}

// show prints a received message and then acknowledges it; with
// listen -download, the message's file is downloaded first. It returns
// false, having printed and acknowledged nothing, if ctx ended during the
// download: the message is handed over again at the next start. The
// file's key is wiped.
func (c *client) show(ctx context.Context, m omemo.Message) bool {
	if m.File != nil {
		defer m.File.Wipe()
	}
	f := linkJSON(m)
	if f != nil && c.downloadDir != "" && !m.Reflected {
		var ok bool
		if f, ok = c.download(ctx, m); !ok {
			return false
		}
	}
	c.printMessageFile(m, f)
	c.ack(m)
	return true
}
