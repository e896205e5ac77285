package backendcore

import (
	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/doubleratchet"
	"mellium.im/omemo/internal/x3dh"
)

// Base is what both backends are made of: the own keys, the namespace and
// the Double Ratchet profile.
type Base struct {
	*Keys
	NS string
	DR doubleratchet.Config
}

// NewBase loads or creates the own keys and resolves the ratchet limits.
func NewBase(ns string, cfg *x3dh.Config, rootInfo string, id *backends.IdentityKeyPair, keys []byte, opts *backends.Options) (*Base, error) {
	o, err := opts.Resolved()
	if err != nil {
		return nil, err
	}
	k, err := NewKeys(cfg, id, keys, o)
	if err != nil {
		return nil, err
	}
	return &Base{Keys: k, NS: ns, DR: doubleratchet.Config{
		RootInfo:             []byte(rootInfo),
		MaxSkippedPerMessage: o.MaxSkippedPerMessage,
		MaxSkippedPerSession: o.MaxSkippedPerSession,
	}}, nil
}

// Namespace implements backends.Backend.
func (b *Base) Namespace() string { return b.NS }

// UnmarshalSession implements backends.Backend.
func (b *Base) UnmarshalSession(data []byte) (backends.Session, error) {
	return UnmarshalSession(b.NS, &b.DR, data)
}

// Session checks that s is a session of this backend whose associated data
// has the given length.
func (b *Base) Session(s backends.Session, adLen int) (*Session, error) {
	cs, ok := s.(*Session)
	if !ok || cs.NS != b.NS || cs.DR == nil || len(cs.AD) != adLen {
		return nil, backends.ErrWrongSession
	}
	return cs, nil
}

// BuildSessionPassive completes a key exchange and decrypts its first
// message with decrypt (the backend's DecryptKeyMaterial).
func (b *Base) BuildSessionPassive(jid string, deviceID uint32, kex backends.KeyExchange, message []byte,
	decrypt func(backends.Session, []byte) ([]byte, error)) (backends.Session, []byte, error) {
	s, err := BuildPassive(b.Keys, b.NS, &b.DR, kex, jid, deviceID)
	if err != nil {
		return nil, nil, err
	}
	km, err := decrypt(s, message)
	if err != nil {
		return nil, nil, err
	}
	return s, km, nil
}
