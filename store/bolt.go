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
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FormatVersion is the version of the single-account file format written
// by Open. Open refuses files with a larger version (ErrVersion) and
// migrates files with a smaller one.
const FormatVersion uint64 = 1

// AccountsFormatVersion is the version of the multi-account file format
// written by OpenAccounts, which is versioned (and migrated) separately
// from the single-account format.
const AccountsFormatVersion uint64 = 1

const initialMmapSize = 1 << 20

// DefaultLockTimeout is the default for Options.LockTimeout.
const DefaultLockTimeout = time.Second

// FileMode is the permission of a store file created by Open. Open also
// tightens the permissions of an existing file to FileMode when it is opened
// read-write.
const FileMode os.FileMode = 0o600

var (
	metaBucket         = []byte("meta")
	dataBucket         = []byte("data")
	accountsBucket     = []byte("accounts")
	versionKey         = []byte("version")
	formatKey          = []byte("format")
	formatName         = []byte("mellium.im/omemo/store")
	accountsFormatName = []byte("mellium.im/omemo/store/accounts")
)

// migration upgrades the file from one format version to the next. It runs
// inside the read-write transaction that also records the new version, so a
// failed or interrupted upgrade leaves the file at its old version.
type migration func(tx *bolt.Tx) error

// migrations maps a format version N to the migration from N to N+1. It is
// empty while FormatVersion is 1; when the format changes, increment
// FormatVersion and register the migration from the previous version here.
var migrations = map[uint64]migration{}

// accountsMigrations is migrations for the multi-account format
// (AccountsFormatVersion).
var accountsMigrations = map[uint64]migration{}

// layout is a kind of store file. Both kinds have a meta bucket with the
// format identifier and version; a single-account file (Open) keeps its
// keys in the data bucket, a multi-account file (OpenAccounts) has an
// accounts bucket holding one nested bucket per non-empty account, named
// by the account name. The identifiers differ, so that each kind is
// refused by the function that opens the other with ErrVersion (and by
// versions of this package that predate multi-account files with
// ErrCorrupt), never misread.
type layout struct {
	kind       string // for messages
	opener     string // the function that opens such files, for messages
	name       []byte // format identifier
	bucket     []byte // the top-level bucket of the data
	version    uint64 // current format version
	migrations map[uint64]migration
}

var (
	singleLayout = layout{
		kind: "single-account", opener: "Open",
		name: formatName, bucket: dataBucket,
		version: FormatVersion, migrations: migrations,
	}
	accountsLayout = layout{
		kind: "multi-account", opener: "OpenAccounts",
		name: accountsFormatName, bucket: accountsBucket,
		version: AccountsFormatVersion, migrations: accountsMigrations,
	}
	layouts = []*layout{&singleLayout, &accountsLayout}
)

// Options configures Open and OpenAccounts. The zero value (or a nil
// *Options) gives the safe defaults.
type Options struct {
	// LockTimeout is how long Open (or OpenAccounts) waits for another
	// process (or another open in this process) to release the store's
	// exclusive file lock before failing with ErrLocked. Zero means DefaultLockTimeout (1s); a
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
	s boltStore
}

// boltFile is an open bbolt file, shared by the stores on it: the Bolt of
// a single-account file, or the account stores of a BoltAccounts.
type boltFile struct {
	db       *bolt.DB
	readOnly bool
	wlock    writeLock // bbolt has a single writer; waiting for it honours ctx
}

// boltStore is a Store on a boltFile: the data bucket of a single-account
// file, or the bucket of one account (created by its first write, and
// deleted by the transaction that empties it).
type boltStore struct {
	file    *boltFile
	account string // the account name, or "" for the data bucket
	lc      lifecycle
	counters
	faults
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
	f, err := openLayout(path, opts, singleLayout)
	if err != nil {
		return nil, err
	}
	b := &Bolt{s: boltStore{file: f}}
	b.s.lc.init()
	return b, nil
}

// openLayout opens, checks and if needed initialises or migrates a file of
// layout l.
func openLayout(path string, opts *Options, l layout) (*boltFile, error) {
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
	if err := prepare(db, o.ReadOnly, l); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &boltFile{db: db, readOnly: o.ReadOnly, wlock: make(writeLock, 1)}, nil
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

// readFormat checks the meta bucket of a file of layout l. fresh reports a
// bbolt file that was just created: no buckets at all, and no transaction
// committed since bbolt wrote its two initial meta pages (transactions 0
// and 1). A store that lost its buckets after that is damaged, not new,
// and must not be initialised over.
func readFormat(tx *bolt.Tx, l layout) (version uint64, fresh bool, err error) {
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
	if id := meta.Get(formatKey); !bytes.Equal(id, l.name) {
		for _, o := range layouts {
			if bytes.Equal(id, o.name) {
				return 0, false, fmt.Errorf("%w: a %s store, not a %s one: open it with %s", ErrVersion, o.kind, l.kind, o.opener)
			}
		}
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
	if tx.Bucket(l.bucket) == nil {
		return 0, false, fmt.Errorf("%w: no %s bucket", ErrCorrupt, l.bucket)
	}
	return version, false, nil
}

func putVersion(meta *bolt.Bucket, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return meta.Put(versionKey, b[:])
}

// prepare initialises a fresh file as layout l, or checks (and, if
// writable, migrates) an existing one to version l.version using the
// migrations in l.migrations.
func prepare(db *bolt.DB, readOnly bool, l layout) (err error) {
	defer guard(&err, trap())
	target := l.version
	var (
		version uint64
		fresh   bool
	)
	if err := db.View(func(tx *bolt.Tx) error {
		version, fresh, err = readFormat(tx, l)
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
		version, fresh, err := readFormat(tx, l)
		if err != nil {
			return err
		}
		if fresh {
			meta, err := tx.CreateBucket(metaBucket)
			if err != nil {
				return err
			}
			if _, err := tx.CreateBucket(l.bucket); err != nil {
				return err
			}
			if err := meta.Put(formatKey, l.name); err != nil {
				return err
			}
			return putVersion(meta, target)
		}
		for v := version; v < target; v++ {
			m := l.migrations[v]
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
func (b *Bolt) Path() string { return b.s.file.db.Path() }

// Stats returns the store's counters.
func (b *Bolt) Stats() Stats { return b.s.stats() }

// View implements [Store.View].
func (b *Bolt) View(ctx context.Context, f func(Tx) error) error { return b.s.view(ctx, f) }

// Update implements [Store.Update]. When it returns nil the transaction has
// been written and fsync'd (unless Options.NoSync was set).
func (b *Bolt) Update(ctx context.Context, f func(Tx) error) error { return b.s.update(ctx, f) }

// Close implements [Store.Close]: it waits for running transactions, then
// closes the file and releases its lock.
func (b *Bolt) Close() error {
	if !b.s.lc.close() {
		return nil
	}
	return b.s.file.close()
}

// Check verifies the consistency of the whole file (page reachability,
// freelist, key order) in a read-only transaction. It returns an error
// wrapping ErrCorrupt describing the first problems found. Updates wait
// while it runs (it reads state that a commit changes); it gives up with
// ctx.Err() if ctx is done while it waits for a running Update.
func (b *Bolt) Check(ctx context.Context) error {
	return b.s.file.check(ctx, &b.s.lc, singleLayout)
}

func (s *boltStore) view(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.lc.enter(); err != nil {
		return err
	}
	defer s.lc.leave()
	if err := s.at(faultBegin); err != nil {
		return err
	}
	btx, err := s.file.begin(false)
	if err != nil {
		return err
	}
	tx := &boltTx{}
	defer func() {
		tx.done = true
		_ = btx.Rollback()
	}()
	if err := tx.open(btx, s.account); err != nil {
		return err
	}
	return f(tx)
}

func (s *boltStore) update(ctx context.Context, f func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.lc.enter(); err != nil {
		return err
	}
	defer s.lc.leave()
	if s.file.readOnly {
		return fmt.Errorf("%w: store was opened read-only", ErrReadOnly)
	}
	if err := s.file.wlock.acquire(ctx, s.lc.closing); err != nil {
		return err
	}
	defer s.file.wlock.release()
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.at(faultBegin); err != nil {
		return err
	}
	btx, err := s.file.begin(true)
	if err != nil {
		return err
	}
	tx := &boltTx{txState: txState{writable: true}, faults: &s.faults}
	committed := false
	defer func() {
		tx.done = true
		if !committed {
			// After a failed Commit bbolt has already rolled back and
			// this returns ErrTxClosed.
			_ = btx.Rollback()
			s.rollbacks.Add(1)
		}
	}()
	if err := tx.open(btx, s.account); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := tx.finish(); err != nil {
		return err
	}
	if err := s.at(faultCommit); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	if !tx.wrote {
		// Nothing to make durable: bbolt would still write a meta page
		// and fdatasync (a start of a session Manager runs several such
		// Updates that only find everything in order).
		_ = btx.Rollback()
		committed = true
		s.commits.Add(1)
		return nil
	}
	if err := commit(btx); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	committed = true
	s.commits.Add(1)
	return nil
}

func commit(btx *bolt.Tx) (err error) {
	defer guard(&err, trap())
	return btx.Commit()
}

func (f *boltFile) begin(writable bool) (btx *bolt.Tx, err error) {
	defer guard(&err, trap())
	btx, err = f.db.Begin(writable)
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

func (f *boltFile) close() error {
	if err := f.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// check verifies the file (see Bolt.Check), registered as a transaction of
// lc.
//
// It holds the write lock meanwhile: bbolt's Tx.Check reads the freelist,
// which a committing writer changes, so in a read-only transaction it is
// only safe (free of a data race on a map, and of spurious reports of
// freed or unreachable pages) while no writer runs.
func (f *boltFile) check(ctx context.Context, lc *lifecycle, l layout) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := lc.enter(); err != nil {
		return err
	}
	defer lc.leave()
	if err := f.wlock.acquire(ctx, lc.closing); err != nil {
		return err
	}
	defer f.wlock.release()
	btx, err := f.begin(false)
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
	return checkFormat(btx, l)
}

func checkFormat(btx *bolt.Tx, l layout) (err error) {
	defer guard(&err, trap())
	if _, _, err = readFormat(btx, l); err != nil {
		return err
	}
	if bytes.Equal(l.bucket, accountsBucket) {
		return checkAccounts(btx.Bucket(accountsBucket))
	}
	return nil
}

// checkAccounts checks the accounts bucket of a multi-account file: every
// entry is the bucket of an account with a valid name, holding keys and
// values only.
func checkAccounts(parent *bolt.Bucket) error {
	c := parent.Cursor()
	n := 0
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
		b := parent.Bucket(k)
		if b == nil {
			return fmt.Errorf("%w: entry %d of the accounts bucket is not an account", ErrCorrupt, n)
		}
		if err := CheckAccountName(string(k)); err != nil {
			return fmt.Errorf("%w: account %d has an invalid name: %w", ErrCorrupt, n, err)
		}
		ac := b.Cursor()
		for k, v := ac.First(); k != nil; k, v = ac.Next() {
			if v == nil && b.Bucket(k) != nil {
				return fmt.Errorf("%w: account %d contains a bucket", ErrCorrupt, n)
			}
		}
	}
	return nil
}

type boltTx struct {
	txState
	// bkt holds the store's keys. It is nil for an account that has no
	// bucket (no keys) yet: parent is then where its first Put creates
	// it.
	bkt     *bolt.Bucket
	parent  *bolt.Bucket // the accounts bucket, for an account's store
	account string
	deleted bool // an account's transaction deleted keys (see finish)
	// wrote is set by the first Put, Delete or DeletePrefix that reached
	// the bucket: an Update without one has nothing to commit.
	wrote  bool
	faults *faults // nil for a View
}

// open locates the store's keys in btx: the data bucket, or the bucket of
// the account.
func (tx *boltTx) open(btx *bolt.Tx, account string) (err error) {
	defer guard(&err, trap())
	if account == "" {
		if tx.bkt = btx.Bucket(dataBucket); tx.bkt == nil {
			return fmt.Errorf("%w: no data bucket", ErrCorrupt)
		}
		return nil
	}
	if tx.parent = btx.Bucket(accountsBucket); tx.parent == nil {
		return fmt.Errorf("%w: no accounts bucket", ErrCorrupt)
	}
	tx.account = account
	name := []byte(account)
	if tx.bkt = tx.parent.Bucket(name); tx.bkt == nil {
		if k, _ := tx.parent.Cursor().Seek(name); bytes.Equal(k, name) {
			return fmt.Errorf("%w: the entry of the account is not a bucket", ErrCorrupt)
		}
	}
	return nil
}

// finish runs before an account's transaction commits: it deletes the
// account's bucket if the transaction emptied it, so that an account
// without keys leaves nothing in the file.
func (tx *boltTx) finish() (err error) {
	if tx.parent == nil || tx.bkt == nil || !tx.deleted {
		return nil
	}
	defer guard(&err, trap())
	if k, _ := tx.bkt.Cursor().First(); k != nil {
		return nil
	}
	tx.bkt = nil
	return tx.parent.DeleteBucket([]byte(tx.account))
}

func (tx *boltTx) Get(key string) (v []byte, err error) {
	if tx.done {
		return nil, ErrTxDone
	}
	if err := checkKey(key); err != nil {
		return nil, err
	}
	if tx.bkt == nil {
		return nil, notFound(key)
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
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	defer guard(&err, trap())
	tx.wrote = true
	if tx.bkt == nil {
		if tx.bkt, err = tx.parent.CreateBucket([]byte(tx.account)); err != nil {
			return fmt.Errorf("store: creating the bucket of the account: %w", err)
		}
	}
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
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	if tx.bkt == nil {
		return nil
	}
	defer guard(&err, trap())
	tx.deleted, tx.wrote = true, true
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
	if tx.bkt == nil {
		return nil
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
	if err := tx.faults.at(faultWrite); err != nil {
		return err
	}
	if tx.bkt == nil {
		return nil
	}
	defer guard(&err, trap())
	tx.deleted, tx.wrote = true, true
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
