// Package sessiontest provides an in-memory stand-in for an XMPP server's
// PEP service and message routing, implementing session.Network for any
// number of accounts. It is meant for tests of code built on the session
// manager.
package sessiontest

import (
	"context"
	"errors"
	"slices"
	"sync"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/encrypted"
	"mellium.im/omemo/session"
)

// Delivered is a message sent through the server.
type Delivered struct {
	From    string
	To      string
	Message *encrypted.Encrypted
}

// Server is an in-memory PEP service and message router. It is safe for
// concurrent use.
type Server struct {
	mu      sync.Mutex
	lists   map[[2]string]devicelist.List
	bundles map[bundleKey]bundle.Bundle
	inbox   map[string][]Delivered
	// Fail, if set, is called before every operation; a non-nil error is
	// returned instead of performing it (fault injection).
	Fail func(op, account string) error
	// Calls counts operations by name; read it with CallCount while
	// clients run.
	Calls map[string]int
}

// CallCount returns how many operations named name (for example
// "DownloadBundle") the server performed or refused.
func (s *Server) CallCount(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.Calls[name]
}

type bundleKey struct {
	ns, jid string
	id      uint32
}

// NewServer returns an empty server.
func NewServer() *Server {
	return &Server{
		lists:   map[[2]string]devicelist.List{},
		bundles: map[bundleKey]bundle.Bundle{},
		inbox:   map[string][]Delivered{},
		Calls:   map[string]int{},
	}
}

// Network returns the session.Network of one account.
func (s *Server) Network(jid string) session.Network { return &network{s: s, jid: jid} }

// Inbox removes and returns the messages delivered to jid so far.
func (s *Server) Inbox(jid string) []Delivered {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.inbox[jid]
	delete(s.inbox, jid)
	return out
}

// Deliver queues a message for jid, as if from sent it.
func (s *Server) Deliver(from, to string, msg *encrypted.Encrypted) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inbox[to] = append(s.inbox[to], Delivered{From: from, To: to, Message: msg})
}

// DeviceList returns the published device list of jid.
func (s *Server) DeviceList(ns, jid string) devicelist.List {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.lists[[2]string{ns, jid}]
	l.Namespace = ns
	l.Devices = slices.Clone(l.Devices)
	return l
}

// SetDeviceList replaces a published device list (as another client would).
func (s *Server) SetDeviceList(jid string, l devicelist.List) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.Devices = slices.Clone(l.Devices)
	s.lists[[2]string{l.Namespace, jid}] = l
}

// Bundle returns a published bundle.
func (s *Server) Bundle(ns, jid string, id uint32) (bundle.Bundle, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bundles[bundleKey{ns, jid, id}]
	return b, ok
}

// SetBundle replaces a published bundle, as its owner (or a hostile
// server) could.
func (s *Server) SetBundle(jid string, id uint32, b bundle.Bundle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b.PreKeys = slices.Clone(b.PreKeys)
	s.bundles[bundleKey{b.Namespace, jid, id}] = b
}

func (s *Server) op(name, jid string) error {
	s.mu.Lock()
	s.Calls[name]++
	fail := s.Fail
	s.mu.Unlock()
	if fail != nil {
		return fail(name, jid)
	}
	return nil
}

type network struct {
	s   *Server
	jid string
}

func (n *network) UploadBundle(ctx context.Context, id uint32, b bundle.Bundle) error {
	if err := n.s.op("UploadBundle", n.jid); err != nil {
		return err
	}
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	b.PreKeys = slices.Clone(b.PreKeys)
	n.s.bundles[bundleKey{b.Namespace, n.jid, id}] = b
	return nil
}

func (n *network) DownloadBundle(ctx context.Context, ns, jid string, id uint32) (bundle.Bundle, error) {
	if err := n.s.op("DownloadBundle", n.jid); err != nil {
		return bundle.Bundle{}, err
	}
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	b, ok := n.s.bundles[bundleKey{ns, jid, id}]
	if !ok {
		return bundle.Bundle{}, session.ErrBundleNotFound
	}
	b.PreKeys = slices.Clone(b.PreKeys)
	return b, nil
}

func (n *network) DeleteBundle(ctx context.Context, ns string, id uint32) error {
	if err := n.s.op("DeleteBundle", n.jid); err != nil {
		return err
	}
	n.s.mu.Lock()
	defer n.s.mu.Unlock()
	delete(n.s.bundles, bundleKey{ns, n.jid, id})
	return nil
}

func (n *network) UploadDeviceList(ctx context.Context, l devicelist.List) error {
	if err := n.s.op("UploadDeviceList", n.jid); err != nil {
		return err
	}
	if l.Namespace == "" {
		return errors.New("sessiontest: device list without namespace")
	}
	n.s.SetDeviceList(n.jid, l)
	return nil
}

func (n *network) DownloadDeviceList(ctx context.Context, ns, jid string) (devicelist.List, error) {
	if err := n.s.op("DownloadDeviceList", n.jid); err != nil {
		return devicelist.List{}, err
	}
	return n.s.DeviceList(ns, jid), nil
}

func (n *network) SendMessage(ctx context.Context, to string, msg *encrypted.Encrypted) error {
	if err := n.s.op("SendMessage", n.jid); err != nil {
		return err
	}
	n.s.Deliver(n.jid, to, msg)
	return nil
}
