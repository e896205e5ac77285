package session

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	omemons "mellium.im/omemo/ns"
)

// checkLRU verifies the bookkeeping of l and its tables: the list holds
// exactly the tables' entries, and the budget used is the sum of their
// sizes and of the map slots charged.
func checkLRU(t *testing.T, l *lru, tables ...interface{ accounted() (int64, int) }) {
	t.Helper()
	var want int64
	entries := 0
	for _, tb := range tables {
		n, k := tb.accounted()
		want += n
		entries += k
	}
	listed := 0
	for n := l.head.next; n != &l.head; n = n.next {
		if n.next.prev != n {
			t.Fatal("broken list")
		}
		listed++
	}
	if listed != entries {
		t.Fatalf("%d entries listed, %d in the tables", listed, entries)
	}
	if l.used != want {
		t.Fatalf("used %d, entries and slots make %d", l.used, want)
	}
	if l.used > l.limit {
		t.Fatalf("used %d over the limit %d", l.used, l.limit)
	}
}

func (t *lruTable[K, V]) accounted() (int64, int) {
	n := t.slots * t.slot
	for _, e := range t.items {
		if e.node.size != t.fixed+t.size(e.key, e.val) {
			panic("stale entry size")
		}
		n += e.node.size
	}
	return n, len(t.items)
}

func TestLRUEvictsLeastRecentlyUsed(t *testing.T) {
	l := newLRU(1 << 12)
	a := newLRUTable(l, func(int, string) int64 { return 100 })
	b := newLRUTable(l, func(string, int) int64 { return 50 })
	for i := 0; l.used < l.limit-400; i++ {
		a.put(i, "x")
		b.put(fmt.Sprint(i), i)
	}
	checkLRU(t, l, a, b)
	// Keep 0 in use while the others are pushed out.
	for i := range 1000 {
		if _, ok := a.get(0); !ok {
			t.Fatalf("the entry in use was evicted after %d inserts", i)
		}
		a.put(1000+i, "y")
		if i%2 == 0 {
			b.put(fmt.Sprint(1000+i), i)
		}
		checkLRU(t, l, a, b)
	}
	if _, ok := a.peek(1); ok {
		t.Fatal("an old entry survived")
	}
	if _, ok := b.peek("1"); ok {
		t.Fatal("an old entry of the other table survived")
	}
	if _, ok := a.peek(1999); !ok {
		t.Fatal("the newest entry is gone")
	}
	// An entry larger than the budget is not kept, and replaces nothing.
	huge := newLRUTable(l, func(int, int) int64 { return 1 << 20 })
	huge.put(1, 1)
	if huge.len() != 0 {
		t.Fatal("an entry over the budget was kept")
	}
	checkLRU(t, l, a, b, huge)
}

// Maps are made anew once mostly empty: their slots are given back.
func TestLRUGivesBackMapMemory(t *testing.T) {
	l := newLRU(1 << 30)
	a := newLRUTable(l, func(int, int) int64 { return 0 })
	for i := range 100000 {
		a.put(i, i)
	}
	peak := a.slots
	for i := range 99990 {
		a.delete(i)
	}
	checkLRU(t, l, a)
	if a.slots >= peak/100 {
		t.Fatalf("%d slots charged for %d entries (peak %d)", a.slots, a.len(), peak)
	}
	for i := 99990; i < 100000; i++ {
		if v, ok := a.get(i); !ok || v != i {
			t.Fatalf("entry %d lost in the rebuild", i)
		}
	}
	a.clear() // a small map is kept (and stays charged)
	checkLRU(t, l, a)
	if l.used != a.slots*a.slot || a.slots > minRebuildSlots || a.len() != 0 {
		t.Fatalf("after clear: used %d, %d slots, %d entries", l.used, a.slots, a.len())
	}
	for i := range 100000 {
		a.put(i, i)
	}
	a.clear() // a large one is made anew
	checkLRU(t, l, a)
	if l.used != 0 || a.len() != 0 {
		t.Fatalf("after clear: used %d, %d entries", l.used, a.len())
	}
}

// Random operations on several tables keep the bookkeeping exact and the
// budget held, and a table reads back what was put last.
func TestLRURandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	l := newLRU(20000)
	a := newLRUTable(l, func(_ int, v []byte) int64 { return int64(len(v)) })
	b := newLRUTable(l, func(string, int) int64 { return 16 })
	model := map[int][]byte{}
	for i := range 20000 {
		k := rng.IntN(500)
		switch rng.IntN(6) {
		case 0, 1:
			v := bytes.Repeat([]byte{byte(i)}, rng.IntN(300))
			a.put(k, v)
			model[k] = v
		case 2:
			if v, ok := a.get(k); ok && !bytes.Equal(v, model[k]) {
				t.Fatalf("key %d: stale value", k)
			}
		case 3:
			a.delete(k)
		case 4:
			b.put(fmt.Sprint(k), k)
		case 5:
			if rng.IntN(100) == 0 {
				a.clear()
			}
		}
		if i%97 == 0 {
			checkLRU(t, l, a, b)
		}
	}
	checkLRU(t, l, a, b)
}

func TestBundleMissesBounded(t *testing.T) {
	c := newReadCache(8 << 10)
	b := &bundleMisses{c}
	now := time.Now()
	for i := range 5000 {
		b.missed(bundleRef{omemons.OMEMO2, fmt.Sprintf("a%d@example.org", i%300), uint32(i)}, now)
		if c.lru.used > c.lru.limit {
			t.Fatalf("misses use %d bytes, budget %d", c.lru.used, c.lru.limit)
		}
	}
	checkLRU(t, c.lru, c.jids, c.trust, c.sessions, c.loaded, c.misses)
	ref := bundleRef{omemons.OMEMO2, "late@example.org", 7}
	b.missed(ref, now)
	if _, ok := b.deferred(ref, now); !ok {
		t.Fatal("the latest miss was evicted")
	}
	b.missed(bundleRef{omemons.OMEMO2, "late@example.org", 8}, now)
	b.found(ref)
	if _, ok := b.deferred(ref, now); ok {
		t.Fatal("found, still deferred")
	}
	if _, ok := b.deferred(bundleRef{omemons.OMEMO2, "late@example.org", 8}, now); !ok {
		t.Fatal("found one device, forgot the other")
	}
	b.forgetJID("late@example.org")
	if _, ok := b.deferred(bundleRef{omemons.OMEMO2, "late@example.org", 8}, now); ok {
		t.Fatal("forgotten, still deferred")
	}
	checkLRU(t, c.lru, c.jids, c.trust, c.sessions, c.loaded, c.misses)
}

// The compact activity behaves as the map it replaces, and records encode
// as before (namespaces sorted).
func TestActivity(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	nss := []string{omemons.OMEMO2, omemons.Legacy, "urn:example:a", "urn:example:b", "urn:example:c"}
	for range 200 {
		var a activity
		model := map[string]bool{}
		for range 20 {
			ns := nss[rng.IntN(len(nss))]
			switch rng.IntN(3) {
			case 0, 1:
				on := rng.IntN(2) == 0
				shared := a // a copy must not change with a
				before := maps.Clone(model)
				a.set(ns, on)
				model[ns] = on
				if !sameActivity(shared, before) {
					t.Fatal("set modified a copy")
				}
			case 2:
				a.remove(ns)
				delete(model, ns)
			}
			if !sameActivity(a, model) {
				t.Fatalf("activity %+v, want %v", a, model)
			}
		}
		rec := deviceRecord{Active: a, Label: "l"}
		got, err := unmarshalRecord(rec.marshal())
		if err != nil || !sameActivity(got.Active, model) {
			t.Fatalf("decoded %+v, %v; want %v", got.Active, err, model)
		}
		// The encoding lists the namespaces sorted, as the map did.
		var order []string
		for ns := range model {
			order = append(order, ns)
		}
		slices.Sort(order)
		enc := rec.marshal()
		for i, ns := range order {
			j := bytes.Index(enc, []byte(ns))
			if j < 0 {
				t.Fatal("namespace missing from the encoding")
			}
			if i > 0 && j < bytes.Index(enc, []byte(order[i-1])) {
				t.Fatalf("namespaces not sorted in %q", enc)
			}
		}
	}
}

func sameActivity(a activity, model map[string]bool) bool {
	if a.len() != len(model) {
		return false
	}
	for ns, on := range a.all() {
		if m, ok := model[ns]; !ok || m != on || !a.seenIn(ns) || a.active(ns) != on {
			return false
		}
	}
	return true
}

func TestNamespacesRecord(t *testing.T) {
	for _, nss := range [][]string{nil, {omemons.OMEMO2}, {omemons.Legacy, omemons.OMEMO2, "x/y\n"}} {
		got, ok := unmarshalNamespaces(marshalNamespaces(nss))
		if !ok || !slices.Equal(got, nss) {
			t.Fatalf("%q decoded as %q, %v", nss, got, ok)
		}
	}
	for _, bad := range [][]byte{nil, {0}, {namespacesVersion, 5, 'a'}} {
		if _, ok := unmarshalNamespaces(bad); ok {
			t.Fatalf("%q decoded", bad)
		}
	}
}
