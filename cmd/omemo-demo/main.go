// Command omemo-demo runs a scripted OMEMO conversation between two accounts
// on an XMPP server, with clients built on mellium.im/omemo, and shows what
// goes over the wire and what each side decrypts.
//
// Alice (with two devices, a "laptop" and a "phone", unless -alice-devices=1)
// sends Bob three messages; Bob answers. For every message the demo prints
// the <message> stanza as the sending device wrote it to the server (taken
// from mellium's stream tee, inside TLS; long base64 text abbreviated) and,
// for every device that should receive it, what that device decrypted:
// sender, device id, OMEMO version, trust, whether the message carried a
// key exchange, and the body.
//
// Then Alice shares a small generated text file, omemo-demo.txt, with Bob
// (XEP-0454): Plugin.SendFile encrypts it with a fresh key, uploads the
// ciphertext through the server's HTTP File Upload service (XEP-0363, over
// HTTPS) and sends the aesgcm:// link in an OMEMO message; Bob's client
// downloads it into a temporary directory with media.Download and checks
// its SHA-256 against what SendFile reported. The link's key is never
// printed. A server without an upload service fails the demo.
// -insecure-skip-verify applies to the HTTPS upload and download too.
//
// Usage:
//
//	omemo-demo -addr 127.0.0.1:5222 -insecure-skip-verify \
//	    -alice alice@localhost -alice-password alice \
//	    -bob bob@localhost -bob-password bob
//
// The exit status is 0 when every expected message was decrypted and the
// file arrived intact, 1 when a message did not arrive within -timeout or
// could not be decrypted, or the file could not be shared, 2 on bad usage.
//
// Every run creates new devices (their state is kept in memory only) and
// publishes them; against a long-running server, -reset-device-lists first
// removes the devices of earlier runs from both accounts' device lists. Do
// not use it with accounts that have real OMEMO clients.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/backends"
	"mellium.im/omemo/backends/oldmemo"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/session"
	"mellium.im/omemo/trust"
	"mellium.im/xmpp/jid"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	dial         dialConfig
	alice, bob   account
	aliceDevices int
	timeout      time.Duration
	reset        bool
	bobLegacy    bool
	verbose      bool
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("omemo-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o                 options
		aliceJID, bobJID  string
		alicePass, bobPas string
	)
	fs.StringVar(&o.dial.addr, "addr", "127.0.0.1:5222", `c2s address of the server, host:port ("" looks it up in DNS)`)
	fs.BoolVar(&o.dial.insecure, "insecure-skip-verify", false, "do not verify the server certificate, of c2s and of HTTPS upload (for a local test server)")
	fs.StringVar(&aliceJID, "alice", "alice@localhost", "JID of the first account")
	fs.StringVar(&alicePass, "alice-password", "", "password of the first account")
	fs.StringVar(&bobJID, "bob", "bob@localhost", "JID of the second account")
	fs.StringVar(&bobPas, "bob-password", "", "password of the second account")
	fs.IntVar(&o.aliceDevices, "alice-devices", 2, "devices of the first account (1 or 2)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "how long to wait for each message")
	fs.BoolVar(&o.bobLegacy, "bob-legacy", false, "bob's client speaks legacy OMEMO (eu.siacs.conversations.axolotl) only")
	fs.BoolVar(&o.reset, "reset-device-lists", false, "remove the devices of earlier runs from both accounts' device lists")
	fs.BoolVar(&o.verbose, "v", false, "log the library's diagnostics to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var err error
	if o.alice, err = parseAccount("alice", aliceJID, alicePass); err == nil {
		o.bob, err = parseAccount("bob", bobJID, bobPas)
	}
	if err == nil && o.alice.jid.Equal(o.bob.jid) {
		err = errors.New("-alice and -bob must be different accounts")
	}
	if err == nil && (o.aliceDevices < 1 || o.aliceDevices > 2) {
		err = errors.New("-alice-devices must be 1 or 2")
	}
	if err != nil || fs.NArg() > 0 {
		if err == nil {
			err = fmt.Errorf("unexpected arguments %q", fs.Args())
		}
		fmt.Fprintln(stderr, "omemo-demo:", err)
		fs.Usage()
		return 2
	}
	if err := demo(o, stdout, stderr); err != nil {
		fmt.Fprintln(stdout, "\nFAILED:", err)
		return 1
	}
	return 0
}

func parseAccount(name, s, pass string) (account, error) {
	j, err := jid.Parse(s)
	if err != nil || j.Localpart() == "" {
		return account{}, fmt.Errorf("-%s: %q is not an account JID", name, s)
	}
	if pass == "" {
		return account{}, fmt.Errorf("-%s-password is required", name)
	}
	return account{jid: j.Bare(), password: pass}, nil
}

// step is one message of the script.
type step struct {
	from   *client
	to     jid.JID
	body   string
	expect []*client // the devices that must decrypt it
}

func demo(o options, w, stderr io.Writer) error {
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	// Connect and start the devices one after the other, so that each
	// device list is complete before the first message.
	type spec struct {
		name     string
		acc      account
		backends []backends.Factory
	}
	specs := []spec{{"alice (laptop)", o.alice, nil}}
	if o.aliceDevices == 2 {
		specs = append(specs, spec{"alice (phone)", o.alice, nil})
	}
	bobBackends := []backends.Factory(nil) // OMEMO 2, then legacy OMEMO
	if o.bobLegacy {
		bobBackends = []backends.Factory{oldmemo.Factory}
	}
	specs = append(specs, spec{"bob", o.bob, bobBackends})

	fmt.Fprintf(w, "Connecting to %s\n", serverName(o.dial.addr, o.alice.jid))
	var clients []*client
	defer func() {
		for _, c := range clients {
			c.close()
		}
	}()
	names := map[uint32]string{}
	fingerprints := map[string]string{} // device name → fingerprint
	keys := map[[32]byte]string{}       // identity key → device name
	resetDone := map[string]bool{}
	for _, sp := range specs {
		c, err := connect(o.dial, sp.name, sp.acc, sp.backends, logger)
		if err != nil {
			return err
		}
		clients = append(clients, c)
		if err := c.start(o.timeout); err != nil {
			return err
		}
		mgr := c.p.Manager()
		if o.reset && !resetDone[sp.acc.jid.String()] {
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			err := mgr.ClearDeviceList(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("%s: resetting the device list: %w", sp.name, err)
			}
			resetDone[sp.acc.jid.String()] = true
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		self, _, err := mgr.OwnDevices(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: reading own device: %w", sp.name, err)
		}
		names[c.deviceID()] = sp.name
		fingerprints[sp.name] = self.Fingerprint()
		keys[mgr.IdentityKey()] = sp.name
		fmt.Fprintf(w, "  %-15s logged in as %s, OMEMO device %d published (%s)\n", sp.name, c.s.LocalAddr(), c.deviceID(), strings.Join(nsNames(mgr.Namespaces()), " + "))
		fmt.Fprintf(w, "  %-15s identity key fingerprint %s\n", "", self.Fingerprint())
	}

	alice1, bob := clients[0], clients[len(clients)-1]
	svc, err := discoverUpload(alice1, o.timeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  %-15s %s\n", "upload service", describeService(svc))
	hc := newHTTPClient(o.dial.insecure)
	defer hc.CloseIdleConnections()

	alice2 := alice1
	others := func(c *client) []*client { return nil }
	if o.aliceDevices == 2 {
		alice2 = clients[1]
		others = func(c *client) []*client {
			if c == alice1 {
				return []*client{clients[1]}
			}
			return []*client{alice1}
		}
	}
	third := "And this one comes from my other device."
	answer := "Got all three, Alice. This answer goes to each of your devices."
	if o.aliceDevices == 1 {
		third = "One more, to show that the session is reused."
		answer = "Got all three, Alice."
	}
	script := []step{
		{alice1, o.bob.jid, "Hi Bob! This message is end-to-end encrypted with OMEMO.", append([]*client{bob}, others(alice1)...)},
		{alice1, o.bob.jid, "The server only ever sees the ciphertext printed above.", append([]*client{bob}, others(alice1)...)},
		{alice2, o.bob.jid, third, append([]*client{bob}, others(alice2)...)},
		{bob, o.alice.jid, answer, clients[:len(clients)-1]},
	}

	for i, st := range script {
		fmt.Fprintf(w, "\n── %d. %s → %s ──────────────────────────────\n", i+1, st.from.name, st.to)
		fmt.Fprintf(w, "  sends %q\n", st.body)
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		res, err := st.from.p.Send(ctx, st.to, st.body)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: sending: %w", st.from.name, err)
		}
		fmt.Fprintf(w, "  encrypted for %s\n", describeRecipients(res.Recipients, names))
		for _, f := range res.Failures {
			fmt.Fprintf(w, "  could not encrypt for %s device %d: %v\n", f.JID, f.DeviceID, f.Err)
		}
		printWire(w, st.from, res.ID)
		for _, rc := range st.expect {
			m, err := rc.expect(o.timeout)
			if err != nil {
				return err
			}
			if m.Body != st.body {
				return fmt.Errorf("%s decrypted %q, want %q", rc.name, m.Body, st.body)
			}
			sender := keys[m.IdentityKey]
			if sender != st.from.name || names[m.SenderDevice] != st.from.name {
				return fmt.Errorf("%s: message attributed to device %d with identity key of %q, want %s", rc.name, m.SenderDevice, sender, st.from.name)
			}
			printDecrypted(w, rc.name, fmt.Sprintf("%q", m.Body), m, names, fingerprints[sender])
		}
	}

	// Alice shares a file with Bob; the link reaches the same devices as
	// her messages.
	fileMsg := fileStep{alice1, o.bob.jid, append([]*client{bob}, others(alice1)...), bob}
	fmt.Fprintf(w, "\n── %d. %s → %s: a file ──────────────────────────\n", len(script)+1, fileMsg.from.name, fileMsg.to)
	fileDecryptions, err := shareFile(w, fileMsg, svc, hc, o.timeout, names, keys, fingerprints)
	if err != nil {
		return err
	}

	// Nothing else may arrive, and nothing may have been rejected.
	time.Sleep(300 * time.Millisecond)
	for _, c := range clients {
		select {
		case m := <-c.msgs:
			if m.File != nil {
				m.File.Wipe()
				return fmt.Errorf("%s: unexpected file link from %s", c.name, m.From)
			}
			return fmt.Errorf("%s: unexpected message %q from %s", c.name, m.Body, m.From)
		default:
		}
		c.mu.Lock()
		errs := c.errs
		c.mu.Unlock()
		for _, err := range errs {
			var de *omemo.DecryptError
			if errors.As(err, &de) {
				return fmt.Errorf("%s rejected a message: %w", c.name, err)
			}
		}
	}
	n := 0
	for _, st := range script {
		n += len(st.expect)
	}
	n += fileDecryptions
	fmt.Fprintf(w, "\nOK: %d messages sent (one of them a file's link), %d decryptions as expected, 1 file downloaded with the right SHA-256, none rejected.\n", len(script)+1, n)
	return nil
}

// printWire prints the stanza with the given id as from wrote it.
func printWire(w io.Writer, from *client, id string) {
	got, ok := from.wire(id, 2*time.Second)
	if !ok {
		fmt.Fprintf(w, "  (the stanza was not captured from the stream tee)\n")
		return
	}
	fmt.Fprintf(w, "  on the wire, %s → server (%d bytes inside TLS):\n", from.name, len(got.Raw))
	text, err := pretty(got.Raw, "    ")
	if err != nil {
		fmt.Fprintf(w, "    (unparsable: %v)\n", err)
		return
	}
	fmt.Fprint(w, text)
}

// printDecrypted prints what who decrypted: what (the quoted body, or a
// description of a file link) and how.
func printDecrypted(w io.Writer, who, what string, m omemo.Message, names map[uint32]string, fp string) {
	var how []string
	how = append(how, nsName(m.Namespace))
	if m.Carbon {
		if m.Sent {
			how = append(how, "sent carbon (a copy of what another device of the account sent)")
		} else {
			how = append(how, "received carbon")
		}
	}
	kex := "no (the session exists)"
	if m.KeyExchange {
		kex = "yes (X3DH, repeated until the recipient answers)"
	}
	level := m.Trust.String()
	if m.TrustLevel != "" && m.TrustLevel != level {
		level += " (" + m.TrustLevel + ")"
	}
	if m.Trust == trust.Undecided {
		level += " (delivered but flagged; blind trust decides once this device encrypts to it)"
	}
	fmt.Fprintf(w, "  %s decrypted %s\n", who, what)
	fmt.Fprintf(w, "      from %s, device %d = %s, %s\n", m.From, m.SenderDevice, names[m.SenderDevice], strings.Join(how, ", "))
	fmt.Fprintf(w, "      identity key %s (the sender's), key exchange: %s\n", shortFingerprint(fp), kex)
	fmt.Fprintf(w, "      trust: %s\n", level)
}

// shortFingerprint keeps the first and last group of a fingerprint.
func shortFingerprint(fp string) string {
	g := strings.Fields(fp)
	if len(g) < 3 {
		return fp
	}
	return g[0] + " … " + g[len(g)-1]
}

func describeRecipients(rs []session.Recipient, names map[uint32]string) string {
	if len(rs) == 0 {
		return "no device"
	}
	var parts []string
	for _, r := range rs {
		name := names[r.DeviceID]
		if name == "" {
			name = "a device of an earlier run"
		}
		parts = append(parts, fmt.Sprintf("%d = %s (%s)", r.DeviceID, name, nsName(r.Namespace)))
	}
	return fmt.Sprintf("%d device(s): %s", len(rs), strings.Join(parts, ", "))
}

func nsName(namespace string) string {
	switch namespace {
	case ns.OMEMO2:
		return "OMEMO 2"
	case ns.Legacy:
		return "legacy OMEMO"
	}
	return namespace
}

func nsNames(nss []string) []string {
	out := make([]string, len(nss))
	for i, n := range nss {
		out[i] = nsName(n)
	}
	return out
}

func serverName(addr string, j jid.JID) string {
	if addr == "" {
		return j.Domainpart() + " (DNS lookup)"
	}
	return addr + " (domain " + j.Domainpart() + ")"
}
