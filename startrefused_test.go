package omemo_test

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/xmpptest"
	"mellium.im/omemo/pep"
	"mellium.im/omemo/store"
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
	var mu sync.Mutex
	var ops []string
	s := xmpptest.Session(t, func(iq *refusingIQ) string {
		if iq.Type != "get" && iq.Type != "set" {
			return ""
		}
		errIQ := func(cond string) string {
			return fmt.Sprintf(`<iq type='error' id='%s'><error type='cancel'>%s</error></iq>`, iq.ID, cond)
		}
		op, resp := "other", fmt.Sprintf(`<iq type='result' id='%s'/>`, iq.ID)
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
		return resp
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

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
