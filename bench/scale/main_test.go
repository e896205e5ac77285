package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"mellium.im/omemo/internal/pgtest"
)

// TestMain lets the test binary serve as the benchmark's child process
// (runAll runs itself with -case).
func TestMain(m *testing.M) {
	if os.Getenv("BENCH_SCALE_CHILD") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// The benchmark runs end to end at a tiny size, each case in a child
// process, and prints every table with plausible figures: on bbolt, and on
// PostgreSQL (a throw-away cluster; skipped when PostgreSQL is missing,
// failed instead under CI=true).
func TestSmoke(t *testing.T) {
	t.Setenv("BENCH_SCALE_CHILD", "1")
	for _, kind := range []string{"bolt", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			o := &options{
				devices: []int{200}, accounts: []int{20}, stores: []string{kind},
				perJID: 1, batch: 50, workers: 2, messages: 40, workSet: 10, restarts: 2,
				dir: t.TempDir(),
			}
			name := "bbolt"
			if kind == "postgres" {
				srv := pgtest.Start(t)
				o.dsn = srv.DSN("postgres")
				name = "PostgreSQL"
			}
			var out bytes.Buffer
			if err := runAll(context.Background(), o, &out); err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", out.String())
			rows := tableRows(out.String(), name)
			if len(rows) != 4 {
				t.Fatalf("%d rows for %s, want 4 (one per table)", len(rows), name)
			}
			devices, encrypt, accounts, steady := rows[0], rows[1], rows[2], rows[3]

			// | store | devices | live heap | RSS | start (New) | commits, round trips |
			// store open (round trips) | store size | bbolt free pages | setup |
			if len(devices) != 10 || devices[1] != "200" {
				t.Fatalf("devices row %q", devices)
			}
			for _, i := range []int{2, 3, 4, 6, 7, 9} {
				mustFigure(t, "devices", devices[i])
			}
			if kind == "postgres" && !strings.Contains(devices[5], ", ") || strings.Contains(devices[6], "(0)") {
				t.Errorf("devices: start commits and round trips %q, store open %q", devices[5], devices[6])
			}
			// | store | devices | working set | any device | floor | working set, no sync |
			// any device, no sync | floor, no sync | commits/Encrypt |
			if len(encrypt) != 9 || encrypt[1] != "200" {
				t.Fatalf("Encrypt row %q", encrypt)
			}
			for _, i := range []int{2, 3, 4, 5, 6, 7} {
				mustFigure(t, "Encrypt", encrypt[i])
			}
			if encrypt[8] != "1.00" {
				t.Errorf("commits per steady Encrypt: %s, want 1.00", encrypt[8])
			}

			// | store | accounts | backends | start all | goroutines, idle | heap per idle account | restart all |
			if len(accounts) != 7 || accounts[1] != "20" || accounts[2] != "2" {
				t.Fatalf("accounts row %q", accounts)
			}
			for _, i := range []int{3, 4, 5, 6} {
				mustFigure(t, "accounts", accounts[i])
			}

			// | store | Encrypt | commits | round trips | Decrypt | commits | round trips |
			// Decrypt + inbox | commits | round trips | commit floor |
			if len(steady) != 11 {
				t.Fatalf("steady row %q", steady)
			}
			for _, i := range []int{1, 4, 7, 10} {
				mustFigure(t, "steady", steady[i])
			}
			for _, i := range []int{2, 5, 8} {
				if steady[i] != "1.00" {
					t.Errorf("steady: %s commits per message in column %d, want 1.00", steady[i], i)
				}
			}
			if kind == "postgres" {
				for _, i := range []int{3, 6} {
					if steady[i] != "1.00" {
						t.Errorf("steady: %s round trips per message in column %d, want 1.00", steady[i], i)
					}
				}
				mustFigure(t, "steady", steady[9])
			}
		})
	}
}

// tableRows returns the cells of the table rows of store.
func tableRows(out, store string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "| "+store+" |") {
			continue
		}
		var cells []string
		for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
			cells = append(cells, strings.TrimSpace(c))
		}
		rows = append(rows, cells)
	}
	return rows
}

// mustFigure fails unless cell starts with a positive number.
func mustFigure(t *testing.T, table, cell string) {
	t.Helper()
	f := strings.Fields(cell)
	if len(f) == 0 || strings.Trim(f[0], "0.,") == "" || strings.ContainsAny(f[0], "–-") {
		t.Errorf("%s: %q is not a positive figure", table, cell)
	}
}
