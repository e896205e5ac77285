package doubleratchet

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// stateVersion is the first byte of the serialized state.
const stateVersion = 2

const (
	flagPeer = 1 << iota
	flagSend
	flagRecv
	flagsAll = flagPeer | flagSend | flagRecv
)

// Serialized layout, version 2 (integers big-endian):
//
//	version  1   = 2
//	flags    1   bit 0 peer key set, bit 1 sending chain, bit 2 receiving chain
//	rootKey  32
//	ownPriv  32
//	ownPub   32  (stored so that loading a session costs no scalar multiplication)
//	peerPub  32  (zero if no peer key)
//	sendCK   32  (zero if no sending chain)
//	sendN    4
//	pn       4
//	recvCK   32  (zero if no receiving chain)
//	recvN    4
//	nPrev    1   number of superseded peer keys (<= 8), then nPrev × 32
//	nSkipped 4   then nSkipped × (pub 32, n 4, mk 32), oldest first
const (
	fixedLen   = 1 + 1 + 32 + 32 + 32 + 32 + 32 + 4 + 4 + 32 + 4 + 1 + 4
	skippedLen = 32 + 4 + 32
)

// MarshalBinary serializes the complete state, including the skipped
// message keys in insertion order. The output contains secret key material
// and must be stored as confidentially as the session itself. The
// configuration is not included; pass it to UnmarshalState.
func (s *State) MarshalBinary() ([]byte, error) {
	return s.AppendBinary(make([]byte, 0, s.MarshalledLen()))
}

// MarshalledLen is the length of the serialised state.
func (s *State) MarshalledLen() int {
	return fixedLen + 32*len(s.prevPeers) + skippedLen*s.skipped.len()
}

// AppendBinary appends what MarshalBinary returns to b (see
// encoding.BinaryAppender), so that a caller can serialise into a buffer it
// reuses and wipes.
func (s *State) AppendBinary(b []byte) ([]byte, error) {
	b = slices.Grow(b, s.MarshalledLen())
	b = append(b, stateVersion)
	var flags byte
	if s.r.hasPeer {
		flags |= flagPeer
	}
	if s.r.hasSend {
		flags |= flagSend
	}
	if s.r.hasRecv {
		flags |= flagRecv
	}
	b = append(b, flags)
	b = append(b, s.r.rootKey[:]...)
	b = append(b, s.r.ownPriv[:]...)
	b = append(b, s.r.ownPub[:]...)
	b = append(b, s.r.peerPub[:]...)
	b = append(b, s.r.sendCK[:]...)
	b = binary.BigEndian.AppendUint32(b, s.r.sendN)
	b = binary.BigEndian.AppendUint32(b, s.r.pn)
	b = append(b, s.r.recvCK[:]...)
	b = binary.BigEndian.AppendUint32(b, s.r.recvN)
	b = append(b, byte(len(s.prevPeers)))
	for i := range s.prevPeers {
		b = append(b, s.prevPeers[i][:]...)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(s.skipped.len()))
	s.skipped.each(func(id skippedID, mk *[32]byte) {
		b = append(b, id.pub[:]...)
		b = binary.BigEndian.AppendUint32(b, id.n)
		b = append(b, mk[:]...)
	})
	return b, nil
}

type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || len(r.b) < n {
		r.bad = true
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) key() (k [32]byte) { copy(k[:], r.take(32)); return k }
func (r *reader) u32() uint32       { return binary.BigEndian.Uint32(r.take(4)) }
func (r *reader) u8() byte          { return r.take(1)[0] }

func corrupt(why string) error { return fmt.Errorf("%w: %s", ErrCorruptState, why) }

// UnmarshalState decodes a state produced by MarshalBinary, using cfg (which
// must be valid) as its configuration. If the stored skipped keys exceed
// cfg.MaxSkippedPerSession, the oldest are dropped. It never panics; any
// malformed or inconsistent input yields an error wrapping ErrCorruptState.
func UnmarshalState(cfg *Config, data []byte) (*State, error) {
	c, err := newConfig(cfg)
	if err != nil {
		return nil, err
	}
	if len(data) < fixedLen {
		return nil, corrupt("truncated")
	}
	if data[0] != stateVersion {
		return nil, corrupt("unknown version")
	}
	r := &reader{b: data[1:]}
	flags := r.u8()
	if flags&^flagsAll != 0 {
		return nil, corrupt("unknown flags")
	}
	s := &State{cfg: c}
	s.r.hasPeer = flags&flagPeer != 0
	s.r.hasSend = flags&flagSend != 0
	s.r.hasRecv = flags&flagRecv != 0
	s.r.rootKey = r.key()
	s.r.ownPriv = r.key()
	s.r.ownPub = r.key()
	s.r.peerPub = r.key()
	s.r.sendCK = r.key()
	s.r.sendN = r.u32()
	s.r.pn = r.u32()
	s.r.recvCK = r.key()
	s.r.recvN = r.u32()

	// Only three shapes are reachable: passive before the first message
	// (no peer, no chains), active before the first reply (peer and
	// sending chain), and established (everything).
	switch {
	case !s.r.hasPeer && !s.r.hasSend && !s.r.hasRecv:
	case s.r.hasPeer && s.r.hasSend:
	default:
		return nil, corrupt("inconsistent chain flags")
	}
	var zero [32]byte
	if (!s.r.hasPeer && s.r.peerPub != zero) ||
		(!s.r.hasSend && (s.r.sendCK != zero || s.r.sendN != 0 || s.r.pn != 0)) ||
		(!s.r.hasRecv && (s.r.recvCK != zero || s.r.recvN != 0)) {
		return nil, corrupt("non-zero unused field")
	}

	nPrev := int(r.u8())
	if nPrev > maxPrevPeerKeys {
		return nil, corrupt("too many previous peer keys")
	}
	if nPrev > 0 {
		if !s.r.hasRecv {
			return nil, corrupt("previous peer keys without receiving chain")
		}
		s.prevPeers = make([][32]byte, nPrev)
		for i := range s.prevPeers {
			s.prevPeers[i] = r.key()
		}
	}
	nSkipped := r.u32()
	if r.bad {
		return nil, corrupt("truncated")
	}
	// Check the length before allocating anything proportional to nSkipped.
	if uint64(len(r.b)) != uint64(nSkipped)*skippedLen {
		return nil, corrupt("wrong length")
	}
	if nSkipped > 0 {
		if !s.r.hasRecv {
			return nil, corrupt("skipped keys without receiving chain")
		}
		s.skipped.m = make(map[skippedID]storeVal, nSkipped)
		s.skipped.queue = make([]queueElem, 0, nSkipped)
		for range nSkipped {
			id := skippedID{pub: r.key(), n: r.u32()}
			mk := r.key()
			if _, dup := s.skipped.m[id]; dup {
				return nil, corrupt("duplicate skipped key")
			}
			s.skipped.put(id, mk)
		}
		s.skipped.evict(c.maxSession)
	}
	if r.bad || len(r.b) != 0 {
		return nil, corrupt("wrong length")
	}

	return s, nil
}
