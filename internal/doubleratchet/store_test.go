package doubleratchet

import (
	"slices"
	"testing"
)

func storeOrder(s *skippedStore) (ns []uint32) {
	s.each(func(id skippedID, mk *[32]byte) {
		if mk[0] != byte(id.n) {
			panic("value mismatch")
		}
		ns = append(ns, id.n)
	})
	return ns
}

// The store behaves like python's OrderedDict with update/pop/FIFO
// trimming, and its queue stays proportional to the live keys however many
// keys are used out of the middle.
func TestSkippedStore(t *testing.T) {
	var s skippedStore
	id := func(n uint32) skippedID { return skippedID{pub: [32]byte{1}, n: n} }
	val := func(n uint32) [32]byte { return [32]byte{byte(n)} }
	for n := range uint32(5) {
		s.put(id(n), val(n))
	}
	// Re-putting an existing key keeps its position.
	s.put(id(1), val(1))
	if got := storeOrder(&s); !slices.Equal(got, []uint32{0, 1, 2, 3, 4}) {
		t.Fatalf("order = %v", got)
	}
	s.remove(id(2))
	s.remove(id(2))
	var mk [32]byte
	if s.get(id(2), &mk) || !s.get(id(3), &mk) || mk != val(3) {
		t.Fatal("get after remove")
	}
	s.evict(2)
	if got := storeOrder(&s); !slices.Equal(got, []uint32{3, 4}) {
		t.Fatalf("after evict: %v", got)
	}

	// Churn: add and remove many keys while two stay.
	for n := uint32(10); n < 5000; n++ {
		s.put(id(n), val(n))
		if n%3 != 0 {
			s.remove(id(n))
		}
		s.evict(1000)
		if len(s.queue) > 2*s.len()+70 {
			t.Fatalf("queue grew to %d for %d keys", len(s.queue), s.len())
		}
	}
	got := storeOrder(&s)
	if len(got) != 1000 || got[0] != 2001 || got[len(got)-1] != 4998 {
		t.Fatalf("after churn: %d keys, first %d, last %d", len(got), got[0], got[len(got)-1])
	}
	c := s.clone()
	if !slices.Equal(storeOrder(&c), got) {
		t.Fatal("clone order differs")
	}
	s.evict(0)
	if s.len() != 0 || len(s.queue) != 0 || c.len() != 1000 {
		t.Fatal("evict(0) / clone independence")
	}
}
