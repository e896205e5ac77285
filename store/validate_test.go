package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// The helpers below edit a store image at the byte level. They spell out
// bbolt's layout (go.etcd.io/bbolt/internal/common) independently of
// validate.go, so that a wrong offset there shows up as a failing test.

// image is a store file in memory with its page size.
type image struct {
	b  []byte
	ps int
}

func (im image) page(id uint64) []byte { return im.b[int(id)*im.ps : int(id+1)*im.ps] }

// meta returns the 64 bytes of the meta on page i (0 or 1).
func (im image) meta(i int) []byte { return im.b[i*im.ps+16 : i*im.ps+80] }

func (im image) txid(i int) uint64 { return binary.NativeEndian.Uint64(im.meta(i)[48:]) }

// newest is the meta page with the higher transaction id.
func (im image) newest() int {
	if im.txid(1) > im.txid(0) {
		return 1
	}
	return 0
}

// setMeta changes a uint64 field of meta i (root 16, freelist 32, pgid 40)
// and reseals the checksum, as a buggy or malicious writer would.
func (im image) setMeta(i, field int, v uint64) {
	m := im.meta(i)
	binary.NativeEndian.PutUint64(m[field:], v)
	im.reseal(i)
}

func (im image) reseal(i int) {
	m := im.meta(i)
	h := fnv.New64a()
	h.Write(m[:56])
	binary.NativeEndian.PutUint64(m[56:], h.Sum64())
}

func (im image) metaField(field int) uint64 {
	return binary.NativeEndian.Uint64(im.meta(im.newest())[field:])
}

func (im image) clone() image { return image{bytes.Clone(im.b), im.ps} }

// elem returns the 16-byte element i of a page.
func elem(p []byte, i int) []byte { return p[16+16*i : 32+16*i] }

func count(p []byte) int { return int(binary.NativeEndian.Uint16(p[10:])) }

func setCount(p []byte, n int) { binary.NativeEndian.PutUint16(p[10:], uint16(n)) }

// leafKV returns the key and value of leaf element i of p.
func leafKV(p []byte, i int) (k, v []byte) {
	e := elem(p, i)
	pos := 16 + 16*i + int(binary.NativeEndian.Uint32(e[4:]))
	ks, vs := int(binary.NativeEndian.Uint32(e[8:])), int(binary.NativeEndian.Uint32(e[12:]))
	return p[pos : pos+ks], p[pos+ks : pos+ks+vs]
}

// branchKey returns the key and child of branch element i of p.
func branchKey(p []byte, i int) ([]byte, uint64) {
	e := elem(p, i)
	pos := 16 + 16*i + int(binary.NativeEndian.Uint32(e[0:]))
	ks := int(binary.NativeEndian.Uint32(e[4:]))
	return p[pos : pos+ks], binary.NativeEndian.Uint64(e[8:])
}

// dataRoot finds the root page of the data bucket: the root leaf of the
// file holds the "data" and "meta" buckets, in that order.
func (im image) dataRoot(t testing.TB) uint64 {
	t.Helper()
	root := im.page(im.metaField(16))
	k, v := leafKV(root, 0)
	if string(k) != "data" {
		t.Fatalf("first bucket %q", k)
	}
	return binary.NativeEndian.Uint64(v)
}

// freelist returns the freelist page of the newest meta.
func (im image) freelist() []byte { return im.page(im.metaField(32)) }

func freeID(p []byte, i int) uint64 { return binary.NativeEndian.Uint64(p[16+8*i:]) }

func setFreeID(p []byte, i int, id uint64) { binary.NativeEndian.PutUint64(p[16+8*i:], id) }

// smallStore builds a store whose data bucket has a branch root over
// several leaves, an overflow value and a non-empty freelist, and returns
// its image cut to its data pages (what follows is unused space).
func smallStore(t testing.TB) (image, map[string][]byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "small.db")
	s, err := Open(path, &Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 3 {
		if err := s.Update(bg, func(tx Tx) error {
			for i := range 60 {
				k := fmt.Sprintf("omemo/sessions/c%03d@%s/%d", round*60+i, keyMarker, rng.Uint32())
				v := bytes.Repeat([]byte(secretMarker), 10+rng.IntN(30))
				if i == 7 {
					v = bytes.Repeat([]byte(secretMarker), 900)
				}
				want[k] = v
				if err := tx.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Update(bg, func(tx Tx) error {
		for _, k := range sortedKeys(want)[:30] {
			delete(want, k)
			if err := tx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	im := image{b, ps}
	im.b = im.b[:im.metaField(40)*uint64(ps)]
	if count(im.freelist()) == 0 {
		t.Fatal("small store has an empty freelist")
	}
	if p := im.page(im.dataRoot(t)); binary.NativeEndian.Uint16(p[8:]) != 0x01 || count(p) < 3 {
		t.Fatalf("small store's data root is not a branch over several leaves")
	}
	return im, want
}

// openImage writes im to a file, opens it read-write, and returns the
// error; it fails the test if Open changed the file, and closes the store
// if it opened.
func openImage(t *testing.T, im image) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.db")
	if err := os.WriteFile(path, im.b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, nil)
	if err == nil {
		s.Close()
	}
	if after := fileBytes(t, path); !bytes.Equal(after, im.b) {
		t.Fatal("Open changed the file")
	}
	return err
}

func TestValidateCrafted(t *testing.T) {
	pristine, _ := smallStore(t)
	if err := openImage(t, pristine); err != nil {
		t.Fatalf("pristine small store: %v", err)
	}
	n := pristine.newest()
	pgid := pristine.metaField(40)
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, im image) image
		want   string
	}{
		{"garbage", func(t *testing.T, im image) image {
			for i := range im.b {
				im.b[i] = byte(i * 7)
			}
			return im
		}, "not a bbolt file"},
		{"both meta pages", func(t *testing.T, im image) image {
			im.meta(0)[20] ^= 1
			im.meta(1)[0] ^= 1
			return im
		}, "both meta pages are invalid (page 0: checksum mismatch; page 1: not a bbolt meta page)"},
		{"other bbolt version", func(t *testing.T, im image) image {
			for i := range 2 {
				binary.NativeEndian.PutUint32(im.meta(i)[4:], 3)
				im.reseal(i)
			}
			return im
		}, "unsupported bbolt version 3"},
		{"shorter than the meta pages", func(t *testing.T, im image) image {
			im.b = im.b[:im.ps+100]
			return im
		}, "shorter than its two meta pages"},
		{"truncated", func(t *testing.T, im image) image {
			im.b = im.b[:len(im.b)-im.ps]
			return im
		}, fmt.Sprintf("the data takes %d pages but the file holds only %d: the file is truncated", pgid, pgid-1)},
		{"invalid page size", func(t *testing.T, im image) image {
			for i := range 2 {
				binary.NativeEndian.PutUint32(im.meta(i)[8:], 3000)
				im.reseal(i)
			}
			return im
		}, "invalid page size 3000"},
		{"inconsistent page size", func(t *testing.T, im image) image {
			// Only page 1 says 8 KiB; bbolt takes the size from page 0.
			binary.NativeEndian.PutUint32(im.meta(1)[8:], 8192)
			im.reseal(1)
			if im.newest() != 1 {
				// Make page 1 the newest, as bbolt's choice.
				binary.NativeEndian.PutUint64(im.meta(1)[48:], im.txid(0)+1)
				im.reseal(1)
			}
			return im
		}, "page size 8192, but the file uses"},
		{"root page out of range", func(t *testing.T, im image) image {
			im.setMeta(n, 16, pgid+3)
			return im
		}, "root page"},
		{"no persisted freelist", func(t *testing.T, im image) image {
			im.setMeta(n, 32, 1<<64-1)
			return im
		}, "no persisted freelist"},
		{"freelist page is a meta page", func(t *testing.T, im image) image {
			im.setMeta(n, 32, 1)
			return im
		}, "freelist page 1 outside the data pages"},
		{"freelist page of the wrong type", func(t *testing.T, im image) image {
			im.setMeta(n, 32, im.metaField(16))
			return im
		}, "freelist page"},
		{"free page out of range", func(t *testing.T, im image) image {
			setFreeID(im.freelist(), 0, pgid+10)
			return im
		}, fmt.Sprintf("lists page %d outside the data pages", pgid+10)},
		{"free page listed twice", func(t *testing.T, im image) image {
			fl := im.freelist()
			setFreeID(fl, 1, freeID(fl, 0))
			return im
		}, "twice"},
		{"freelist lists itself", func(t *testing.T, im image) image {
			setFreeID(im.freelist(), 0, im.metaField(32))
			return im
		}, "which is in use"},
		{"free page in use", func(t *testing.T, im image) image {
			setFreeID(im.freelist(), 0, im.dataRoot(t))
			return im
		}, "is both free and in use"},
		{"freelist count too large", func(t *testing.T, im image) image {
			setCount(im.freelist(), 0xFFFE)
			return im
		}, "has room for"},
		{"huge freelist count", func(t *testing.T, im image) image {
			fl := im.freelist()
			setCount(fl, 0xFFFF)
			binary.NativeEndian.PutUint64(fl[16:], 1<<62)
			return im
		}, "has room for"},
		{"lost page", func(t *testing.T, im image) image {
			fl := im.freelist()
			setCount(fl, count(fl)-1)
			return im
		}, "is neither in use nor free"},
		{"page names another page", func(t *testing.T, im image) image {
			binary.NativeEndian.PutUint64(im.page(im.dataRoot(t)), 9999)
			return im
		}, "identifies itself as another page"},
		{"overflow past the end", func(t *testing.T, im image) image {
			binary.NativeEndian.PutUint32(im.page(im.dataRoot(t))[12:], uint32(pgid))
			return im
		}, "its overflow pages run past the last data page"},
		{"overflow over other pages", func(t *testing.T, im image) image {
			root := im.dataRoot(t)
			_, child := branchKey(im.page(root), 0)
			binary.NativeEndian.PutUint32(im.page(child)[12:], uint32(pgid-child-1))
			return im
		}, "is used twice|is both free and in use"},
		{"unknown page type", func(t *testing.T, im image) image {
			binary.NativeEndian.PutUint16(im.page(im.dataRoot(t))[8:], 0x10)
			return im
		}, "is a freelist page where a branch or leaf page belongs"},
		{"empty branch", func(t *testing.T, im image) image {
			setCount(im.page(im.dataRoot(t)), 0)
			return im
		}, "has no elements"},
		{"branch count too large", func(t *testing.T, im image) image {
			setCount(im.page(im.dataRoot(t)), 1000)
			return im
		}, "its elements do not fit in it"},
		{"branch element out of place", func(t *testing.T, im image) image {
			e := elem(im.page(im.dataRoot(t)), 1)
			binary.NativeEndian.PutUint32(e[0:], binary.NativeEndian.Uint32(e[0:])+1)
			return im
		}, "element 1 is out of place or out of bounds"},
		{"cycle", func(t *testing.T, im image) image {
			root := im.dataRoot(t)
			binary.NativeEndian.PutUint64(elem(im.page(root), 1)[8:], root)
			return im
		}, "used twice"},
		{"child out of range", func(t *testing.T, im image) image {
			binary.NativeEndian.PutUint64(elem(im.page(im.dataRoot(t)), 1)[8:], pgid)
			return im
		}, "outside the data pages"},
		{"children swapped", func(t *testing.T, im image) image {
			p := im.page(im.dataRoot(t))
			a, b := elem(p, 0)[8:], elem(p, 1)[8:]
			x := binary.NativeEndian.Uint64(a)
			binary.NativeEndian.PutUint64(a, binary.NativeEndian.Uint64(b))
			binary.NativeEndian.PutUint64(b, x)
			return im
		}, "sorts after the next key of its parent"},
		{"branch key differs from its child", func(t *testing.T, im image) image {
			k, _ := branchKey(im.page(im.dataRoot(t)), 1)
			k[len(k)-1]--
			return im
		}, "key 1 differs from the first key of its child page"},
		{"branch keys out of order", func(t *testing.T, im image) image {
			k, _ := branchKey(im.page(im.dataRoot(t)), 1)
			k[0] = 0
			return im
		}, "key 1 is not after key 0"},
		{"leaf keys out of order", func(t *testing.T, im image) image {
			_, child := branchKey(im.page(im.dataRoot(t)), 1)
			k, _ := leafKV(im.page(child), 2)
			k[0] = 0
			return im
		}, "key 2 is not after key 1"},
		{"empty key", func(t *testing.T, im image) image {
			_, child := branchKey(im.page(im.dataRoot(t)), 1)
			e := elem(im.page(child), 3)
			ks := binary.NativeEndian.Uint32(e[8:])
			binary.NativeEndian.PutUint32(e[8:], 0)
			binary.NativeEndian.PutUint32(e[12:], binary.NativeEndian.Uint32(e[12:])+ks)
			return im
		}, "element 3 has an empty key"},
		{"value past the page", func(t *testing.T, im image) image {
			_, child := branchKey(im.page(im.dataRoot(t)), 1)
			p := im.page(child)
			binary.NativeEndian.PutUint32(elem(p, count(p)-1)[12:], uint32(im.ps))
			return im
		}, "is out of place or out of bounds"},
		{"unknown element flags", func(t *testing.T, im image) image {
			_, child := branchKey(im.page(im.dataRoot(t)), 1)
			binary.NativeEndian.PutUint32(elem(im.page(child), 0)[0:], 4)
			return im
		}, "element 0 has unknown flags"},
		{"bucket header too short", func(t *testing.T, im image) image {
			// "meta" is the last element of the root leaf.
			root := im.page(im.metaField(16))
			binary.NativeEndian.PutUint32(elem(root, 1)[12:], 8)
			return im
		}, "bucket header of 8 bytes"},
		{"inline bucket of the wrong type", func(t *testing.T, im image) image {
			_, v := leafKV(im.page(im.metaField(16)), 1)
			binary.NativeEndian.PutUint16(v[16+8:], 0x01)
			return im
		}, "inline bucket page is not a leaf page"},
		{"bucket in an inline bucket", func(t *testing.T, im image) image {
			_, v := leafKV(im.page(im.metaField(16)), 1)
			binary.NativeEndian.PutUint32(elem(v[16:], 0)[0:], 1)
			return im
		}, "is a bucket inside an inline bucket"},
		{"value marked as a bucket", func(t *testing.T, im image) image {
			_, child := branchKey(im.page(im.dataRoot(t)), 1)
			binary.NativeEndian.PutUint32(elem(im.page(child), 0)[0:], 1)
			return im
		}, "bucket at element 0: root page outside the data pages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := openImage(t, tc.damage(t, pristine.clone()))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			if !containsAny(err.Error(), strings.Split(tc.want, "|")) {
				t.Fatalf("Open = %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), keyMarker) || strings.Contains(err.Error(), secretMarker) {
				t.Fatalf("error leaks stored data: %v", err)
			}
		})
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// TestValidateMetaFallback damages the newest meta page: like bbolt, Open
// then uses the previous one, which shows the state before the last
// transaction, and the next commit replaces the damaged page.
func TestValidateMetaFallback(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.db")
	s := openT(t, path, nil)
	put(t, s, "a", "1", "b", "2")
	put(t, s, "last", "3")
	s.Close()
	im := image{fileBytes(t, path), os.Getpagesize()}
	n := im.newest()
	im.meta(n)[50] ^= 0x10 // the txid: checksum mismatch
	if err := os.WriteFile(path, im.b, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{true, false} {
		s = openT(t, path, &Options{ReadOnly: ro})
		if got := dump(t, s); got != "a=1\nb=2\n" {
			t.Fatalf("fallback (read-only %v) shows %q", ro, got)
		}
		s.Close()
		if !bytes.Equal(fileBytes(t, path), im.b) {
			t.Fatalf("Open (read-only %v) changed the file", ro)
		}
	}
	s = openT(t, path, nil)
	put(t, s, "c", "4")
	s.Close()
	after := image{fileBytes(t, path), im.ps}
	if after.newest() != n {
		t.Fatalf("the commit after the fallback wrote meta page %d, not the damaged %d", after.newest(), n)
	}
	s = openT(t, path, nil)
	defer s.Close()
	if got := dump(t, s); got != "a=1\nb=2\nc=4\n" {
		t.Fatalf("after recovery: %q", got)
	}
	if err := s.Check(bg); err != nil {
		t.Fatal(err)
	}
}

// TestValidateValidStores checks that no store written by bbolt is refused:
// it runs random transactions (puts of all sizes, deletes, prefix deletes,
// which split, merge and free pages) and validates the file after each.
func TestValidateValidStores(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	s := openT(t, path, &Options{NoSync: true})
	defer s.Close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(11, 12))
	size := func() int {
		switch rng.IntN(10) {
		case 0:
			return 0
		case 1:
			return 5000 + rng.IntN(20000)
		default:
			return rng.IntN(600)
		}
	}
	for i := range 150 {
		if err := s.Update(bg, func(tx Tx) error {
			for range rng.IntN(40) {
				k := fmt.Sprintf("k/%02d/%d", rng.IntN(30), rng.IntN(200))
				switch rng.IntN(6) {
				case 0, 1:
					if err := tx.Delete(k); err != nil {
						return err
					}
				case 2:
					if rng.IntN(10) == 0 {
						if err := tx.DeletePrefix(k[:4]); err != nil {
							return err
						}
					}
				default:
					if err := tx.Put(k, bytes.Repeat([]byte{byte(i)}, size())); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		fi, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := validateFile(f, fi.Size()); err != nil {
			t.Fatalf("after transaction %d: %v", i, err)
		}
	}
}

// TestValidateBboltFiles checks files that bbolt writes with other page
// sizes and nested buckets, which this package does not write but bbolt
// reads.
func TestValidateBboltFiles(t *testing.T) {
	for _, ps := range []int{1024, 4096, 16384, 65536} {
		path := filepath.Join(t.TempDir(), "b.db")
		db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: ps, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte(fmt.Sprintf("b%d", i%3)))
				if err != nil {
					return err
				}
				nested, err := b.CreateBucketIfNotExists([]byte("nested"))
				if err != nil {
					return err
				}
				for j := range 50 {
					v := bytes.Repeat([]byte{byte(j)}, (j*i*37)%3000)
					if err := nested.Put([]byte(fmt.Sprintf("%d/%d", i, j)), v); err != nil {
						return err
					}
					if err := b.Put([]byte(fmt.Sprintf("%d", j)), v[:len(v)/2]); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		db.Close()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		info, err := validateFile(f, fi.Size())
		f.Close()
		if err != nil || info.pageSize != ps {
			t.Fatalf("page size %d: validateFile = %+v, %v", ps, info, err)
		}
	}

	// A file without a persisted freelist, which bbolt would rebuild and
	// rewrite during Open.
	path := filepath.Join(t.TempDir(), "nofreelist.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true})
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("x"))
		return err
	})
	db.Close()
	before := fileBytes(t, path)
	if _, err := Open(path, nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "no persisted freelist") {
		t.Fatalf("Open of a file without a freelist = %v", err)
	}
	if !bytes.Equal(before, fileBytes(t, path)) {
		t.Fatal("Open changed a file without a freelist")
	}
}

// TestOpenNotFresh checks that a bbolt file that has lost its buckets is
// refused rather than initialised over, while a file bbolt has just
// created (an interrupted first Open) is initialised, and that an empty
// file is refused read-only.
func TestOpenNotFresh(t *testing.T) {
	dir := t.TempDir()
	emptied := filepath.Join(dir, "emptied.db")
	db, err := bolt.Open(emptied, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []func(*bolt.Tx) error{
		func(tx *bolt.Tx) error { _, err := tx.CreateBucket(dataBucket); return err },
		func(tx *bolt.Tx) error { return tx.DeleteBucket(dataBucket) },
	} {
		if err := db.Update(f); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	before := fileBytes(t, emptied)
	if _, err := Open(emptied, nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "no buckets") {
		t.Fatalf("Open of a bbolt file without buckets = %v, want ErrCorrupt", err)
	}
	if !bytes.Equal(before, fileBytes(t, emptied)) {
		t.Fatal("Open changed the file")
	}

	fresh := filepath.Join(dir, "fresh.db")
	db, err = bolt.Open(fresh, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openT(t, fresh, nil)
	put(t, s, "k", "v")
	s.Close()

	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(empty, &Options{ReadOnly: true}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read-only Open of an empty file = %v, want ErrCorrupt", err)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 {
		t.Fatalf("read-only Open changed an empty file: %v, %v", fi, err)
	}
}

// tinyStore is a store in the format Open writes, but with bbolt's
// smallest page size (1 KiB) and little data, cut to its data pages: a
// branch page over a few leaves, an overflow value, a freelist and the
// inline meta bucket in about 10 KiB, small enough for the fuzzer to mutate
// and minimise quickly. Open reads files of any page size bbolt writes.
func tinyStore(f *testing.F) []byte {
	path := filepath.Join(f.TempDir(), "tiny.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{PageSize: 1024, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(metaBucket)
		if err != nil {
			return err
		}
		if err := meta.Put(formatKey, formatName); err != nil {
			return err
		}
		if err := putVersion(meta, FormatVersion); err != nil {
			return err
		}
		data, err := tx.CreateBucket(dataBucket)
		if err != nil {
			return err
		}
		for i := range 14 {
			v := bytes.Repeat([]byte{byte(i)}, 60+i*5)
			if i == 5 {
				v = bytes.Repeat([]byte{5}, 1500)
			}
			if err := data.Put([]byte(fmt.Sprintf("k/%02d", i)), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(dataBucket).Delete([]byte("k/03"))
		})
	}
	if err != nil {
		f.Fatal(err)
	}
	size := 0
	db.View(func(tx *bolt.Tx) error {
		size = int(tx.Size())
		return nil
	})
	db.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	return b[:size]
}

// FuzzOpen opens arbitrary bytes as a store file: Open must fail with a
// typed error or give a store that can be read, checked and written
// without a panic or a fault, and must not change the file. Input that the
// validation refuses never reaches bbolt, so it is only validated, in
// memory: that keeps the fuzzer (and its minimisation of inputs) fast.
// TestOpenTruncated and TestOpenFlippedBytes open refused files too, and
// read-only.
func FuzzOpen(f *testing.F) {
	seed := tinyStore(f)
	seedPath := filepath.Join(f.TempDir(), "seed.db")
	if err := os.WriteFile(seedPath, seed, 0o600); err != nil {
		f.Fatal(err)
	}
	if s, err := Open(seedPath, nil); err != nil {
		f.Fatalf("the fuzz seed does not open: %v", err)
	} else if got := dump(f, s); !strings.Contains(got, "k/13=") {
		f.Fatalf("the fuzz seed holds %q", got)
	} else {
		s.Close()
	}
	if im := (image{seed, 1024}); binary.NativeEndian.Uint16(im.page(im.dataRoot(f))[8:]) != 0x01 {
		f.Fatal("the fuzz seed's data bucket has no branch page")
	}
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	for _, off := range []int{20, 1024 + 20, 2*1024 + 11, 3*1024 + 40, len(seed) - 1000} {
		b := bytes.Clone(seed)
		b[off] ^= 0x5a
		f.Add(b)
	}
	f.Add([]byte("not a database"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := validateFile(bytes.NewReader(data), int64(len(data))); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		// Accepted (or empty). Unused space after the pages keeps bbolt
		// from growing the file when writing, which it fsyncs even with
		// NoSync.
		path := filepath.Join(dir, "fuzz.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if len(data) > 0 {
			if err := os.Truncate(path, int64(len(data))+128<<10); err != nil {
				t.Fatal(err)
			}
		}
		before := fileBytes(t, path)
		s, err := Open(path, &Options{NoSync: true, LockTimeout: -1})
		if len(data) > 0 && !bytes.Equal(fileBytes(t, path), before) {
			t.Fatal("Open changed the file")
		}
		if err != nil {
			// The store format check, after bbolt's open.
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		defer s.Close()
		fuzzRead(t, s)
		fuzzWrite(t, s)
		fuzzRead(t, s)
	})
}

func fuzzRead(t *testing.T, s *Bolt) {
	err := s.View(bg, func(tx Tx) error {
		return tx.Scan("", func(k string, _ []byte) error {
			_, err := tx.Get(k)
			return err
		})
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Scan: %v", err)
	}
	if err := s.Check(bg); err != nil && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Check: %v", err)
	}
}

func fuzzWrite(t *testing.T, s *Bolt) {
	err := s.Update(bg, func(tx Tx) error {
		var keys []string
		if err := tx.Scan("", func(k string, _ []byte) error {
			keys = append(keys, k)
			return nil
		}); err != nil {
			return err
		}
		for i, k := range keys {
			if i%2 == 0 {
				if err := tx.Delete(k); err != nil {
					return err
				}
			}
		}
		return tx.Put("fuzz/new", bytes.Repeat([]byte{1}, 5000))
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Update: %v", err)
	}
}

// BenchmarkValidate measures the check Open runs before bbolt maps the
// file, on a store of a few MB (about 3.4 MB of pages, 450 keys).
func BenchmarkValidate(b *testing.B) {
	path := filepath.Join(b.TempDir(), "s.db")
	buildStore(b, path, 600, 40000)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	info, err := validateFile(f, fi.Size())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(info.pages) * int64(info.pageSize))
	b.ResetTimer()
	for range b.N {
		if _, err := validateFile(f, fi.Size()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenClose is the whole Open (lock, validation, bbolt's open, the
// format check) and Close of the same store.
func BenchmarkOpenClose(b *testing.B) {
	path := filepath.Join(b.TempDir(), "s.db")
	buildStore(b, path, 600, 40000)
	b.ResetTimer()
	for range b.N {
		s, err := Open(path, nil)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
