package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FormatVersion is the version of the persistent file format written by
// this package. Open refuses files with a larger version (ErrVersion) and
// migrates files with a smaller one.
const FormatVersion uint64 = 1

const initialMmapSize = 1 << 20

// DefaultLockTimeout is the default for Options.LockTimeout.
const DefaultLockTimeout = time.Second

// FileMode is the permission of a store file created by Open. Open also
// tightens the permissions of an existing file to FileMode when it is opened
// read-write.
const FileMode os.FileMode = 0o600

var (
	metaBucket = []byte("meta")
	dataBucket = []byte("data")
	versionKey = []byte("version")
	formatKey  = []byte("format")
	formatName = []byte("mellium.im/omemo/store")
)

// migration upgrades the file from one format version to the next. It runs
// inside the read-write transaction that also records the new version, so a
// failed or interrupted upgrade leaves the file at its old version.
type migration func(tx *bolt.Tx) error

// migrations maps a format version N to the migration from N to N+1. It is
// empty while FormatVersion is 1; when the format changes, increment
// FormatVersion and register the migration from the previous version here.
var migrations = map[uint64]migration{}

// Options configures Open. The zero value (or a nil *Options) gives the
// safe defaults.
type Options struct {
	// LockTimeout is how long Open waits for another process (or another
	// Open in this process) to release the store's exclusive file lock
	// before failing with ErrLocked. Zero means DefaultLockTimeout (1s); a
	// negative value means fail at once if the file is locked.
	LockTimeout time.Duration

	// ReadOnly opens the store read-only with a shared lock: several
	// read-only opens may coexist, but not with a read-write open. Update
	// fails with ErrReadOnly. The file must already exist and be at the
	// current format version.
	ReadOnly bool

	// NoSync skips fsync on commit. UNSAFE: a committed transaction may be
	// lost, and the file may be corrupted, by a power loss or an operating
	// system crash. For tests only.
	NoSync bool
}

// Bolt is the persistent [Store], a single bbolt file. See the package
// documentation for the guarantees. It is safe for concurrent use.
type Bolt struct {
	db       *bolt.DB
	readOnly bool
	lc       lifecycle
	wlock    writeLock

	commits   atomic.Uint64
	rollbacks atomic.Uint64
}

// Open opens (creating it if needed, with permissions 0600) the persistent
// store at path. The parent directory must exist; [DefaultPath] creates it.
//
// It fails with ErrLocked if the file stays locked for longer than
// opts.LockTimeout, ErrVersion if the file was written by a newer version of
// this package, and ErrCorrupt if the file is not a valid store.
func Open(path string, opts *Options) (*Bolt, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	timeout := o.LockTimeout
	switch {
	case timeout == 0:
		timeout = DefaultLockTimeout
	case timeout < 0:
		// bbolt treats 0 as "wait forever"; any negative value makes it
		// give up after the first attempt.
		timeout = -1
	}
	bopts := &bolt.Options{
		Timeout:  timeout,
		ReadOnly: o.ReadOnly,
		NoSync:   o.NoSync,
		OpenFile: func(name string, flag int, _ os.FileMode) (*os.File, error) {
			return openFile(name, flag, o.ReadOnly)
		},
		// Map 1 MiB up front (bbolt starts at 32 KiB and doubles). Growing
		// the mapping must wait for every open read transaction, so a
		// generous initial size keeps long Views from stalling Updates in
		// stores of ordinary size. The file is extended to this size (as a
		// sparse file on Unix) once the store needs more than its first
		// few pages.
		InitialMmapSize: initialMmapSize,
	}
	db, err := bolt.Open(path, FileMode, bopts)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, mapOpenError(err))
	}
	if err := prepare(db, o.ReadOnly, FormatVersion, migrations); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	b := &Bolt{db: db, readOnly: o.ReadOnly, wlock: make(writeLock, 1)}
	b.lc.init()
	return b, nil
}

// openFile opens the store file and, when opening read-write, removes any
// group or other permission bits from an existing file (on the descriptor,
// so there is no race with a rename of the path).
func openFile(name string, flag int, readOnly bool) (*os.File, error) {
	f, err := os.OpenFile(name, flag, FileMode)
	if err != nil {
		return nil, err
	}
	if readOnly || runtime.GOOS == "windows" {
		return f, nil
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: not a regular file", ErrCorrupt)
	}
	if fi.Mode().Perm()&^FileMode != 0 {
		if err := f.Chmod(FileMode); err != nil {
			f.Close()
			return nil, err
		}
	}
	return f, nil
}

func mapOpenError(err error) error {
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %w", ErrLocked, err)
	case errors.Is(err, berrors.ErrInvalid),
		errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch),
		errors.Is(err, berrors.ErrInvalidMapping):
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

// readFormat checks the meta bucket. fresh reports a bbolt file with no
// buckets at all (just created).
func readFormat(tx *bolt.Tx) (version uint64, fresh bool, err error) {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		empty := true
		c := tx.Cursor()
		if k, _ := c.First(); k != nil {
			empty = false
		}
		if !empty {
			return 0, false, fmt.Errorf("%w: no meta bucket", ErrCorrupt)
		}
		return 0, true, nil
	}
	if !bytes.Equal(meta.Get(formatKey), formatName) {
		return 0, false, fmt.Errorf("%w: unknown format identifier", ErrCorrupt)
	}
	v := meta.Get(versionKey)
	if len(v) != 8 {
		return 0, false, fmt.Errorf("%w: malformed format version", ErrCorrupt)
	}
	version = binary.BigEndian.Uint64(v)
	if version == 0 {
		return 0, false, fmt.Errorf("%w: format version 0", ErrCorrupt)
	}
	if tx.Bucket(dataBucket) == nil {
		return 0, false, fmt.Errorf("%w: no data bucket", ErrCorrupt)
	}
	return version, false, nil
}

func putVersion(meta *bolt.Bucket, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return meta.Put(versionKey, b[:])
}

// prepare initialises a fresh file or checks (and, if writable, migrates) an
// existing one to version target using the migrations in table.
func prepare(db *bolt.DB, readOnly bool, target uint64, table map[uint64]migration) (err error) {
	defer guard(&err)
	var (
		version uint64
		fresh   bool
	)
	if err := db.View(func(tx *bolt.Tx) error {
		version, fresh, err = readFormat(tx)
		return err
	}); err != nil {
		return err
	}
	switch {
	case fresh && readOnly:
		return fmt.Errorf("%w: store was never initialised", ErrCorrupt)
	case version > target:
		return fmt.Errorf("%w: file has version %d, this package supports up to %d", ErrVersion, version, target)
	case version == target:
		return nil
	case !fresh && readOnly:
		return fmt.Errorf("%w: file has version %d and needs a migration to %d; open it read-write", ErrVersion, version, target)
	}
	return db.Update(func(tx *bolt.Tx) error {
		// Re-read under the write transaction: this is the state we change.
		version, fresh, err := readFormat(tx)
		if err != nil {
			return err
		}
		if fresh {
			meta, err := tx.CreateBucket(metaBucket)
			if err != nil {
				return err
			}
			if _, err := tx.CreateBucket(dataBucket); err != nil {
				return err
			}
			if err := meta.Put(formatKey, formatName); err != nil {
				return err
			}
			return putVersion(meta, target)
		}
		for v := version; v < target; v++ {
			m := table[v]
			if m == nil {
				return fmt.Errorf("%w: no migration from version %d", ErrVersion, v)
			}
			if err := m(tx); err != nil {
				return fmt.Errorf("store: migration from version %d to %d: %w", v, v+1, err)
			}
		}
		meta := tx.Bucket(metaBucket)
		if meta == nil {
			return fmt.Errorf("%w: migration removed the meta bucket", ErrCorrupt)
		}
		return putVersion(meta, target)
	})
}

// guard turns a panic inside bbolt (which asserts on damaged pages) into
// ErrCorrupt. It must only wrap bbolt calls, never user callbacks, whose
// panics must propagate.
func guard(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: internal error: %v", ErrCorrupt, r)
	}
}

// Path returns the file name of the store.
func (b *Bolt) Path() string { return b.db.Path() }

// Stats returns the store's counters.
func (b *Bolt) Stats() Stats {
	return Stats{Commits: b.commits.Load(), Rollbacks: b.rollbacks.Load()}
}

// View implements [Store.View].
func (b *Bolt) View(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.lc.enter(); err != nil {
		return err
	}
	defer b.lc.leave()
	btx, err := b.begin(false)
	if err != nil {
		return err
	}
	tx := &boltTx{bkt: btx.Bucket(dataBucket)}
	defer func() {
		tx.done = true
		_ = btx.Rollback()
	}()
	if tx.bkt == nil {
		return fmt.Errorf("%w: no data bucket", ErrCorrupt)
	}
	return f(tx)
}

// Update implements [Store.Update]. When it returns nil the transaction has
// been written and fsync'd (unless Options.NoSync was set).
func (b *Bolt) Update(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.lc.enter(); err != nil {
		return err
	}
	defer b.lc.leave()
	if b.readOnly {
		return fmt.Errorf("%w: store was opened read-only", ErrReadOnly)
	}
	if err := b.wlock.acquire(ctx, b.lc.closing); err != nil {
		return err
	}
	defer b.wlock.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	btx, err := b.begin(true)
	if err != nil {
		return err
	}
	tx := &boltTx{txState: txState{writable: true}, bkt: btx.Bucket(dataBucket)}
	committed := false
	defer func() {
		tx.done = true
		if !committed {
			// After a failed Commit bbolt has already rolled back and
			// this returns ErrTxClosed.
			_ = btx.Rollback()
			b.rollbacks.Add(1)
		}
	}()
	if tx.bkt == nil {
		return fmt.Errorf("%w: no data bucket", ErrCorrupt)
	}
	if err := f(tx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := commit(btx); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	committed = true
	b.commits.Add(1)
	return nil
}

func commit(btx *bolt.Tx) (err error) {
	defer guard(&err)
	return btx.Commit()
}

func (b *Bolt) begin(writable bool) (btx *bolt.Tx, err error) {
	defer guard(&err)
	btx, err = b.db.Begin(writable)
	switch {
	case err == nil:
		return btx, nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return nil, ErrClosed
	case errors.Is(err, berrors.ErrDatabaseReadOnly):
		return nil, fmt.Errorf("%w: %w", ErrReadOnly, err)
	}
	return nil, fmt.Errorf("store: begin transaction: %w", err)
}

// Close implements [Store.Close]: it waits for running transactions, then
// closes the file and releases its lock.
func (b *Bolt) Close() error {
	if !b.lc.close() {
		return nil
	}
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Check verifies the consistency of the whole file (page reachability,
// freelist, key order) in a read-only transaction. It returns an error
// wrapping ErrCorrupt describing the first problems found.
func (b *Bolt) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.lc.enter(); err != nil {
		return err
	}
	defer b.lc.leave()
	btx, err := b.begin(false)
	if err != nil {
		return err
	}
	defer btx.Rollback()
	var errs []error
	for e := range btx.Check() {
		if len(errs) < 10 {
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrCorrupt, errors.Join(errs...))
	}
	_, _, err = readFormat(btx)
	return err
}

type boltTx struct {
	txState
	bkt *bolt.Bucket
}

func (tx *boltTx) Get(key string) (v []byte, err error) {
	if tx.done {
		return nil, ErrTxDone
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	defer guard(&err)
	// Seek rather than Bucket.Get so that an empty value is told apart from
	// a missing key whatever bbolt returns for zero-length values.
	k, val := tx.bkt.Cursor().Seek([]byte(key))
	if k == nil || string(k) != key {
		return nil, notFound(key)
	}
	return clone(val), nil
}

func (tx *boltTx) Put(key string, value []byte) (err error) {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if err := checkValue(value); err != nil {
		return err
	}
	defer guard(&err)
	// bbolt keeps references to key and value until commit, so give it
	// private copies.
	return tx.bkt.Put([]byte(key), clone(value))
}

func (tx *boltTx) Delete(key string) (err error) {
	if err := tx.writeable(); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	defer guard(&err)
	return tx.bkt.Delete([]byte(key))
}

// step runs one cursor movement, converting a bbolt panic into ErrCorrupt.
func step(move func() ([]byte, []byte)) (k, v []byte, err error) {
	defer guard(&err)
	k, v = move()
	return k, v, nil
}

func (tx *boltTx) Scan(prefix string, f func(key string, value []byte) error) error {
	if tx.done {
		return ErrTxDone
	}
	tx.scanning++
	defer func() { tx.scanning-- }()
	p := []byte(prefix)
	c := tx.bkt.Cursor()
	k, v, err := step(func() ([]byte, []byte) { return c.Seek(p) })
	for ; err == nil && k != nil && bytes.HasPrefix(k, p); k, v, err = step(c.Next) {
		if err := f(string(k), clone(v)); err != nil {
			if errors.Is(err, ErrStopScan) {
				return nil
			}
			return err
		}
	}
	return err
}

func (tx *boltTx) DeletePrefix(prefix string) (err error) {
	if err := tx.writeable(); err != nil {
		return err
	}
	defer guard(&err)
	p := []byte(prefix)
	// Collect first: deleting while iterating a bbolt cursor can skip keys.
	var keys [][]byte
	c := tx.bkt.Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		keys = append(keys, clone(k))
	}
	for _, k := range keys {
		if err := tx.bkt.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
