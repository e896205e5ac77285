package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"mellium.im/omemo"
	"mellium.im/xmpp/jid"
)

// game is one ping-pong round: each side answers "ping k" with "ping k+1"
// until n messages were received.
type game struct {
	mu       sync.Mutex
	k, n     int
	finished chan time.Time
	fail     chan error
}

func newGame(n int) *game {
	return &game{n: n, finished: make(chan time.Time, 1), fail: make(chan error, 2)}
}

// next checks the received body and returns the answer to send, or ok
// false when nothing is to be sent (the round is over or failed).
func (g *game) next(name, body string) (answer string, ok bool) {
	var got int
	if _, err := fmt.Sscanf(body, "ping %d", &got); err != nil {
		return "", false
	}
	g.mu.Lock()
	if got != g.k {
		g.mu.Unlock()
		select {
		case g.fail <- fmt.Errorf("%s: got %d, want %d", name, got, g.k):
		default:
		}
		return "", false
	}
	g.k++
	next := g.k
	g.mu.Unlock()
	if next == g.n {
		g.finished <- time.Now()
		return "", false
	}
	return "ping " + strconv.Itoa(next), true
}

func (g *game) failed(err error) {
	select {
	case g.fail <- err:
	default:
	}
}

// usage is what a round cost: wall time, CPU time of this process (both
// clients), CPU time of the server, and the bytes the clients read.
type usage struct {
	wall, self, server time.Duration
	bytesIn, reads     int64
}

func (u usage) sub(v usage) usage {
	return usage{u.wall - v.wall, u.self - v.self, u.server - v.server, u.bytesIn - v.bytesIn, u.reads - v.reads}
}

// selfCPU returns the user and system CPU time of this process.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverCPU returns the CPU time of process pid (all its threads) from
// /proc/<pid>/task/*/schedstat (nanoseconds on the CPU), 0 if pid is 0 or
// unreadable.
func serverCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var sum time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err == nil {
			sum += time.Duration(ns)
		}
	}
	return sum
}

// pair is the two ping-pong accounts of one kind: OMEMO, plain, or plain
// with stanzas shaped like the OMEMO ones ("shaped").
type pair struct {
	kind string
	// cur is the running round; the handlers answer through it.
	cur  *atomic.Pointer[game]
	kick func(ctx context.Context) error // sends "ping 0" from the first side
	// before, if set, runs before each round.
	before func() error
	errs   []chan error
	recs   []*recorder
	stop   func()
}

// round plays one ping-pong of n messages and returns its messages per
// second and what it cost.
func (p *pair) round(o options, n int) (float64, usage, error) {
	if p.before != nil {
		if err := p.before(); err != nil {
			return 0, usage{}, err
		}
	}
	g := newGame(n)
	p.cur.Store(g)
	defer p.cur.Store(nil)
	measure := func() usage {
		u := usage{wall: time.Duration(time.Now().UnixNano()), self: selfCPU(), server: serverCPU(o.serverPID)}
		for _, r := range p.recs {
			u.bytesIn += r.bytesIn.Load()
			u.reads += r.reads.Load()
		}
		return u
	}
	before := measure()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if err := p.kick(ctx); err != nil {
		return 0, usage{}, err
	}
	timeout := time.After(4 * o.timeout)
	var errc [2]chan error
	copy(errc[:], p.errs)
	for {
		select {
		case end := <-g.finished:
			u := measure().sub(before)
			u.wall = end.Sub(start)
			return float64(n) / u.wall.Seconds(), u, nil
		case err := <-g.fail:
			return 0, usage{}, err
		case err := <-errc[0]:
			return 0, usage{}, err
		case err := <-errc[1]:
			return 0, usage{}, err
		case <-timeout:
			g.mu.Lock()
			defer g.mu.Unlock()
			return 0, usage{}, fmt.Errorf("%s: timeout after %d messages", p.kind, g.k)
		}
	}
}

// omemoPair connects the OMEMO ping-pong accounts.
func omemoPair(o options) (*pair, error) {
	aJID := jid.MustParse(o.prefix + "ping@" + o.domain)
	bJID := jid.MustParse(o.prefix + "pong@" + o.domain)
	pp := &pair{kind: "omemo", cur: new(atomic.Pointer[game])}
	// Each handler answers with the next number: Send may be called from a
	// Handler.
	answer := func(to jid.JID) func(*client, omemo.Message) {
		return func(c *client, m omemo.Message) {
			g := pp.cur.Load()
			if g == nil {
				return
			}
			body, ok := g.next(c.name, m.Body)
			if !ok {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			if _, err := c.p.Send(ctx, to, body); err != nil {
				g.failed(fmt.Errorf("%s: Send: %w", c.name, err))
			}
		}
	}
	a, err := connect(o, o.prefix+"ping", true, answer(bJID))
	if err != nil {
		return nil, err
	}
	b, err := connect(o, o.prefix+"pong", true, answer(aJID))
	if err != nil {
		a.close()
		return nil, err
	}
	pp.kick = func(ctx context.Context) error {
		_, err := a.p.Send(ctx, bJID, "ping 0")
		return err
	}
	pp.errs = []chan error{a.errs, b.errs}
	pp.recs = []*recorder{a.tap, b.tap}
	pp.stop = func() { a.close(); b.close() }
	return pp, nil
}

// plainPairs connects the plain ping-pong accounts and returns two pairs
// on them: plain <body> messages, and the same messages shaped like the
// OMEMO ones (see shapeLike), which tell the server's share of the
// difference (it handles stanzas of the same size and structure) from the
// plugin's (the plain clients do not encrypt, decrypt or store anything).
func plainPairs(o options, sample func() []byte) (plain, shaped *pair, err error) {
	aJID := jid.MustParse(o.prefix + "plainping@" + o.domain)
	bJID := jid.MustParse(o.prefix + "plainpong@" + o.domain)
	cur := new(atomic.Pointer[game])
	var sh atomic.Pointer[shape]
	answer := func(to jid.JID) func(*plainClient, string) {
		return func(c *plainClient, body string) {
			g := cur.Load()
			if g == nil {
				return
			}
			next, ok := g.next(c.name, body)
			if !ok {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			if err := c.send(ctx, to, next, sh.Load()); err != nil {
				g.failed(fmt.Errorf("%s: send: %w", c.name, err))
			}
		}
	}
	a, err := connectPlain(o, o.prefix+"plainping", answer(bJID))
	if err != nil {
		return nil, nil, err
	}
	b, err := connectPlain(o, o.prefix+"plainpong", answer(aJID))
	if err != nil {
		a.close()
		return nil, nil, err
	}
	errs := []chan error{make(chan error), make(chan error)}
	recs := []*recorder{a.tap, b.tap}
	plain = &pair{kind: "plain", cur: cur, errs: errs, recs: recs,
		before: func() error { sh.Store(nil); return nil },
		kick:   func(ctx context.Context) error { return a.send(ctx, bJID, "ping 0", nil) },
		stop:   func() { a.close(); b.close() },
	}
	var shapeOf *shape
	shaped = &pair{kind: "shaped", cur: cur, errs: errs, recs: recs,
		before: func() error {
			if shapeOf == nil {
				s, err := shapeLike(sample())
				if err != nil {
					return fmt.Errorf("shaping plain messages: %w", err)
				}
				shapeOf = s
			}
			sh.Store(shapeOf)
			return nil
		},
		kick: func(ctx context.Context) error { return a.send(ctx, bJID, "ping 0", sh.Load()) },
		stop: func() {},
	}
	return plain, shaped, nil
}

// sideBySide runs the OMEMO ping-pong once with the session set-up (the
// figure compared with Python), then -rounds rounds of the plain and the
// OMEMO ping-pong on the same connections, alternating which goes first,
// and prints both with their ratio; then the profiled rounds, if asked.
func sideBySide(o options) (float64, error) {
	// Prosody's internal archive store keeps at most 10,000 messages per
	// account (storage_archive_item_limit); beyond, it reloads and
	// truncates the archive at every message, ~70 ms each, which would
	// swamp everything measured here. Each account's archive gets every
	// message of its pair.
	profile := 0
	if o.cpuProfile != "" || o.blockProfile != "" || o.mutexProfile != "" {
		profile = o.profileMessages
	}
	plainProfile := 0
	if o.plainCPUProfile != "" {
		plainProfile = o.profileMessages
	}
	const archiveLimit = 9500
	if n := o.messages*(1+o.rounds) + profile; n > archiveLimit {
		return 0, fmt.Errorf("the OMEMO accounts would archive %d messages, more than Prosody's limit of 10,000 allows (fewer -messages, -rounds or -profile-messages)", n)
	}
	if n := 2*o.messages*o.rounds + plainProfile; n > archiveLimit {
		return 0, fmt.Errorf("the plain accounts would archive %d messages, more than Prosody's limit of 10,000 allows (fewer -messages, -rounds or -profile-messages)", n)
	}
	op, err := omemoPair(o)
	if err != nil {
		return 0, err
	}
	defer op.stop()
	pl, sh, err := plainPairs(o, op.recs[0].lastMessage)
	if err != nil {
		return 0, err
	}
	defer pl.stop()

	first, u, err := op.round(o, o.messages)
	if err != nil {
		return 0, err
	}
	fmt.Fprintf(os.Stderr, "go ping-pong: %d messages in %.1f ms (session set-up included)\n", o.messages, ms(u.wall))

	// Each round plays the three kinds in a rotating order, so that none
	// always runs first (or right after the same one).
	kinds := []*pair{pl, sh, op}
	mps := map[*pair][]float64{}
	use := map[*pair][]usage{}
	var ratios, shapedRatios []float64
	for r := 1; r <= o.rounds; r++ {
		got := map[*pair]float64{}
		for i := range kinds {
			p := kinds[(i+r-1)%len(kinds)]
			m, u, err := p.round(o, o.messages)
			if err != nil {
				return 0, err
			}
			fmt.Fprintf(os.Stderr, "round %d %-6s %7.1f msg/s  %s\n", r, p.kind, m, perMessage(u, o.messages))
			got[p] = m
			mps[p] = append(mps[p], m)
			use[p] = append(use[p], u)
		}
		ratios = append(ratios, got[op]/got[pl])
		shapedRatios = append(shapedRatios, got[op]/got[sh])
	}
	if o.rounds > 0 {
		fmt.Printf("plain_mps %.1f\n", medianF(mps[pl]))
		fmt.Printf("shaped_mps %.1f\n", medianF(mps[sh]))
		fmt.Printf("omemo_mps %.1f\n", medianF(mps[op]))
		fmt.Printf("omemo_plain_ratio %.2f\n", medianF(ratios))
		fmt.Printf("omemo_shaped_ratio %.2f\n", medianF(shapedRatios))
		for _, p := range kinds {
			u := medianU(use[p])
			fmt.Fprintf(os.Stderr, "median per message: %-6s %s\n", p.kind, perMessage(u, o.messages))
			per := func(d time.Duration) float64 { return float64(d) / float64(o.messages) / float64(time.Microsecond) }
			fmt.Printf("%s_us_per_msg wall %.1f client_cpu %.1f server_cpu %.1f bytes %d\n", p.kind, per(u.wall), per(u.self), per(u.server), u.bytesIn/int64(o.messages))
		}
	}
	if err := profiled(o, op, o.cpuProfile, o.blockProfile, o.mutexProfile); err != nil {
		return 0, err
	}
	if err := profiled(o, pl, o.plainCPUProfile, "", ""); err != nil {
		return 0, err
	}
	return first, nil
}

// perMessage describes a round's cost per message.
func perMessage(u usage, n int) string {
	per := func(d time.Duration) float64 { return float64(d) / float64(n) / float64(time.Microsecond) }
	s := fmt.Sprintf("wall %6.1f us, Go CPU (both clients) %6.1f us", per(u.wall), per(u.self))
	if u.server > 0 {
		s += fmt.Sprintf(", server CPU %6.1f us", per(u.server))
	}
	return s + fmt.Sprintf(", %5d bytes read/msg, %.2f reads/msg", u.bytesIn/int64(n), float64(u.reads)/float64(n))
}

// profiled plays one more round of p with the CPU profile (and the block
// and mutex profiles) written to the given files, if any is set.
func profiled(o options, p *pair, cpu, block, mutex string) error {
	if cpu == "" && block == "" && mutex == "" {
		return nil
	}
	if o.trace != "" && p.kind == "omemo" {
		f, err := os.Create(o.trace)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}
	if cpu != "" {
		f, err := os.Create(cpu)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	if block != "" {
		runtime.SetBlockProfileRate(1000) // one sample per µs blocked
		defer runtime.SetBlockProfileRate(0)
	}
	if mutex != "" {
		runtime.SetMutexProfileFraction(1)
		defer runtime.SetMutexProfileFraction(0)
	}
	mps, u, err := p.round(o, o.profileMessages)
	if cpu != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "profiled %s round: %.1f msg/s  %s\n", p.kind, mps, perMessage(u, o.profileMessages))
	for _, w := range []struct{ name, file string }{{"block", block}, {"mutex", mutex}} {
		if w.file == "" {
			continue
		}
		f, err := os.Create(w.file)
		if err != nil {
			return err
		}
		err = pprof.Lookup(w.name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func medianF(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// medianU is the usage of median wall time.
func medianU(v []usage) usage {
	s := slices.Clone(v)
	slices.SortFunc(s, func(a, b usage) int { return int(a.wall - b.wall) })
	return s[len(s)/2]
}
