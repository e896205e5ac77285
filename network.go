package omemo

import (
	"context"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/session"
	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
)

// Namespaces of the stanza hints written next to <encrypted>.
const (
	nsHints = "urn:xmpp:hints"
)

// errEmptyJID is returned when a message is to be sent to no one.
var errEmptyJID = errors.New("omemo: empty recipient JID")

// pepNetwork implements session.Network over an XMPP session: bundles and
// device lists live in the account's PEP service (packages bundle and
// devicelist), messages are sent as chat message stanzas.
//
// Its methods send IQs and wait for the answer, so they must not be called
// from inside an xmpp.Handler of the session (the session manager calls
// them from the caller's goroutine or its own background worker).
type pepNetwork struct {
	// session returns the current session (ErrDisconnected while there
	// is none): the plugin moves from one session to the next.
	session func() (*xmpp.Session, error)
	timeout time.Duration
}

// newNetwork returns the session.Network over the sessions that current
// returns; each call is bounded by timeout.
func newNetwork(current func() (*xmpp.Session, error), timeout time.Duration) session.Network {
	return pepNetwork{session: current, timeout: timeout}
}

// bounded returns the context of one network call: cancelled when ctx is,
// or when timeout elapses, but only until done is called (see detach:
// mellium must never see a cancellation after the call returned).
func bounded(ctx context.Context, timeout time.Duration) (context.Context, func()) {
	tctx, cancel := context.WithTimeout(context.Background(), timeout)
	inner, done := detach(ctx, tctx)
	return inner, func() {
		done()
		cancel()
	}
}

// parseBare parses an untrusted JID string and returns its bare form; ""
// is the zero JID (the own account).
func parseBare(s string) (jid.JID, error) {
	if s == "" {
		return jid.JID{}, nil
	}
	j, err := jid.Parse(s)
	if err != nil {
		return jid.JID{}, fmt.Errorf("omemo: invalid JID %.64q: %w", s, err)
	}
	return j.Bare(), nil
}

// UploadBundle implements session.Network.
func (n pepNetwork) UploadBundle(ctx context.Context, deviceID uint32, b bundle.Bundle) error {
	s, err := n.session()
	if err != nil {
		return err
	}
	ctx, done := bounded(ctx, n.timeout)
	defer done()
	return bundle.Publish(ctx, s, deviceID, b)
}

// DownloadBundle implements session.Network.
// A bundle that was never published (or may not be read) is an error that
// matches both session.ErrBundleNotFound and pep.ErrNotFound.
func (n pepNetwork) DownloadBundle(ctx context.Context, namespace, owner string, deviceID uint32) (bundle.Bundle, error) {
	s, err := n.session()
	if err != nil {
		return bundle.Bundle{}, err
	}
	ctx, done := bounded(ctx, n.timeout)
	defer done()
	j, err := parseBare(owner)
	if err != nil {
		return bundle.Bundle{}, err
	}
	b, err := bundle.Fetch(ctx, s, j, namespace, deviceID)
	if errors.Is(err, pep.ErrNotFound) {
		return bundle.Bundle{}, fmt.Errorf("%w: %w", session.ErrBundleNotFound, err)
	}
	return b, err
}

// DeleteBundle implements session.Network.
func (n pepNetwork) DeleteBundle(ctx context.Context, namespace string, deviceID uint32) error {
	s, err := n.session()
	if err != nil {
		return err
	}
	ctx, done := bounded(ctx, n.timeout)
	defer done()
	return bundle.Delete(ctx, s, namespace, deviceID)
}

// UploadDeviceList implements session.Network.
func (n pepNetwork) UploadDeviceList(ctx context.Context, l devicelist.List) error {
	s, err := n.session()
	if err != nil {
		return err
	}
	ctx, done := bounded(ctx, n.timeout)
	defer done()
	return devicelist.Publish(ctx, s, l)
}

// DownloadDeviceList implements session.Network.
func (n pepNetwork) DownloadDeviceList(ctx context.Context, namespace, owner string) (devicelist.List, error) {
	s, err := n.session()
	if err != nil {
		return devicelist.List{}, err
	}
	ctx, done := bounded(ctx, n.timeout)
	defer done()
	j, err := parseBare(owner)
	if err != nil {
		return devicelist.List{}, err
	}
	return devicelist.Fetch(ctx, s, j, namespace)
}

// SendMessage implements session.Network: it sends
//
//	<message type='chat' to='bare JID' id='random'>
//	  <encrypted …/>
//	  <store xmlns='urn:xmpp:hints'/>
//	  <encryption xmlns='urn:xmpp:eme:0' namespace='…' name='…'/>
//	</message>
//
// The store hint keeps the message in offline storage and MAM, so that a
// key exchange answer also reaches devices that are offline.
func (n pepNetwork) SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error {
	if to == "" {
		return errEmptyJID
	}
	j, err := parseBare(to)
	if err != nil {
		return err
	}
	toks, err := messageTokens(j, msg)
	if err != nil {
		return fmt.Errorf("%w: %w", session.ErrNotSent, err)
	}
	s, err := n.session()
	if err != nil {
		return err
	}
	return sendDetached(ctx, s, toks, n.timeout)
}

// messageTokens builds the whole message stanza in memory: Session.Send
// holds the output lock while it reads the stanza, so nothing that can fail
// or block may happen while it is sent.
func messageTokens(to jid.JID, msg *encrypted.Encrypted) ([]xml.Token, error) {
	if msg == nil {
		return nil, errors.New("omemo: no message to send")
	}
	name := emeName(msg.Namespace)
	if name == "" {
		return nil, fmt.Errorf("%w: %.64q", encrypted.ErrUnknownNamespace, msg.Namespace)
	}
	start := stanza.Message{ID: rand.Text(), To: to, Type: stanza.ChatMessage}.StartElement()
	toks, err := msg.AppendTokens(append(make([]xml.Token, 0, 24), start))
	if err != nil {
		return nil, fmt.Errorf("omemo: encoding message: %w", err)
	}
	store := xml.StartElement{Name: xml.Name{Space: nsHints, Local: "store"}}
	encryption := xml.StartElement{
		Name: xml.Name{Space: ns.EME, Local: "encryption"},
		Attr: []xml.Attr{
			{Name: xml.Name{Local: "namespace"}, Value: msg.Namespace},
			{Name: xml.Name{Local: "name"}, Value: name},
		},
	}
	return append(toks, store, store.End(), encryption, encryption.End(), start.End()), nil
}

// emeName returns the XEP-0380 name of an OMEMO namespace.
func emeName(namespace string) string {
	switch namespace {
	case ns.OMEMO2:
		return "OMEMO 2"
	case ns.Legacy:
		return "OMEMO"
	}
	return ""
}

// tokenSlice returns a reader over copies of toks (the session's encoder may
// modify attribute slices in place).
func tokenSlice(toks []xml.Token) xml.TokenReader {
	i := 0
	return xmlstream.ReaderFunc(func() (xml.Token, error) {
		if i >= len(toks) {
			return nil, io.EOF
		}
		i++
		return xml.CopyToken(toks[i-1]), nil
	})
}

// handedOver reads tokens that are handed over to the reader's consumer
// (they are not copied: the consumer may modify them).
type handedOver struct{ toks []xml.Token }

func (r *handedOver) Token() (xml.Token, error) {
	if len(r.toks) == 0 {
		return nil, io.EOF
	}
	t := r.toks[0]
	r.toks[0] = nil
	r.toks = r.toks[1:]
	return t, nil
}

// sendDetached sends the stanza toks with s.Send, such that ctx can abort
// the write but its cancellation after Send returned cannot reach the
// connection. toks are handed over: the session's encoder may modify them
// (it filters attribute slices in place), so the caller must not use them
// afterwards, and no other goroutine may hold them.
//
// mellium (v0.23.0) watches the context of a write in a goroutine that,
// when the context is done, puts the connection's write deadline in the
// past; that goroutine may still run after Send has returned and another
// goroutine has started writing, which corrupts that write (a TLS
// connection is unusable after a write timeout). Callers routinely cancel
// their context right after a call returns, so the context handed to Send
// is cancelled only while Send is still running.
//
// A write that takes longer than timeout is aborted too.
func sendDetached(ctx context.Context, s *xmpp.Session, toks []xml.Token, timeout time.Duration) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", session.ErrNotSent, err)
	}
	// sendCtx has no deadline of its own and is never cancelled once Send
	// returned (its parent has no Done channel, so dropping it leaks
	// nothing): the caller's cancellation and the timeout reach it only
	// while Send runs.
	sendCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
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
	stop := context.AfterFunc(ctx, cancelIfRunning)
	timer := time.AfterFunc(timeout, cancelIfRunning)
	err := s.Send(sendCtx, &handedOver{toks: toks})
	mu.Lock()
	returned = true
	mu.Unlock()
	stop()
	timer.Stop()
	if err != nil {
		return fmt.Errorf("omemo: sending message: %w", err)
	}
	return nil
}
