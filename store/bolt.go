package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
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
//
// Before bbolt maps the file, Open locks it and checks its structure: both
// meta pages, and the freelist and every page of every bucket reachable
// from the meta page bbolt will use, so that no later read can fault or
// trip one of bbolt's assertions. That reads every page in use once (about
// 1 ms for a store of 3.5 MB). A truncated or damaged file is refused with
// an error wrapping ErrCorrupt that says what is wrong, and Open leaves it
// untouched (it neither repairs nor reinitialises it), also when opening
// read-write. As in bbolt, a damaged newest meta page is not an error if
// the previous one is intact: the store then opens at the state of the
// transaction before the last one, which is what a crash while writing the
// meta page leaves. Values carry no checksum, so damage inside a value is
// not detected. An empty file is initialised as a new store, like a missing
// one (read-only, it is refused).
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
	var opened *os.File
	bopts := &bolt.Options{
		Timeout:  timeout,
		ReadOnly: o.ReadOnly,
		NoSync:   o.NoSync,
		OpenFile: func(name string, flag int, _ os.FileMode) (*os.File, error) {
			f, err := openFile(name, flag, o.ReadOnly, timeout)
			opened = f
			return f, err
		},
		// Map 1 MiB up front (bbolt starts at 32 KiB and doubles). Growing
		// the mapping must wait for every open read transaction, so a
		// generous initial size keeps long Views from stalling Updates in
		// stores of ordinary size. The file is extended to this size (as a
		// sparse file on Unix) once the store needs more than its first
		// few pages.
		InitialMmapSize: initialMmapSize,
	}
	db, err := openBolt(path, bopts, &opened)
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

// openBolt is bolt.Open behind a guard. The file was validated by openFile,
// so bbolt should not panic or fault while opening it; if it does anyway,
// the descriptor (and with it the lock) is released and the error wraps
// ErrCorrupt.
func openBolt(path string, bopts *bolt.Options, opened **os.File) (db *bolt.DB, err error) {
	defer func() {
		if err != nil && db == nil && *opened != nil {
			// bbolt closes the file on its own error paths; this only
			// matters after a panic, and a second Close is harmless.
			_ = (*opened).Close()
		}
	}()
	defer guard(&err, trap())
	return bolt.Open(path, FileMode, bopts)
}

// openFile opens the store file for bbolt, takes bbolt's lock on it, and
// validates it (see validateFile) before bbolt maps it, so that no other
// process can change it in between. Only then, when opening read-write, does
// it remove any group or other permission bits from an existing file (on the
// descriptor, so there is no race with a rename of the path).
func openFile(name string, flag int, readOnly bool, lockTimeout time.Duration) (_ *os.File, err error) {
	f, err := os.OpenFile(name, flag, FileMode)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// Also releases the lock.
			f.Close()
		}
	}()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: not a regular file", ErrCorrupt)
	}
	if err := lockFile(f, !readOnly, lockTimeout); err != nil {
		return nil, err
	}
	// The size that counts is the one under the lock.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	info, err := validateFile(f, fi.Size())
	if err != nil {
		return nil, err
	}
	if info.empty && readOnly {
		return nil, fmt.Errorf("%w: empty file: the store was never initialised", ErrCorrupt)
	}
	if !readOnly && runtime.GOOS != "windows" && fi.Mode().Perm()&^FileMode != 0 {
		if err := f.Chmod(FileMode); err != nil {
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

// readFormat checks the meta bucket. fresh reports a bbolt file that was
// just created: no buckets at all, and no transaction committed since bbolt
// wrote its two initial meta pages (transactions 0 and 1). A store that
// lost its buckets after that is damaged, not new, and must not be
// initialised over.
func readFormat(tx *bolt.Tx) (version uint64, fresh bool, err error) {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		c := tx.Cursor()
		if k, _ := c.First(); k != nil {
			return 0, false, fmt.Errorf("%w: no meta bucket", ErrCorrupt)
		}
		committed := tx.ID()
		if tx.Writable() {
			committed--
		}
		if committed > 1 {
			return 0, false, fmt.Errorf("%w: no buckets in a file written by %d transactions", ErrCorrupt, committed-1)
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
	defer guard(&err, trap())
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
// panics must propagate. Use it as
//
//	defer guard(&err, trap())
//
// so that a memory fault in the mapped file also becomes a panic while the
// guarded code runs.
func guard(err *error, prevTrap bool) {
	debug.SetPanicOnFault(prevTrap)
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: internal error: %v", ErrCorrupt, r)
	}
}

// trap makes a memory fault in this goroutine panic instead of killing the
// process, and returns the previous setting for guard to restore. Open's
// validation makes faults impossible in a file that does not change; this
// covers a file that is truncated or rewritten under an open store by a
// process that ignores its lock.
func trap() bool { return debug.SetPanicOnFault(true) }

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
	tx := &boltTx{}
	defer func() {
		tx.done = true
		_ = btx.Rollback()
	}()
	if tx.bkt, err = data(btx); err != nil {
		return err
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
	tx := &boltTx{txState: txState{writable: true}}
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
	if tx.bkt, err = data(btx); err != nil {
		return err
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

// data returns the data bucket of btx.
func data(btx *bolt.Tx) (bkt *bolt.Bucket, err error) {
	defer guard(&err, trap())
	if bkt = btx.Bucket(dataBucket); bkt == nil {
		return nil, fmt.Errorf("%w: no data bucket", ErrCorrupt)
	}
	return bkt, nil
}

func commit(btx *bolt.Tx) (err error) {
	defer guard(&err, trap())
	return btx.Commit()
}

func (b *Bolt) begin(writable bool) (btx *bolt.Tx, err error) {
	defer guard(&err, trap())
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
	return checkFormat(btx)
}

func checkFormat(btx *bolt.Tx) (err error) {
	defer guard(&err, trap())
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
	defer guard(&err, trap())
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
	defer guard(&err, trap())
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
	defer guard(&err, trap())
	return tx.bkt.Delete([]byte(key))
}

// step runs one cursor movement and copies out the entry it reaches if
// that has the prefix (ok), converting a bbolt panic into ErrCorrupt. The
// copies are made here, under the guard, because they read the mapped file.
func step(move func() ([]byte, []byte), prefix []byte) (key string, value []byte, ok bool, err error) {
	defer guard(&err, trap())
	k, v := move()
	if k == nil || !bytes.HasPrefix(k, prefix) {
		return "", nil, false, nil
	}
	return string(k), clone(v), true, nil
}

func (tx *boltTx) Scan(prefix string, f func(key string, value []byte) error) error {
	if tx.done {
		return ErrTxDone
	}
	tx.scanning++
	defer func() { tx.scanning-- }()
	p := []byte(prefix)
	c := tx.bkt.Cursor()
	k, v, ok, err := step(func() ([]byte, []byte) { return c.Seek(p) }, p)
	for ; err == nil && ok; k, v, ok, err = step(c.Next, p) {
		if err := f(k, v); err != nil {
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
	defer guard(&err, trap())
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
