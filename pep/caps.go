package pep

import (
	"crypto/sha1" // #nosec G505 -- XEP-0115 verification strings are sha-1; Prosody accepts nothing else.
	"encoding/xml"
	"hash"

	"mellium.im/xmlstream"
	"mellium.im/xmpp/crypto"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/disco/info"
	"mellium.im/xmpp/form"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// Features is a list of service discovery features that a mux advertises
// for the empty node: register it with mux.Feature.
type Features []info.Feature

// ForFeatures implements info.FeatureIter.
func (fs Features) ForFeatures(node string, f func(info.Feature) error) error {
	if node != "" {
		return nil
	}
	for _, feat := range fs {
		if err := f(feat); err != nil {
			return err
		}
	}
	return nil
}

// NotifyFeatures returns the "<node>+notify" features (XEP-0163 §4) that
// make the server send notifications for the given nodes to this client,
// for example mux.Feature(pep.NotifyFeatures(ns.OMEMO2Devices)).
// The server learns them through entity capabilities, so the mux also
// needs HandleDisco and the presence needs CapsPresence.
func NotifyFeatures(nodes ...string) Features {
	fs := make(Features, 0, len(nodes))
	for _, n := range nodes {
		fs = append(fs, info.Feature{Var: n + "+notify"})
	}
	return fs
}

// resetHash resets the wrapped hash after every Sum, so that one instance
// can compute any number of verification strings.
type resetHash struct{ hash.Hash }

func (h resetHash) Sum(b []byte) []byte {
	out := h.Hash.Sum(b)
	h.Hash.Reset()
	return out
}

// CapsHash returns the sha-1 hash for disco.HandleWithURI.
// Unlike sha1.New() it resets itself after Sum: disco.HandleWithURI
// (mellium.im/xmpp v0.23.0) keeps one hash for all queries and never resets
// it, so with a plain hash only the first caps query gets an answer and
// +notify stops working for every later one.
func CapsHash() hash.Hash {
	return resetHash{sha1.New()} // #nosec G401 -- XEP-0115 mandates sha-1 here.
}

// HandleDisco returns a mux option that answers service discovery queries,
// including queries for the entity capabilities node "<uri>#<ver>" that the
// server sends to learn the +notify features.
// It replaces disco.Handle; uri identifies the client software (the node
// of CapsPresence).
func HandleDisco(uri string) mux.Option {
	return disco.HandleWithURI(uri, CapsHash())
}

// CapsVer computes the XEP-0115 verification string (sha-1) of what m
// advertises for the empty node: its identities, features and forms, each
// deduplicated exactly as disco.HandleWithURI does (disco.Handle registers
// one handler for two patterns, so its feature is seen twice).
func CapsVer(m *mux.ServeMux) (string, error) {
	var i disco.Info
	seen := make(map[string]struct{})
	err := m.ForFeatures("", func(f info.Feature) error {
		if _, ok := seen[f.Var]; !ok {
			seen[f.Var] = struct{}{}
			i.Features = append(i.Features, f)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	seen = make(map[string]struct{})
	err = m.ForIdentities("", func(id info.Identity) error {
		key := id.Category + ":" + id.Type + ":" + id.Name + ":" + id.Lang
		if _, ok := seen[key]; !ok {
			seen[key] = struct{}{}
			i.Identity = append(i.Identity, id)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	err = m.ForForms("", func(d *form.Data) error {
		i.Form = append(i.Form, *d)
		return nil
	})
	if err != nil {
		return "", err
	}
	return i.Hash(sha1.New()), nil // #nosec G401 -- XEP-0115 mandates sha-1 here.
}

// Caps returns the entity capabilities element (hash='sha-1') for the
// client software uri and the features m advertises.
func Caps(m *mux.ServeMux, uri string) (disco.Caps, error) {
	ver, err := CapsVer(m)
	if err != nil {
		return disco.Caps{}, err
	}
	return disco.Caps{Hash: crypto.SHA1, Node: uri, Ver: ver}, nil
}

// CapsPresence returns the client's available presence with the entity
// capabilities of m, ready for Session.Send.
// p sets the presence attributes (the zero value is an undirected
// available presence); payload (for example <show/> or <priority/>) is
// appended after the caps element.
// Send it again whenever the features of m change.
func CapsPresence(m *mux.ServeMux, uri string, p stanza.Presence, payload ...xml.TokenReader) (xml.TokenReader, error) {
	c, err := Caps(m, uri)
	if err != nil {
		return nil, err
	}
	return p.Wrap(xmlstream.MultiReader(append([]xml.TokenReader{c.TokenReader()}, payload...)...)), nil
}
