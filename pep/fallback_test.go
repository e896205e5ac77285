package pep_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo/internal/xmpptest"
	"mellium.im/omemo/pep"
	"mellium.im/xmpp"
	"mellium.im/xmpp/stanza"
)

type formField struct {
	Var   string `xml:"var,attr"`
	Value string `xml:"value"`
}

type fakeIQ struct {
	ID     string `xml:"id,attr"`
	PubSub struct {
		Publish   *struct{} `xml:"publish"`
		Configure *struct {
			Fields []formField `xml:"x>field"`
		} `xml:"configure"`
		Options *struct {
			Fields []formField `xml:"x>field"`
		} `xml:"publish-options"`
	} `xml:",any"`
}

func maxItemsOf(fs []formField) string {
	for _, f := range fs {
		if f.Var == pep.FieldMaxItems {
			return f.Value
		}
	}
	return ""
}

// fakeServer runs a client session against a scripted server: reply gets
// the operation ("publish" or "configure") and the max_items value and
// returns the error condition XML to answer with, or "" for success.
// It returns the session and the log of requests.
func fakeServer(t *testing.T, reply func(op, max string) string) (*xmpp.Session, *[]string) {
	t.Helper()
	// log is written on the server's goroutine and read after the
	// requests were answered.
	var log []string
	s := xmpptest.Session(t, func(iq *fakeIQ) string {
		var op, max string
		switch {
		case iq.PubSub.Publish != nil:
			op = "publish"
			if iq.PubSub.Options != nil {
				max = maxItemsOf(iq.PubSub.Options.Fields)
			}
		case iq.PubSub.Configure != nil:
			op, max = "configure", maxItemsOf(iq.PubSub.Configure.Fields)
		}
		log = append(log, op+" "+max)
		if cond := reply(op, max); cond != "" {
			return fmt.Sprintf(`<iq type='error' id='%s'><error type='cancel'>%s</error></iq>`, iq.ID, cond)
		}
		return fmt.Sprintf(`<iq type='result' id='%s'/>`, iq.ID)
	})
	return s, &log
}

const (
	condPrecondition       = `<conflict xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><precondition-not-met xmlns='http://jabber.org/protocol/pubsub#errors'/>`
	condNotAcceptable      = `<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`
	condBadRequest         = `<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`
	condForbidden          = `<forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>`
	condUnsupportedOptions = `<feature-not-implemented xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><unsupported xmlns='http://jabber.org/protocol/pubsub#errors' feature='publish-options'/>`
	// ejabberd 23.01's answer to pubsub#max_items in publish-options.
	condResourceConstraint = `<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Unknown field 'pubsub#max_items' of type 'http://jabber.org/protocol/pubsub#publish-options'</text>`
)

func TestPublishRecovery(t *testing.T) {
	for i, tc := range []struct {
		opts  pep.PublishOptions
		reply func(op, max string) string
		want  []string
		err   error
	}{
		// Node exists with another config: reconfigure, retry.
		0: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: "1"},
			reply: func() func(op, max string) string {
				n := 0
				return func(op, max string) string {
					n++
					if n == 1 {
						return condPrecondition
					}
					return ""
				}
			}(),
			want: []string{"publish 1", "configure 1", "publish 1"}},
		// A service that rejects "max" (and 1000) in publish-options and in
		// the configuration form ends up with 100.
		1: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: pep.MaxItemsMax},
			reply: func(op, max string) string {
				switch {
				case max == "max" && op == "publish":
					return condPrecondition
				case max == "max" || max == "1000":
					return condNotAcceptable
				}
				return ""
			},
			want: []string{"publish max", "configure max", "publish 1000", "publish 100"}},
		// Every value rejected: the last error is returned.
		2: {opts: pep.PublishOptions{MaxItems: pep.MaxItemsMax},
			reply: func(op, max string) string { return condBadRequest },
			want:  []string{"publish max", "publish 1000", "publish 100", "publish 10", "publish "},
			err:   stanza.Error{Condition: stanza.BadRequest}},
		// Forbidden is final.
		3: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: pep.MaxItemsMax},
			reply: func(op, max string) string { return condForbidden },
			want:  []string{"publish max"},
			err:   pep.ErrForbidden},
		// A number other than max has no other value to try.
		4: {opts: pep.PublishOptions{MaxItems: "5"},
			reply: func(op, max string) string { return condNotAcceptable },
			want:  []string{"publish 5", "publish "},
			err:   stanza.Error{Condition: stanza.NotAcceptable}},
		// Reconfiguring fails for a reason other than the value.
		5: {opts: pep.PublishOptions{AccessModel: "open"},
			reply: func(op, max string) string {
				if op == "publish" {
					return condPrecondition
				}
				return condForbidden
			},
			want: []string{"publish ", "configure "},
			err:  pep.ErrForbidden},
		// ejabberd 23.01: max_items is an unknown publish-option but a
		// known configuration field.
		6: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: pep.MaxItemsMax},
			reply: func(op, max string) string {
				if op == "publish" && max != "" {
					return condResourceConstraint
				}
				return ""
			},
			want: []string{"publish max", "publish 1000", "publish 100", "publish 10", "publish ", "configure max"}},
		7: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: "1"},
			reply: func(op, max string) string {
				if op == "publish" && max != "" {
					return condResourceConstraint
				}
				return ""
			},
			want: []string{"publish 1", "publish ", "configure 1"}},
		// The configuration rejects "max" too: the fallback values.
		8: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: pep.MaxItemsMax},
			reply: func(op, max string) string {
				if (op == "publish" && max != "") || max == "max" {
					return condResourceConstraint
				}
				return ""
			},
			want: []string{"publish max", "publish 1000", "publish 100", "publish 10", "publish ", "configure max", "configure 1000"}},
		// Published, but max_items cannot be configured: an error, since
		// the node may keep a single item.
		9: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: "1"},
			reply: func(op, max string) string {
				switch {
				case op == "publish" && max != "":
					return condResourceConstraint
				case op == "configure":
					return condForbidden
				}
				return ""
			},
			want: []string{"publish 1", "publish ", "configure 1"},
			err:  pep.ErrForbidden},
		// No publish-options support at all: plain publish, then the
		// whole configuration.
		10: {opts: pep.PublishOptions{AccessModel: "open", MaxItems: pep.MaxItemsMax},
			reply: func() func(op, max string) string {
				n := 0
				return func(op, max string) string {
					n++
					if n == 1 {
						return condUnsupportedOptions
					}
					return ""
				}
			}(),
			want: []string{"publish max", "publish ", "configure max"}},
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			s, log := fakeServer(t, tc.reply)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := pep.Publish(ctx, s, "node", "id", payload("p", "x"), tc.opts)
			if tc.err == nil && err != nil {
				t.Fatalf("publish: %v", err)
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !reflect.DeepEqual(*log, tc.want) {
				t.Fatalf("requests %q, want %q", *log, tc.want)
			}
		})
	}
}

// A service that refuses the open access model (precondition-not-met on
// publish, not-acceptable on the reconfiguration) gets a typed error that
// says what was refused, and ExplainOpenAccess puts it in plain words.
func TestPublishConfigRefused(t *testing.T) {
	s, log := fakeServer(t, func(op, max string) string {
		if op == "publish" {
			return condPrecondition
		}
		return condNotAcceptable
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := pep.Publish(ctx, s, "urn:xmpp:omemo:2:devices", "current", payload("p", "x"), pep.PublishOptions{AccessModel: "open", PersistItems: true, MaxItems: "1"})
	var cr *pep.ConfigRefusedError
	if !errors.As(err, &cr) || !errors.Is(err, pep.ErrConfigRefused) {
		t.Fatalf("err = %v, want a *pep.ConfigRefusedError", err)
	}
	if cr.Node != "urn:xmpp:omemo:2:devices" || !cr.Asked(pep.FieldAccessModel, "open") {
		t.Fatalf("refused %+v", cr)
	}
	var se *pep.Error
	if !errors.As(err, &se) || se.Condition != stanza.NotAcceptable {
		t.Fatalf("the server's answer is lost: %v", err)
	}
	if !reflect.DeepEqual(*log, []string{"publish 1", "configure 1", "publish ", "configure "}) {
		t.Fatalf("requests %v", *log)
	}
	plain := pep.ExplainOpenAccess(fmt.Errorf("wrapped: %w", err), "the OMEMO device list")
	var oa *pep.OpenAccessError
	if !errors.As(plain, &oa) || !errors.Is(plain, pep.ErrConfigRefused) {
		t.Fatalf("ExplainOpenAccess = %v", plain)
	}
	for _, want := range []string{"the OMEMO device list must be readable by everyone", `"open"`, "urn:xmpp:omemo:2:devices", "not-acceptable", "operator must allow"} {
		if !strings.Contains(plain.Error(), want) {
			t.Errorf("%q does not say %q", plain, want)
		}
	}
	// Other failures stay as they are.
	if other := errors.New("other"); pep.ExplainOpenAccess(other, "x") != other {
		t.Fatal("ExplainOpenAccess changed an unrelated error")
	}
}
