package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// These tests damage a real store file and open it. A damaged file must
// never crash the process: a SIGSEGV or SIGBUS in bbolt's memory map kills
// the test binary, which is the failure these tests exist to catch. Every
// open must either fail with a typed error or succeed with a store whose
// every key can be read without a panic, and Open must leave the file as
// it was.

// secretMarker is embedded in every value and keyMarker in every key, so
// that a test can tell that no error message leaks them.
const (
	secretMarker = "s3cr3t-v4lue"
	keyMarker    = "example.org"
)

// buildStore writes a store with a realistic amount of data through the
// package's API: keys like the session manager's with values of a few
// hundred bytes to a few KiB, every 25th value larger (bigMax bytes at
// most: overflow pages), over several transactions with deletions and
// rewrites (a non-empty freelist). It returns the final contents.
func buildStore(tb testing.TB, path string, keys, bigMax int) map[string][]byte {
	tb.Helper()
	rng := rand.New(rand.NewPCG(20260101, 9))
	s, err := Open(path, &Options{NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	want := map[string][]byte{}
	value := func(i int) []byte {
		n := 200 + rng.IntN(3800)
		if i%25 == 0 {
			n = 5000 + rng.IntN(bigMax-5000)
		}
		v := make([]byte, n)
		for j := range v {
			v[j] = byte(rng.Uint32())
		}
		copy(v[n/2:], secretMarker)
		return v
	}
	const perTx = 50
	for start := 0; start < keys; start += perTx {
		if err := s.Update(bg, func(tx Tx) error {
			for i := start; i < start+perTx && i < keys; i++ {
				k := fmt.Sprintf("omemo/ns/urn:xmpp:omemo:2/sessions/contact%03d@%s/%d", i, keyMarker, rng.Uint32())
				v := value(i)
				if err := tx.Put(k, v); err != nil {
					return err
				}
				want[k] = v
			}
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
	}
	// Churn: delete a quarter of the keys and rewrite a seventh with new
	// sizes, in a few transactions, which leaves freed pages behind.
	all := sortedKeys(want)
	for round := range 4 {
		if err := s.Update(bg, func(tx Tx) error {
			for i, k := range all {
				if i%4 != 0 || (i/4)%4 != round {
					continue
				}
				if err := tx.Delete(k); err != nil {
					return err
				}
				delete(want, k)
			}
			for i, k := range all {
				if _, ok := want[k]; ok && i%7 == round {
					v := value(i + round)
					if err := tx.Put(k, v); err != nil {
						return err
					}
					want[k] = v
				}
			}
			return nil
		}); err != nil {
			tb.Fatal(err)
		}
	}
	return want
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// corruptKeys is the size of the store the corruption tests damage: a
// little over 1 MB of pages, with 7 or so branch pages, overflow values
// and free pages.
const corruptKeys = 400

// pageKind classifies every page of a pristine store file with bbolt's own
// API, so that the flips can aim at each kind of page.
type pageKind struct {
	pageSize int
	hwm      int // high water mark in pages: pages at or above it are unused
	byType   map[string][]int
	counts   map[int]int // element count of branch, leaf and freelist pages
}

func classify(tb testing.TB, image []byte) pageKind {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "classify.db")
	if err := os.WriteFile(path, image, 0o600); err != nil {
		tb.Fatal(err)
	}
	// Read-write, because bbolt loads the freelist (needed by Tx.Page)
	// only then; it writes nothing to a file with a persisted freelist.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	k := pageKind{pageSize: db.Info().PageSize, byType: map[string][]int{}, counts: map[int]int{}}
	err = db.View(func(tx *bolt.Tx) error {
		k.hwm = int(tx.Size()) / k.pageSize
		for id := 0; id < k.hwm; {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			k.byType[info.Type] = append(k.byType[info.Type], id)
			k.counts[id] = info.Count
			if info.Type == "free" {
				id++
				continue
			}
			for o := 1; o <= info.OverflowCount; o++ {
				k.byType["overflow"] = append(k.byType["overflow"], id+o)
			}
			id += 1 + info.OverflowCount
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	for id := k.hwm; id < len(image)/k.pageSize; id++ {
		k.byType["unused"] = append(k.byType["unused"], id)
	}
	return k
}

// checkErr fails unless err is one of the typed errors Open documents for
// a bad file, and checks that its message leaks no key or value.
func checkErr(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
		t.Fatalf("%s: untyped error %v", what, err)
	}
	if msg := err.Error(); strings.Contains(msg, secretMarker) || strings.Contains(msg, keyMarker) {
		t.Fatalf("%s: error leaks stored data: %v", what, err)
	}
}

// exercise reads everything from an opened store: a full Scan and a Get of
// every key that the undamaged store held (which may be missing if its
// bytes were damaged). Open checked the whole structure, so no read may
// fail, not even with ErrCorrupt from a bbolt assertion. It returns the
// scanned contents.
func exercise(t *testing.T, what string, s *Bolt, want map[string][]byte) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	err := s.View(bg, func(tx Tx) error {
		if err := tx.Scan("", func(k string, v []byte) error {
			got[k] = v
			return nil
		}); err != nil {
			return err
		}
		for k := range want {
			if _, err := tx.Get(k); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: reading: %v", what, err)
	}
	return got
}

// fileBytes returns the contents of path.
func fileBytes(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenTruncated(t *testing.T) {
	dir := t.TempDir()
	pristine := filepath.Join(dir, "pristine.db")
	want := buildStore(t, pristine, corruptKeys, 12000)
	image := fileBytes(t, pristine)
	kind := classify(t, image)
	dataEnd := kind.hwm * kind.pageSize
	t.Logf("store: %d bytes, %d keys, page size %d, data in the first %d pages (%d bytes); %d branch, %d leaf, %d overflow, %d free pages",
		len(image), len(want), kind.pageSize, kind.hwm, dataEnd,
		len(kind.byType["branch"]), len(kind.byType["leaf"]), len(kind.byType["overflow"]), len(kind.byType["free"]))
	if len(kind.byType["branch"]) == 0 || len(kind.byType["overflow"]) == 0 || len(kind.byType["free"]) == 0 {
		t.Fatalf("the test store lacks a kind of page: %v", kind.byType)
	}

	path := filepath.Join(dir, "s.db")
	if err := os.WriteFile(path, image, 0o600); err != nil {
		t.Fatal(err)
	}
	var refused, opened int
	// Every 4 KiB boundary, and a few sizes in between, from the largest
	// down, cutting the same file: Open must not change it, and the test
	// checks that it did not.
	var sizes []int
	for size := 0; size < len(image); size += 4096 {
		sizes = append(sizes, size)
	}
	sizes = append(sizes, 1, 100, 4095, 4097, dataEnd-1, len(image)-1)
	sort.Sort(sort.Reverse(sort.IntSlice(sizes)))
	start := time.Now()
	for _, size := range sizes {
		// Read-write last: on an empty file it creates a new store.
		for _, ro := range []bool{true, false} {
			if err := os.Truncate(path, int64(size)); err != nil {
				t.Fatal(err)
			}
			what := fmt.Sprintf("truncated to %d bytes (read-only %v)", size, ro)
			s, err := Open(path, &Options{ReadOnly: ro})
			if err == nil {
				got := exercise(t, what, s, want)
				if size > 0 && !equalContents(got, want) {
					t.Errorf("%s: opened with %d keys, want the %d of the store", what, len(got), len(want))
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
			switch {
			case size == 0 && !ro:
				// An empty file is a new store.
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				continue
			case size >= dataEnd:
				// Only unused space is missing.
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				opened++
			default:
				if err == nil {
					t.Fatalf("%s: opened a store that lost data", what)
				}
				checkErr(t, what, err)
				refused++
			}
			if after := fileBytes(t, path); !bytes.Equal(after, image[:size]) {
				t.Fatalf("%s: Open changed the file (%d bytes now)", what, len(after))
			}
		}
	}
	t.Logf("%d truncations refused, %d opened (only unused space cut) in %v", refused, opened, time.Since(start))
}

func equalContents(got, want map[string][]byte) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			return false
		}
	}
	return true
}

// flipTarget picks the offset of a damaged byte: in each kind of page, with
// a bias towards the bytes bbolt interprets (page headers, element arrays,
// meta fields, freelist entries) rather than key and value bytes.
func flipTarget(rng *rand.Rand, kind pageKind, size int) (off int, class string) {
	ps := kind.pageSize
	in := func(ids []int, structured func(id int) int) int {
		id := ids[rng.IntN(len(ids))]
		if structured != nil && rng.IntN(2) == 0 {
			return id*ps + rng.IntN(structured(id))
		}
		return id*ps + rng.IntN(ps)
	}
	elems := func(id int) int { return min(ps, 16+16*kind.counts[id]) }
	switch r := rng.IntN(100); {
	case r < 12:
		// Page header and meta fields (the checksum covers bytes 16–79).
		return rng.IntN(2)*ps + rng.IntN(80), "meta"
	case r < 22:
		return in(kind.byType["freelist"], func(id int) int { return min(ps, 16+8*kind.counts[id]) }), "freelist"
	case r < 45:
		return in(kind.byType["branch"], elems), "branch"
	case r < 75:
		return in(kind.byType["leaf"], elems), "leaf"
	case r < 82:
		return in(kind.byType["overflow"], nil), "overflow"
	case r < 90:
		return in(append(kind.byType["free"], kind.byType["unused"]...), nil), "free"
	default:
		return rng.IntN(size), "anywhere"
	}
}

func TestOpenFlippedBytes(t *testing.T) {
	// The whole file is compared after every Open without the race
	// detector; with it, only its modification time (set to a fixed time
	// before each Open, and changed by any write) and, every tenth flip,
	// the bytes.
	flips, compareEvery := 3000, 1
	if raceBuild {
		flips, compareEvery = 2000, 10
	}
	if testing.Short() {
		flips = 500
	}
	epoch := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	dir := t.TempDir()
	pristine := filepath.Join(dir, "pristine.db")
	want := buildStore(t, pristine, corruptKeys, 12000)
	image := fileBytes(t, pristine)
	kind := classify(t, image)

	path := filepath.Join(dir, "s.db")
	if err := os.WriteFile(path, image, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, len(image)+1)
	readBack := func() []byte {
		n, err := f.ReadAt(buf, 0)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		return buf[:n]
	}
	// restore puts back the pristine bytes wherever the file differs
	// from them, without rewriting the whole file every time.
	restore := func() {
		cur := readBack()
		for off := 0; off < len(image); off += kind.pageSize {
			end := min(off+kind.pageSize, len(image))
			if off >= len(cur) || !bytes.Equal(cur[off:min(end, len(cur))], image[off:end]) {
				if _, err := f.WriteAt(image[off:end], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := f.Truncate(int64(len(image))); err != nil {
			t.Fatal(err)
		}
	}

	rng := rand.New(rand.NewPCG(7, 42))
	type tally struct{ refused, opened, changed int }
	stats := map[string]*tally{}
	reasons := map[string]int{}
	start := time.Now()
	for i := range flips {
		off, class := flipTarget(rng, kind, len(image))
		mask := byte(1) << rng.IntN(8)
		if rng.IntN(2) == 0 {
			mask = byte(1 + rng.IntN(255))
		}
		damaged := image[off] ^ mask
		if _, err := f.WriteAt([]byte{damaged}, int64(off)); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, epoch, epoch); err != nil {
			t.Fatal(err)
		}
		ro := i%2 == 1
		what := fmt.Sprintf("flip %d: byte %d (page %d, %s) ^= %#02x, read-only %v", i, off, off/kind.pageSize, class, mask, ro)
		if stats[class] == nil {
			stats[class] = &tally{}
		}
		s, err := Open(path, &Options{ReadOnly: ro, NoSync: true})
		if err != nil {
			checkErr(t, what, err)
			if class == "free" {
				t.Fatalf("%s: refused a store damaged only in unused pages: %v", what, err)
			}
			stats[class].refused++
			reason := strings.TrimPrefix(err.Error(), "store: open "+path+": ")
			reason = strings.TrimPrefix(reason, ErrCorrupt.Error()+": ")
			if i := strings.IndexAny(reason, "0123456789("); i > 0 {
				reason = reason[:i]
			}
			reasons[reason]++
		} else {
			stats[class].opened++
			got := exercise(t, what, s, want)
			if !equalContents(got, want) {
				stats[class].changed++
				// Every byte of a branch page, and of the freelist, that
				// matters is checked, and free pages are never read.
				if class == "branch" || class == "freelist" || class == "free" {
					t.Fatalf("%s: opened with other contents", what)
				}
			}
			// The structure was accepted, so bbolt's own consistency
			// check must agree; bbolt never reads the page headers of the
			// meta pages except in this check, and Open ignores them.
			if err := s.Check(bg); err != nil && !metaHeader(off, kind.pageSize) {
				t.Fatalf("%s: opened, but Check: %v", what, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if fi, err := os.Stat(path); err != nil || !fi.ModTime().Equal(epoch) || fi.Size() != int64(len(image)) {
			t.Fatalf("%s: Open changed the file (%v, %v)", what, fi.ModTime(), err)
		}
		if i%compareEvery == 0 {
			cur := readBack()
			if len(cur) != len(image) || cur[off] != damaged || !bytes.Equal(cur[:off], image[:off]) || !bytes.Equal(cur[off+1:], image[off+1:]) {
				t.Fatalf("%s: Open changed the file", what)
			}
		}
		if err == nil && !ro && i%4 == 0 {
			// Normal use of an accepted file: writes and reads again.
			useDamaged(t, what, path, want, !metaHeader(off, kind.pageSize))
			restore()
		}
		if _, err := f.WriteAt(image[off:off+1], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d flips in %v", flips, time.Since(start))
	for _, class := range []string{"meta", "freelist", "branch", "leaf", "overflow", "free", "anywhere"} {
		if st := stats[class]; st != nil {
			t.Logf("  %-8s refused %4d, opened %4d (%d with other contents)", class, st.refused, st.opened, st.changed)
		}
	}
	for r, n := range reasons {
		t.Logf("  refused %4d× %s…", n, r)
	}
	// A sanity check of the test itself: it reaches each part of the
	// validation, and a single damaged meta page makes bbolt (and Open)
	// fall back to the previous transaction.
	for _, class := range []string{"freelist", "branch", "leaf"} {
		if st := stats[class]; st == nil || st.refused == 0 {
			t.Errorf("no flip in a %s page was refused", class)
		}
	}
	if st := stats["meta"]; st == nil || st.changed == 0 {
		t.Errorf("no flip in a meta page made the store open at the previous transaction")
	}
}

// useDamaged opens an accepted damaged store and writes to it the way the
// session manager does, then checks it and reads it back after a reopen.
func useDamaged(t *testing.T, what, path string, want map[string][]byte, check bool) {
	t.Helper()
	s, err := Open(path, &Options{NoSync: true})
	if err != nil {
		t.Fatalf("%s: second open: %v", what, err)
	}
	keys := sortedKeys(want)
	err = s.Update(bg, func(tx Tx) error {
		for i := range 20 {
			if err := tx.Put(fmt.Sprintf("omemo/new/%02d", i), bytes.Repeat([]byte{byte(i)}, 100*i)); err != nil {
				return err
			}
		}
		for _, k := range keys[:10] {
			if err := tx.Delete(k); err != nil {
				return err
			}
		}
		return tx.DeletePrefix(keys[len(keys)-1][:44])
	})
	// The structure was accepted, so writing to it must work: a bbolt
	// assertion here (turned into ErrCorrupt) would mean the validation
	// let through something bbolt's write path cannot handle.
	if err != nil {
		t.Fatalf("%s: update: %v", what, err)
	}
	exercise(t, what+": after update", s, want)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, nil)
	if err != nil {
		t.Fatalf("%s: reopen after an update: %v", what, err)
	}
	exercise(t, what+": reopened", s, want)
	if err := s.Check(bg); err != nil && check {
		t.Errorf("%s: Check after an update: %v", what, err)
	}
	s.Close()
}

// metaHeader reports whether off is in the page header of a meta page,
// which bbolt reads only in Tx.Check (and Open ignores, like bbolt): damage
// there fails Check until the next commits rewrite both meta pages.
func metaHeader(off, pageSize int) bool {
	return off < 16 || off >= pageSize && off < pageSize+16
}
