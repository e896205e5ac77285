package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mellium.im/omemo/store"
)

// RunAccounts runs the conformance suite of [store.Accounts] on values
// returned by open: the leases of accounts, their isolation, account
// names, Close, and concurrent use of many accounts. It also runs [Run] on
// account stores of one Accounts, one subtest after the other. open is
// called once by each subtest, possibly from parallel subtests, and must
// return a new Accounts without accounts; the subtests close it, and open
// may register further clean-up with t.Cleanup.
func RunAccounts(t *testing.T, open func(t *testing.T) store.Accounts) {
	for _, tc := range []struct {
		name string
		f    func(t *testing.T, a store.Accounts)
	}{
		{"Lease", testLease},
		{"ConcurrentOpen", testConcurrentOpen},
		{"Isolation", testAccountIsolation},
		{"Names", testAccountNames},
		{"Context", testAccountContext},
		{"Close", testAccountsClose},
		{"Concurrent", testAccountsConcurrent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := open(t)
			t.Cleanup(func() { a.Close() })
			tc.f(t, a)
		})
	}
	t.Run("Store", func(t *testing.T) {
		t.Parallel()
		a := open(t)
		t.Cleanup(func() { a.Close() })
		// Other accounts with keys everywhere around the ones under test.
		neighbours := []string{"store-@example.org", "store-1", "store-0@example.org", "store-1@example.orgx", "store-\u00ff"}
		for _, name := range neighbours {
			s := account(t, a, name)
			put(t, s, "k", name, "\x00", name, "\xff", name)
			s.Close()
		}
		// The subtests run one after the other: tests that hold a
		// transaction open on purpose could stall the other accounts of a
		// shared backend.
		var n atomic.Int64
		run(t, func(t *testing.T) store.Store {
			return account(t, a, fmt.Sprintf("store-%d@example.org", n.Add(1)))
		}, false)
		for _, name := range neighbours {
			s := account(t, a, name)
			if got, w := dump(t, s), fmt.Sprintf("\"\\x00\"=%q\n\"k\"=%[1]q\n\"\\xff\"=%[1]q\n", name); got != w {
				t.Errorf("account %q next to the ones under test holds %q, want %q", name, got, w)
			}
			s.Close()
		}
	})
}

func account(t testing.TB, a store.Accounts, name string) store.Store {
	t.Helper()
	s, err := a.Account(bg, name)
	if err != nil {
		t.Fatalf("Account(%q): %v", name, err)
	}
	return s
}

func testLease(t *testing.T, a store.Accounts) {
	const alice, bob = "alice@example.org", "bob@example.org"
	s1 := account(t, a, alice)
	put(t, s1, "k", "alice")
	if s, err := a.Account(bg, alice); !errors.Is(err, store.ErrLocked) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("second Account of a held account = %v, want ErrLocked", err)
	}
	s2 := account(t, a, bob)
	if err := s1.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s1.View(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("View on a released account's store = %v, want ErrClosed", err)
	}
	if err := s1.Update(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Update on a released account's store = %v, want ErrClosed", err)
	}
	// A released account can be taken again, and kept its state.
	s1b := account(t, a, alice)
	want(t, s1b, "k", "alice")
	// Closing the old Store again is harmless and does not release the
	// new lease.
	if err := s1.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if s, err := a.Account(bg, alice); !errors.Is(err, store.ErrLocked) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Account of an account held again = %v, want ErrLocked", err)
	}
	want(t, s1b, "k", "alice")
	// bob is still held, and empty.
	if _, err := a.Account(bg, bob); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Account of bob = %v, want ErrLocked", err)
	}
	if got := dump(t, s2); got != "" {
		t.Fatalf("new account holds %q", got)
	}
	s2.Close()
	s1b.Close()
	// Many take-release cycles.
	for i := range 50 {
		s := account(t, a, alice)
		put(t, s, "n", strconv.Itoa(i))
		s.Close()
	}
	s := account(t, a, alice)
	want(t, s, "n", "49")
	want(t, s, "k", "alice")
	s.Close()
}

func testConcurrentOpen(t *testing.T, a store.Accounts) {
	const name = "race@example.org"
	const goroutines = 2
	for round := range 30 {
		var (
			start sync.WaitGroup
			done  sync.WaitGroup
			won   = make(chan store.Store, goroutines)
			errs  = make(chan error, goroutines)
		)
		start.Add(1)
		for range goroutines {
			done.Add(1)
			go func() {
				defer done.Done()
				start.Wait()
				s, err := a.Account(bg, name)
				if err != nil {
					errs <- err
					return
				}
				won <- s
			}()
		}
		start.Done()
		done.Wait()
		close(won)
		close(errs)
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d concurrent Accounts succeeded, want 1", round, len(won), goroutines)
		}
		for err := range errs {
			if !errors.Is(err, store.ErrLocked) {
				t.Fatalf("round %d: losing Account = %v, want ErrLocked", round, err)
			}
		}
		s := <-won
		// The winner has the state of the previous rounds.
		if err := s.Update(bg, func(tx store.Tx) error {
			n, err := increment(tx, "rounds")
			if err == nil && n != round+1 {
				err = fmt.Errorf("round %d: counter is %d", round, n)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}

// accountNames are names that prefix each other, share bytes and sort
// around each other.
var accountNames = []string{
	"alice@example.org",
	"alice@example.org/",
	"alice@example.org/phone",
	"alice@example.orgx",
	"alice@example.or",
	"Alice@example.org",
	"ålice@example.org",
	"bob@example.org",
	"a",
	"a b",
	strings.Repeat("x", store.MaxAccountNameSize),
}

func testAccountIsolation(t *testing.T, a store.Accounts) {
	stores := make([]store.Store, len(accountNames))
	for i, name := range accountNames {
		stores[i] = account(t, a, name)
		put(t, stores[i], "k", name, "shared/1", strconv.Itoa(i), fmt.Sprintf("own/%d", i), "x")
	}
	wantState := func(i int, s store.Store) {
		t.Helper()
		w := fmt.Sprintf("\"k\"=%q\n\"own/%d\"=\"x\"\n\"shared/1\"=\"%d\"\n", accountNames[i], i, i)
		if got := dump(t, s); got != w {
			t.Fatalf("account %d holds %q, want %q", i, got, w)
		}
	}
	for i, s := range stores {
		wantState(i, s)
	}
	// Emptying one account, with DeletePrefix("") or key by key, leaves
	// the others intact.
	if err := stores[0].Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("") }); err != nil {
		t.Fatal(err)
	}
	if err := stores[1].Update(bg, func(tx store.Tx) error {
		for _, k := range []string{"k", "shared/1", "own/1"} {
			if err := tx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := stores[2].Update(bg, func(tx store.Tx) error { return tx.DeletePrefix("shared/") }); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 1} {
		if got := dump(t, stores[i]); got != "" {
			t.Fatalf("emptied account %d holds %q", i, got)
		}
		wantMissing(t, stores[i], "k")
	}
	if got, w := dump(t, stores[2]), fmt.Sprintf("\"k\"=%q\n\"own/2\"=\"x\"\n", accountNames[2]); got != w {
		t.Fatalf("account 2 holds %q, want %q", got, w)
	}
	for i := 3; i < len(stores); i++ {
		wantState(i, stores[i])
	}
	// The state survives releasing and taking the accounts again, and an
	// emptied account can be written again.
	for _, s := range stores {
		s.Close()
	}
	for i, name := range accountNames {
		stores[i] = account(t, a, name)
	}
	for i := 3; i < len(stores); i++ {
		wantState(i, stores[i])
	}
	put(t, stores[0], "k", "again")
	want(t, stores[0], "k", "again")
	wantMissing(t, stores[1], "k")
	// Concurrent transactions of different accounts don't see each other.
	var wg sync.WaitGroup
	errs := make(chan error, len(stores))
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Update(bg, func(tx store.Tx) error {
				if err := tx.Put("concurrent", []byte(strconv.Itoa(i))); err != nil {
					return err
				}
				return tx.Scan("concurrent", func(k string, v []byte) error {
					if string(v) != strconv.Itoa(i) {
						return fmt.Errorf("account %d sees %s=%s", i, k, v)
					}
					return nil
				})
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range stores {
		want(t, s, "concurrent", strconv.Itoa(i))
		s.Close()
	}
}

func testAccountNames(t *testing.T, a store.Accounts) {
	for _, name := range []string{
		"",
		strings.Repeat("x", store.MaxAccountNameSize+1),
		"\xff",
		"alice@example.org\xc3",
		"a\x00b",
	} {
		if s, err := a.Account(bg, name); !errors.Is(err, store.ErrInvalidAccount) {
			if s != nil {
				s.Close()
			}
			t.Errorf("Account of a %d-byte invalid name = %v, want ErrInvalidAccount", len(name), err)
		}
		if err := store.CheckAccountName(name); !errors.Is(err, store.ErrInvalidAccount) {
			t.Errorf("CheckAccountName of a %d-byte invalid name = %v, want ErrInvalidAccount", len(name), err)
		}
	}
	for _, name := range []string{
		"x",
		strings.Repeat("é", store.MaxAccountNameSize/2),
		"user%40example.org@gateway.example",
		"../../etc/passwd",
		"\u00a0\t ",
	} {
		if err := store.CheckAccountName(name); err != nil {
			t.Errorf("CheckAccountName(%q) = %v", name, err)
		}
		s := account(t, a, name)
		put(t, s, "k", "v")
		s.Close()
		s = account(t, a, name)
		want(t, s, "k", "v")
		s.Close()
	}
}

func testAccountContext(t *testing.T, a store.Accounts) {
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if s, err := a.Account(ctx, "alice@example.org"); !errors.Is(err, context.Canceled) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Account(cancelled ctx) = %v, want context.Canceled", err)
	}
	// The failed call took no lease.
	s := account(t, a, "alice@example.org")
	s.Close()
	// ctx only matters for the call: the Store works after it is done.
	ctx, cancel = context.WithCancel(bg)
	s, err := a.Account(ctx, "alice@example.org")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	put(t, s, "k", "v")
	want(t, s, "k", "v")
	s.Close()
}

func testAccountsClose(t *testing.T, a store.Accounts) {
	busy := account(t, a, "busy@example.org")
	idle := account(t, a, "idle@example.org")
	put(t, idle, "k", "v")
	released := account(t, a, "released@example.org")
	released.Close()

	// Close waits for a running transaction of an open account, which
	// commits.
	hold := make(chan struct{})
	holding := make(chan struct{})
	updated := make(chan error, 1)
	go func() {
		updated <- busy.Update(bg, func(tx store.Tx) error {
			close(holding)
			<-hold
			return tx.Put("k", []byte("last"))
		})
	}()
	<-holding
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a transaction was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(hold)
	if err := <-updated; err != nil {
		t.Fatalf("running Update = %v", err)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs")
	}
	for name, s := range map[string]store.Store{"busy": busy, "idle": idle, "released": released} {
		if err := s.View(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Errorf("View of the %s account after Close = %v, want ErrClosed", name, err)
		}
		if err := s.Update(bg, func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Errorf("Update of the %s account after Close = %v, want ErrClosed", name, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close of the %s account after Close = %v", name, err)
		}
	}
	if s, err := a.Account(bg, "new@example.org"); !errors.Is(err, store.ErrClosed) {
		if s != nil {
			s.Close()
		}
		t.Errorf("Account after Close = %v, want ErrClosed", err)
	}
	if s, err := a.Account(bg, "released@example.org"); !errors.Is(err, store.ErrClosed) {
		if s != nil {
			s.Close()
		}
		t.Errorf("Account of a released account after Close = %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

// testAccountsConcurrent runs read-modify-write Updates on several
// accounts from several goroutines each, while Views check that every
// account's snapshot is consistent and holds only its own keys.
func testAccountsConcurrent(t *testing.T, a store.Accounts) {
	const (
		accounts = 6
		writers  = 3
		rounds   = 15
	)
	stores := make([]store.Store, accounts)
	for i := range stores {
		stores[i] = account(t, a, fmt.Sprintf("user%d@example.org", i))
	}
	stop := make(chan struct{})
	var readers, wg sync.WaitGroup
	errs := make(chan error, accounts*(writers+1))
	for i, s := range stores {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := s.View(bg, func(tx store.Tx) error {
					a, err := tx.Get("pair/a")
					if errors.Is(err, store.ErrNotFound) {
						a = nil
					} else if err != nil {
						return err
					}
					b, err := tx.Get("pair/b")
					if errors.Is(err, store.ErrNotFound) {
						b = nil
					} else if err != nil {
						return err
					}
					if string(a) != string(b) {
						return fmt.Errorf("account %d: inconsistent snapshot: %q, %q", i, a, b)
					}
					if len(a) > 0 && !strings.HasPrefix(string(a), strconv.Itoa(i)+"/") {
						return fmt.Errorf("account %d sees %q", i, a)
					}
					return nil
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
		for range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range rounds {
					if err := s.Update(bg, func(tx store.Tx) error {
						n, err := increment(tx, "n")
						if err != nil {
							return err
						}
						v := fmt.Appendf(nil, "%d/%d", i, n)
						if err := tx.Put("pair/a", v); err != nil {
							return err
						}
						return tx.Put("pair/b", v)
					}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, s := range stores {
		want(t, s, "n", strconv.Itoa(writers*rounds))
		want(t, s, "pair/a", fmt.Sprintf("%d/%d", i, writers*rounds))
		// Each account's Store counts its own transactions only.
		wantStats(t, s, store.Stats{}, writers*rounds, 0)
		s.Close()
	}
}
