// Package pbwire holds the strict, allocation-free protobuf field scanner
// shared by the hand-written OMEMO message parsers.
//
// The scanner accepts what a conforming protobuf decoder accepts (fields in
// any order, unknown fields skipped, non-minimal varints) minus oddities no
// honest encoder produces, which it rejects: a known field occurring twice,
// a known field with the wrong wire type, a uint32 field whose varint
// exceeds 32 bits, field numbers outside the valid range, truncated input or
// trailing garbage, and missing required fields. Returned byte slices alias
// the input.
package pbwire

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("protobuf: malformed message")

// Kind is the kind of a known field.
type Kind uint8

const (
	// Uint32 is a varint field holding a uint32.
	Uint32 Kind = iota
	// Bytes is a length-delimited field (bytes or embedded message).
	Bytes
)

// Field describes a known field of a message.
type Field struct {
	Num      protowire.Number
	Kind     Kind
	Required bool
}

// Value is the parsed value of a known field.
type Value struct {
	U       uint32
	B       []byte // non-nil (possibly empty) if Present and Kind is Bytes
	Present bool
}

// Parse scans b, storing the value of fields[i] in vals[i]. len(vals) must
// be at least len(fields). Parse does not allocate unless it fails.
func Parse(b []byte, fields []Field, vals []Value) error {
	for i := range fields {
		vals[i] = Value{}
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: bad tag: %v", ErrMalformed, protowire.ParseError(n))
		}
		if num > protowire.MaxValidNumber {
			return fmt.Errorf("%w: field number out of range", ErrMalformed)
		}
		b = b[n:]
		idx := -1
		for i := range fields {
			if fields[i].Num == num {
				idx = i
				break
			}
		}
		if idx < 0 {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: unknown field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		f, v := &fields[idx], &vals[idx]
		if v.Present {
			return fmt.Errorf("%w: field %d repeated", ErrMalformed, num)
		}
		switch f.Kind {
		case Uint32:
			if typ != protowire.VarintType {
				return fmt.Errorf("%w: field %d: wrong wire type %d", ErrMalformed, num, typ)
			}
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			if x > math.MaxUint32 {
				return fmt.Errorf("%w: field %d: value exceeds uint32", ErrMalformed, num)
			}
			b = b[n:]
			v.U = uint32(x)
		case Bytes:
			if typ != protowire.BytesType {
				return fmt.Errorf("%w: field %d: wrong wire type %d", ErrMalformed, num, typ)
			}
			x, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			v.B = x[:len(x):len(x)]
		}
		v.Present = true
	}
	for i := range fields {
		if fields[i].Required && !vals[i].Present {
			return fmt.Errorf("%w: required field %d missing", ErrMalformed, fields[i].Num)
		}
	}
	return nil
}

// SizeUint32 is the encoded size of a uint32 field.
func SizeUint32(num protowire.Number, v uint32) int {
	return protowire.SizeTag(num) + protowire.SizeVarint(uint64(v))
}

// SizeBytes is the encoded size of a bytes field with an n-byte value.
func SizeBytes(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

// AppendUint32 appends a uint32 field.
func AppendUint32(b []byte, num protowire.Number, v uint32) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// AppendBytes appends a bytes field.
func AppendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// AppendBytesHeader appends the tag and length of a bytes field whose n-byte
// value the caller appends next (used to embed a message in place).
func AppendBytesHeader(b []byte, num protowire.Number, n int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}
