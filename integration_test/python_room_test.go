package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

// pyRoomEvent is a line of xmppclient.py about rooms: the answers to join
// and send_room, and the room_message and reflected events.
type pyRoomEvent struct {
	Event        string             `json:"event"`
	Room         string             `json:"room"`
	Nick         string             `json:"nick"`
	From         string             `json:"from"`
	Device       uint32             `json:"device"`
	Namespace    string             `json:"namespace"`
	Body         string             `json:"body"`
	Kex          bool               `json:"kex"`
	OriginID     string             `json:"origin_id"`
	Occupants    map[string]*string `json:"occupants"`
	Affiliations map[string]string  `json:"affiliations"`
	Recipients   []pyRoomRecipient  `json:"recipients"`

	raw string
}

type pyRoomRecipient struct {
	JID       string `json:"jid"`
	Device    uint32 `json:"device"`
	Namespace string `json:"namespace"`
	Kex       bool   `json:"kex"`
}

func parseRoomEvent(t *testing.T, raw string) pyRoomEvent {
	t.Helper()
	var ev pyRoomEvent
	if err := json.Unmarshal([]byte(raw), &ev); err != nil {
		t.Fatalf("bad line %q: %v", raw, err)
	}
	ev.raw = raw
	return ev
}

// pyRoomClient reads the room events of a pyClient. startPython routes
// events it does not know (room_message, reflected) to the client's log
// as "event: LINE"; they are read from there, in order. Rejected messages
// still arrive on the msgs channel.
type pyRoomClient struct {
	*pyClient
	off int // the part of the log already read
}

// nextRoomEvent waits for the next room_message or reflected event; a
// rejected or 1:1 message fails the test.
func (c *pyRoomClient) nextRoomEvent(t *testing.T) pyRoomEvent {
	t.Helper()
	const marker = "event: {"
	deadline := time.Now().Add(pyMsgTimeout)
	for {
		c.mu.Lock()
		log := c.stderr.Bytes()[c.off:]
		var line string
		if i := bytes.Index(log, []byte(marker)); i >= 0 {
			if j := bytes.IndexByte(log[i:], '\n'); j >= 0 {
				line = string(log[i+len("event: ") : i+j])
				c.off += i + j + 1
			}
		}
		c.mu.Unlock()
		if line != "" {
			ev := parseRoomEvent(t, line)
			if ev.Event == "room_message" || ev.Event == "reflected" {
				return ev
			}
			continue // device-list notifications
		}
		select {
		case ev := <-c.msgs:
			t.Fatalf("%s: %s", c.name, ev.raw)
		case <-c.exited:
			t.Fatalf("%s: python client exited", c.name)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no room event within %v", c.name, pyMsgTimeout)
		}
	}
}

// roomPart is one device in the room: a Go device or the Python client.
type roomPart struct {
	key    string // "a", "b" or "py"
	nick   string
	jid    jid.JID
	device uint32
	omemo2 bool // has the OMEMO 2 backend
	goc    *client
}

// roomStep is one message to the room, from the participant with key from.
type roomStep struct {
	from string
	body string
}

// pyRoomScenario: Go device a creates the room with member b (another Go
// account) and the Python account as members; b and Python join.
type pyRoomScenario struct {
	name                 string
	room                 string
	goA, goB, pyUser     string
	aLegacy, bLegacy     bool // the Go device has only legacy OMEMO
	pyBackend            []string
	steps                []roomStep
	wantBothNamespacesBy string // the participant whose sends carry both <encrypted> elements
}

// TestIntegrationPythonRoom: the Go plugin and the Python reference client
// (python-omemo 1.0.2 on slixmpp, testdata/interop/xmppclient.py) in the
// same members-only, non-anonymous Prosody room, in both directions, for
// OMEMO 2 and legacy OMEMO (Python or one Go device with legacy OMEMO only:
// then one stanza carries both <encrypted> elements). Every message reaches
// every other device exactly once, decrypted with the sender's real JID
// from the room state, from the right device, in the expected namespace;
// the first message between two devices carries a key exchange (both
// ways), a message after an answer does not; each sender gets the room's
// reflection. The scenarios run in parallel, one room and three accounts
// each.
func TestIntegrationPythonRoom(t *testing.T) {
	began := time.Now()
	requireSlixmpp(t)
	prosodytest.Require(t)

	both := []string{ns.OMEMO2, ns.Legacy}
	scenarios := []pyRoomScenario{
		{
			name: "omemo2", room: "omemo2",
			goA: "ra2", goB: "rb2", pyUser: "rpy2",
			pyBackend: both,
			steps: []roomStep{
				{"a", "hello room, from go"},
				{"a", "second from go <message> & \"quotes\""},
				{"py", "hello room, from python 🐍"},
				{"py", "ünïcödé ✓ and <xml/> &amp; entities"},
				{"b", "b joins the conversation"},
				{"a", "third from go\nwith a new line"},
				{"py", "bye"},
			},
		},
		{
			name: "python legacy only", room: "pylegacy",
			goA: "ral", goB: "rbl", pyUser: "rpyl",
			pyBackend: []string{ns.Legacy},
			// Python opens: its first message starts every session.
			steps: []roomStep{
				{"py", "hello room, from legacy python"},
				{"py", "second from python & <co>"},
				{"a", "hello legacy python 🐹"},
				{"a", "second from go"},
				{"b", "from b"},
				{"py", "bye"},
			},
			wantBothNamespacesBy: "a",
		},
		{
			name: "go legacy only", room: "golegacy",
			goA: "rag", goB: "rbg", pyUser: "rpyg",
			bLegacy:   true,
			pyBackend: both,
			steps: []roomStep{
				{"b", "hello room, from legacy go"},
				{"b", "second from legacy go"},
				{"py", "hello go, old and new"},
				{"py", "second from python 🦀"},
				{"a", "from a"},
				{"b", "bye"},
			},
			wantBothNamespacesBy: "py",
		},
	}

	// The interpreters start (and import the OMEMO stack) while Prosody
	// starts.
	pys := make([]*pyClient, len(scenarios))
	var users []prosodytest.User
	for i, sc := range scenarios {
		pys[i] = startPython(t, sc.pyUser)
		users = append(users, prosodytest.User{Name: sc.goA}, prosodytest.User{Name: sc.goB}, prosodytest.User{Name: sc.pyUser})
	}
	srv := prosodytest.Start(t, users...)

	t.Run("rooms", func(t *testing.T) {
		for i, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				runPyRoomScenario(t, srv, &pyRoomClient{pyClient: pys[i]}, sc)
			})
		}
	})
	if d := time.Since(began); d > 60*time.Second {
		t.Errorf("python room interop test took %v", d)
	}
	t.Logf("took %v", time.Since(began))
}

func runPyRoomScenario(t *testing.T, srv *prosodytest.Server, py *pyRoomClient, sc pyRoomScenario) {
	goConfig := func(legacy bool) omemo.Config {
		if legacy {
			return omemo.Config{SendPresence: true, Backends: []backends.Factory{oldmemo.Factory}}
		}
		return omemo.Config{SendPresence: true}
	}
	py.connect(t, srv, sc.pyUser, sc.pyBackend...)
	a := connect(t, srv, sc.goA, store.NewMemory(), goConfig(sc.aLegacy), true)
	b := connect(t, srv, sc.goB, store.NewMemory(), goConfig(sc.bLegacy), true)

	parts := map[string]*roomPart{
		"a":  {key: "a", nick: "alice", jid: srv.JID(sc.goA), device: a.p.Manager().DeviceID(), omemo2: !sc.aLegacy, goc: a},
		"b":  {key: "b", nick: "bob", jid: srv.JID(sc.goB), device: b.p.Manager().DeviceID(), omemo2: !sc.bLegacy, goc: b},
		"py": {key: "py", nick: "python", jid: py.account, device: py.device, omemo2: slices.Contains(sc.pyBackend, ns.OMEMO2)},
	}
	keys := []string{"a", "b", "py"}
	// wire is the namespace of a message from s to r: OMEMO 2 if both
	// have it.
	wire := func(s, r *roomPart) string {
		if s.omemo2 && r.omemo2 {
			return ns.OMEMO2
		}
		return ns.Legacy
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	room := roomJID(t, sc.room, "")
	created, err := a.p.CreateRoom(ctx, roomJID(t, sc.room, parts["a"].nick), parts["py"].jid, parts["b"].jid)
	if err != nil || !created {
		t.Fatalf("CreateRoom: %v, %v", created, err)
	}
	join(t, b, roomJID(t, sc.room, parts["b"].nick))
	ev := parseRoomEvent(t, py.request(t, map[string]any{"op": "join", "room": room.String(), "nick": parts["py"].nick}, pyReqTimeout).raw)
	wantOccupants := map[string]string{}
	for _, p := range parts {
		wantOccupants[p.nick] = p.jid.String()
	}
	gotOccupants := map[string]string{}
	for nick, real := range ev.Occupants {
		if real == nil {
			t.Fatalf("python: occupant %q without a real JID: %s", nick, ev.raw)
		}
		gotOccupants[nick] = *real
	}
	if ev.Event != "joined" || ev.Room != room.String() || ev.Nick != parts["py"].nick || !maps.Equal(gotOccupants, wantOccupants) {
		t.Fatalf("python: join answered %s; want occupants %v", ev.raw, wantOccupants)
	}
	wantAffs := map[string]string{parts["a"].jid.String(): "owner", parts["b"].jid.String(): "member", parts["py"].jid.String(): "member"}
	if !maps.Equal(ev.Affiliations, wantAffs) {
		t.Errorf("python: affiliations %v, want %v", ev.Affiliations, wantAffs)
	}
	// The Go devices see the Python occupant (its real JID) before it
	// writes.
	for _, c := range []*client{a, b} {
		waitRealJID(t, c, room, parts["py"].nick, parts["py"].jid)
	}

	// received[s][r]: s has decrypted a message from r; talked[s][r]:
	// a message went between s and r (either way).
	received := map[string]map[string]bool{}
	talked := map[string]map[string]bool{}
	for _, k := range keys {
		received[k], talked[k] = map[string]bool{}, map[string]bool{}
	}
	// kexWant: a message from s to r must carry a key exchange if it is
	// the first between them, must not if s has read an answer from r,
	// either otherwise (a run of messages before any answer).
	type kexWant int
	const (
		kexEither kexWant = iota
		kexYes
		kexNo
	)
	usedBoth := false

	for i := 0; i < len(sc.steps); {
		j := i
		for j < len(sc.steps) && sc.steps[j].from == sc.steps[i].from {
			j++
		}
		run := sc.steps[i:j]
		i = j
		sender := parts[run[0].from]
		var others []*roomPart
		for _, k := range keys {
			if k != sender.key {
				others = append(others, parts[k])
			}
		}
		// A Go device republishes its bundle after a key exchange used
		// one of its pre keys: a session built from a bundle fetched
		// before that may use the spent pre key (see TestIntegrationExchange).
		fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
		for _, c := range []*client{a, b} {
			if err := c.p.Manager().Flush(fctx); err != nil {
				t.Fatal(err)
			}
		}
		fcancel()

		wantRecipients := func() []pyRoomRecipient {
			var out []pyRoomRecipient
			for _, r := range others {
				out = append(out, pyRoomRecipient{JID: r.jid.String(), Device: r.device, Namespace: wire(sender, r)})
			}
			return sortRecipients(out)
		}()
		// kex[k][r]: what message k of the run must carry to r.
		kex := make([]map[string]kexWant, len(run))
		origins := make([]string, len(run))
		ids := make([]string, len(run))
		for k, s := range run {
			kex[k] = map[string]kexWant{}
			for _, r := range others {
				switch {
				case !talked[sender.key][r.key]:
					kex[k][r.key] = kexYes
				case received[sender.key][r.key]:
					kex[k][r.key] = kexNo
				default:
					kex[k][r.key] = kexEither
				}
				talked[sender.key][r.key], talked[r.key][sender.key] = true, true
			}
			var got []pyRoomRecipient
			if sender.goc != nil {
				res := sendGroup(t, sender.goc, room, s.body)
				if len(res.Failures) > 0 || len(res.Unreached) > 0 {
					t.Fatalf("%s → room %q: failures %v, unreached %v", sender.key, s.body, res.Failures, res.Unreached)
				}
				for _, rc := range res.Recipients {
					got = append(got, pyRoomRecipient{JID: rc.JID, Device: rc.DeviceID, Namespace: rc.Namespace})
				}
				ids[k] = res.ID
				if nss := namespaces(res.Recipients); len(nss) == 2 {
					usedBoth = true
				}
			} else {
				ev := parseRoomEvent(t, py.request(t, map[string]any{"op": "send_room", "room": room.String(), "body": s.body}, pyReqTimeout).raw)
				if ev.Event != "sent_room" || ev.Room != room.String() || ev.OriginID == "" {
					t.Fatalf("python: send_room answered %s", ev.raw)
				}
				origins[k] = ev.OriginID
				nss := map[string]bool{}
				for _, rc := range ev.Recipients {
					nss[rc.Namespace] = true
					if want := kex[k][partByJID(parts, rc.JID)]; want != kexEither && rc.Kex != (want == kexYes) {
						t.Errorf("python → room %q: key exchange for %s/%d: %v, want %v", s.body, rc.JID, rc.Device, rc.Kex, want == kexYes)
					}
					rc.Kex = false
					got = append(got, rc)
				}
				if len(nss) == 2 {
					usedBoth = true
				}
			}
			if got = sortRecipients(got); !slices.Equal(got, wantRecipients) {
				t.Fatalf("%s → room %q: recipients %+v; want %+v", sender.key, s.body, got, wantRecipients)
			}
		}

		// The room reflects every message to its sender.
		for k, s := range run {
			if sender.goc != nil {
				m := sender.goc.expect(10 * time.Second)
				if !m.Reflected || !m.Sent || m.Body != s.body || !m.Room.Equal(room) || m.ID != ids[k] {
					t.Fatalf("%s: reflection of %q (id %s): %+v", sender.key, s.body, ids[k], m)
				}
			} else {
				ev := py.nextRoomEvent(t)
				if ev.Event != "reflected" || ev.Room != room.String() || ev.OriginID != origins[k] {
					t.Fatalf("python: %s; want the reflection of %q (origin-id %s)", ev.raw, s.body, origins[k])
				}
			}
		}
		// Every other device decrypts every message, in order.
		for _, r := range others {
			for k, s := range run {
				want := kex[k][r.key]
				wantNS := wire(sender, r)
				if r.goc != nil {
					m := r.goc.expect(10 * time.Second)
					if m.Body != s.body || !m.Room.Equal(room) || m.Nick != sender.nick || !m.RealFrom.Equal(sender.jid) ||
						!m.From.Bare().Equal(room) || m.SenderDevice != sender.device || m.Namespace != wantNS || m.Reflected || m.Sent || m.Archived {
						t.Fatalf("%s got %q in %v from %v (nick %q, real %v, device %d, %s, reflected %v, sent %v); want %q from %s/%d (nick %q) in %s",
							r.key, m.Body, m.Room, m.From, m.Nick, m.RealFrom, m.SenderDevice, m.Namespace, m.Reflected, m.Sent,
							s.body, sender.jid, sender.device, sender.nick, wantNS)
					}
					if m.IdentityKey == ([32]byte{}) {
						t.Errorf("%s got %q without the sender's identity key", r.key, s.body)
					}
					if want != kexEither && m.KeyExchange != (want == kexYes) {
						t.Errorf("%s got %q from %s: key exchange %v, want %v", r.key, s.body, sender.key, m.KeyExchange, want == kexYes)
					}
				} else {
					ev := py.nextRoomEvent(t)
					if ev.Event != "room_message" || ev.Room != room.String() || ev.Nick != sender.nick || ev.From != sender.jid.String() ||
						ev.Device != sender.device || ev.Namespace != wantNS || ev.Body != s.body {
						t.Fatalf("python got %s; want %q from %s/%d (nick %q) in %s", ev.raw, s.body, sender.jid, sender.device, sender.nick, wantNS)
					}
					if want != kexEither && ev.Kex != (want == kexYes) {
						t.Errorf("python got %q from %s: key exchange %v, want %v", s.body, sender.key, ev.Kex, want == kexYes)
					}
				}
				received[r.key][sender.key] = true
			}
		}
	}
	if sc.wantBothNamespacesBy != "" && !usedBoth {
		t.Errorf("no message carried both <encrypted> elements (expected from %s)", sc.wantBothNamespacesBy)
	}

	// Exactly once, nothing rejected anywhere.
	for _, c := range []*client{a, b} {
		c.expectNone(300 * time.Millisecond)
		if errs := c.decryptErrors(); len(errs) > 0 {
			t.Errorf("%s rejected messages: %v", c.name, errs)
		}
	}
	py.expectNone(t, 100*time.Millisecond)
	py.mu.Lock()
	rejected := slices.Clone(py.rejected)
	rest := string(py.stderr.Bytes()[py.off:])
	py.mu.Unlock()
	for _, ev := range rejected {
		t.Errorf("python rejected a message: %s", ev.raw)
	}
	for _, line := range strings.Split(rest, "\n") {
		if i := strings.Index(line, "event: {"); i >= 0 {
			if ev := parseRoomEvent(t, line[i+len("event: "):]); ev.Event == "room_message" || ev.Event == "reflected" {
				t.Errorf("python: unexpected %s", ev.raw)
			}
		}
	}
	py.quit(t)
}

// waitRealJID waits until c's room state knows the real JID of nick.
func waitRealJID(t *testing.T, c *client, room jid.JID, nick string, want jid.JID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, ok := c.p.Room(room)
		if !ok {
			t.Fatalf("%s does not track %v", c.name, room)
		}
		real, err := r.RealJID(nick)
		if err == nil {
			if !real.Equal(want) {
				t.Fatalf("%s: the real JID of %q is %v, want %v", c.name, nick, real, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no real JID of %q in %v: %v", c.name, nick, room, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func partByJID(parts map[string]*roomPart, j string) string {
	for k, p := range parts {
		if p.jid.String() == j {
			return k
		}
	}
	return ""
}

func sortRecipients(rs []pyRoomRecipient) []pyRoomRecipient {
	slices.SortFunc(rs, func(x, y pyRoomRecipient) int {
		return strings.Compare(fmt.Sprintf("%s/%010d/%s", x.JID, x.Device, x.Namespace), fmt.Sprintf("%s/%010d/%s", y.JID, y.Device, y.Namespace))
	})
	return rs
}
