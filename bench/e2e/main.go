// Command e2e is the Go half of the end-to-end OMEMO benchmark
// (scripts/bench-e2e.sh): it runs the mellium.im/omemo plugin against a
// running Prosody and measures
//
//   - the first-message latency: a fresh sender device (new account, empty
//     store, never talked to the contact) sends one message to a contact
//     with three online devices; the time from calling Send until the last
//     of the three devices has decrypted it, median over -runs runs;
//   - the throughput of a -messages message ping-pong between two accounts
//     (A sends, B decrypts and answers, A decrypts, …), in messages per
//     second, session setup included;
//   - side by side, -rounds times on the same connections: the same
//     ping-pong with established sessions, and the baseline, a ping-pong of
//     plain <body> messages between two accounts without OMEMO (mellium
//     sessions set up alike: carbons on, available), with the ratio of the
//     two (OMEMO msg/s ÷ plain msg/s). Per message it reports the wall
//     time, the CPU time of this process (both clients) and, with
//     -server-pid, of the server, and the bytes the clients read.
//
// The devices keep their OMEMO state in memory, as the Python reference
// does; -store bolt gives each the persistent default store instead (two
// fsync'd commits per message of the ping-pong: the decryption with its
// inbox entry, and the answer's encryption).
//
// -quick skips the first-message latency. -cpuprofile, -blockprofile and
// -mutexprofile play one more OMEMO round of -profile-messages messages with
// those profiles written; -plaincpuprofile does the same for the plain one.
//
// For the first-message latency it also taps the sender's XMPP stream
// (after TLS, before the XML decoder) and reports every IQ the sender sent
// during Send, with its round trip time and its depth: the number of
// responses that had to arrive before it could be sent, plus one. The
// largest depth is the number of sequential round trips on the critical
// path.
//
// The accounts must exist (password "password" unless -password):
// <prefix>bob, <prefix>send1 … <prefix>send<runs>, <prefix>ping,
// <prefix>pong, <prefix>plainping and <prefix>plainpong. Results go to stdout as "key value" lines, diagnostics to
// stderr.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/bundle"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/store"
	"mellium.im/sasl"
	"mellium.im/xmpp"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/mux"
	"mellium.im/xmpp/stanza"
)

type options struct {
	addr, domain, password, prefix string
	runs, messages, devices        int
	timeout                        time.Duration
	quick                          bool
	rounds, profileMessages        int
	serverPID                      int
	cpuProfile, plainCPUProfile    string
	blockProfile, mutexProfile     string
	trace                          string
	store                          string
	storeDir                       string
}

func main() {
	var o options
	flag.StringVar(&o.addr, "addr", "127.0.0.1:5222", "c2s address of the server")
	flag.StringVar(&o.domain, "domain", "localhost", "XMPP domain of the accounts")
	flag.StringVar(&o.password, "password", "password", "password of every account")
	flag.StringVar(&o.prefix, "prefix", "go", "account name prefix")
	flag.IntVar(&o.runs, "runs", 5, "first-message latency runs (fresh sender each)")
	flag.IntVar(&o.messages, "messages", 200, "messages in the ping-pong")
	flag.IntVar(&o.devices, "devices", 3, "devices of the contact")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Second, "timeout of each step")
	flag.BoolVar(&o.quick, "quick", false, "skip the first-message latency")
	flag.IntVar(&o.rounds, "rounds", 3, "side-by-side rounds of the plain and the OMEMO ping-pong")
	flag.IntVar(&o.serverPID, "server-pid", 0, "pid of the server, for its CPU time per message")
	flag.IntVar(&o.profileMessages, "profile-messages", 2000, "messages of the profiled rounds")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of an extra OMEMO round")
	flag.StringVar(&o.blockProfile, "blockprofile", "", "write a block profile of the extra OMEMO round")
	flag.StringVar(&o.mutexProfile, "mutexprofile", "", "write a mutex profile of the extra OMEMO round")
	flag.StringVar(&o.store, "store", "memory", "store of the OMEMO devices: memory, or bolt (the persistent default, a file per device in a temporary directory, fsync'd commits)")
	flag.StringVar(&o.trace, "trace", "", "write an execution trace of the extra OMEMO round (with -cpuprofile)")
	flag.StringVar(&o.plainCPUProfile, "plaincpuprofile", "", "write a CPU profile of an extra plain round")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	switch o.store {
	case "memory":
	case "bolt":
		dir, err := os.MkdirTemp("", "e2e-stores-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.storeDir = dir
	default:
		return fmt.Errorf("unknown -store %q", o.store)
	}
	if !o.quick {
		lat, err := firstMessage(o)
		if err != nil {
			return fmt.Errorf("first-message latency: %w", err)
		}
		fmt.Printf("latency_ms %.2f\n", ms(lat))
	}
	mps, err := sideBySide(o)
	if err != nil {
		return fmt.Errorf("ping-pong: %w", err)
	}
	fmt.Printf("pingpong_mps %.1f\n", mps)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// received is a decrypted message and when it was handed to the handler.
type received struct {
	body string
	at   time.Time
}

// client is one device: a session, its plugin and its decrypted messages.
type client struct {
	name string
	s    *xmpp.Session
	p    *omemo.Plugin
	st   store.Store
	tap  *recorder
	msgs chan received
	done chan struct{}
	stop context.CancelFunc
	errs chan error
}

// connect logs a device of account name in, starts its plugin (fresh
// in-memory store) and, if presence, makes it available.
// onMsg, if set, replaces the default handler (which queues to msgs).
func connect(o options, name string, presence bool, onMsg func(*client, omemo.Message)) (*client, error) {
	// The dial context lives as long as the session: mellium watches it
	// after the call returned (see internal/prosodytest.Dial).
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{name: name, tap: &recorder{}, msgs: make(chan received, 1024), done: make(chan struct{}), stop: cancel, errs: make(chan error, 16)}
	dctx, dcancel := context.WithTimeout(ctx, o.timeout)
	defer dcancel()
	s, err := dial(dctx, o, name, c.tap)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("dial %s: %w", name, err)
	}
	c.s = s
	st, err := openStore(o)
	if err != nil {
		cancel()
		_ = s.Close()
		return nil, err
	}
	c.st = st
	p, err := omemo.New(s, omemo.Config{
		Store:        st,
		SendPresence: presence,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnError: func(err error) {
			select {
			case c.errs <- err:
			default:
			}
		},
	})
	if err != nil {
		cancel()
		_ = s.Close()
		_ = st.Close()
		return nil, err
	}
	c.p = p
	h := omemo.HandlerFunc(func(m omemo.Message) {
		if m.Body == "" {
			return // empty OMEMO messages (session completion, heartbeats)
		}
		if onMsg != nil {
			onMsg(c, m)
			return
		}
		select {
		case c.msgs <- received{m.Body, time.Now()}:
		default:
		}
	})
	m := mux.New(stanza.NSClient, p.Handle(h))
	go func() {
		defer close(c.done)
		_ = s.Serve(m)
	}()
	sctx, scancel := context.WithTimeout(context.Background(), o.timeout)
	defer scancel()
	if err := p.Start(sctx); err != nil {
		c.close()
		return nil, fmt.Errorf("%s: Start: %w", name, err)
	}
	return c, nil
}

// openStore returns a fresh store for a device (-store).
func openStore(o options) (store.Store, error) {
	if o.store != "bolt" {
		return store.NewMemory(), nil
	}
	f, err := os.CreateTemp(o.storeDir, "device-*.db")
	if err != nil {
		return nil, err
	}
	path := f.Name()
	_ = f.Close()
	_ = os.Remove(path)
	return store.Open(path, nil)
}

func (c *client) close() {
	defer c.stop()
	if c.p != nil {
		_ = c.p.Close()
	}
	if c.st != nil {
		_ = c.st.Close()
	}
	_ = c.s.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.s.Conn().Close()
		<-c.done
	}
}

// wait returns the time the message with body arrived.
func (c *client) wait(body string, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		select {
		case r := <-c.msgs:
			if r.body == body {
				return r.at, nil
			}
		case err := <-c.errs:
			return time.Time{}, fmt.Errorf("%s: %w", c.name, err)
		case <-deadline:
			return time.Time{}, fmt.Errorf("%s: %q not decrypted within %v", c.name, body, timeout)
		}
	}
}

// dial connects with STARTTLS (certificate not verified: loopback test
// server), SASL and resource binding; the decrypted stream is tapped by rec.
func dial(ctx context.Context, o options, name string, rec *recorder) (*xmpp.Session, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp4", o.addr)
	if err != nil {
		return nil, err
	}
	starttls := xmpp.StartTLS(&tls.Config{
		ServerName: o.domain,
		// #nosec G402 -- loopback benchmark server with a throw-away certificate.
		InsecureSkipVerify: true,
		MinVersion:         tls.VersionTLS12,
	})
	negotiate := starttls.Negotiate
	starttls.Negotiate = func(ctx context.Context, s *xmpp.Session, data any) (xmpp.SessionState, io.ReadWriter, error) {
		state, rw, err := negotiate(ctx, s, data)
		if tc, ok := rw.(*tls.Conn); ok && err == nil {
			rw = &tapConn{Conn: tc, tls: tc, rec: rec}
		}
		return state, rw, err
	}
	s, err := xmpp.NewClientSession(ctx, jid.MustParse(name+"@"+o.domain), conn,
		starttls,
		xmpp.SASL("", o.password, sasl.ScramSha256, sasl.ScramSha1, sasl.Plain),
		xmpp.BindResource(),
	)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

// firstMessage measures the first-message latency -runs times.
func firstMessage(o options) (time.Duration, error) {
	bob := jid.MustParse(o.prefix + "bob@" + o.domain)
	var devs []*client
	defer func() {
		for _, c := range devs {
			c.close()
		}
	}()
	// One after the other: each Start extends the device list the previous
	// one published.
	for range o.devices {
		c, err := connect(o, o.prefix+"bob", true, nil)
		if err != nil {
			return 0, err
		}
		devs = append(devs, c)
	}
	var lats []time.Duration
	for i := 1; i <= o.runs; i++ {
		sender, err := connect(o, fmt.Sprintf("%ssend%d", o.prefix, i), false, nil)
		if err != nil {
			return 0, err
		}
		body := fmt.Sprintf("first message %d", i)
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		sender.tap.begin()
		start := time.Now()
		res, err := sender.p.Send(ctx, bob, body)
		sent := time.Now()
		iqs := sender.tap.end()
		cancel()
		if err != nil {
			sender.close()
			return 0, fmt.Errorf("sending: %w", err)
		}
		var last time.Time
		for _, d := range devs {
			at, err := d.wait(body, o.timeout)
			if err != nil {
				sender.close()
				return 0, err
			}
			if at.After(last) {
				last = at
			}
		}
		sender.close()
		lat := last.Sub(start)
		lats = append(lats, lat)
		depth, perDepth := criticalPath(iqs, start)
		fmt.Fprintf(os.Stderr, "go run %d: latency %.2f ms (Send returned after %.2f ms, %d recipient devices, %d failures); %d PEP IQs, critical path %d sequential round trips\n",
			i, ms(lat), ms(sent.Sub(start)), len(res.Recipients), len(res.Failures), len(iqs), depth)
		for d := 1; d <= depth; d++ {
			fmt.Fprintf(os.Stderr, "    round %d: %s\n", d, perDepth[d])
		}
		if i == 1 {
			for _, q := range iqs {
				fmt.Fprintf(os.Stderr, "    iq %-28s %-45s %-9s sent +%6.2f ms  answered +%6.2f ms  depth %d\n",
					q.id, q.node, q.item, ms(q.sent.Sub(start)), ms(q.answered.Sub(start)), q.depth)
			}
		}
		fmt.Printf("go_run_latency_ms %.2f\n", ms(lat))
		fmt.Printf("go_run_pep_iqs %d\n", len(iqs))
		fmt.Printf("go_run_pep_rounds %d\n", depth)
		if len(res.Recipients) != o.devices {
			return 0, fmt.Errorf("the send reached %d devices, want %d (%v)", len(res.Recipients), o.devices, res.Failures)
		}
	}
	if err := probeBundles(o, devs); err != nil {
		return 0, err
	}
	return median(lats), nil
}

// probeBundles fetches the contact's OMEMO 2 bundles one at a time (bundle.Fetch on a fresh session)
// and prints how long each took and when the answer had arrived, to tell
// the server's share of the bundle round from the client's.
func probeBundles(o options, devs []*client) error {
	c, err := connect(o, o.prefix+"send1", false, nil)
	if err != nil {
		return err
	}
	defer c.close()
	bob := jid.MustParse(o.prefix + "bob@" + o.domain)
	for _, d := range devs {
		id := d.p.Manager().DeviceID()
		ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
		c.tap.begin()
		start := time.Now()
		_, err = bundle.Fetch(ctx, c.s, bob, ns.OMEMO2, id)
		took := time.Since(start)
		iqs := c.tap.end()
		cancel()
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		if len(iqs) == 1 {
			fmt.Fprintf(os.Stderr, "go probe: bundle.Fetch of device %d alone: %.2f ms (answer complete after %.2f ms)\n", id, ms(took), ms(iqs[0].answered.Sub(start)))
		}
	}
	// The same three fetches at once.
	var wg sync.WaitGroup
	c.tap.begin()
	start := time.Now()
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			_, _ = bundle.Fetch(ctx, c.s, bob, ns.OMEMO2, d.p.Manager().DeviceID())
		}()
	}
	wg.Wait()
	took := time.Since(start)
	iqs := c.tap.end()
	var last time.Duration
	for _, q := range iqs {
		last = max(last, q.answered.Sub(start))
	}
	fmt.Fprintf(os.Stderr, "go probe: %d bundle.Fetch in parallel: %.2f ms (last answer complete after %.2f ms)\n", len(iqs), ms(took), ms(last))
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// String describes the IQs of one depth: how many, which nodes (and item
// ids), when the first was sent and when the last was answered.
func (r round) String() string {
	return fmt.Sprintf("%d IQ(s) [%s], +%.2f → +%.2f ms", r.n, strings.Join(r.nodes, ", "), ms(r.first), ms(r.last))
}

// round is the summary of the IQs of one depth.
type round struct {
	n           int
	nodes       []string
	first, last time.Duration
}
