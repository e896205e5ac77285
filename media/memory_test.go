package media_test

import (
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/media"
)

// zeros is an endless reader of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// heapPeak samples runtime.MemStats.HeapAlloc until stop is called and
// returns the largest value seen.
func heapPeak() (stop func() uint64) {
	var (
		mu   sync.Mutex
		peak uint64
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			mu.Lock()
			peak = max(peak, ms.HeapAlloc)
			mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak
	}
}

// TestConstantMemory uploads and downloads a 256 MiB file (32 MiB under the
// race detector; OMEMO_MEDIA_SIZE=<bytes> for another size, such as 2 GiB)
// through the fake XMPP server and the local HTTPS file server, both in
// this process, and checks that the heap never grows by 16 MiB or more.
// The source file is sparse (Truncate).
func TestConstantMemory(t *testing.T) {
	size := int64(256 << 20)
	if raceEnabled {
		size = 32 << 20
	}
	if s := os.Getenv("OMEMO_MEDIA_SIZE"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		size = n
	}
	const maxGrowth = 16 << 20

	fx, fs, opts := setup(t)
	fx.maxSize = ""
	src := filepath.Join(t.TempDir(), "big.bin")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, zeros{}, size); err != nil {
		t.Fatal(err)
	}
	var want [32]byte
	h.Sum(want[:0])
	s := fx.session(t)
	dir := t.TempDir()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := heapPeak()
	start := time.Now()

	l, up, err := media.Upload(t.Context(), s, f, size, "big.bin", opts)
	if err != nil {
		stop()
		t.Fatalf("Upload: %v", err)
	}
	mid := time.Now()
	down, err := media.Download(t.Context(), l, dir, &media.DownloadOptions{HTTPClient: fs.client(), MaxSize: size})
	end := time.Now()
	peak := stop()
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	if up.SHA256 != want || down.SHA256 != want || down.Size != size {
		t.Fatalf("digests differ: %+v %+v", up, down)
	}
	if st, err := os.Stat(down.Path); err != nil || st.Size() != size {
		t.Fatalf("downloaded file: %v", err)
	}
	growth := int64(peak) - int64(before.HeapAlloc)
	mb := float64(size) / (1 << 20)
	t.Logf("%d MiB: upload %.0f MiB/s, download %.0f MiB/s; heap %.1f MiB before, peak %.1f MiB (growth %.1f MiB); %.1f MiB allocated in all",
		size>>20, mb/mid.Sub(start).Seconds(), mb/end.Sub(mid).Seconds(),
		float64(before.HeapAlloc)/(1<<20), float64(peak)/(1<<20), float64(growth)/(1<<20),
		float64(after.TotalAlloc-before.TotalAlloc)/(1<<20))
	if growth >= maxGrowth {
		t.Fatalf("heap grew by %d bytes, limit %d", growth, maxGrowth)
	}
}
