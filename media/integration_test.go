package media_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/media"
)

// TestProsodyUploadDownload uploads files of 0 bytes, 1 KiB and 5 MiB
// through a real slot of Prosody 0.12's mod_http_file_share, receives the
// body with another account's session-free Download and compares the
// SHA-256; then checks that a file over max-file-size is refused before
// any upload.
func TestProsodyUploadDownload(t *testing.T) {
	srv := prosodytest.StartWithUpload(t,
		prosodytest.User{Name: "alice", Contacts: []string{"bob"}},
		prosodytest.User{Name: "bob"},
	)
	// The slot URLs name "localhost", which must resolve to the loopback
	// address Prosody listens on.
	addrs, err := net.DefaultResolver.LookupHost(context.Background(), "localhost")
	if err != nil || !contains(addrs, "127.0.0.1") {
		t.Fatalf("localhost resolves to %v, %v", addrs, err)
	}
	alice := srv.Dial(t, "alice", nil)
	client := srv.HTTPClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	svc, err := media.Discover(ctx, alice)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	if !svc.JID.Equal(srv.UploadService()) || svc.MaxSize != prosodytest.UploadMaxSize {
		t.Fatalf("Discover = %v max %d, want %v max %d", svc.JID, svc.MaxSize, srv.UploadService(), prosodytest.UploadMaxSize)
	}

	for _, size := range []int{0, 1 << 10, 5 << 20} {
		plain := make([]byte, size)
		_, _ = rand.Read(plain)
		var last [2]int64
		link, up, err := media.Upload(ctx, alice, bytes.NewReader(plain), int64(size), "report ü.bin",
			&media.UploadOptions{HTTPClient: client, Progress: func(done, total int64) { last = [2]int64{done, total} }})
		if err != nil {
			t.Fatalf("Upload(%d): %v", size, err)
		}
		if up.Size != int64(size) || up.SHA256 != sha256.Sum256(plain) || up.Name != "report ü.bin" {
			t.Fatalf("Upload(%d) = %+v", size, up)
		}
		if last != [2]int64{int64(size) + media.TagSize, int64(size) + media.TagSize} {
			t.Fatalf("last progress %v", last)
		}
		body := link.Body()
		t.Logf("%d bytes: %v (body %d chars)", size, link, len(body))

		// The receiving side only has the body.
		got, err := media.ParseBody(body)
		if err != nil {
			t.Fatalf("ParseBody: %v", err)
		}
		if got.Name() != "report ü.bin" || got.Host() != srv.UploadURL[len("https://"):len(srv.UploadURL)-len("/file_share/")] {
			t.Fatalf("link name %q host %q", got.Name(), got.Host())
		}
		dir := t.TempDir()
		down, err := media.Download(ctx, got, dir, &media.DownloadOptions{HTTPClient: client})
		if err != nil {
			t.Fatalf("Download(%d): %v", size, err)
		}
		if down.Size != int64(size) || down.SHA256 != up.SHA256 || down.Path != filepath.Join(dir, "report ü.bin") {
			t.Fatalf("Download(%d) = %+v", size, down)
		}
		onDisk, err := os.ReadFile(down.Path)
		if err != nil || !bytes.Equal(onDisk, plain) {
			t.Fatalf("file on disk differs (%v)", err)
		}

		// The server only has ciphertext: size + 16 bytes, not the
		// plaintext.
		resp, err := client.Get("https://" + body[len("aesgcm://"):bytes.IndexByte([]byte(body), '#')])
		if err != nil {
			t.Fatal(err)
		}
		stored, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(stored) != size+media.TagSize || (size > 0 && bytes.Contains(stored, plain[:min(size, 64)])) {
			t.Fatalf("server stores %d bytes", len(stored))
		}

		// The same link twice: the second file gets a new name.
		again, err := media.Download(ctx, got, dir, &media.DownloadOptions{HTTPClient: client})
		if err != nil || again.Path != filepath.Join(dir, "report ü (1).bin") {
			t.Fatalf("second download: %+v, %v", again, err)
		}
	}

	// Over max-file-size: refused before any slot request or upload.
	var read int64
	r := readerFunc(func(p []byte) (int, error) { read += int64(len(p)); return len(p), nil })
	_, _, err = media.Upload(ctx, alice, r, prosodytest.UploadMaxSize, "big.bin", &media.UploadOptions{HTTPClient: client})
	if !errors.Is(err, media.ErrFileTooLarge) || read != 0 {
		t.Fatalf("Upload over the limit: %v (read %d bytes)", err, read)
	}
	t.Logf("refused: %v", err)
	// With the service given (no discovery), and exactly at the limit
	// minus the tag: accepted by the check (not uploaded here).
	_, _, err = media.Upload(ctx, alice, r, prosodytest.UploadMaxSize-media.TagSize+1, "big.bin",
		&media.UploadOptions{HTTPClient: client, Service: &svc})
	if !errors.Is(err, media.ErrFileTooLarge) || read != 0 {
		t.Fatalf("Upload one byte over the limit: %v", err)
	}
	// The server's own refusal (a service that does not announce its
	// limit): the slot request fails.
	_, _, err = media.Upload(ctx, alice, r, prosodytest.UploadMaxSize, "big.bin",
		&media.UploadOptions{HTTPClient: client, Service: &media.Service{JID: svc.JID}})
	if !errors.Is(err, media.ErrSlotRefused) || read != 0 {
		t.Fatalf("server-side refusal: %v", err)
	}
	t.Logf("server refused: %v", err)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
