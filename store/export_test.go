package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Test-only access for the tests in package store_test.

// FaultPoint is where SetFaultHook's hook is asked to fail.
type FaultPoint = faultPoint

// The fault points.
const (
	FaultBegin  = faultBegin
	FaultWrite  = faultWrite
	FaultCommit = faultCommit
)

// SetFaultHook installs hook (nil removes it) in s, a store of this
// package: at each fault point, a non-nil error from hook makes the
// operation fail with it, as if the backend had failed.
func SetFaultHook(s Store, hook func(FaultPoint) error) {
	var f *faults
	switch s := s.(type) {
	case *Memory:
		f = &s.faults
	case *Bolt:
		f = &s.s.faults
	case *boltAccount:
		f = &s.faults
	default:
		panic(fmt.Sprintf("SetFaultHook: %T is not a store of package store", s))
	}
	if hook == nil {
		f.hook.Store(nil)
		return
	}
	f.hook.Store(&hook)
}

// BoltTxID returns the id of the last transaction committed to the file
// of b: it grows by one with every commit bbolt writes.
func BoltTxID(b *Bolt) uint64 {
	var id uint64
	_ = b.s.file.db.View(func(tx *bolt.Tx) error {
		id = uint64(tx.ID())
		return nil
	})
	return id
}
