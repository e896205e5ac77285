package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"mellium.im/xmlstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/carbons"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

// plainClient is the baseline: a mellium session exchanging plain <body>
// chat messages, set up like the OMEMO clients (carbons enabled, available
// presence sent) so that the server treats its messages alike (archived,
// carbon-copied). Like the plugin, it hands each received body from the
// Serve goroutine to a goroutine of its own, which answers with s.Send.
type plainClient struct {
	name string
	s    *xmpp.Session
	tap  *recorder
	in   chan string
	done chan struct{}
	quit chan struct{}
	stop context.CancelFunc
}

// connectPlain logs a device of account name in without OMEMO; onBody runs
// in the client's own goroutine for each received body.
func connectPlain(o options, name string, onBody func(c *plainClient, body string)) (*plainClient, error) {
	ctx, cancel := context.WithCancel(context.Background())
	c := &plainClient{name: name, tap: &recorder{}, in: make(chan string, 1024), done: make(chan struct{}), quit: make(chan struct{}), stop: cancel}
	dctx, dcancel := context.WithTimeout(ctx, o.timeout)
	defer dcancel()
	s, err := dial(dctx, o, name, c.tap)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("dial %s: %w", name, err)
	}
	c.s = s
	h := mux.MessageHandlerFunc(func(msg stanza.Message, t xmlstream.TokenReadEncoder) error {
		var m struct {
			Body string `xml:"body"`
		}
		if err := xml.NewTokenDecoder(t).Decode(&m); err != nil || m.Body == "" {
			return nil
		}
		select {
		case c.in <- m.Body:
		default:
		}
		return nil
	})
	m := mux.New(stanza.NSClient, mux.Message(stanza.ChatMessage, xml.Name{Space: stanza.NSClient, Local: "body"}, h))
	go func() {
		defer close(c.done)
		_ = s.Serve(m)
	}()
	go func() {
		for {
			select {
			case b := <-c.in:
				onBody(c, b)
			case <-c.quit:
				return
			}
		}
	}()
	sctx, scancel := context.WithTimeout(context.Background(), o.timeout)
	defer scancel()
	if err := carbons.Enable(sctx, s); err != nil {
		c.close()
		return nil, fmt.Errorf("%s: enabling carbons: %w", name, err)
	}
	if err := s.Send(sctx, stanza.Presence{}.Wrap(nil)); err != nil {
		c.close()
		return nil, fmt.Errorf("%s: presence: %w", name, err)
	}
	return c, nil
}

// send sends body as a plain chat message, shaped like an OMEMO one if sh
// is set.
func (c *plainClient) send(ctx context.Context, to jid.JID, body string, sh *shape) error {
	payload := xmlstream.Wrap(xmlstream.Token(xml.CharData(body+sh.pad())), xml.StartElement{Name: xml.Name{Local: "body"}})
	if sh != nil {
		payload = xmlstream.MultiReader(payload, sh.children())
	}
	return c.s.Send(ctx, stanza.Message{To: to, Type: stanza.ChatMessage}.Wrap(payload))
}

// shape makes plain messages look like OMEMO ones to the server: the
// children of a real OMEMO stanza (its <encrypted> element and hints, as
// sent) are added as they are, and the body is padded to the length of
// the fallback body, which is left out. Only the ping-pong's "ping N"
// counts for the receiver.
type shape struct {
	toks []xml.Token
	fill string
}

func (s *shape) pad() string {
	if s == nil {
		return ""
	}
	return s.fill
}

// children returns the OMEMO stanza's children as fresh tokens (the
// session's encoder changes attribute slices in place).
func (s *shape) children() xml.TokenReader {
	i := 0
	return xmlstream.ReaderFunc(func() (xml.Token, error) {
		if i >= len(s.toks) {
			return nil, io.EOF
		}
		i++
		return xml.CopyToken(s.toks[i-1]), nil
	})
}

// shapeLike returns the shape of the OMEMO <message> stanza raw (as the
// sender wrote it).
func shapeLike(raw []byte) (*shape, error) {
	if len(raw) == 0 {
		return nil, errors.New("no OMEMO stanza captured")
	}
	d := xml.NewDecoder(bytes.NewReader(raw))
	sh := &shape{}
	depth := 0
	inBody := false // inside the fallback <body>, which is left out
	for done := false; !done; {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("captured stanza: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			switch {
			case depth == 1: // <message> itself
			case depth == 2 && t.Name.Local == "body":
				inBody = true
			case !inBody:
				sh.toks = append(sh.toks, xml.CopyToken(t))
			}
		case xml.EndElement:
			depth--
			switch {
			case depth == 0:
				done = true
			case inBody:
				inBody = depth > 1
			default:
				sh.toks = append(sh.toks, xml.CopyToken(t))
			}
		case xml.CharData:
			switch {
			case inBody:
				sh.fill = " " + strings.Repeat("x", max(len(t)-1, 0))
			case depth >= 2:
				sh.toks = append(sh.toks, xml.CopyToken(t))
			}
		}
	}
	if len(sh.toks) == 0 {
		return nil, errors.New("captured stanza has no children")
	}
	return sh, nil
}

func (c *plainClient) close() {
	defer c.stop()
	close(c.quit)
	_ = c.s.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.s.Conn().Close()
		<-c.done
	}
}
