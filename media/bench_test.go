package media_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/media"
	"mellium.im/xmpp/upload"
)

// BenchmarkProsody measures, against a local Prosody 0.12 with
// mod_http_file_share over HTTPS, the throughput of Upload (encrypt and
// PUT) and Download (GET, decrypt, hash and store, with fsync) of a 64 MiB
// file, next to a plain PUT and a plain GET of the same bytes (the GET
// also hashed and stored with fsync, as Download does) in the same run,
// and reports the ratios as plain-MB/s over encrypted-MB/s.
// Each iteration does all four transfers, each through a slot of its own.
//
//	go test ./media -run XXX -bench Prosody -benchtime 5x
func BenchmarkProsody(b *testing.B) {
	const size = 64 << 20
	srv := prosodytest.StartWithUpload(b, prosodytest.User{Name: "alice"})
	s := srv.Dial(b, "alice", nil)
	client := srv.HTTPClient(b)
	ctx := context.Background()
	svc, err := media.Discover(ctx, s)
	if err != nil {
		b.Fatal(err)
	}
	plain := randomBytes(size)
	dir := b.TempDir()

	var tUp, tDown, tPut, tGet time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Plain PUT of the same bytes through a slot of the same size.
		slot, err := upload.GetSlot(ctx, upload.File{Name: "plain.bin", Size: size, Type: "application/octet-stream"}, svc.JID, s)
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		req, _ := slot.Put(ctx, bytes.NewReader(plain))
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			b.Fatalf("plain PUT: %v %v", err, resp)
		}
		resp.Body.Close()
		tPut += time.Since(t0)

		// Plain GET, hashed and written to a file as Download does.
		t0 = time.Now()
		if err := plainGet(ctx, client, slot.GetURL.String(), filepath.Join(dir, fmt.Sprintf("plain%d", i))); err != nil {
			b.Fatal(err)
		}
		tGet += time.Since(t0)

		t0 = time.Now()
		l, _, err := media.Upload(ctx, s, bytes.NewReader(plain), size, "enc.bin", &media.UploadOptions{HTTPClient: client, Service: &svc})
		if err != nil {
			b.Fatal(err)
		}
		tUp += time.Since(t0)

		t0 = time.Now()
		if _, err := media.Download(ctx, l, dir, &media.DownloadOptions{HTTPClient: client}); err != nil {
			b.Fatal(err)
		}
		tDown += time.Since(t0)
	}
	b.StopTimer()
	mbs := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbs(tPut), "plainPUT-MB/s")
	b.ReportMetric(mbs(tUp), "Upload-MB/s")
	b.ReportMetric(mbs(tGet), "plainGET-MB/s")
	b.ReportMetric(mbs(tDown), "Download-MB/s")
	b.ReportMetric(tUp.Seconds()/tPut.Seconds(), "up-ratio")
	b.ReportMetric(tDown.Seconds()/tGet.Seconds(), "down-ratio")
}

func plainGet(ctx context.Context, c *http.Client, u, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("plain GET: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(io.MultiWriter(f, h), resp.Body, make([]byte, 64<<10)); err != nil {
		return err
	}
	return f.Sync()
}
