package main

import (
	"fmt"
	"io"
	"time"
)

// result is what a case measured. Durations are in nanoseconds, sizes in
// bytes; per-operation counts are means over the measured operations, and
// -1 where a store cannot count (server transactions of bbolt).
type result struct {
	Kind  string `json:"kind"`
	Store string `json:"store"`
	N     int    `json:"n,omitempty"`

	// One account with N peer devices.
	Setup         time.Duration `json:"setup,omitempty"`     // messaging every device once
	Heap          uint64        `json:"heap,omitempty"`      // live heap after that
	BaseHeap      uint64        `json:"base_heap,omitempty"` // live heap before the Manager started
	RSS           uint64        `json:"rss,omitempty"`       // RSS at the same moment
	PeakRSS       uint64        `json:"peak_rss,omitempty"`  // peak RSS of the setup
	Start         timing        `json:"start"`               // session.New on the existing store
	StartCommits  float64       `json:"start_commits"`       // store commits per New
	StartTrips    float64       `json:"start_trips"`         // round trips of New and its start-up work, -1 for bbolt
	OpenTrips     float64       `json:"open_trips"`          // round trips of the store's opening, -1 for bbolt
	Open          timing        `json:"open"`                // store open
	EncWarm       timing        `json:"enc_warm"`            // Encrypt to the working set
	EncAny        timing        `json:"enc_any"`             // Encrypt to any device
	EncCommits    float64       `json:"enc_commits"`         // store commits per Encrypt
	Floor         timing        `json:"floor"`               // one-key commit, interleaved
	EncWarmNoSync timing        `json:"enc_warm_nosync"`     // the same without durable commits
	EncAnyNoSync  timing        `json:"enc_any_nosync"`
	FloorNoSync   timing        `json:"floor_nosync"`
	Size          int64         `json:"size,omitempty"` // stored data
	FreePages     int           `json:"free_pages"`     // bbolt's free pages after the setup, -1 for PostgreSQL
	Backends      int           `json:"backends,omitempty"`
	CacheBudget   int64         `json:"cache_budget,omitempty"`

	// M accounts in one process.
	StartAll       time.Duration `json:"start_all,omitempty"`     // wall time to start all
	StartAllCPU    time.Duration `json:"start_all_cpu,omitempty"` // CPU time to start all
	Goroutines     int           `json:"goroutines,omitempty"`    // total, idle
	BaseGoroutines int           `json:"base_goroutines,omitempty"`
	HeapPerAccount float64       `json:"heap_per_account,omitempty"` // idle
	Restart        time.Duration `json:"restart,omitempty"`          // median wall time to restart all
	RestartCPU     time.Duration `json:"restart_cpu,omitempty"`      // median CPU time to restart all

	// Steady state with a real peer.
	Enc          timing  `json:"enc"`
	EncTrips     float64 `json:"enc_trips"` // round trips to the server per message, -1 for bbolt
	Dec          timing  `json:"dec"`
	DecCommits   float64 `json:"dec_commits"`
	DecTrips     float64 `json:"dec_trips"`
	Inbox        timing  `json:"inbox"`
	InboxCommits float64 `json:"inbox_commits"`
	InboxTrips   float64 `json:"inbox_trips"`
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%.3f ms", float64(d)/1e6)
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// wallCPU shows a timing as "median (CPU cpu)".
func wallCPU(t timing) string {
	if t.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%s (CPU %s)", ms(t.Median), ms(t.CPU))
}

func mib(b uint64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func freePages(n int) string {
	if n < 0 {
		return "–"
	}
	return thousands(n)
}

// trips shows a whole count (or a mean of counts) without decimals.
func trips(x float64) string {
	if x < 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", x)
}

func perOp(x float64) string {
	if x < 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", x)
}

func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// printTables prints the results as Markdown tables.
func printTables(w io.Writer, rs []*result) {
	var steady, devices, accounts []*result
	for _, r := range rs {
		switch r.Kind {
		case "steady":
			steady = append(steady, r)
		case "devices":
			devices = append(devices, r)
		case "accounts":
			accounts = append(accounts, r)
		}
	}
	if len(devices) > 0 {
		fmt.Fprintf(w, "One account, N peer devices, default cache budget, after messaging every device once (times: median wall, with CPU):\n\n")
		fmt.Fprintln(w, "| store | devices | live heap | RSS | start (New) | commits, round trips | store open (round trips) | store size | bbolt free pages | setup |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		for _, r := range devices {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s, %s | %s (%s) | %s | %s | %s |\n",
				r.Store, thousands(r.N), mib(r.Heap), mib(r.RSS), wallCPU(r.Start), trips(r.StartCommits), trips(r.StartTrips),
				ms(r.Open.Median), trips(r.OpenTrips), mib(uint64(r.Size)), freePages(r.FreePages), ms(r.Setup))
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Steady Encrypt to one device, same account: durable commits, then the store reopened without (bbolt NoSync, PostgreSQL synchronous_commit=off); interleaved with a one-key commit (floor):\n\n")
		fmt.Fprintln(w, "| store | devices | working set | any device | floor | working set, no sync | any device, no sync | floor, no sync | commits/Encrypt |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
		for _, r := range devices {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				r.Store, thousands(r.N), wallCPU(r.EncWarm), wallCPU(r.EncAny), wallCPU(r.Floor),
				wallCPU(r.EncWarmNoSync), wallCPU(r.EncAnyNoSync), wallCPU(r.FloorNoSync), perOp(r.EncCommits))
		}
		fmt.Fprintln(w)
	}
	if len(accounts) > 0 {
		fmt.Fprintf(w, "M accounts in one process, one store (times: wall, with CPU):\n\n")
		fmt.Fprintln(w, "| store | accounts | backends | start all | goroutines, idle | heap per idle account | restart all |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
		for _, r := range accounts {
			fmt.Fprintf(w, "| %s | %s | %d | %s (CPU %s) | %d | %.1f KiB | %s (CPU %s) |\n",
				r.Store, thousands(r.N), r.Backends, ms(r.StartAll), ms(r.StartAllCPU), r.Goroutines,
				r.HeapPerAccount/1024, ms(r.Restart), ms(r.RestartCPU))
		}
		fmt.Fprintln(w)
	}
	if len(steady) > 0 {
		fmt.Fprintf(w, "Steady state with one peer device, per message (median wall, with CPU; store commits and round trips to the server per message):\n\n")
		fmt.Fprintln(w, "| store | Encrypt | commits | round trips | Decrypt | commits | round trips | Decrypt + inbox | commits | round trips | commit floor |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
		for _, r := range steady {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				r.Store, wallCPU(r.Enc), perOp(r.EncCommits), perOp(r.EncTrips),
				wallCPU(r.Dec), perOp(r.DecCommits), perOp(r.DecTrips),
				wallCPU(r.Inbox), perOp(r.InboxCommits), perOp(r.InboxTrips), ms(r.Floor.Median))
		}
		fmt.Fprintln(w)
	}
}
