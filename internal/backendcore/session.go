package backendcore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"mellium.im/omemo/backends"
	"mellium.im/omemo/internal/doubleratchet"
)

// Session is the session type of both backends.
type Session struct {
	NS          string
	PeerJID     string
	Device      uint32
	Init        backends.Initiation
	IsConfirmed bool
	Kex         backends.KeyExchange
	// AD is the X3DH associated data, initiator first.
	AD []byte
	DR *doubleratchet.State
}

var _ backends.Session = (*Session)(nil)

func (s *Session) Namespace() string                    { return s.NS }
func (s *Session) JID() string                          { return s.PeerJID }
func (s *Session) DeviceID() uint32                     { return s.Device }
func (s *Session) Initiation() backends.Initiation      { return s.Init }
func (s *Session) Confirmed() bool                      { return s.IsConfirmed }
func (s *Session) KeyExchange() backends.KeyExchange    { return s.Kex }
func (s *Session) SendingChainLength() uint32           { return s.DR.SendingChainLength() }
func (s *Session) ReceivingChainLength() (uint32, bool) { return s.DR.ReceivingChainLength() }

const sessionVersion = 1

// ErrCorruptSession reports stored session bytes that cannot be decoded.
var ErrCorruptSession = errors.New("omemo: corrupt session")

// MarshalBinary encodes the session: version, initiation, confirmed, device
// id, JID, key exchange, associated data, ratchet state.
func (s *Session) MarshalBinary() ([]byte, error) {
	return s.AppendBinary(nil)
}

// AppendBinary appends what MarshalBinary returns to b (see
// encoding.BinaryAppender), so that a caller can serialise into a buffer it
// reuses and wipes.
func (s *Session) AppendBinary(b []byte) ([]byte, error) {
	if len(s.PeerJID) > 0xffff || len(s.AD) > 0xff {
		return nil, fmt.Errorf("%w: field too long", ErrCorruptSession)
	}
	out := slices.Grow(b, 3+4+2+len(s.PeerJID)+72+1+len(s.AD)+s.DR.MarshalledLen())
	out = append(out, sessionVersion, byte(s.Init), boolByte(s.IsConfirmed))
	out = binary.BigEndian.AppendUint32(out, s.Device)
	out = binary.BigEndian.AppendUint16(out, uint16(len(s.PeerJID)))
	out = append(out, s.PeerJID...)
	out = binary.BigEndian.AppendUint32(out, s.Kex.PreKeyID)
	out = binary.BigEndian.AppendUint32(out, s.Kex.SignedPreKeyID)
	out = append(out, s.Kex.IdentityKey[:]...)
	out = append(out, s.Kex.EphemeralKey[:]...)
	out = append(out, byte(len(s.AD)))
	out = append(out, s.AD...)
	return s.DR.AppendBinary(out)
}

// UnmarshalSession decodes what MarshalBinary produced. It never panics.
func UnmarshalSession(ns string, cfg *doubleratchet.Config, data []byte) (*Session, error) {
	r := reader{b: data}
	v := r.byte()
	init := backends.Initiation(r.byte())
	conf := r.byte()
	s := &Session{NS: ns, Init: init, IsConfirmed: conf == 1}
	s.Device = r.u32()
	s.PeerJID = string(r.bytes(int(r.u16())))
	s.Kex.PreKeyID = r.u32()
	s.Kex.SignedPreKeyID = r.u32()
	copy(s.Kex.IdentityKey[:], r.bytes(32))
	copy(s.Kex.EphemeralKey[:], r.bytes(32))
	s.AD = append([]byte(nil), r.bytes(int(r.byte()))...)
	if r.bad || v != sessionVersion || (init != backends.Active && init != backends.Passive) || conf > 1 {
		return nil, ErrCorruptSession
	}
	dr, err := doubleratchet.UnmarshalState(cfg, r.b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorruptSession, err)
	}
	s.DR = dr
	return s, nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// reader is a bounds-checked cursor; after an overrun every read returns
// zero values and bad is set.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) bytes(n int) []byte {
	if r.bad || n < 0 || n > len(r.b) {
		r.bad = true
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) byte() byte {
	b := r.bytes(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (r *reader) u16() uint16 {
	b := r.bytes(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

func (r *reader) u32() uint32 {
	b := r.bytes(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}
