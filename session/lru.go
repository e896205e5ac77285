package session

import "unsafe"

// lru is a memory budget shared by several tables (lruTable): their
// entries are kept in one list, most recently used first, and whenever the
// estimated size of everything exceeds the budget, the least recently used
// entries are evicted, whichever table they belong to.
//
// Sizes are estimates, in bytes, of the heap an entry keeps alive: its own
// struct, what its key and value point to (as the table's size function
// estimates it), and the map slots of its table. A table's map is charged
// by its capacity, not by its length (Go maps do not shrink), and is made
// anew once it is mostly empty, so that memory is given back.
//
// An lru does no locking: its owner (readCache) guards it and all its
// tables with one mutex.
type lru struct {
	limit int64
	used  int64
	// head is the sentinel of a circular list: head.next is the most
	// recently used entry, head.prev the least recently used one.
	head lruNode
}

// lruNode links an entry into the list.
type lruNode struct {
	prev, next *lruNode
	size       int64
	entry      evictable // the entry that holds this node
}

// evictable is an entry that can remove itself from its table.
type evictable interface{ evict() }

func newLRU(limit int64) *lru {
	l := &lru{limit: limit}
	l.head.prev, l.head.next = &l.head, &l.head
	return l
}

func (l *lru) pushFront(n *lruNode) {
	n.prev, n.next = &l.head, l.head.next
	n.prev.next, n.next.prev = n, n
}

func (l *lru) unlink(n *lruNode) {
	n.prev.next, n.next.prev = n.next, n.prev
	n.prev, n.next = nil, nil
}

// touch marks n as the most recently used entry.
func (l *lru) touch(n *lruNode) {
	if l.head.next == n {
		return
	}
	n.prev.next, n.next.prev = n.next, n.prev
	l.pushFront(n)
}

// shrink evicts least recently used entries until the budget holds.
func (l *lru) shrink() {
	for l.used > l.limit && l.head.prev != &l.head {
		l.head.prev.entry.evict()
	}
}

// lruTable is a map whose entries count against an lru budget.
type lruTable[K comparable, V any] struct {
	lru   *lru
	items map[K]*lruEntry[K, V]
	// size estimates what a key and value point to, beyond the entry
	// struct (fixed) and the map slot (slot).
	size        func(K, V) int64
	fixed, slot int64
	// slots is the map capacity charged to the budget: what Go allocates
	// for the largest length the map had since it was made.
	slots int64
}

// lruEntry is an entry of an lruTable.
type lruEntry[K comparable, V any] struct {
	node  lruNode
	table *lruTable[K, V]
	key   K
	val   V
}

func (e *lruEntry[K, V]) evict() { e.table.remove(e) }

// minRebuildSlots: a map is made anew only if it has at least this many
// slots, and is at most 1/rebuildRatio full.
const (
	minRebuildSlots = 256
	rebuildRatio    = 8
)

func newLRUTable[K comparable, V any](l *lru, size func(K, V) int64) *lruTable[K, V] {
	var e lruEntry[K, V]
	var k K
	return &lruTable[K, V]{
		lru:   l,
		items: map[K]*lruEntry[K, V]{},
		size:  size,
		fixed: allocSize(int64(unsafe.Sizeof(e))),
		// A key, a pointer to the entry, and a control byte.
		slot: int64(unsafe.Sizeof(k)) + 8 + 1,
	}
}

// allocSize rounds an allocation up roughly as Go's size classes do.
func allocSize(n int64) int64 {
	if n > 256 {
		n += n / 8
	}
	return (n + 15) &^ 15
}

// mapSlots is the capacity Go gives a map of n items: a power of two
// (at least 8) that holds them at a load of at most 7/8.
func mapSlots(n int64) int64 {
	s := int64(8)
	for n > s*7/8 {
		s *= 2
	}
	return s
}

// get returns the value of k, marking it recently used.
func (t *lruTable[K, V]) get(k K) (V, bool) {
	e, ok := t.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	t.lru.touch(&e.node)
	return e.val, true
}

// peek returns the value of k without marking it used.
func (t *lruTable[K, V]) peek(k K) (V, bool) {
	e, ok := t.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	return e.val, true
}

// put sets the value of k, most recently used, and evicts what exceeds the
// budget. An entry larger than the whole budget is not kept.
func (t *lruTable[K, V]) put(k K, v V) {
	size := t.fixed + t.size(k, v)
	e, ok := t.items[k]
	switch {
	case size > t.lru.limit:
		if ok {
			t.remove(e)
		}
		return
	case ok:
		e.val = v
		t.lru.used += size - e.node.size
		e.node.size = size
		t.lru.touch(&e.node)
	default:
		e = &lruEntry[K, V]{table: t, key: k, val: v}
		e.node.entry, e.node.size = e, size
		t.items[k] = e
		t.lru.used += size
		t.lru.pushFront(&e.node)
		if n := int64(len(t.items)); n > t.slots*7/8 {
			s := mapSlots(n)
			t.lru.used += (s - t.slots) * t.slot
			t.slots = s
		}
	}
	t.lru.shrink()
}

// delete removes k.
func (t *lruTable[K, V]) delete(k K) {
	if e, ok := t.items[k]; ok {
		t.remove(e)
	}
}

// take removes k and returns its value.
func (t *lruTable[K, V]) take(k K) (V, bool) {
	e, ok := t.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	v := e.val
	t.remove(e)
	return v, true
}

func (t *lruTable[K, V]) remove(e *lruEntry[K, V]) {
	t.lru.unlink(&e.node)
	t.lru.used -= e.node.size
	delete(t.items, e.key)
	*e = lruEntry[K, V]{} // drop what the entry points to
	if n := int64(len(t.items)); t.slots >= minRebuildSlots && n*rebuildRatio < t.slots {
		t.rebuild()
	}
}

// rebuild makes the map anew for its current length, giving back the
// memory of the slots that deletions left empty.
func (t *lruTable[K, V]) rebuild() {
	n := int64(len(t.items))
	items := make(map[K]*lruEntry[K, V], n)
	for k, e := range t.items {
		items[k] = e
	}
	t.items = items
	s := mapSlots(n)
	t.lru.used -= (t.slots - s) * t.slot
	t.slots = s
}

// clear removes every entry, and gives back the map's memory unless the
// map is small.
func (t *lruTable[K, V]) clear() {
	for _, e := range t.items {
		t.lru.unlink(&e.node)
		t.lru.used -= e.node.size
		*e = lruEntry[K, V]{}
	}
	if t.slots <= minRebuildSlots {
		clear(t.items)
		return
	}
	t.items = map[K]*lruEntry[K, V]{}
	t.lru.used -= t.slots * t.slot
	t.slots = 0
}

// len is the number of entries.
func (t *lruTable[K, V]) len() int { return len(t.items) }

// all calls f for every entry, without marking any used; f must not
// modify the table.
func (t *lruTable[K, V]) all(f func(K, V)) {
	for k, e := range t.items {
		f(k, e.val)
	}
}
