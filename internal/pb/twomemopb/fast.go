package twomemopb

// Hand-written encoders and parsers for the hot path (one ratchet message
// per recipient device). The encoders produce exactly the bytes
// proto.Marshal produces for the generated types (fields in field-number
// order, required fields always present, zeros included). The parsers are
// strict; see ErrMalformed.

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

// Field numbers (twomemo.proto).
const (
	msgN          = 1
	msgPN         = 2
	msgDHPub      = 3
	msgCiphertext = 4

	authMAC     = 1
	authMessage = 2

	kexPKID    = 1
	kexSPKID   = 2
	kexIK      = 3
	kexEK      = 4
	kexMessage = 5
)

var (
	messageFields = [...]pbwire.Field{
		{Num: msgN, Kind: pbwire.Uint32, Required: true},
		{Num: msgPN, Kind: pbwire.Uint32, Required: true},
		{Num: msgDHPub, Kind: pbwire.Bytes, Required: true},
		{Num: msgCiphertext, Kind: pbwire.Bytes},
	}
	authFields = [...]pbwire.Field{
		{Num: authMAC, Kind: pbwire.Bytes, Required: true},
		{Num: authMessage, Kind: pbwire.Bytes, Required: true},
	}
	kexFields = [...]pbwire.Field{
		{Num: kexPKID, Kind: pbwire.Uint32, Required: true},
		{Num: kexSPKID, Kind: pbwire.Uint32, Required: true},
		{Num: kexIK, Kind: pbwire.Bytes, Required: true},
		{Num: kexEK, Kind: pbwire.Bytes, Required: true},
		{Num: kexMessage, Kind: pbwire.Bytes, Required: true},
	}
)

// SizeOMEMOMessage returns the length of AppendOMEMOMessage's output.
func SizeOMEMOMessage(n, pn uint32, dhPub, ciphertext []byte) int {
	size := pbwire.SizeUint32(msgN, n) + pbwire.SizeUint32(msgPN, pn) + pbwire.SizeBytes(msgDHPub, len(dhPub))
	if ciphertext != nil {
		size += pbwire.SizeBytes(msgCiphertext, len(ciphertext))
	}
	return size
}

// AppendOMEMOMessage appends the serialized OMEMOMessage{n, pn, dh_pub,
// ciphertext} to dst. A nil ciphertext omits the optional field; a non-nil
// empty one emits it with length 0 (as proto.Marshal does).
func AppendOMEMOMessage(dst []byte, n, pn uint32, dhPub, ciphertext []byte) []byte {
	dst = slices.Grow(dst, SizeOMEMOMessage(n, pn, dhPub, ciphertext))
	dst = pbwire.AppendUint32(dst, msgN, n)
	dst = pbwire.AppendUint32(dst, msgPN, pn)
	dst = pbwire.AppendBytes(dst, msgDHPub, dhPub)
	if ciphertext != nil {
		dst = pbwire.AppendBytes(dst, msgCiphertext, ciphertext)
	}
	return dst
}

// ParseOMEMOMessage parses a serialized OMEMOMessage. ciphertext is nil if
// the optional field is absent. The returned slices alias b.
func ParseOMEMOMessage(b []byte) (n, pn uint32, dhPub, ciphertext []byte, err error) {
	var v [len(messageFields)]pbwire.Value
	if err = pbwire.Parse(b, messageFields[:], v[:]); err != nil {
		return 0, 0, nil, nil, err
	}
	return v[0].U, v[1].U, v[2].B, v[3].B, nil
}

// SizeOMEMOAuthenticatedMessage returns the length of
// AppendOMEMOAuthenticatedMessage's output.
func SizeOMEMOAuthenticatedMessage(mac, message []byte) int {
	return pbwire.SizeBytes(authMAC, len(mac)) + pbwire.SizeBytes(authMessage, len(message))
}

// AppendOMEMOAuthenticatedMessage appends the serialized
// OMEMOAuthenticatedMessage{mac, message} to dst; message is a serialized
// OMEMOMessage.
func AppendOMEMOAuthenticatedMessage(dst, mac, message []byte) []byte {
	dst = slices.Grow(dst, SizeOMEMOAuthenticatedMessage(mac, message))
	dst = pbwire.AppendBytes(dst, authMAC, mac)
	return pbwire.AppendBytes(dst, authMessage, message)
}

// ParseOMEMOAuthenticatedMessage parses a serialized
// OMEMOAuthenticatedMessage. The returned slices alias b; message is not
// parsed (verify the MAC over it first, then use ParseOMEMOMessage).
func ParseOMEMOAuthenticatedMessage(b []byte) (mac, message []byte, err error) {
	var v [len(authFields)]pbwire.Value
	if err = pbwire.Parse(b, authFields[:], v[:]); err != nil {
		return nil, nil, err
	}
	return v[0].B, v[1].B, nil
}

// SizeOMEMOKeyExchange returns the length of AppendOMEMOKeyExchange's
// output.
func SizeOMEMOKeyExchange(pkID, spkID uint32, ik, ek, mac, message []byte) int {
	return pbwire.SizeUint32(kexPKID, pkID) + pbwire.SizeUint32(kexSPKID, spkID) +
		pbwire.SizeBytes(kexIK, len(ik)) + pbwire.SizeBytes(kexEK, len(ek)) +
		pbwire.SizeBytes(kexMessage, SizeOMEMOAuthenticatedMessage(mac, message))
}

// AppendOMEMOKeyExchange appends the serialized OMEMOKeyExchange{pk_id,
// spk_id, ik, ek, message = OMEMOAuthenticatedMessage{mac, message}} to dst,
// writing the embedded authenticated message in place.
func AppendOMEMOKeyExchange(dst []byte, pkID, spkID uint32, ik, ek, mac, message []byte) []byte {
	dst = slices.Grow(dst, SizeOMEMOKeyExchange(pkID, spkID, ik, ek, mac, message))
	dst = pbwire.AppendUint32(dst, kexPKID, pkID)
	dst = pbwire.AppendUint32(dst, kexSPKID, spkID)
	dst = pbwire.AppendBytes(dst, kexIK, ik)
	dst = pbwire.AppendBytes(dst, kexEK, ek)
	dst = pbwire.AppendBytesHeader(dst, kexMessage, SizeOMEMOAuthenticatedMessage(mac, message))
	return AppendOMEMOAuthenticatedMessage(dst, mac, message)
}

// ParseOMEMOKeyExchange parses a serialized OMEMOKeyExchange including the
// embedded OMEMOAuthenticatedMessage, which must be well-formed too. The
// returned slices alias b.
func ParseOMEMOKeyExchange(b []byte) (pkID, spkID uint32, ik, ek, mac, message []byte, err error) {
	var v [len(kexFields)]pbwire.Value
	if err = pbwire.Parse(b, kexFields[:], v[:]); err != nil {
		return 0, 0, nil, nil, nil, nil, err
	}
	mac, message, err = ParseOMEMOAuthenticatedMessage(v[4].B)
	if err != nil {
		return 0, 0, nil, nil, nil, nil, err
	}
	return v[0].U, v[1].U, v[2].B, v[3].B, mac, message, nil
}
