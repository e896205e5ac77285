package session

import (
	"encoding/binary"
	"errors"
	"iter"
	"slices"
	"unsafe"

	"mellium.im/omemo/internal/xeddsa"
	omemons "mellium.im/omemo/ns"
)

// deviceRecord is what is stored about one device of an account. Devices
// are never forgotten: a device missing from a later list becomes inactive.
type deviceRecord struct {
	// Active holds each namespace the device was seen in, and whether it
	// is in the current device list of that namespace.
	Active         activity
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
	nss := make([]string, 0, r.Active.len())
	for ns := range r.Active.all() {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	out = append(out, byte(len(nss)))
	for _, ns := range nss {
		out = appendString(out, ns)
		if r.Active.active(ns) {
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
	var r deviceRecord
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
		k, m := binary.Uvarint(b)
		if m <= 0 || k > uint64(len(b)-m) || len(b)-m-int(k) < 1 {
			return r, errCorruptRecord
		}
		name := b[m : m+int(k)]
		r.Active.setBytes(name, b[m+int(k)] == 1)
		b = b[m+int(k)+1:]
	}
	if len(b) != 0 {
		return r, errCorruptRecord
	}
	return r, nil
}

// wellKnownNS are the namespaces an activity holds as bits, without a
// string: bit i stands for wellKnownNS[i].
var wellKnownNS = [...]string{omemons.OMEMO2, omemons.Legacy}

// activity is the namespaces a device was seen in, each with whether the
// device is in that namespace's current device list. Records are kept in
// memory by the thousand, so it is small: the well-known namespaces are
// bits, any other namespace an entry of a short sorted slice. Its zero
// value is empty. Copies share the slice: it is never modified in place.
type activity struct {
	seen, on uint8    // bit i: wellKnownNS[i] seen, and active
	other    []nsFlag // other namespaces, sorted by name
}

// nsFlag is a namespace of an activity other than the well-known ones.
type nsFlag struct {
	ns     string
	active bool
}

// wellKnownBit returns the bit of a well-known namespace, 0 for others.
func wellKnownBit(ns string) uint8 {
	for i, w := range wellKnownNS {
		if ns == w {
			return 1 << i
		}
	}
	return 0
}

// seenIn reports whether the device was seen in ns.
func (a activity) seenIn(ns string) bool {
	if bit := wellKnownBit(ns); bit != 0 {
		return a.seen&bit != 0
	}
	_, ok := slices.BinarySearchFunc(a.other, ns, cmpFlag)
	return ok
}

// active reports whether the device is in the current list of ns.
func (a activity) active(ns string) bool {
	if bit := wellKnownBit(ns); bit != 0 {
		return a.on&bit != 0
	}
	i, ok := slices.BinarySearchFunc(a.other, ns, cmpFlag)
	return ok && a.other[i].active
}

func cmpFlag(f nsFlag, ns string) int {
	switch {
	case f.ns < ns:
		return -1
	case f.ns > ns:
		return 1
	}
	return 0
}

// set records the device as seen in ns, active or not.
func (a *activity) set(ns string, active bool) {
	if bit := wellKnownBit(ns); bit != 0 {
		a.seen |= bit
		if active {
			a.on |= bit
		} else {
			a.on &^= bit
		}
		return
	}
	i, ok := slices.BinarySearchFunc(a.other, ns, cmpFlag)
	if ok && a.other[i].active == active {
		return
	}
	// Copy on write: copies of the record share the slice.
	other := make([]nsFlag, 0, len(a.other)+1)
	other = append(other, a.other[:i]...)
	other = append(other, nsFlag{ns, active})
	if ok {
		i++
	}
	a.other = append(other, a.other[i:]...)
}

// setBytes is set for a namespace as stored, without allocating for the
// well-known namespaces.
func (a *activity) setBytes(ns []byte, active bool) {
	for _, w := range wellKnownNS {
		if string(ns) == w {
			a.set(w, active)
			return
		}
	}
	a.set(string(ns), active)
}

// remove forgets ns.
func (a *activity) remove(ns string) {
	if bit := wellKnownBit(ns); bit != 0 {
		a.seen &^= bit
		a.on &^= bit
		return
	}
	if i, ok := slices.BinarySearchFunc(a.other, ns, cmpFlag); ok {
		a.other = slices.Delete(slices.Clone(a.other), i, i+1)
		if len(a.other) == 0 {
			a.other = nil
		}
	}
}

// len is the number of namespaces the device was seen in.
func (a activity) len() int {
	n := len(a.other)
	for s := a.seen; s != 0; s &= s - 1 {
		n++
	}
	return n
}

// all yields every namespace the device was seen in, and whether it is
// active there: the well-known ones first, then the others by name.
func (a activity) all() iter.Seq2[string, bool] {
	return func(yield func(string, bool) bool) {
		for i, w := range wellKnownNS {
			if a.seen&(1<<i) != 0 && !yield(w, a.on&(1<<i) != 0) {
				return
			}
		}
		for _, f := range a.other {
			if !yield(f.ns, f.active) {
				return
			}
		}
	}
}

// heapSize estimates the memory the activity points to.
func (a activity) heapSize() int64 {
	if a.other == nil {
		return 0
	}
	n := allocSize(int64(cap(a.other)) * int64(unsafe.Sizeof(nsFlag{})))
	for _, f := range a.other {
		n += allocSize(int64(len(f.ns)))
	}
	return n
}
