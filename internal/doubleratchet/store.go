package doubleratchet

// skippedID identifies a skipped message key: the peer ratchet public key of
// its chain and the message counter in that chain.
type skippedID struct {
	pub [32]byte
	n   uint32
}

type skippedEntry struct {
	id skippedID
	mk [32]byte
}

type storeVal struct {
	mk  [32]byte
	seq uint64 // insertion sequence number, matches one queue element
}

type queueElem struct {
	id  skippedID
	seq uint64
}

// skippedStore is an insertion-ordered map of skipped message keys (the
// equivalent of python's OrderedDict). Lookups and removals are O(1);
// eviction is FIFO. Removed entries leave a stale queue element behind that
// is recognised by its sequence number and compacted away lazily.
type skippedStore struct {
	m       map[skippedID]storeVal
	queue   []queueElem
	head    int
	nextSeq uint64
}

func (s *skippedStore) len() int { return len(s.m) }

// get copies the key stored for id into dst.
func (s *skippedStore) get(id skippedID, dst *[32]byte) bool {
	if len(s.m) == 0 {
		return false
	}
	v, ok := s.m[id]
	if ok {
		*dst = v.mk
	}
	return ok
}

// put inserts a key at the end of the order; an existing key keeps its
// position and gets the new value (OrderedDict.update semantics).
func (s *skippedStore) put(id skippedID, mk [32]byte) {
	if s.m == nil {
		s.m = make(map[skippedID]storeVal)
	}
	if v, ok := s.m[id]; ok {
		v.mk = mk
		s.m[id] = v
		return
	}
	seq := s.nextSeq
	s.nextSeq++
	s.m[id] = storeVal{mk: mk, seq: seq}
	s.queue = append(s.queue, queueElem{id: id, seq: seq})
}

func (s *skippedStore) remove(id skippedID) {
	if v, ok := s.m[id]; ok {
		clear(v.mk[:])
		delete(s.m, id)
		s.maybeCompact()
	}
}

// live reports whether queue element e still refers to a stored key.
func (s *skippedStore) live(e queueElem) bool {
	v, ok := s.m[e.id]
	return ok && v.seq == e.seq
}

// evict drops the oldest keys until at most max remain.
func (s *skippedStore) evict(max int) {
	for len(s.m) > max && s.head < len(s.queue) {
		e := s.queue[s.head]
		s.queue[s.head] = queueElem{}
		s.head++
		if s.live(e) {
			v := s.m[e.id]
			clear(v.mk[:])
			delete(s.m, e.id)
		}
	}
	s.maybeCompact()
}

// maybeCompact bounds the queue to O(number of live keys).
func (s *skippedStore) maybeCompact() {
	if len(s.m) == 0 {
		s.queue = s.queue[:0]
		s.head = 0
		return
	}
	// Stale slots: popped ones before head plus removed keys after it.
	stale := len(s.queue) - len(s.m)
	if stale <= len(s.m)+64 {
		return
	}
	q := make([]queueElem, 0, len(s.m))
	for _, e := range s.queue[s.head:] {
		if s.live(e) {
			q = append(q, e)
		}
	}
	s.queue = q
	s.head = 0
}

// each calls f for every stored key, oldest first.
func (s *skippedStore) each(f func(id skippedID, mk *[32]byte)) {
	for _, e := range s.queue[s.head:] {
		if v, ok := s.m[e.id]; ok && v.seq == e.seq {
			f(e.id, &v.mk)
		}
	}
}

func (s *skippedStore) clone() skippedStore {
	c := skippedStore{nextSeq: s.nextSeq}
	if len(s.m) == 0 {
		return c
	}
	c.m = make(map[skippedID]storeVal, len(s.m))
	c.queue = make([]queueElem, 0, len(s.m))
	for _, e := range s.queue[s.head:] {
		if v, ok := s.m[e.id]; ok && v.seq == e.seq {
			c.m[e.id] = v
			c.queue = append(c.queue, e)
		}
	}
	return c
}
