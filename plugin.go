package omemo

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/backends/twomemo"
	"mellium.im/omemo/groupchat"
	"mellium.im/omemo/internal/muxgate"
	"mellium.im/omemo/media"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/sce"
	"mellium.im/omemo/session"
	"mellium.im/omemo/store"
	"mellium.im/omemo/trust"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/carbons"
	"mellium.im/xmpp/disco/info"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/muc"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// DefaultCapsNode is the XEP-0115 node (the client software URI) used when
// Config.CapsNode is empty.
const DefaultCapsNode = "https://mellium.im/omemo"

// DefaultFallbackBody is the plaintext <body> of an encrypted message, shown
// by clients that do not support OMEMO.
// It is the text Conversations uses, so that users see a familiar hint.
const DefaultFallbackBody = "I sent you an OMEMO encrypted message but your client doesn't seem to support that. Find more information on https://conversations.im/omemo"

// DefaultMaxClockSkew is Config.MaxClockSkew when it is zero.
const DefaultMaxClockSkew = 5 * time.Minute

// DefaultQueueSize is the number of received messages that may wait for
// decryption when Config.QueueSize is zero.
const DefaultQueueSize = 256

// Errors of the plugin. Errors that reach Config.OnError or are returned
// wrap one of them (or an error of package session); test with errors.Is.
var (
	// ErrNotStarted is returned by the operations that need the session
	// manager before Start has completed.
	ErrNotStarted = errors.New("omemo: plugin not started")
	// ErrStarted is returned by a second call of Start.
	ErrStarted = errors.New("omemo: plugin already started")
	// ErrClosed is returned by every operation after Close.
	ErrClosed = errors.New("omemo: plugin closed")
	// ErrQueueFull reports a received message that was dropped because too
	// many messages were already waiting for decryption.
	ErrQueueFull = errors.New("omemo: receive queue full")
	// ErrForgedCarbon reports a message carbon (XEP-0280) that does not
	// come from the own bare JID: anyone can send such a wrapper, so it
	// is dropped (the CVE-2017-5589 class of impersonation).
	ErrForgedCarbon = errors.New("omemo: carbon not sent by the own account")
	// ErrForgedArchive reports a MAM result that does not come from the
	// own archive, or does not belong to a query of this plugin.
	ErrForgedArchive = errors.New("omemo: archive result not from the own archive")
	// ErrMalformedStanza reports a message whose OMEMO parts cannot be
	// parsed.
	ErrMalformedStanza = errors.New("omemo: malformed message")
)

// DecryptError reports a received OMEMO message that was rejected: it
// could not be decrypted, its SCE affixes contradicted the stanza, or its
// wrapper (carbon, archive result) was not trustworthy. It reaches
// Config.OnError, never the application's Handler; the message is dropped.
type DecryptError struct {
	// From is the sender as claimed by the stanza (for forged wrappers:
	// the wrapper's from).
	From jid.JID
	// ID is the stanza id (or origin-id).
	ID string
	// Namespace is the OMEMO namespace of the element, if any.
	Namespace string
	// Err is the cause; it wraps an error of this package, of package
	// session, of package sce or of the backends.
	Err error
}

func (e *DecryptError) Error() string {
	if e.Namespace == "" {
		return fmt.Sprintf("omemo: message %q from %s rejected: %v", e.ID, e.From, e.Err)
	}
	return fmt.Sprintf("omemo: %s message %q from %s rejected: %v", e.Namespace, e.ID, e.From, e.Err)
}

// Unwrap returns the cause.
func (e *DecryptError) Unwrap() error { return e.Err }

// Message is a decrypted OMEMO message as handed to a Handler.
//
// The embedded stanza.Message holds the attributes of the message stanza
// that carried the <encrypted> element: for carbons and archived messages
// the forwarded inner message, so From is always the sending entity.
// Everything in it was decrypted and authenticated by OMEMO, except the
// stanza attributes and the metadata fields, which come from the server.
type Message struct {
	stanza.Message
	// Body is the text of the decrypted <body>, "" if there was none.
	Body string
	// File is set when Body is exactly an encrypted file's link (XEP-0454
	// aesgcm://, which every OMEMO client sends for files and pictures):
	// media.Download fetches, decrypts and verifies it. It carries the
	// file's key (as Body does): call File.Wipe when done. It prints
	// redacted.
	File *media.Link
	// Payload is the decrypted inner XML: the SCE <content> children of
	// an OMEMO 2 message (every top-level element declares its namespace;
	// server-processed elements such as hints or stanza-id are removed, see
	// sce.ServerProcessed), or <body xmlns='jabber:client'>…</body> for legacy OMEMO.
	Payload []byte
	// SenderDevice is the sender's OMEMO device id.
	SenderDevice uint32
	// IdentityKey is the Ed25519 identity key of the sending device.
	IdentityKey [32]byte
	// Namespace is ns.OMEMO2 or ns.Legacy.
	Namespace string
	// Trust is the core trust level of the sending device. Messages from
	// undecided devices are delivered; the application should mark them.
	Trust trust.Level
	// TrustLevel is the stored (custom) trust level name of the device.
	TrustLevel string
	// KeyExchange reports that the message started (or repeated the start
	// of) a session.
	KeyExchange bool
	// Carbon reports a message carbon (XEP-0280).
	Carbon bool
	// Sent reports a message sent by another device of the own account
	// (a sent carbon or an archived own message).
	Sent bool
	// Archived reports a message fetched from the archive by CatchUp or
	// CatchUpRoom.
	Archived bool
	// Room is the bare JID of the room of a group chat message, zero for a
	// one-to-one message; Nick is the sender's nick in the room. For room
	// messages From is the room occupant (room@service/nick) and the
	// sender's real JID (from the room's state, never from the message)
	// is RealFrom.
	Room     jid.JID
	Nick     string
	RealFrom jid.JID
	// Reflected reports the room's copy of a message this device sent
	// (Sent is set too; the body is the one sent): the room has it.
	Reflected bool
	// DeliveryID identifies the message for good: it was stored with the
	// decryption (the durable inbox) and is handed over again, with the
	// same DeliveryID and Redelivered set, until it was acknowledged (see
	// Config.ManualAck). 0 for reflections, which are not stored.
	DeliveryID  uint64
	Redelivered bool
	// OriginID is the XEP-0359 origin-id, if present.
	OriginID string
	// ArchiveID is the id of the MAM result, for archived messages.
	ArchiveID string
	// Delay is the XEP-0203 delay stamp that the own server put on a
	// message it stored (offline delivery) or archived, zero for live
	// messages: a <delay> the sender wrote is ignored. It is metadata of
	// the server, not authenticated.
	Delay time.Time
	// SentAt is the time the sender says it encrypted the message: the
	// XEP-0420 <time> affix of an OMEMO 2 envelope, authenticated with the
	// message (but read off the sender's clock); zero if the envelope has
	// none or an unparseable one, and for legacy OMEMO, which has no such
	// field.
	SentAt time.Time
	// TimeMismatch reports that SentAt lies further than
	// Config.MaxClockSkew from the sending time the stanza gives (Delay,
	// or the arrival of a live message): a misconfigured clock, or an old
	// message held back. XEP-0420 asks that the user be alerted.
	TimeMismatch bool

	// ignored are the envelope affixes the check tolerated, reported
	// before delivery.
	ignored []*sce.InvalidAffixError
}

// Handler receives decrypted messages.
// HandleOMEMO is called from the plugin's worker goroutine, one message
// at a time: while it runs no further message is decrypted, so it should
// return quickly. It may call Plugin.Send.
type Handler interface {
	HandleOMEMO(Message)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(Message)

// HandleOMEMO calls f(m).
func (f HandlerFunc) HandleOMEMO(m Message) { f(m) }

// Config configures a Plugin. Store is required.
type Config struct {
	// Store holds the OMEMO state of this device (package store).
	Store store.Store
	// Backends in priority order; OMEMO 2 then legacy OMEMO if nil.
	// A device that supports several gets the first.
	Backends []backends.Factory
	// Trust decides which devices are encrypted for and trusted as
	// senders; trust.BTBV(nil) if nil.
	Trust trust.Policy
	// Label is the own device label used on the first run.
	Label string
	// OnError receives rejected messages (*DecryptError, also for
	// forged carbons and archive results and for ErrQueueFull), failures
	// of background work, and warnings about messages that were delivered
	// anyway: an error wrapping sce.ErrInvalidAffix names an ignored SCE
	// affix and is reported just before the Handler gets the message. Only
	// a *DecryptError means that a message was rejected. It is called from the Serve goroutine
	// or the plugin's worker, never with a lock held: it must return
	// quickly and must not call Send or send IQs.
	// Errors are logged with Logger if nil.
	OnError func(error)
	// Logger receives diagnostics; slog.Default() if nil.
	Logger *slog.Logger
	// QueueSize bounds the number of received messages waiting for
	// decryption in memory (DefaultQueueSize if zero). Once Start has run,
	// messages beyond it wait in the store, in order, instead (nothing is
	// dropped); before Start they are dropped and reported as
	// ErrQueueFull.
	QueueSize int
	// ManualAck makes the application acknowledge each message with
	// Plugin.Ack(m.DeliveryID) once it has it for good (stored it, acted
	// on it); until then it is handed over again at every Start. Without
	// it a message is acknowledged when HandleOMEMO returns: a crash
	// while the handler runs hands it over again (at least once); a
	// handler that records DeliveryIDs gets it exactly once.
	ManualAck bool
	// FallbackBody is the plaintext body of sent messages;
	// DefaultFallbackBody if empty. NoFallbackBody leaves it out.
	FallbackBody   string
	NoFallbackBody bool
	// CapsNode is the client software URI of entity capabilities
	// (DefaultCapsNode if empty).
	CapsNode string
	// NoDisco keeps Handle from registering the service discovery
	// handler (pep.HandleDisco); the application must then answer
	// caps-node queries with the +notify features itself.
	NoDisco bool
	// NoIdentity leaves out the disco identity (category client, type
	// pc) that Handle registers with disco, for applications that
	// register their own.
	NoIdentity bool
	// SendPresence makes Start send the initial available presence with
	// the entity capabilities that subscribe to device list notifications
	// (see CapsPresence).
	SendPresence bool
	// NoCarbons keeps Start from enabling message carbons.
	NoCarbons bool
	// HistorySync starts the session manager in history synchronisation
	// mode: the application must call CatchUp or AfterHistorySync.
	HistorySync bool
	// RequireAffixes rejects OMEMO 2 messages whose SCE envelope lacks the
	// <from> or <to> affix, or whose <from>, <to> or <time> affix is
	// present but cannot be parsed (present affixes are always checked;
	// <rpad> is always required, and may be empty). Without it such an
	// affix is ignored as if absent: the message is delivered and OnError
	// receives a warning wrapping sce.ErrInvalidAffix.
	RequireAffixes bool
	// MUCClient, if set, receives the room presences and invitations that
	// mellium.im/xmpp/muc's handler would: Handle owns those mux patterns
	// (the plugin follows every room's occupants and their real JIDs), so
	// pass the application's muc.Client here instead of registering
	// muc.HandleClient.
	MUCClient *muc.Client
	// Passthrough, if set, receives the message carbons and MAM results
	// without OMEMO content: Handle owns those mux patterns, so they would
	// otherwise be dropped. It is called in the Serve goroutine.
	//
	// It also receives, untouched and still encrypted, the MAM results of
	// queries the plugin did not send (the application's own archive
	// queries). The plugin checks nothing about those: the application
	// knows which archive it asked (its account's, or a room's) and must
	// check that the results come from it.
	Passthrough mux.MessageHandler
	// NetworkTimeout bounds every network call of the plugin and its
	// session manager (each IQ, each sent stanza);
	// session.DefaultNetworkTimeout if zero. A message whose sender must be
	// looked up waits for it aside: other senders' messages go on.
	NetworkTimeout time.Duration
	// MaxClockSkew is the largest difference between the sender's signed
	// sending time and the stanza's before a message is flagged with
	// Message.TimeMismatch (DefaultMaxClockSkew if zero, never flagged if
	// negative).
	MaxClockSkew time.Duration
	// Now is the clock and Rand the randomness source (tests only).
	Now  func() time.Time
	Rand io.Reader
}

// Plugin is OMEMO for one *xmpp.Session: it decrypts incoming messages
// for the handler given to Handle and encrypts outgoing ones in Send.
//
// The lifecycle follows mellium's: New and Handle build the mux before
// Serve runs; Start (called once Serve runs, since it needs IQs) opens the
// session manager, publishes the device, enables carbons and optionally
// sends presence. Messages that arrive before Start completes wait in the
// bounded receive queue. Close stops everything.
//
// Typical use:
//
//	p, err := omemo.New(s, omemo.Config{Store: st, SendPresence: true})
//	m := mux.New(stanza.NSClient, p.Handle(omemo.HandlerFunc(show)), …)
//	go s.Serve(m)
//	err = p.Start(ctx)         // after Serve runs
//	err = p.CatchUp(ctx, last) // optional: the archive since the last run
//	res, err := p.Send(ctx, bob, "Hi")
//
// Messages sent with s.Send directly are not encrypted: use Plugin.Send.
// Applications that register a <body> handler see the fallback body of
// OMEMO messages too and should ignore messages that carry <encrypted>.
type Plugin struct {
	conn   connection // the current XMPP session (connection.go)
	own    jid.JID    // bare
	ownStr string     // own.String()
	cfg    Config
	net    session.Network
	send   func(ctx context.Context, toks []xml.Token) error

	handler Handler       // guarded by mu
	mux     *mux.ServeMux // guarded by mu

	startMu sync.Mutex
	mgr     *session.Manager // set once, before ready is closed
	ready   chan struct{}
	started bool

	queue     chan job
	closing   chan struct{}
	closeOnce sync.Once
	workDone  chan struct{}
	workCtx   context.Context
	workStop  context.CancelFunc

	// gate lets the message handlers read each stanza once, however
	// many of its children they match.
	gate muxgate.Gate
	// rooms follows the joined rooms (room.go); reflect remembers the sent
	// room messages until the room reflects them.
	rooms   *groupchat.Tracker
	reflect reflections
	// netSlots bounds the receive worker's network jobs; netDone reports
	// their ends to it (worker.go).
	netSlots chan struct{}
	netDone  chan networkDone
	// reconnected wakes the worker when a new session was set up.
	reconnected chan struct{}

	// spill holds the received messages beyond the queue (spill.go).
	spill spillState
	// ackTimer commits acknowledgements that no write carried (delivery.go).
	ackMu    sync.Mutex
	ackTimer *time.Timer

	mu        sync.Mutex
	refreshed map[string]bool // device lists refreshed once by Send
	queries   map[string]bool // MAM query ids of running CatchUps
	// roomQueries are the queries of CatchUpRoom: the room's archive
	// answers them.
	roomQueries map[string]jid.JID
}

// New returns the plugin of s. It does no network work; register its
// handlers with Handle before s.Serve runs, then call Start.
func New(s *xmpp.Session, cfg Config) (*Plugin, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil session", session.ErrInvalidConfig)
	}
	p, err := NewDetached(s.LocalAddr().Bare(), cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Attach(s); err != nil {
		_ = p.Close()
		return nil, err
	}
	return p, nil
}

// NewDetached returns the plugin of account (a bare JID) before there is a
// session: operations that need the server fail with ErrDisconnected
// until Attach. Package reconnect uses it, to build the mux before the
// first connection.
func NewDetached(account jid.JID, cfg Config) (*Plugin, error) {
	timeout := cfg.NetworkTimeout
	if timeout <= 0 {
		timeout = session.DefaultNetworkTimeout
	}
	var p *Plugin
	current := func() (*xmpp.Session, error) { return p.session() }
	p, err := newPlugin(account.Bare(), cfg, newNetwork(current, timeout), func(ctx context.Context, toks []xml.Token) error {
		s, err := p.session()
		if err != nil {
			return err
		}
		return sendDetached(ctx, s, toks, timeout)
	})
	if err != nil {
		return nil, err
	}
	p.conn.mu.Lock()
	p.conn.overXMPP = true
	p.conn.detached = true
	p.conn.mu.Unlock()
	return p, nil
}

// newPlugin is New without an XMPP session (unit tests use an in-memory
// network and capture the sent stanzas).
func newPlugin(own jid.JID, cfg Config, net session.Network, send func(context.Context, []xml.Token) error) (*Plugin, error) {
	if own.Equal(jid.JID{}) || own.Localpart() == "" {
		return nil, fmt.Errorf("%w: session has no account JID", session.ErrInvalidConfig)
	}
	if cfg.Store == nil {
		return nil, fmt.Errorf("%w: no store", session.ErrInvalidConfig)
	}
	if cfg.Backends == nil {
		cfg.Backends = []backends.Factory{twomemo.Factory, oldmemo.Factory}
	}
	if len(cfg.Backends) == 0 {
		return nil, fmt.Errorf("%w: no backends", session.ErrInvalidConfig)
	}
	for _, f := range cfg.Backends {
		if f.Namespace != ns.OMEMO2 && f.Namespace != ns.Legacy {
			return nil, fmt.Errorf("%w: backend namespace %q", session.ErrUnknownNamespace, f.Namespace)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.OnError == nil {
		logger := cfg.Logger
		cfg.OnError = func(err error) { logger.Warn("omemo", "err", err) }
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.FallbackBody == "" {
		cfg.FallbackBody = DefaultFallbackBody
	}
	if cfg.CapsNode == "" {
		cfg.CapsNode = DefaultCapsNode
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NetworkTimeout == 0 {
		cfg.NetworkTimeout = session.DefaultNetworkTimeout
	}
	if cfg.NetworkTimeout < 0 {
		return nil, fmt.Errorf("%w: negative network timeout", session.ErrInvalidConfig)
	}
	if cfg.MaxClockSkew == 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	workCtx, workStop := context.WithCancel(context.Background())
	p := &Plugin{
		own:         own,
		ownStr:      own.String(),
		cfg:         cfg,
		net:         net,
		send:        send,
		ready:       make(chan struct{}),
		queue:       make(chan job, cfg.QueueSize),
		closing:     make(chan struct{}),
		workDone:    make(chan struct{}),
		workCtx:     workCtx,
		workStop:    workStop,
		refreshed:   map[string]bool{},
		queries:     map[string]bool{},
		roomQueries: map[string]jid.JID{},
		rooms:       groupchat.NewTracker(own),
		netSlots:    make(chan struct{}, maxNetworkJobs),
		spill:       spillState{inFlight: map[uint64]bool{}, kick: make(chan struct{}, 1)},
		netDone:     make(chan networkDone),
		reconnected: make(chan struct{}, 1),
	}
	go p.work()
	return p, nil
}

// supports reports whether a backend of namespace is configured.
func (p *Plugin) supports(namespace string) bool {
	for _, f := range p.cfg.Backends {
		if f.Namespace == namespace {
			return true
		}
	}
	return false
}

// Handle returns the mux option that registers everything the plugin
// receives; h gets every decrypted message exactly once.
//
// It registers:
//   - <encrypted> of each configured namespace in chat and normal
//     messages (a message carrying both is handled once);
//   - message carbons (XEP-0280 received and sent, chat and normal), so
//     the application must not also register carbons.Handle (pass
//     plaintext carbons on with Config.Passthrough);
//   - MAM results (XEP-0313, normal), for CatchUp; history.Handle must
//     not be registered either;
//   - PEP notifications (pep.HandleEvents), whose device lists update the
//     session manager;
//   - the +notify features of the device list nodes and, unless
//     Config.NoDisco, the service discovery handler that answers the
//     server's entity capabilities queries (pep.HandleDisco).
//
// Messages without OMEMO are not touched (no <body> handler is
// registered). Call Handle once: the mux panics on duplicate patterns.
func (p *Plugin) Handle(h Handler) mux.Option {
	if h == nil {
		panic("omemo: nil handler")
	}
	return func(m *mux.ServeMux) {
		p.mu.Lock()
		p.handler = h
		p.mux = m
		p.mu.Unlock()
		for _, typ := range []stanza.MessageType{stanza.ChatMessage, stanza.NormalMessage} {
			for _, f := range p.cfg.Backends {
				mux.Message(typ, encryptedName(f.Namespace), directHandler{p: p, namespace: f.Namespace})(m)
			}
			for _, local := range []string{"received", "sent"} {
				mux.Message(typ, xmlName(carbons.NS, local), carbonHandler{p: p})(m)
			}
		}
		for _, f := range p.cfg.Backends {
			mux.Message(stanza.GroupChatMessage, encryptedName(f.Namespace), directHandler{p: p, namespace: f.Namespace})(m)
		}
		mux.Message(stanza.NormalMessage, xmlName(nsMAM, "result"), archiveHandler{p: p})(m)
		p.handleRooms(m)
		pep.HandleEvents(p.handleEvent)(m)
		var nodes []string
		for _, f := range p.cfg.Backends {
			nodes = append(nodes, devicelistNode(f.Namespace))
		}
		mux.Feature(pep.NotifyFeatures(nodes...))(m)
		if !p.cfg.NoDisco {
			pep.HandleDisco(p.cfg.CapsNode)(m)
			if !p.cfg.NoIdentity {
				// XEP-0030 requires an identity; without one, clients
				// that verify caps hashes (slixmpp) reject ours.
				mux.Ident(clientIdentity{})(m)
			}
		}
	}
}

// currentHandler returns the handler given to Handle (nil if none).
func (p *Plugin) currentHandler() Handler {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.handler
}

// Start opens the session manager (publishing this device's bundles and
// device lists), enables carbons and, with Config.SendPresence, sends the
// presence with entity capabilities; then the queued messages are
// decrypted. It must be called while s.Serve runs, from another
// goroutine than Serve's (it sends IQs). A Start that fails before the
// plugin is running may be retried; an error sending the presence is
// returned with the plugin running (Start then reports ErrStarted).
//
// After Attach moved the plugin to a new session, Start sets that
// session up: carbons and presence again, the own device lists and
// bundles checked (session.Manager.Resync), and the tracked rooms joined
// again (a room that cannot be joined is reported to OnError). It then
// reports ErrStarted only for a second call on the same session.
func (p *Plugin) Start(ctx context.Context) error {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	p.startMu.Lock()
	defer p.startMu.Unlock()
	select {
	case <-p.closing:
		return ErrClosed
	default:
	}
	if err := p.connected(); err != nil {
		return err
	}
	if p.started {
		if !p.freshConnection() {
			return ErrStarted
		}
		return p.resumeConnection(ctx)
	}
	mgr, err := session.New(ctx, p.cfg.Store, p.net, session.Config{
		JID:            p.own.String(),
		Backends:       p.cfg.Backends,
		Label:          p.cfg.Label,
		Trust:          p.cfg.Trust,
		Logger:         p.cfg.Logger,
		OnError:        p.cfg.OnError,
		StartSynced:    !p.cfg.HistorySync,
		NetworkTimeout: p.cfg.NetworkTimeout,
		Now:            p.cfg.Now,
		Rand:           p.cfg.Rand,
	})
	if err != nil {
		return err
	}
	if err := p.enableCarbons(ctx); err != nil {
		_ = mgr.Close()
		return err
	}
	if err := p.initPositions(ctx); err != nil {
		_ = mgr.Close()
		return err
	}
	p.mgr = mgr
	p.started = true
	p.markConnectionStarted()
	close(p.ready)
	return p.sendPresence(ctx)
}

// resumeConnection sets a new session up for a running plugin (see Start).
func (p *Plugin) resumeConnection(ctx context.Context) error {
	if err := p.enableCarbons(ctx); err != nil {
		return err
	}
	if err := p.mgr.Resync(ctx); err != nil {
		return fmt.Errorf("omemo: checking the own device after reconnecting: %w", err)
	}
	if err := p.sendPresence(ctx); err != nil {
		return err
	}
	p.markConnectionStarted()
	p.rejoinRooms(ctx)
	return nil
}

// enableCarbons enables message carbons unless Config.NoCarbons.
func (p *Plugin) enableCarbons(ctx context.Context) error {
	s, err := p.session()
	if err != nil || p.cfg.NoCarbons {
		return nil // no XMPP (unit tests)
	}
	cctx, cdone := bounded(ctx, p.cfg.NetworkTimeout)
	err = carbons.Enable(cctx, s)
	cdone()
	if err != nil {
		return fmt.Errorf("omemo: enabling carbons: %w", err)
	}
	return nil
}

// sendPresence sends the presence with entity capabilities if
// Config.SendPresence.
func (p *Plugin) sendPresence(ctx context.Context) error {
	if _, err := p.session(); err != nil || !p.cfg.SendPresence {
		return nil
	}
	r, err := p.CapsPresence(stanza.Presence{})
	if err == nil {
		err = p.sendReader(ctx, r)
	}
	if err != nil {
		return fmt.Errorf("omemo: sending presence: %w", err)
	}
	return nil
}

// Manager returns the session manager (nil before Start), for device and
// trust management.
func (p *Plugin) Manager() *session.Manager {
	select {
	case <-p.ready:
		return p.mgr
	default:
		return nil
	}
}

// manager returns the session manager or ErrNotStarted / ErrClosed.
func (p *Plugin) manager() (*session.Manager, error) {
	select {
	case <-p.closing:
		return nil, ErrClosed
	default:
	}
	select {
	case <-p.ready:
		return p.mgr, nil
	default:
		return nil, ErrNotStarted
	}
}

// CapsPresence returns an available presence carrying the entity
// capabilities of the mux the plugin was registered with (so that the
// server sends device list notifications), ready for Session.Send.
// payload (such as <show/>) is appended.
func (p *Plugin) CapsPresence(pres stanza.Presence, payload ...xml.TokenReader) (xml.TokenReader, error) {
	p.mu.Lock()
	m := p.mux
	p.mu.Unlock()
	if m == nil {
		return nil, errors.New("omemo: Handle was not registered with a mux")
	}
	return pep.CapsPresence(m, p.cfg.CapsNode, pres, payload...)
}

// Close stops the receive worker (messages still queued are dropped),
// then the session manager. It does not close the XMPP session or the
// store.
func (p *Plugin) Close() error {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.workStop()
	})
	<-p.workDone
	p.startMu.Lock()
	defer p.startMu.Unlock()
	if p.mgr != nil {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.NetworkTimeout)
		p.closeAcks(ctx)
		cancel()
		return p.mgr.Close()
	}
	return nil
}

// BeforeHistorySync enters history synchronisation mode (see
// session.Manager.BeforeHistorySync). CatchUp does this itself.
func (p *Plugin) BeforeHistorySync() error {
	m, err := p.manager()
	if err != nil {
		return err
	}
	m.BeforeHistorySync()
	return nil
}

// AfterHistorySync leaves history synchronisation mode, deleting the
// pre keys used meanwhile and sending the queued empty messages.
func (p *Plugin) AfterHistorySync(ctx context.Context) error {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	m, err := p.manager()
	if err != nil {
		return err
	}
	return m.AfterHistorySync(ctx)
}

// detach returns a context that is cancelled when ctx is, but only until
// done is called: after done, cancelling ctx no longer reaches the
// returned context.
//
// mellium (v0.23.0) watches the context of every write and IQ in a
// goroutine that, once the context is done, puts the connection's deadline
// in the past; that goroutine can still run after the call returned and
// break a later write of another goroutine (a TLS connection is unusable
// after a write timeout). Callers routinely cancel their context right
// after a call returns, so every network operation of the plugin runs
// under a detached context.
//
// The returned context is also cancelled (until done) when one of also
// is, so that Close aborts operations in flight.
func detach(ctx context.Context, also ...context.Context) (context.Context, func()) {
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu       sync.Mutex
		returned bool
	)
	cancelIfRunning := func() {
		mu.Lock()
		defer mu.Unlock()
		if !returned {
			cancel()
		}
	}
	stops := []func() bool{context.AfterFunc(ctx, cancelIfRunning)}
	for _, c := range also {
		stops = append(stops, context.AfterFunc(c, cancelIfRunning))
	}
	return inner, func() {
		mu.Lock()
		returned = true
		mu.Unlock()
		for _, stop := range stops {
			stop()
		}
	}
}

// sendReader sends the stanza r, buffered first (see sendDetached).
func (p *Plugin) sendReader(ctx context.Context, r xml.TokenReader) error {
	toks, err := xmlstream.ReadAll(r)
	if err != nil {
		return err
	}
	return p.send(ctx, toks)
}

// clientIdentity is the disco identity Handle advertises.
type clientIdentity struct{}

func (clientIdentity) ForIdentities(node string, f func(info.Identity) error) error {
	if node != "" {
		return nil
	}
	return f(info.Identity{Category: "client", Type: "pc"})
}
