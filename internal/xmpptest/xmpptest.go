// Package xmpptest runs a client session against a scripted server over an
// in-memory pipe, for tests that need exact control over the server's
// answers (refusals, odd errors, services Prosody does not offer).
package xmpptest

import (
	"context"
	"encoding/xml"
	"io"
	"net"
	"testing"
	"time"

	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stream"
)

// Session returns a ready session of alice@localhost/r on the server
// localhost, served until the test ends. The server decodes every <iq>
// the client sends into a new IQ and writes what answer returns (nothing
// for ""); answer runs on the server's goroutine, one IQ at a time.
func Session[IQ any](t testing.TB, answer func(*IQ) string) *xmpp.Session {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := io.WriteString(server, `<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='localhost' id='1' version='1.0'>`); err != nil {
			return
		}
		d := xml.NewDecoder(server)
		for {
			tok, err := d.Token()
			if err != nil {
				return
			}
			start, ok := tok.(xml.StartElement)
			if !ok || start.Name.Local != "iq" {
				continue
			}
			iq := new(IQ)
			if err := d.DecodeElement(iq, &start); err != nil {
				return
			}
			if resp := answer(iq); resp != "" {
				if _, err := io.WriteString(server, resp); err != nil {
					return
				}
			}
		}
	}()
	negotiate := func(ctx context.Context, in, out *stream.Info, s *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, interface{}, error) {
		r := s.TokenReader()
		defer r.Close()
		_, err := r.Token() // the server's stream header
		return xmpp.Ready, nil, nil, err
	}
	// The context is cancelled only after the session is gone: mellium
	// v0.23.0 watches it in a goroutine that may still set a deadline on
	// the connection after NewSession returned (see prosodytest.Dial).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	s, err := xmpp.NewSession(ctx, jid.MustParse("localhost"), jid.MustParse("alice@localhost/r"), client, 0, negotiate)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.Serve(nil)
	}()
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
		<-served
		<-done
	})
	return s
}
