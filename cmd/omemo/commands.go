package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

type runFunc = func(ctx context.Context, g *globals, args []string, e env) error

// withClient opens the account, runs f and shuts down cleanly (plugin,
// session, store), also when f fails or ctx is cancelled. The error it
// returns is escaped for the terminal (see safeError): errors of the
// network and the plugin can embed a contact's or a server's text.
func withClient(ctx context.Context, g *globals, e env, f func(c *client) error) error {
	out := newOutput(g.json, e.stdout, e.stderr)
	c, err := open(ctx, g, out)
	if err != nil {
		return safeError(err)
	}
	ferr := f(c)
	if serr := c.shutdown(); ferr == nil {
		ferr = serr
	}
	return safeError(ferr)
}

// parseJID parses a contact's JID given on the command line.
func parseJID(flagName, s string) (jid.JID, error) {
	if s == "" {
		return jid.JID{}, usageError("%s is required", flagName)
	}
	j, err := jid.Parse(s)
	if err != nil || j.Domainpart() == "" {
		return jid.JID{}, usageError("%s %q is not a valid JID", flagName, s)
	}
	return j, nil
}

// recipientJSON is one device a message was encrypted for.
type recipientJSON struct {
	JID     string `json:"jid"`
	Device  uint32 `json:"device"`
	Backend string `json:"backend"`
}

// sendJSON is the result of a sent message with -json; File is set for a
// file (send -file).
type sendJSON struct {
	To      string          `json:"to"`
	ID      string          `json:"id"`
	File    *fileJSON       `json:"file,omitempty"`
	Devices []recipientJSON `json:"devices"`
	Errors  []string        `json:"errors"`
}

// send encrypts and sends body and prints the result. Trust failures
// become an error that names the undecided devices.
func (c *client) send(ctx context.Context, to jid.JID, body string) error {
	c.out.progress("fetching device lists and bundles of %s…", to.Bare())
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	res, err := c.plugin.Send(sctx, to, body)
	if err != nil {
		return c.sendError(ctx, to, err)
	}
	c.printSent(to, res, nil)
	return nil
}

// printSent prints the result of a message (with file: of a file) sent to
// a contact.
func (c *client) printSent(to jid.JID, res *omemo.SendResult, file *fileJSON) {
	v := sendJSON{To: to.String(), ID: res.ID, File: file}
	v.Devices, v.Errors = c.recipients(res)
	what := res.ID
	if file != nil {
		what = file.sentText() + " as " + res.ID
	}
	c.out.result(v, escapeText(fmt.Sprintf("sent %s to %s, encrypted for %d device(s): %s", what, to, len(res.Recipients), deviceNames(res))))
}

// recipients returns the devices a message was encrypted for and the
// failures (warned about on stderr in text mode), never nil.
func (c *client) recipients(res *omemo.SendResult) ([]recipientJSON, []string) {
	devices, errs := []recipientJSON{}, []string{}
	for _, r := range res.Recipients {
		devices = append(devices, recipientJSON{JID: r.JID, Device: r.DeviceID, Backend: r.Namespace})
	}
	for _, f := range res.Failures {
		errs = append(errs, f.Error())
		if !c.out.json {
			c.out.warn("not encrypted for %s device %d: %v", f.JID, f.DeviceID, f.Err)
		}
	}
	return devices, errs
}

// deviceNames lists the devices a message was encrypted for, for the text
// result line.
func deviceNames(res *omemo.SendResult) string {
	var names []string
	for _, r := range res.Recipients {
		names = append(names, fmt.Sprintf("%s/%d (%s)", r.JID, r.DeviceID, backendName(r.Namespace)))
	}
	return strings.Join(names, ", ")
}

// sendError explains why Send failed.
func (c *client) sendError(ctx context.Context, to jid.JID, err error) error {
	switch {
	case errors.Is(err, session.ErrStillUndecided):
		return c.undecidedError(ctx, []jid.JID{to.Bare()}, err)
	case errors.Is(err, session.ErrNoEligibleDevices) && errors.Is(err, devicelist.ErrAccessDenied):
		return fmt.Errorf("not sent: no device of %s can be encrypted for: the server refused access to the device list (it may also have none): %w", to.Bare(), err)
	case errors.Is(err, session.ErrNoEligibleDevices):
		return fmt.Errorf("not sent: no device of %s can be encrypted for (no OMEMO device published, or all distrusted): %w", to.Bare(), err)
	}
	return fmt.Errorf("not sent: %w", err)
}

// undecidedError lists the devices of the recipients (to: a contact, or
// the members of a room) that the trust policy left undecided, with their
// fingerprints and the command that trusts them. Its lines are intended,
// its remote parts escaped: it is a *termError.
func (c *client) undecidedError(ctx context.Context, to []jid.JID, cause error) error {
	mgr := c.plugin.Manager()
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var undecided []session.DeviceInfo
	own := false
	for _, j := range to {
		own = own || j.Bare().Equal(c.g.account.Bare())
		if devs, err := mgr.Devices(qctx, j.Bare().String()); err == nil {
			undecided = append(undecided, devs...)
		}
	}
	if _, others, err := mgr.OwnDevices(qctx); err == nil && !own {
		undecided = append(undecided, others...)
	}
	undecided = slices.DeleteFunc(undecided, func(d session.DeviceInfo) bool {
		return d.Level != trust.Undecided || len(d.Active) == 0
	})
	var b strings.Builder
	fmt.Fprintf(&b, "not sent: the %s trust policy leaves %d device(s) undecided; nothing was sent (%s)", c.g.mode, len(undecided), escapeText(cause.Error()))
	for _, d := range undecided {
		fmt.Fprintf(&b, "\n  %s device %d, fingerprint %s", escapeText(d.JID), d.DeviceID, d.Fingerprint())
	}
	b.WriteString("\nverify the fingerprints with the contact, then trust each device with:")
	if len(undecided) == 0 {
		contact := "JID"
		if len(to) == 1 {
			contact = escapeText(to[0].Bare().String())
		}
		fmt.Fprintf(&b, "\n  omemo -jid %s trust -jid %s -fingerprint FINGERPRINT -level trusted", c.g.account.Bare(), contact)
	}
	for _, d := range undecided {
		fmt.Fprintf(&b, "\n  omemo -jid %s trust -jid %s -fingerprint %s -level trusted", c.g.account.Bare(), escapeText(d.JID), strings.ReplaceAll(d.Fingerprint(), " ", ""))
	}
	return &termError{msg: b.String(), err: cause}
}

// receivedText reports whether m is a received message with a text: not
// the copy of a message that another device of the account sent (a sent
// carbon, Message.Sent), and not a message without a body (such as an
// encrypted chat state). A file counts (its body is its link). listen
// -count counts these messages and -echo answers them; every message is
// printed.
func receivedText(m omemo.Message) bool {
	return !m.Sent && m.Body != ""
}

// echo answers a received message that has a text (see receivedText)
// with "echo: " + its text (for a file: its name, see shownBody). An echo
// that failed because the connection was down is sent again once
// reconnected (listen).
func (c *client) echo(ctx context.Context, m omemo.Message) {
	if !receivedText(m) {
		return
	}
	to := m.From.Bare()
	sctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if _, err := c.plugin.Send(sctx, to, "echo: "+shownBody(m)); err != nil {
		if !c.echoLater(m, err) {
			c.out.warn("echo to %s: %v", to, err)
		}
		return
	}
	c.out.progress("echoed to %s", to)
}

func setupSend(fs *flag.FlagSet) runFunc {
	to := fs.String("to", "", "recipient `JID`")
	rf := addRoomFlags(fs, "send to")
	wait := fs.Duration("wait", 0, "stay online and print replies for `DURATION`")
	file := fs.String("file", "", "upload the file at `PATH` encrypted (XEP-0454) and send it, instead of a TEXT")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if rf.set() && *to != "" {
			return usageError("send: -to and -room are mutually exclusive: send to a contact or to a room")
		}
		room, err := rf.parse("send", g)
		if err != nil {
			return err
		}
		if !rf.set() && *to == "" {
			return usageError("-to is required (or -room ROOM to send to a group chat)")
		}
		var recipient jid.JID
		if !rf.set() {
			if recipient, err = parseJID("-to", *to); err != nil {
				return err
			}
		}
		text := strings.Join(args, " ")
		switch {
		case *file != "" && len(args) > 0:
			return usageError("send: -file and TEXT are mutually exclusive: send a file or a text")
		case *file == "" && text == "":
			return usageError("send: no TEXT given")
		}
		if *wait < 0 {
			return usageError("send: -wait must not be negative")
		}
		// The file is opened before connecting: nothing is sent if it
		// cannot be read.
		var sf *sendFile
		if *file != "" {
			if sf, err = openSendFile(*file); err != nil {
				return safeError(err)
			}
			defer sf.f.Close()
		}
		if rf.set() {
			return withClient(ctx, g, e, func(c *client) error {
				return c.sendRoomCmd(ctx, room, text, sf, *wait)
			})
		}
		return withClient(ctx, g, e, func(c *client) error {
			if sf != nil {
				err = c.sendFileTo(ctx, recipient, sf)
			} else {
				err = c.send(ctx, recipient, text)
			}
			if err != nil {
				return err
			}
			if *wait == 0 {
				return nil
			}
			c.out.progress("waiting %v for replies…", *wait)
			return c.printUntil(ctx, *wait)
		})
	}
}

// printUntil prints (and acknowledges) the messages that arrive until wait
// ends or ctx is done.
func (c *client) printUntil(ctx context.Context, wait time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		select {
		case it := <-c.inbox.ch:
			if it.ev == nil && !c.show(wctx, it.m) {
				return nil
			}
		case <-wctx.Done():
			return nil
		case <-c.done():
			return c.lost()
		}
	}
}

func setupListen(fs *flag.FlagSet) runFunc {
	dur := fs.Duration("for", 0, "exit after `DURATION` (default: until interrupted)")
	count := fs.Int("count", 0, "exit after `N` messages (default: until interrupted; copies of messages sent by the account's other devices and messages without a text do not count)")
	echo := fs.Bool("echo", false, `answer each message with "echo: " + its text, encrypted (room messages in the room; a file with its name)`)
	download := fs.String("download", "", "download, decrypt and verify received files into `DIR` (default: print their name and URL only)")
	rf := addRoomFlags(fs, "also join and listen to")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) > 0 {
			return usageError("listen: unexpected arguments %q", args)
		}
		if *dur < 0 || *count < 0 {
			return usageError("listen: -for and -count must not be negative")
		}
		room, err := rf.parse("listen", g)
		if err != nil {
			return err
		}
		dir := ""
		if *download != "" {
			if dir, err = checkDownloadDir(*download); err != nil {
				return safeError(err)
			}
		}
		return withLive(ctx, g, e, func(c *client) error {
			c.downloadDir = dir
			if rf.set() {
				if err := c.joinLive(ctx, room); err != nil {
					return err
				}
				defer c.leaveRoom(ctx, room.Bare())
			}
			c.inbox.setLimit(inboxLimit)
			lctx := ctx
			if *dur > 0 {
				var cancel context.CancelFunc
				lctx, cancel = context.WithTimeout(ctx, *dur)
				defer cancel()
			}
			c.out.progress("listening (interrupt to stop)…")
			n := 0
			for *count == 0 || n < *count {
				select {
				case it := <-c.inbox.ch:
					if it.ev != nil {
						c.connEvent(lctx, *it.ev)
						continue
					}
					m := it.m
					// Every message is printed (but the
					// room's copies of this device's own);
					// only received ones with a text count.
					if !c.show(lctx, m) {
						return nil
					}
					if c.counted(m) {
						n++
					}
					if *echo {
						c.echoAny(lctx, m)
					}
				case <-lctx.Done():
					return nil
				case <-c.done():
					return c.lost()
				}
			}
			return nil
		})
	}
}

func setupChat(fs *flag.FlagSet) runFunc {
	rf := addRoomFlags(fs, "chat in")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		room, err := rf.parse("chat", g)
		if err != nil {
			return err
		}
		var peer jid.JID
		switch {
		case rf.set() && len(args) > 0:
			return usageError("chat: give a JID or -room ROOM, not both (flags go before the JID)")
		case rf.set():
		case len(args) != 1:
			return usageError("chat: want exactly one JID (or -room ROOM)")
		default:
			if peer, err = parseJID("chat JID", args[0]); err != nil {
				return err
			}
		}
		return withLive(ctx, g, e, func(c *client) error {
			// send sends a line to the contact or the room and
			// prints the result.
			send := func(line string) error {
				if !rf.set() {
					return c.send(ctx, peer, line)
				}
				res, err := c.sendRoom(ctx, room.Bare(), line)
				if err == nil {
					c.printRoomSent(room.Bare(), res)
				}
				return err
			}
			with := peer.String()
			if rf.set() {
				if err := c.joinLive(ctx, room); err != nil {
					return err
				}
				defer c.leaveRoom(ctx, room.Bare())
				with = "the room " + room.Bare().String()
			}
			c.inbox.setLimit(inboxLimit)
			lines := make(chan string)
			readErr := make(chan error, 1)
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				readErr <- readLines(e.stdin, lines, stop)
			}()
			c.out.progress("chatting with %s: type a line to send it, end with EOF (Ctrl-D) or interrupt", with)
			for {
				select {
				case line := <-lines:
					if strings.TrimSpace(line) == "" {
						continue
					}
					if err := send(line); err != nil {
						// The chat goes on; the reason is shown.
						fmt.Fprintf(e.stderr, "omemo: %v\n", safeError(err))
					}
				case it := <-c.inbox.ch:
					if it.ev != nil {
						c.connEvent(ctx, *it.ev)
						continue
					}
					// Files are shown, not fetched.
					if !c.show(ctx, it.m) {
						return nil
					}
				case err := <-readErr:
					if err != nil {
						return fmt.Errorf("reading stdin: %w", err)
					}
					return nil
				case <-ctx.Done():
					return nil
				case <-c.done():
					return c.lost()
				}
			}
		})
	}
}

// readLines sends every line of r to lines until EOF (nil) or a read
// error; it gives up when stop is closed.
func readLines(r io.Reader, lines chan<- string, stop <-chan struct{}) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		select {
		case lines <- sc.Text():
		case <-stop:
			return nil
		}
	}
	return sc.Err()
}

// deviceJSON is one device with -json.
type deviceJSON struct {
	JID         string   `json:"jid"`
	Device      uint32   `json:"device"`
	Label       string   `json:"label"`
	Fingerprint string   `json:"fingerprint"`
	Trust       string   `json:"trust"`
	Backends    []string `json:"backends"`
	Active      bool     `json:"active"`
	Own         bool     `json:"own"`
}

func setupDevices(fs *flag.FlagSet) runFunc {
	who := fs.String("jid", "", "account whose devices are listed (default: own account)")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) > 0 {
			return usageError("devices: unexpected arguments %q", args)
		}
		target := g.account.Bare()
		if *who != "" {
			j, err := parseJID("-jid", *who)
			if err != nil {
				return err
			}
			target = j.Bare()
		}
		return withClient(ctx, g, e, func(c *client) error {
			devs, self, err := c.devices(ctx, target)
			if err != nil {
				return err
			}
			if len(devs) == 0 {
				c.out.progress("no OMEMO device of %s found", target)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			if !c.out.json {
				fmt.Fprintln(tw, "DEVICE\tLABEL\tFINGERPRINT\tTRUST\tBACKENDS\tACTIVE")
			}
			for _, d := range devs {
				own := d.DeviceID == self && target.Equal(g.account.Bare())
				if c.out.json {
					c.out.result(deviceJSON{
						JID: d.JID, Device: d.DeviceID, Label: d.Label, Fingerprint: d.Fingerprint(),
						Trust: d.Trust, Backends: nonNil(d.Namespaces), Active: len(d.Active) > 0, Own: own,
					}, "")
					continue
				}
				id := fmt.Sprint(d.DeviceID)
				if own {
					id += " (this device)"
				}
				var bs []string
				for _, n := range d.Namespaces {
					bs = append(bs, backendName(n))
				}
				active := "no"
				if len(d.Active) > 0 {
					active = "yes"
				}
				label := d.Label
				if label == "" {
					label = "-"
				}
				trustLevel := d.Trust
				if own {
					trustLevel = "(own)"
				}
				// The label comes from the network, unauthenticated:
				// %q escapes every non-printable character (controls,
				// bidi overrides, invalid UTF-8, tabs), as strconv.Quote.
				fmt.Fprintf(tw, "%s\t%q\t%s\t%s\t%s\t%s\n", id, label, d.Fingerprint(), trustLevel, strings.Join(bs, ", "), active)
			}
			if !c.out.json {
				return tw.Flush()
			}
			return nil
		})
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// devices returns the known devices of account (this device first for the
// own account), after refreshing its device lists, and this device's id.
func (c *client) devices(ctx context.Context, account jid.JID) ([]session.DeviceInfo, uint32, error) {
	mgr := c.plugin.Manager()
	qctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if account.Equal(c.g.account.Bare()) {
		self, others, err := mgr.OwnDevices(qctx)
		if err != nil {
			return nil, 0, fmt.Errorf("own devices: %w", err)
		}
		return append([]session.DeviceInfo{self}, others...), self.DeviceID, nil
	}
	c.out.progress("fetching the device lists and bundles of %s…", account)
	if err := mgr.RefreshDeviceLists(qctx, account.String()); errors.Is(err, devicelist.ErrAccessDenied) {
		c.out.warn("the server refused access to the device list of %s (it may also have none); showing the devices known from before: %v", account, err)
	} else if err != nil {
		c.out.warn("refreshing the device lists of %s: %v", account, err)
	}
	devs, err := mgr.Devices(qctx, account.String())
	if err != nil {
		return nil, 0, fmt.Errorf("devices of %s: %w", account, err)
	}
	return devs, mgr.DeviceID(), nil
}

// trustLevels maps the trust command's levels to the trust package's
// level names.
var trustLevels = map[string]string{
	"trusted":    trust.LevelTrusted,
	"distrusted": trust.LevelDistrusted,
	"undecided":  trust.LevelUndecided,
}

// normalizeFingerprint removes spaces (and colons) from a fingerprint and
// checks that 64 hex digits remain.
func normalizeFingerprint(s string) (string, error) {
	s = strings.ToLower(strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', ':', '\n':
			return -1
		}
		return r
	}, s))
	if len(s) != 64 {
		return "", usageError("-fingerprint: want 64 hex digits (8 groups of 8), got %d", len(s))
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return "", usageError("-fingerprint: %q is not a hex digit", r)
		}
	}
	return s, nil
}

// trustJSON is the result of the trust command with -json, one line per
// matching device.
type trustJSON struct {
	JID         string `json:"jid"`
	Device      uint32 `json:"device"`
	Fingerprint string `json:"fingerprint"`
	Trust       string `json:"trust"`
}

func setupTrust(fs *flag.FlagSet) runFunc {
	who := fs.String("jid", "", "account of the device")
	fp := fs.String("fingerprint", "", "fingerprint of the device (8×8 hex digits, spaces optional)")
	level := fs.String("level", "", "trusted | distrusted | undecided")
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) > 0 {
			return usageError("trust: unexpected arguments %q", args)
		}
		target, err := parseJID("-jid", *who)
		if err != nil {
			return err
		}
		target = target.Bare()
		want, err := normalizeFingerprint(*fp)
		if err != nil {
			return err
		}
		name, ok := trustLevels[strings.ToLower(strings.TrimSpace(*level))]
		if !ok {
			return usageError("-level %q: want trusted, distrusted or undecided", *level)
		}
		return withClient(ctx, g, e, func(c *client) error {
			devs, self, err := c.devices(ctx, target)
			if err != nil {
				return err
			}
			var matched []session.DeviceInfo
			for _, d := range devs {
				got, err := normalizeFingerprint(d.Fingerprint())
				if err == nil && got == want {
					matched = append(matched, d)
				}
			}
			if len(matched) == 0 {
				return fmt.Errorf("no known device of %s has the fingerprint %s (see: omemo -jid %s devices -jid %s)", target, *fp, g.account.Bare(), target)
			}
			if target.Equal(g.account.Bare()) && matched[0].DeviceID == self {
				return errors.New("the fingerprint is this device's own: its trust cannot be set")
			}
			sctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			if err := c.plugin.Manager().SetTrust(sctx, target.String(), matched[0].IdentityKey, name); err != nil {
				return fmt.Errorf("setting trust: %w", err)
			}
			for _, d := range matched {
				c.out.result(trustJSON{JID: d.JID, Device: d.DeviceID, Fingerprint: d.Fingerprint(), Trust: name},
					escapeText(fmt.Sprintf("%s device %d (%s) is now %s", d.JID, d.DeviceID, d.Fingerprint(), name)))
			}
			return nil
		})
	}
}

// fingerprintJSON is the result of the fingerprint command with -json.
type fingerprintJSON struct {
	JID         string `json:"jid"`
	Device      uint32 `json:"device"`
	Fingerprint string `json:"fingerprint"`
}

func setupFingerprint(fs *flag.FlagSet) runFunc {
	return func(ctx context.Context, g *globals, args []string, e env) error {
		if len(args) > 0 {
			return usageError("fingerprint: unexpected arguments %q", args)
		}
		return withClient(ctx, g, e, func(c *client) error {
			qctx, cancel := context.WithTimeout(ctx, opTimeout)
			defer cancel()
			self, _, err := c.plugin.Manager().OwnDevices(qctx)
			if err != nil {
				return fmt.Errorf("own device: %w", err)
			}
			c.out.result(fingerprintJSON{JID: g.account.Bare().String(), Device: self.DeviceID, Fingerprint: self.Fingerprint()},
				fmt.Sprintf("device %d\nfingerprint %s", self.DeviceID, self.Fingerprint()))
			return nil
		})
	}
}
