package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
)

// This file checks a bbolt file before bbolt maps it. bbolt trusts the file:
// it dereferences page ids, element offsets and sizes straight from the
// memory map, so a truncated or damaged file makes it read outside the
// mapping (SIGSEGV or SIGBUS, which no recover() can catch) or trip one of
// its assertions. validateFile reads everything bbolt will touch at open
// and in later transactions (both meta pages, the freelist, every page of
// every bucket) through ordinary reads and refuses anything that does not
// match the layout bbolt writes, so that a file that passes cannot make
// bbolt fault.
//
// The layout constants mirror go.etcd.io/bbolt/internal/common (v1.5.0):
// Page, Meta, InBucket, branchPageElement and leafPageElement, all in the
// machine's byte order because bbolt maps them as Go structs.
const (
	pageHeaderSize   = 16 // id uint64, flags uint16, count uint16, overflow uint32
	elementSize      = 16 // leaf: flags, pos, ksize, vsize uint32; branch: pos, ksize uint32, pgid uint64
	metaSize         = 64
	metaChecksumOff  = 56 // the FNV-64a checksum covers the meta up to here
	bucketHeaderSize = 16 // root pgid uint64, sequence uint64

	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01

	boltMagic   uint32 = 0xED0CDAED
	boltVersion uint32 = 2
	noFreelist  uint64 = 1<<64 - 1

	// bbolt looks for the second meta page at 1 KiB to 16 MiB.
	minPageSize = 1 << 10
	maxPageSize = 1 << 24

	// maxTreeDepth bounds the walk (and the page buffers it holds) on a
	// crafted file that chains pages one below the other. bbolt's pages
	// hold at least two keys, so no real tree comes near it.
	maxTreeDepth = 512
)

var native = binary.NativeEndian

// corruptf returns an error wrapping ErrCorrupt. Callers describe the
// structure (page numbers, sizes), never key or value bytes. A damaged flag
// can make a value look like structure (a bucket header, an inline page, the
// header of a page that is really the overflow of a value), so numbers read
// from a place that has not been confirmed as structure are not printed
// either.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// fileInfo is what validateFile learnt about a file that passed.
type fileInfo struct {
	empty    bool // zero bytes: bbolt will initialise it
	pageSize int
	pages    uint64 // high water mark of the meta bbolt will use
}

// boltMeta is a decoded meta page; err is why bbolt would reject it.
type boltMeta struct {
	magic, version, pageSize uint32
	root, freelist, pgid     uint64
	txid                     uint64
	err                      error
}

var errNoMagic = errors.New("not a bbolt meta page")

func decodeMeta(b []byte) boltMeta {
	m := boltMeta{
		magic:    native.Uint32(b[0:]),
		version:  native.Uint32(b[4:]),
		pageSize: native.Uint32(b[8:]),
		root:     native.Uint64(b[16:]),
		freelist: native.Uint64(b[32:]),
		pgid:     native.Uint64(b[40:]),
		txid:     native.Uint64(b[48:]),
	}
	// Same order of checks as bbolt's Meta.Validate.
	h := fnv.New64a()
	h.Write(b[:metaChecksumOff])
	switch {
	case m.magic != boltMagic:
		m.err = errNoMagic
	case m.version != boltVersion:
		m.err = fmt.Errorf("unsupported bbolt version %d", m.version)
	case native.Uint64(b[metaChecksumOff:]) != h.Sum64():
		m.err = errors.New("checksum mismatch")
	}
	return m
}

// readFull reads len(b) bytes at off. The caller has checked that they lie
// within the file, so a short read means the file is shorter than it said.
func readFull(f io.ReaderAt, b []byte, off int64) error {
	n, err := f.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return corruptf("file ends before offset %d", off+int64(n))
	}
	return fmt.Errorf("store: reading the store file: %w", err)
}

// pageSizeOf mirrors bbolt's DB.getPageSize: the page size of the first
// meta page if it is valid, else of the first valid meta found at 1 KiB,
// 2 KiB, … 16 MiB, else (if either could be read at all) the OS page size.
func pageSizeOf(f io.ReaderAt, size int64) (int, error) {
	readable := false
	var buf [4096]byte
	if n, err := f.ReadAt(buf[:], 0); err == nil && n == len(buf) {
		readable = true
		if m := decodeMeta(buf[pageHeaderSize:]); m.err == nil {
			return int(m.pageSize), nil
		}
	}
	for i := 0; i <= 14; i++ {
		pos := int64(1024) << i
		if pos >= size-1024 {
			break
		}
		buf = [4096]byte{}
		n, err := f.ReadAt(buf[:], pos)
		if (err == nil && n == len(buf)) || (errors.Is(err, io.EOF) && int64(n) == size-pos) {
			readable = true
			if m := decodeMeta(buf[pageHeaderSize:]); m.err == nil {
				return int(m.pageSize), nil
			}
		}
	}
	if readable {
		return os.Getpagesize(), nil
	}
	return 0, corruptf("not a bbolt file: no valid meta page")
}

// validateFile checks the bbolt file f (of the given size) as described at
// the top of this file. It returns an error wrapping ErrCorrupt that says
// what is wrong, or an I/O error.
func validateFile(f io.ReaderAt, size int64) (fileInfo, error) {
	if size == 0 {
		return fileInfo{empty: true}, nil
	}
	ps, err := pageSizeOf(f, size)
	if err != nil {
		return fileInfo{}, err
	}
	if ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return fileInfo{}, corruptf("invalid page size %d", ps)
	}
	if size < 2*int64(ps) {
		return fileInfo{}, corruptf("file of %d bytes is shorter than its two meta pages (%d bytes each)", size, ps)
	}

	// bbolt validates the meta pages at page 0 and 1 and, for every
	// transaction, uses the one with the higher txid if it is valid, else
	// the other one.
	var metas [2]boltMeta
	for i := range metas {
		var b [metaSize]byte
		if err := readFull(f, b[:], int64(i*ps+pageHeaderSize)); err != nil {
			return fileInfo{}, err
		}
		metas[i] = decodeMeta(b[:])
	}
	if metas[0].err == errNoMagic && metas[1].err == errNoMagic {
		return fileInfo{}, corruptf("not a bbolt file: no meta page")
	}
	if metas[0].err != nil && metas[1].err != nil {
		return fileInfo{}, corruptf("both meta pages are invalid (page 0: %v; page 1: %v)", metas[0].err, metas[1].err)
	}
	newest := 0
	if metas[1].txid > metas[0].txid {
		newest = 1
	}
	if metas[newest].err != nil {
		newest = 1 - newest
	}
	// The page headers of the meta pages are not checked: bbolt reads
	// them only in Tx.Check, and its next two commits rewrite them.
	m := metas[newest]
	where := fmt.Sprintf("meta page %d (transaction %d)", newest, m.txid)
	if int(m.pageSize) != ps {
		return fileInfo{}, corruptf("%s: page size %d, but the file uses %d", where, m.pageSize, ps)
	}
	filePages := uint64(size) / uint64(ps)
	if m.pgid > filePages {
		return fileInfo{}, corruptf("%s: the data takes %d pages but the file holds only %d: the file is truncated", where, m.pgid, filePages)
	}
	if m.freelist == noFreelist {
		// Open never sets bbolt's NoFreelistSync, and with an unsynced
		// freelist bbolt would rebuild it in a goroutine (whose panics no
		// guard can catch) and rewrite the file during Open.
		return fileInfo{}, corruptf("%s: no persisted freelist (not written by this package)", where)
	}
	if m.root < 2 || m.root >= m.pgid {
		return fileInfo{}, corruptf("%s: root page %d outside the data pages [2, %d)", where, m.root, m.pgid)
	}
	if m.freelist < 2 || m.freelist >= m.pgid {
		return fileInfo{}, corruptf("%s: freelist page %d outside the data pages [2, %d)", where, m.freelist, m.pgid)
	}

	w := &walker{
		f:     f,
		ps:    ps,
		pages: m.pgid,
		used:  newBitset(m.pgid),
		free:  newBitset(m.pgid),
	}
	w.used.set(0)
	w.used.set(1)
	if err := w.freelist(m.freelist); err != nil {
		return fileInfo{}, err
	}
	if _, err := w.tree(m.root, pageName{"root page", m.root}, nil, nil, 0); err != nil {
		return fileInfo{}, err
	}
	// bbolt accounts for every page below the high water mark: a page
	// that is neither reachable nor free means a lost subtree (bbolt's own
	// Check reports it as "unreachable unfreed").
	for id := uint64(2); id < m.pgid; id++ {
		if !w.used.has(id) && !w.free.has(id) {
			return fileInfo{}, corruptf("page %d is neither in use nor free", id)
		}
	}
	return fileInfo{pageSize: ps, pages: m.pgid}, nil
}

type bitset []uint64

func newBitset(n uint64) bitset { return make(bitset, (n+63)/64) }
func (b bitset) has(i uint64) bool {
	return b[i/64]&(1<<(i%64)) != 0
}
func (b bitset) set(i uint64) { b[i/64] |= 1 << (i % 64) }

// walker reads the pages of one meta's snapshot. Every page is read at
// most once: a second reference to it is an error, which also stops
// cycles.
type walker struct {
	f     io.ReaderAt
	ps    int
	pages uint64 // high water mark: valid page ids are below it
	used  bitset // meta, freelist and tree pages, with their overflow
	free  bitset // pages listed in the freelist
	spare [][]byte
}

// release hands back a buffer returned by page once nothing refers to it.
func (w *walker) release(b []byte) {
	if len(b) == w.ps {
		w.spare = append(w.spare, b)
	}
}

// page reads page id and its overflow pages, checks that its header names
// it and that it lies below the high water mark, and marks it used. name
// names the page in errors.
func (w *walker) page(id uint64, name pageName) ([]byte, error) {
	if id < 2 || id >= w.pages {
		return nil, corruptf("reference to %v outside the data pages [2, %d)", name, w.pages)
	}
	var buf []byte
	if n := len(w.spare); n > 0 {
		buf, w.spare = w.spare[n-1], w.spare[:n-1]
	} else {
		buf = make([]byte, w.ps)
	}
	if err := readFull(w.f, buf, int64(id)*int64(w.ps)); err != nil {
		return nil, err
	}
	if native.Uint64(buf) != id {
		// The bytes may be a value's: do not print them.
		return nil, corruptf("%v identifies itself as another page", name)
	}
	overflow := uint64(native.Uint32(buf[12:]))
	last := id + overflow
	if last >= w.pages {
		return nil, corruptf("%v: its overflow pages run past the last data page %d", name, w.pages-1)
	}
	for p := id; p <= last; p++ {
		if w.used.has(p) {
			return nil, corruptf("%v: page %d is used twice", name, p)
		}
		if w.free.has(p) {
			return nil, corruptf("%v: page %d is both free and in use", name, p)
		}
		w.used.set(p)
	}
	if overflow > 0 {
		full := make([]byte, (overflow+1)*uint64(w.ps))
		copy(full, buf)
		w.release(buf)
		if err := readFull(w.f, full[w.ps:], int64(id+1)*int64(w.ps)); err != nil {
			return nil, err
		}
		buf = full
	}
	return buf, nil
}

// freelist checks the freelist page as bbolt's freelist.Read will read it
// and records the free pages. bbolt frees the freelist page itself at the
// next commit, so it must not be listed as free already.
func (w *walker) freelist(id uint64) error {
	p, err := w.page(id, pageName{"freelist page", id})
	if err != nil {
		return err
	}
	if flags := native.Uint16(p[8:]); flags != freelistPageFlag {
		return corruptf("freelist page %d is a %s", id, typeName(flags))
	}
	start, count := uint64(0), uint64(native.Uint16(p[10:]))
	if count == 0xFFFF {
		// The real count is in the first slot.
		start = 1
		count = native.Uint64(p[pageHeaderSize:])
	}
	room := uint64(len(p)-pageHeaderSize) / 8
	if count > room-start {
		return corruptf("freelist page %d lists %d pages but has room for %d", id, count, room-start)
	}
	for i := range count {
		free := native.Uint64(p[pageHeaderSize+8*(start+i):])
		switch {
		case free < 2 || free >= w.pages:
			return corruptf("freelist page %d lists page %d outside the data pages [2, %d)", id, free, w.pages)
		case w.free.has(free):
			return corruptf("freelist page %d lists page %d twice", id, free)
		case w.used.has(free):
			return corruptf("freelist page %d lists page %d, which is in use", id, free)
		}
		w.free.set(free)
	}
	return nil
}

// tree checks the B+tree rooted at page id, whose keys must all lie in
// [lo, hi) (a nil bound is open), and every bucket below it. It returns the
// first key of the page. name names the page in errors until its header
// has been checked.
func (w *walker) tree(id uint64, name pageName, lo, hi []byte, depth int) (first []byte, err error) {
	if depth > maxTreeDepth {
		return nil, corruptf("tree deeper than %d levels", maxTreeDepth)
	}
	p, err := w.page(id, name)
	if err != nil {
		return nil, err
	}
	defer w.release(p)
	switch flags := native.Uint16(p[8:]); flags {
	case leafPageFlag:
		first, err = w.leaf(p, pageName{"leaf page", id}, lo, hi, depth, false)
	case branchPageFlag:
		first, err = w.branch(p, id, lo, hi, depth)
	default:
		return nil, corruptf("page %d is a %s where a branch or leaf page belongs", id, typeName(flags))
	}
	// The caller compares it after p has been reused.
	return bytes.Clone(first), err
}

// pageName names a page in errors; it is formatted only when there is one.
type pageName struct {
	kind string
	id   uint64
}

const noPage = 1<<64 - 1

func typeName(flags uint16) string {
	switch flags {
	case branchPageFlag:
		return "branch page"
	case leafPageFlag:
		return "leaf page"
	case metaPageFlag:
		return "meta page"
	case freelistPageFlag:
		return "freelist page"
	}
	return "page of unknown type"
}

func (n pageName) String() string {
	if n.id == noPage {
		return n.kind
	}
	return fmt.Sprintf("%s %d", n.kind, n.id)
}

// elements checks the element array of a branch or leaf page: bbolt writes
// the elements' keys (and values) right after the array, one after the
// other in element order, so each element's data must start where the
// previous one's ended, and the last must end within the page. It returns
// the start and end of each element's data.
func elements(p []byte, where pageName, leaf bool) (spans [][2]uint64, err error) {
	count := uint64(native.Uint16(p[10:]))
	next := pageHeaderSize + count*elementSize
	if next > uint64(len(p)) {
		return nil, corruptf("%v: its elements do not fit in it", where)
	}
	spans = make([][2]uint64, count)
	for i := range count {
		e := pageHeaderSize + i*elementSize
		var pos, ksize, vsize uint64
		if leaf {
			pos = uint64(native.Uint32(p[e+4:]))
			ksize = uint64(native.Uint32(p[e+8:]))
			vsize = uint64(native.Uint32(p[e+12:]))
		} else {
			pos = uint64(native.Uint32(p[e:]))
			ksize = uint64(native.Uint32(p[e+4:]))
		}
		start := e + pos
		end := start + ksize + vsize
		if start != next || end > uint64(len(p)) {
			return nil, corruptf("%v: element %d is out of place or out of bounds", where, i)
		}
		if ksize == 0 {
			return nil, corruptf("%v: element %d has an empty key", where, i)
		}
		spans[i] = [2]uint64{start, start + ksize}
		next = end
	}
	return spans, nil
}

// ordered checks that key follows prev (if any) and lies in [lo, hi).
func ordered(key, prev, lo, hi []byte, where pageName, i int) error {
	switch {
	case prev != nil && bytes.Compare(prev, key) >= 0:
		return corruptf("%v: key %d is not after key %d", where, i, i-1)
	case prev == nil && lo != nil && bytes.Compare(key, lo) < 0:
		return corruptf("%v: key %d sorts before its parent's key", where, i)
	case hi != nil && bytes.Compare(key, hi) >= 0:
		return corruptf("%v: key %d sorts after the next key of its parent", where, i)
	}
	return nil
}

// branch checks a branch page and the pages below it. Each element's key
// must be the first key of its child: that is how bbolt writes them, and
// its write path relies on it (a node finds its entry in its parent by its
// own first key), so a branch key that merely sorts correctly would make
// the next write duplicate an entry.
func (w *walker) branch(p []byte, id uint64, lo, hi []byte, depth int) ([]byte, error) {
	where := pageName{"branch page", id}
	spans, err := elements(p, where, false)
	if err != nil {
		return nil, err
	}
	if len(spans) == 0 {
		// bbolt's cursor would follow the child of a non-existent first
		// element.
		return nil, corruptf("%v has no elements", where)
	}
	keys := make([][]byte, len(spans))
	for i, s := range spans {
		keys[i] = p[s[0]:s[1]]
		var prev []byte
		if i > 0 {
			prev = keys[i-1]
		}
		if err := ordered(keys[i], prev, lo, hi, where, i); err != nil {
			return nil, err
		}
	}
	for i := range keys {
		child := native.Uint64(p[pageHeaderSize+uint64(i)*elementSize+8:])
		next := hi
		if i+1 < len(keys) {
			next = keys[i+1]
		}
		first, err := w.tree(child, pageName{"page", child}, keys[i], next, depth+1)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(first, keys[i]) {
			return nil, corruptf("%v: key %d differs from the first key of its child page %d", where, i, child)
		}
	}
	return keys[0], nil
}

// leaf checks a leaf page (or the page of an inline bucket, which cannot
// hold buckets) and opens the buckets it holds. It returns the first key.
func (w *walker) leaf(p []byte, where pageName, lo, hi []byte, depth int, inline bool) ([]byte, error) {
	spans, err := elements(p, where, true)
	if err != nil {
		return nil, err
	}
	var first, prev []byte
	for i, s := range spans {
		key := p[s[0]:s[1]]
		if err := ordered(key, prev, lo, hi, where, i); err != nil {
			return nil, err
		}
		if i == 0 {
			first = key
		}
		prev = key
		e := pageHeaderSize + uint64(i)*elementSize
		flags := native.Uint32(p[e:])
		if flags&^bucketLeafFlag != 0 {
			return nil, corruptf("%v: element %d has unknown flags", where, i)
		}
		if flags&bucketLeafFlag == 0 {
			continue
		}
		if inline {
			return nil, corruptf("%v: element %d is a bucket inside an inline bucket", where, i)
		}
		vend := s[1] + uint64(native.Uint32(p[e+12:]))
		if err := w.bucket(p[s[1]:vend], where, i, depth+1); err != nil {
			return nil, err
		}
	}
	return first, nil
}

// bucket checks a bucket header and its tree, which is either inline
// (root 0: a leaf page stored in the value itself) or a page tree.
func (w *walker) bucket(v []byte, parent pageName, elem int, depth int) error {
	where := fmt.Sprintf("%v, bucket at element %d", parent, elem)
	if len(v) < bucketHeaderSize {
		return corruptf("%s: bucket header of %d bytes", where, len(v))
	}
	// Until its page confirms it, the root page id may be value bytes.
	root := native.Uint64(v)
	if root != 0 {
		_, err := w.tree(root, pageName{where + ": root page", noPage}, nil, nil, depth)
		return err
	}
	ip := v[bucketHeaderSize:]
	if len(ip) < pageHeaderSize {
		return corruptf("%s: inline bucket of %d bytes", where, len(v))
	}
	if flags := native.Uint16(ip[8:]); flags != leafPageFlag {
		return corruptf("%s: inline bucket page is not a leaf page", where)
	}
	_, err := w.leaf(ip, pageName{where + ", inline page", noPage}, nil, nil, depth, true)
	return err
}
