package omemo_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/store"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stream"
)

// refusingIQ is what the refusing server reads of a request.
type refusingIQ struct {
	ID     string `xml:"id,attr"`
	Type   string `xml:"type,attr"`
	PubSub *struct {
		XMLName   xml.Name
		Publish   *struct{} `xml:"publish"`
		Configure *struct{} `xml:"configure"`
		Items     *struct{} `xml:"items"`
	} `xml:",any"`
}

// TestStartOpenAccessRefused: a PEP service that refuses the open access
// model (precondition-not-met on publish, not-acceptable on the node
// reconfiguration) makes Start fail closed with an error that says, in
// words, what was refused and what the server's operator can do; the
// typed error underneath stays reachable.
func TestStartOpenAccessRefused(t *testing.T) {
	client, server := net.Pipe()
	var mu sync.Mutex
	var ops []string
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
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
			var iq refusingIQ
			if err := d.DecodeElement(&iq, &start); err != nil {
				return
			}
			if iq.Type != "get" && iq.Type != "set" {
				continue
			}
			resp := fmt.Sprintf(`<iq type='result' id='%s'/>`, iq.ID)
			errIQ := func(cond string) string {
				return fmt.Sprintf(`<iq type='error' id='%s'><error type='cancel'>%s</error></iq>`, iq.ID, cond)
			}
			op := "other"
			switch ps := iq.PubSub; {
			case ps != nil && ps.Publish != nil:
				op = "publish"
				resp = errIQ(`<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/>`)
			case ps != nil && ps.Configure != nil:
				op = "configure"
				resp = errIQ(`<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`)
			case ps != nil && ps.Items != nil:
				op = "items"
				resp = errIQ(`<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`)
			}
			mu.Lock()
			ops = append(ops, op)
			mu.Unlock()
			if _, err := io.WriteString(server, resp); err != nil {
				return
			}
		}
	}()
	negotiate := func(ctx context.Context, in, out *stream.Info, s *xmpp.Session, data interface{}) (xmpp.SessionState, io.ReadWriter, interface{}, error) {
		r := s.TokenReader()
		defer r.Close()
		_, err := r.Token()
		return xmpp.Ready, nil, nil, err
	}
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
		<-srvDone
	})

	p, err := omemo.New(s, omemo.Config{Store: store.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	err = p.Start(ctx)
	if err == nil {
		t.Fatal("Start succeeded although the server refuses every publish")
	}
	var oa *pep.OpenAccessError
	if !errors.As(err, &oa) || !errors.Is(err, pep.ErrConfigRefused) {
		t.Fatalf("Start: %v (%T), want a *pep.OpenAccessError", err, err)
	}
	for _, want := range []string{"must be readable by everyone", `access model "open"`, "not-acceptable", "the server's operator must allow the open access model"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start's error %q does not say %q", err, want)
		}
	}
	t.Logf("Start: %v", err)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(strings.Join(ops, " "), "publish configure") {
		t.Errorf("requests %v: want a publish answered by a refused reconfiguration", ops)
	}
}
