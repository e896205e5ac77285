package oldmemopb

// Hand-written encoders and parsers for the hot path (one ratchet message
// per recipient device). The encoders produce exactly the bytes
// proto.Marshal produces for the generated types (fields in field-number
// order, required fields always present, zeros included). The parsers are
// strict; see ErrMalformed. The version byte (0x33) and the truncated MAC of
// the libsignal wire format are not part of the protobuf and are handled by
// the caller.

import (
	"slices"

	"mellium.im/omemo/internal/pb/internal/pbwire"
)

// ErrMalformed is wrapped by every error of the Parse functions. Besides
// truncated input, trailing garbage and missing required fields, the parsers
// reject a known field that occurs twice or has the wrong wire type and
// uint32 values that do not fit 32 bits. Unknown fields are skipped and
// fields may come in any order, as in any protobuf decoder.
var ErrMalformed = pbwire.ErrMalformed

// Field numbers (oldmemo.proto, as libsignal's WhisperTextProtocol).
const (
	msgDHPub      = 1
	msgN          = 2
	msgPN         = 3
	msgCiphertext = 4

	kexPKID    = 1
	kexEK      = 2
	kexIK      = 3
	kexMessage = 4
	kexUnused  = 5
	kexSPKID   = 6
)

var (
	messageFields = [...]pbwire.Field{
		{Num: msgN, Kind: pbwire.Uint32, Required: true},
		{Num: msgPN, Kind: pbwire.Uint32, Required: true},
		{Num: msgDHPub, Kind: pbwire.Bytes, Required: true},
		{Num: msgCiphertext, Kind: pbwire.Bytes},
	}
	kexFields = [...]pbwire.Field{
		{Num: kexPKID, Kind: pbwire.Uint32, Required: true},
		{Num: kexSPKID, Kind: pbwire.Uint32, Required: true},
		{Num: kexIK, Kind: pbwire.Bytes, Required: true},
		{Num: kexEK, Kind: pbwire.Bytes, Required: true},
		{Num: kexMessage, Kind: pbwire.Bytes, Required: true},
		{Num: kexUnused, Kind: pbwire.Uint32},
	}
)

// SizeOMEMOMessage returns the length of AppendOMEMOMessage's output.
func SizeOMEMOMessage(n, pn uint32, dhPub, ciphertext []byte) int {
	size := pbwire.SizeBytes(msgDHPub, len(dhPub)) + pbwire.SizeUint32(msgN, n) + pbwire.SizeUint32(msgPN, pn)
	if ciphertext != nil {
		size += pbwire.SizeBytes(msgCiphertext, len(ciphertext))
	}
	return size
}

// AppendOMEMOMessage appends the serialized OMEMOMessage (libsignal
// WhisperMessage) to dst, in field-number order: dh_pub (1), n (2), pn (3),
// ciphertext (4). dhPub is the 0x05-prefixed ratchet key. A nil ciphertext
// omits the optional field.
func AppendOMEMOMessage(dst []byte, n, pn uint32, dhPub, ciphertext []byte) []byte {
	dst = slices.Grow(dst, SizeOMEMOMessage(n, pn, dhPub, ciphertext))
	dst = pbwire.AppendBytes(dst, msgDHPub, dhPub)
	dst = pbwire.AppendUint32(dst, msgN, n)
	dst = pbwire.AppendUint32(dst, msgPN, pn)
	if ciphertext != nil {
		dst = pbwire.AppendBytes(dst, msgCiphertext, ciphertext)
	}
	return dst
}

// ParseOMEMOMessage parses a serialized OMEMOMessage (without version byte
// and MAC). ciphertext is nil if the optional field is absent. The returned
// slices alias b.
func ParseOMEMOMessage(b []byte) (n, pn uint32, dhPub, ciphertext []byte, err error) {
	var v [len(messageFields)]pbwire.Value
	if err = pbwire.Parse(b, messageFields[:], v[:]); err != nil {
		return 0, 0, nil, nil, err
	}
	return v[0].U, v[1].U, v[2].B, v[3].B, nil
}

// SizeOMEMOKeyExchange returns the length of AppendOMEMOKeyExchange's
// output.
func SizeOMEMOKeyExchange(pkID, spkID uint32, ik, ek, message []byte) int {
	return pbwire.SizeUint32(kexPKID, pkID) + pbwire.SizeBytes(kexEK, len(ek)) +
		pbwire.SizeBytes(kexIK, len(ik)) + pbwire.SizeBytes(kexMessage, len(message)) +
		pbwire.SizeUint32(kexSPKID, spkID)
}

// AppendOMEMOKeyExchange appends the serialized OMEMOKeyExchange (libsignal
// PreKeyWhisperMessage) to dst, in field-number order: pk_id (1), ek (2),
// ik (3), message (4), spk_id (6). The optional "unused" field 5
// (registrationId) is never emitted. ik and ek are 0x05-prefixed; message
// is the complete WhisperMessage including version byte and MAC.
func AppendOMEMOKeyExchange(dst []byte, pkID, spkID uint32, ik, ek, message []byte) []byte {
	dst = slices.Grow(dst, SizeOMEMOKeyExchange(pkID, spkID, ik, ek, message))
	dst = pbwire.AppendUint32(dst, kexPKID, pkID)
	dst = pbwire.AppendBytes(dst, kexEK, ek)
	dst = pbwire.AppendBytes(dst, kexIK, ik)
	dst = pbwire.AppendBytes(dst, kexMessage, message)
	return pbwire.AppendUint32(dst, kexSPKID, spkID)
}

// ParseOMEMOKeyExchange parses a serialized OMEMOKeyExchange (without the
// version byte). The optional field 5 (registrationId, set by libsignal
// clients) is accepted and ignored. The returned slices alias b.
func ParseOMEMOKeyExchange(b []byte) (pkID, spkID uint32, ik, ek, message []byte, err error) {
	var v [len(kexFields)]pbwire.Value
	if err = pbwire.Parse(b, kexFields[:], v[:]); err != nil {
		return 0, 0, nil, nil, nil, err
	}
	return v[0].U, v[1].U, v[2].B, v[3].B, v[4].B, nil
}
