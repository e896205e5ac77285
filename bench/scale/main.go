// Command scale is the scale benchmark of the session manager (issue 16):
// one account with many peer devices, many accounts in one process, and
// the PostgreSQL store next to bbolt. It drives the public API of package
// session on the in-memory server of session/sessiontest, with peer
// devices synthesised on demand (see crowd.go), and prints the tables of
// the README's "Scale" section.
//
//	go run ./bench/scale                      # the full run (see -devices, -accounts)
//	go run ./bench/scale -quick               # small sizes, a minute or so
//	bash scripts/bench-scale.sh               # the same through the script
//
// Every case runs in a process of its own (the program runs itself with
// -case), so that the heap, the RSS and the goroutines of one case are not
// those of another. For PostgreSQL the program starts a throw-away
// PostgreSQL 15 cluster (internal/pgtest: Debian's binaries, fsync on, on
// 127.0.0.1) unless -dsn names a server, and each case uses a database of
// its own.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"mellium.im/omemo/internal/pgtest"
	"mellium.im/omemo/store"
)

// ownJID is the account of the one-account cases.
const ownJID = "alice@example.org"

// options are the parameters of a run.
type options struct {
	devices  []int
	accounts []int
	stores   []string
	perJID   int
	batch    int
	workers  int
	messages int
	workSet  int
	restarts int
	dir      string
	dsn      string
	heapProf string
	cpuProf  string
	verbose  bool
}

func main() {
	var o options
	var devices, accounts, stores, kase, backendList string
	var quick bool
	flag.StringVar(&devices, "devices", "1000,10000,200000", "peer device counts of the one-account cases (empty: none)")
	flag.StringVar(&accounts, "accounts", "1000,10000", "account counts of the many-accounts cases (empty: none)")
	flag.StringVar(&stores, "stores", "bolt,postgres", "stores: bolt, postgres")
	flag.BoolVar(&quick, "quick", false, "small sizes: -devices 1000,10000 -accounts 1000 -messages 300 -restarts 3")
	flag.StringVar(&backendList, "backends", "twomemo,oldmemo", "backends of every Manager, in priority order (twomemo, oldmemo)")
	flag.IntVar(&o.perJID, "per-jid", 1, "devices per peer account")
	flag.IntVar(&o.batch, "batch", 100, "peer accounts per Encrypt while messaging every device once")
	flag.IntVar(&o.workers, "workers", 2, "goroutines messaging the devices (setup only)")
	flag.IntVar(&o.messages, "messages", 1000, "messages per steady-state latency figure")
	flag.IntVar(&o.workSet, "working-set", 100, "devices of the working set (warm Encrypt)")
	flag.IntVar(&o.restarts, "restarts", 5, "restarts per start-up figure")
	flag.StringVar(&o.dir, "dir", "", "directory for the bbolt files (default: the system's temporary directory)")
	flag.StringVar(&o.dsn, "dsn", "", "PostgreSQL server (a database the cases may create databases from); default: start a throw-away cluster")
	flag.StringVar(&kase, "case", "", "run one case and print its result (devices:STORE:N, accounts:STORE:M, steady:STORE)")
	flag.StringVar(&o.heapProf, "heapprofile", "", "write a heap profile to this file (devices: after messaging every device; accounts: all started and idle; without -case: one file per case, named FILE.CASE)")
	flag.StringVar(&o.cpuProf, "cpuprofile", "", "write a CPU profile of the measured part of each case to this file (without -case: one file per case, named FILE.CASE)")
	flag.BoolVar(&o.verbose, "v", false, "progress on stderr")
	flag.Parse()
	if quick {
		devices, accounts, o.messages, o.restarts = "1000,10000", "1000", 300, 3
		setIfUnset("devices", &devices)
		setIfUnset("accounts", &accounts)
	}
	var err error
	if o.devices, err = ints(devices); err != nil {
		fatal(err)
	}
	if o.accounts, err = ints(accounts); err != nil {
		fatal(err)
	}
	o.stores = splitList(stores)
	if err := setBackends(backendList); err != nil {
		fatal(err)
	}
	if o.dir == "" {
		o.dir = os.TempDir()
	}
	ctx := context.Background()
	if kase != "" {
		r, err := runCase(ctx, &o, kase)
		if o.cpuProf != "" {
			pprof.StopCPUProfile()
		}
		if err != nil {
			fatal(fmt.Errorf("case %s: %w", kase, err))
		}
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
		return
	}
	if err := runAll(ctx, &o, os.Stdout); err != nil {
		fatal(err)
	}
}

// setIfUnset lets an explicit flag win over -quick.
func setIfUnset(name string, v *string) {
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			*v = f.Value.String()
		}
	})
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "scale:", err)
	os.Exit(1)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// runCase runs one case in this process.
func runCase(ctx context.Context, o *options, kase string) (*result, error) {
	parts := strings.Split(kase, ":")
	if len(parts) < 2 {
		return nil, fmt.Errorf("bad case %q", kase)
	}
	n := 0
	if len(parts) > 2 {
		var err error
		if n, err = strconv.Atoi(parts[2]); err != nil {
			return nil, fmt.Errorf("bad case %q", kase)
		}
	}
	b, err := newBacking(ctx, parts[1], o.dir, o.dsn, parts[0])
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.cleanup(context.Background()); err != nil {
			fmt.Fprintln(os.Stderr, "scale: cleanup:", err)
		}
	}()
	switch parts[0] {
	case "devices":
		return runDevices(ctx, o, b, n)
	case "accounts":
		return runAccounts(ctx, o, b, n)
	case "steady":
		return runSteady(ctx, o, b)
	}
	return nil, fmt.Errorf("bad case %q", kase)
}

// runAll runs every case in a child process and prints the tables.
func runAll(ctx context.Context, o *options, w io.Writer) error {
	if slices.Contains(o.stores, "postgres") && o.dsn == "" {
		srv, err := pgtest.Launch()
		if err != nil {
			return fmt.Errorf("starting PostgreSQL: %w", err)
		}
		defer srv.Stop()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			srv.Stop()
			os.Exit(1)
		}()
		o.dsn = srv.DSN("postgres")
	}
	var cases []string
	for _, st := range o.stores {
		cases = append(cases, "steady:"+st)
	}
	for _, n := range o.devices {
		for _, st := range o.stores {
			cases = append(cases, fmt.Sprintf("devices:%s:%d", st, n))
		}
	}
	for _, n := range o.accounts {
		for _, st := range o.stores {
			cases = append(cases, fmt.Sprintf("accounts:%s:%d", st, n))
		}
	}
	var results []*result
	for _, c := range cases {
		fmt.Fprintf(os.Stderr, "scale: %s ...\n", c)
		start := time.Now()
		r, err := runChild(ctx, o, c)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "scale: %s done in %v\n", c, time.Since(start).Round(time.Second))
		results = append(results, r)
	}
	printTables(w, results)
	return nil
}

// runChild runs a case in a new process of this program.
func runChild(ctx context.Context, o *options, kase string) (*result, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{"-case", kase, "-per-jid", strconv.Itoa(o.perJID), "-batch", strconv.Itoa(o.batch),
		"-workers", strconv.Itoa(o.workers), "-messages", strconv.Itoa(o.messages),
		"-working-set", strconv.Itoa(o.workSet), "-restarts", strconv.Itoa(o.restarts),
		"-dir", o.dir, "-dsn", o.dsn, "-backends", backendNames()}
	if o.verbose {
		args = append(args, "-v")
	}
	// Profiles of every case, one file per case.
	suffix := "." + strings.ReplaceAll(kase, ":", "-")
	if o.cpuProf != "" {
		args = append(args, "-cpuprofile", o.cpuProf+suffix)
	}
	if o.heapProf != "" {
		args = append(args, "-heapprofile", o.heapProf+suffix)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var r *result
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
		if !ok {
			fmt.Fprintln(os.Stderr, sc.Text())
			continue
		}
		r = new(result)
		if err := json.Unmarshal([]byte(line), r); err != nil {
			return nil, err
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("case %s: %w", kase, err)
	}
	if r == nil {
		return nil, fmt.Errorf("case %s: no result", kase)
	}
	return r, nil
}

// startProfile starts the CPU profile of -cpuprofile; the cases call it
// where their measured part begins (the start-ups and steady state of the
// one-account case, the restarts of the many-accounts case, all of the
// steady case).
func (o *options) startProfile() error {
	if o.cpuProf == "" {
		return nil
	}
	f, err := os.Create(o.cpuProf)
	if err != nil {
		return err
	}
	return pprof.StartCPUProfile(f)
}

// progress prints to stderr with -v.
func (o *options) progress(format string, args ...any) {
	if o.verbose {
		fmt.Fprintf(os.Stderr, "scale: "+format+"\n", args...)
	}
}

// liveHeap is the live heap after a collection.
func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss returns the resident set size and its peak, in bytes.
func rss() (cur, peak uint64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			cur = v << 10
		case "VmHWM:":
			peak = v << 10
		}
	}
	return cur, peak
}

// cpuTime is the CPU time (user and system) of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// median of durations (0 if none).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile p (0-100) of durations.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p / 100 * float64(len(s)-1))
	return s[i]
}

// samples are the wall and CPU times of repeated operations.
type samples struct{ wall, cpu []time.Duration }

// measure runs f and records its wall and CPU time (the CPU of the whole
// process: background goroutines and the collector included).
func (s *samples) measure(f func() error) error {
	c0, t0 := cpuTime(), time.Now()
	err := f()
	s.wall = append(s.wall, time.Since(t0))
	s.cpu = append(s.cpu, cpuTime()-c0)
	return err
}

// stat is the median and 90th percentile of the wall times and the
// median CPU time.
func (s *samples) stat() timing {
	return timing{Median: median(s.wall), P90: percentile(s.wall, 90), CPU: median(s.cpu)}
}

// timing summarises samples.
type timing struct {
	Median time.Duration `json:"median"`
	P90    time.Duration `json:"p90"`
	CPU    time.Duration `json:"cpu"`
}

// floorKey is written by the commit floor probe.
const floorKey = "scale/floor"

// floorCommit is the cheapest durable commit of st: one key of 400 bytes.
// Interleaved with the measured operations, it shows what the disk's
// fsync costs at that moment.
func floorCommit(ctx context.Context, st store.Store) error {
	return st.Update(ctx, func(tx store.Tx) error { return tx.Put(floorKey, make([]byte, 400)) })
}
