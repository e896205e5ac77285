package session

import (
	"encoding/binary"
	"errors"
	"slices"

	"mellium.im/omemo/internal/xeddsa"
)

// deviceRecord is what is stored about one device of an account. Devices
// are never forgotten: a device missing from a later list becomes inactive.
type deviceRecord struct {
	// Active maps each namespace the device was seen in to whether it is
	// in the current device list of that namespace.
	Active         map[string]bool
	Label          string
	LabelSignature []byte
	IdentityKey    [32]byte
	HasIdentityKey bool
	// LabelVerified caches that LabelSignature is a valid signature of
	// Label by IdentityKey (XEP-0384 0.9: unsigned labels are ignored).
	LabelVerified bool
}

const recordVersion = 1

var errCorruptRecord = errors.New("corrupt device record")

// marshal encodes a record compactly: records are read for every device
// of every recipient on every message, so decoding must be cheap. The
// label verification is refreshed here, whenever label or key change.
func (r *deviceRecord) marshal() []byte {
	r.LabelVerified = r.Label != "" && r.HasIdentityKey && len(r.LabelSignature) == 64 &&
		xeddsa.Verify(r.IdentityKey, []byte(r.Label), [64]byte(r.LabelSignature))
	var flags byte
	if r.HasIdentityKey {
		flags |= 1
	}
	if r.LabelVerified {
		flags |= 2
	}
	out := []byte{recordVersion, flags}
	out = append(out, r.IdentityKey[:]...)
	out = appendString(out, r.Label)
	out = appendString(out, string(r.LabelSignature))
	nss := make([]string, 0, len(r.Active))
	for ns := range r.Active {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	out = append(out, byte(len(nss)))
	for _, ns := range nss {
		out = appendString(out, ns)
		if r.Active[ns] {
			out = append(out, 1)
		} else {
			out = append(out, 0)
		}
	}
	return out
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func unmarshalRecord(b []byte) (deviceRecord, error) {
	r := deviceRecord{Active: map[string]bool{}}
	if len(b) < 2+32 || b[0] != recordVersion {
		return r, errCorruptRecord
	}
	flags := b[1]
	r.HasIdentityKey, r.LabelVerified = flags&1 != 0, flags&2 != 0
	copy(r.IdentityKey[:], b[2:34])
	b = b[34:]
	str := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	var ok bool
	if r.Label, ok = str(); !ok {
		return r, errCorruptRecord
	}
	sig, ok := str()
	if !ok {
		return r, errCorruptRecord
	}
	if sig != "" {
		r.LabelSignature = []byte(sig)
	}
	if len(b) < 1 {
		return r, errCorruptRecord
	}
	n := int(b[0])
	b = b[1:]
	for range n {
		ns, ok := str()
		if !ok || len(b) < 1 {
			return r, errCorruptRecord
		}
		r.Active[ns] = b[0] == 1
		b = b[1:]
	}
	if len(b) != 0 {
		return r, errCorruptRecord
	}
	return r, nil
}
