package omemo

import (
	"context"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"slices"
	"sync"
	"unicode/utf8"

	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// SendResult describes a sent message.
type SendResult struct {
	// ID is the stanza id, which is also the origin-id.
	ID string
	// Recipients are the devices that got a key.
	Recipients []session.Recipient
	// Failures are devices that could not be encrypted for (for example
	// without a published bundle); the message was sent to the others.
	Failures []session.DeviceError
	// Unreached are the room members without a device that could be
	// encrypted for, skipped with SkipMembersWithoutOMEMO.
	Unreached []string
}

// SendOption changes how Send builds the message.
type SendOption func(*sendOptions)

type sendOptions struct {
	id            string
	fallback      string
	hasFallback   bool
	skipUnreached bool
}

// sendOptionsOf applies opts to the defaults.
func (p *Plugin) sendOptionsOf(opts []SendOption) sendOptions {
	o := sendOptions{fallback: p.cfg.FallbackBody, hasFallback: !p.cfg.NoFallbackBody}
	for _, f := range opts {
		f(&o)
	}
	if o.id == "" {
		o.id = rand.Text()
	}
	if !o.hasFallback {
		o.fallback = ""
	}
	return o
}

// WithID sets the stanza id (and origin-id); a random one otherwise.
func WithID(id string) SendOption {
	return func(o *sendOptions) { o.id = id }
}

// WithFallbackBody replaces the plaintext fallback body of this message;
// the empty string leaves it out.
func WithFallbackBody(body string) SendOption {
	return func(o *sendOptions) { o.fallback, o.hasFallback = body, true }
}

// Send encrypts body and sends it as a chat message to `to`, for every
// device of the recipient and of the own account (but this one) that the
// trust policy allows, each with the best backend it supports. When the
// devices need both backends the stanza carries an OMEMO 2 and a legacy
// <encrypted> element.
//
// The OMEMO 2 plaintext is an XEP-0420 envelope (rpad, time, to, from)
// holding <body xmlns='jabber:client'>; legacy OMEMO encrypts the body
// text. The stanza also carries the XEP-0380 <encryption/> hint, the
// XEP-0334 <store/> hint (so body-less messages are archived), an XEP-0359
// origin-id equal to the stanza id and the fallback body.
//
// Send fails closed: if the trust policy leaves a device undecided
// (session.ErrStillUndecided) or no device of the recipient can be
// encrypted for (*session.NoEligibleDevicesError), nothing is sent. All
// network work (device lists, bundles) happens before the stanza is
// written, and the ratchet state is committed only with the stanza
// written (see session.Manager.Encrypt).
//
// Send must not be called from the Serve goroutine (it sends IQs); it may
// be called from a Handler.
func (p *Plugin) Send(ctx context.Context, to jid.JID, body string, opts ...SendOption) (*SendResult, error) {
	ctx, done := detach(ctx, p.workCtx)
	defer done()
	mgr, err := p.manager()
	if err != nil {
		return nil, err
	}
	if err := p.connected(); err != nil {
		return nil, err
	}
	bare := to.Bare()
	if bare.Localpart() == "" && bare.Domainpart() == "" {
		return nil, errEmptyJID
	}
	o := p.sendOptionsOf(opts)
	listErr := p.ensureDeviceLists(ctx, mgr, p.own, bare)
	plaintexts, err := p.plaintexts(mgr, body, bare)
	if err != nil {
		return nil, err
	}
	res, err := mgr.Encrypt(ctx, []string{bare.String()}, plaintexts, func(r *session.EncryptResult) error {
		toks, err := outgoingTokens(to, o.id, r.Messages, o.fallback)
		if err != nil {
			return fmt.Errorf("%w: %w", session.ErrNotSent, err)
		}
		return p.send(ctx, toks)
	})
	if err != nil {
		if listErr != nil && errors.Is(err, session.ErrNoEligibleDevices) {
			// Why no device is known can be that a list could not be
			// read (devicelist.ErrAccessDenied, a timeout): say so.
			return nil, fmt.Errorf("%w; fetching the device lists: %w", err, listErr)
		}
		return nil, err
	}
	return &SendResult{ID: o.id, Recipients: res.Recipients, Failures: res.Failures}, nil
}

// maxParallelListFetches bounds the accounts whose device lists one send
// fetches at once.
const maxParallelListFetches = 32

// ensureDeviceLists downloads the device lists of the given accounts the
// first time this plugin sends to them; later changes arrive as PEP
// notifications. Failures are reported and returned joined, but they do
// not stop the send: encryption uses what is known and fails closed if
// that is nothing (a list the server refused to show leaves the known
// devices as they are).
func (p *Plugin) ensureDeviceLists(ctx context.Context, mgr *session.Manager, accounts ...jid.JID) error {
	// All accounts in parallel: a first message should cost one round of
	// device-list fetches, then one round of bundle fetches.
	// At most maxParallelListFetches at once: a room of hundreds of
	// members must not open hundreds of requests.
	if p.allRefreshed(accounts) {
		return nil // the steady state: nothing to fetch
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelListFetches)
	errs := make([]error, len(accounts))
	seen := map[string]bool{}
	for i, a := range accounts {
		key := a.Bare().String()
		p.mu.Lock()
		done := p.refreshed[key] || seen[key]
		p.mu.Unlock()
		seen[key] = true
		if done {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := mgr.RefreshDeviceLists(ctx, key)
			if err != nil {
				errs[i] = fmt.Errorf("omemo: refreshing the device lists of %s: %w", key, err)
				p.report(errs[i])
				devs, derr := mgr.Devices(ctx, key)
				if derr != nil || len(devs) == 0 {
					return
				}
			}
			p.mu.Lock()
			p.refreshed[key] = true
			p.mu.Unlock()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// allRefreshed reports whether ensureDeviceLists fetched the lists of all
// accounts already.
func (p *Plugin) allRefreshed(accounts []jid.JID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range accounts {
		if !p.refreshed[a.Bare().String()] {
			return false
		}
	}
	return true
}

// bodyContent is the SCE content of a chat message, in the canonical form
// of package sce (sce.Envelope.Content), which sce.New and Marshal take as
// it is: only '&', '<', '>' and CR are escaped, and what is not an XML
// character (invalid UTF-8 included) becomes U+FFFD, as xml.EscapeText
// does.
func bodyContent(body string) []byte {
	const open, end = `<body xmlns='jabber:client'>`, `</body>`
	b := make([]byte, 0, len(open)+len(body)+len(end)+16)
	b = append(b, open...)
	b = appendCanonicalText(b, body)
	return append(b, end...)
}

// appendCanonicalText appends s escaped as sce's canonical form escapes
// text.
func appendCanonicalText(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1 || !isXMLChar(r):
			b = append(b, "\uFFFD"...)
		case r == '&':
			b = append(b, "&amp;"...)
		case r == '<':
			b = append(b, "&lt;"...)
		case r == '>':
			b = append(b, "&gt;"...)
		case r == '\r':
			b = append(b, "&#xD;"...)
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

// isXMLChar reports whether r is a character of XML 1.0.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D || r >= 0x20 && r <= 0xD7FF ||
		r >= 0xE000 && r <= 0xFFFD || r >= 0x10000 && r <= 0x10FFFF
}

// outgoingTokens builds the whole message stanza in memory (Session.Send
// holds the output lock while it reads it, so nothing may block or fail
// then):
//
//	<message type='chat' to='…' id='…'>
//	  <encrypted xmlns='urn:xmpp:omemo:2'>…</encrypted>
//	  <encrypted xmlns='eu.siacs.conversations.axolotl'>…</encrypted>
//	  <encryption xmlns='urn:xmpp:eme:0' namespace='…' name='…'/>
//	  <store xmlns='urn:xmpp:hints'/>
//	  <origin-id xmlns='urn:xmpp:sid:0' id='…'/>
//	  <body>fallback</body>
//	</message>
//
// OMEMO 2 comes first and names the EME hint whenever it is present.
func outgoingTokens(to jid.JID, id string, msgs []*encrypted.Encrypted, fallback string) ([]xml.Token, error) {
	return outgoingTokensOfType(to, stanza.ChatMessage, id, msgs, fallback)
}

// outgoingTokensOfType is outgoingTokens for a message type (groupchat for
// rooms).
func outgoingTokensOfType(to jid.JID, typ stanza.MessageType, id string, msgs []*encrypted.Encrypted, fallback string) ([]xml.Token, error) {
	if len(msgs) == 0 {
		return nil, errors.New("omemo: nothing to send")
	}
	byRank := func(a, b *encrypted.Encrypted) int { return nsRank(a.Namespace) - nsRank(b.Namespace) }
	if !slices.IsSortedFunc(msgs, byRank) {
		msgs = slices.Clone(msgs)
		slices.SortStableFunc(msgs, byRank)
	}
	// Built as a slice of new tokens, each with attribute slices of its
	// own: they are handed to the session, whose encoder may modify them.
	start := stanza.Message{ID: id, To: to, Type: typ}.StartElement()
	toks := make([]xml.Token, 0, 32)
	toks = append(toks, start)
	for _, m := range msgs {
		var err error
		if toks, err = m.AppendTokens(toks); err != nil {
			return nil, fmt.Errorf("omemo: encoding message: %w", err)
		}
	}
	eme := msgs[0].Namespace
	toks = appendHints(toks, eme)
	origin := xml.StartElement{Name: xml.Name{Space: nsSID, Local: "origin-id"}, Attr: []xml.Attr{{Name: xml.Name{Local: "id"}, Value: id}}}
	toks = append(toks, origin, origin.End())
	if fallback != "" {
		body := xml.StartElement{Name: xml.Name{Local: "body"}}
		toks = append(toks, body, xml.CharData(fallback), body.End())
	}
	return append(toks, start.End()), nil
}

// appendHints appends the XEP-0380 <encryption/> hint naming namespace
// and the XEP-0334 <store/> hint.
func appendHints(toks []xml.Token, namespace string) []xml.Token {
	encryption := xml.StartElement{
		Name: xml.Name{Space: ns.EME, Local: "encryption"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "namespace"}, Value: namespace},
			{Name: xml.Name{Local: "name"}, Value: emeName(namespace)},
		},
	}
	store := xml.StartElement{Name: xml.Name{Space: nsHints, Local: "store"}}
	return append(toks, encryption, encryption.End(), store, store.End())
}

// nsRank orders OMEMO 2 before legacy OMEMO.
func nsRank(namespace string) int {
	if namespace == ns.OMEMO2 {
		return 0
	}
	return 1
}
