package media_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/media"
	"mellium.im/xmpp/stanza"
)

// setup returns a fake XMPP server whose upload service hands out slots
// on a local HTTPS file server, and a session on it.
func setup(t *testing.T) (*fakeXMPP, *fileServer, *media.UploadOptions) {
	t.Helper()
	fs := newFileServer(t)
	fx := &fakeXMPP{maxSize: "104857600"}
	fx.slot = func(name string, size int64, ct string) string { return fs.slotXML(name) }
	return fx, fs, &media.UploadOptions{HTTPClient: fs.client()}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func uploadBytes(t *testing.T, fx *fakeXMPP, opts *media.UploadOptions, plain []byte, name string) (*media.Link, media.File) {
	t.Helper()
	l, f, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), int64(len(plain)), name, opts)
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	return l, f
}

func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%d entries left in %s, first %q", len(ents), dir, ents[0].Name())
	}
}

func TestUploadDownload(t *testing.T) {
	for _, size := range []int{0, 1, 15, 16, 17, 1000, 64 << 10, 1<<20 + 3} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			fx, fs, opts := setup(t)
			plain := randomBytes(size)
			var progress [][2]int64
			opts.Progress = func(done, total int64) { progress = append(progress, [2]int64{done, total}) }
			l, up := uploadBytes(t, fx, opts, plain, "../dir/my file.bin")
			want := media.File{Name: "my file.bin", Size: int64(size), SHA256: sha256.Sum256(plain)}
			if up != want {
				t.Fatalf("Upload = %+v, want %+v", up, want)
			}
			total := int64(size) + media.TagSize
			checkProgress(t, progress, total)

			// The slot request and the PUT.
			if r := fx.slotRequests(); len(r) != 1 || r[0] != fmt.Sprintf("my file.bin %d application/octet-stream", total) {
				t.Fatalf("slot requests %q", r)
			}
			h := fs.putHeaders()
			if len(h) != 1 || h[0].Get("Content-Length") != fmt.Sprint(total) || h[0].Get("Content-Type") != "application/octet-stream" ||
				h[0].Get("Authorization") != token || h[0].Get("Cookie") != "a=b; c=d" || h[0].Get("X-Other") != "" {
				t.Fatalf("PUT headers %v", h)
			}

			// The receiver gets the body.
			body := l.Body()
			if !strings.HasPrefix(body, "aesgcm://127.0.0.1:") || strings.Count(body, "#") != 1 || len(body[strings.IndexByte(body, '#')+1:]) != 88 {
				t.Fatalf("body %q", body)
			}
			got, err := media.ParseBody(body)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			progress = nil
			down, err := media.Download(t.Context(), got, dir, &media.DownloadOptions{
				HTTPClient: fs.client(),
				Progress:   func(done, total int64) { progress = append(progress, [2]int64{done, total}) },
			})
			if err != nil {
				t.Fatalf("Download: %v", err)
			}
			want.Path = filepath.Join(dir, "my file.bin")
			if down != want {
				t.Fatalf("Download = %+v, want %+v", down, want)
			}
			checkProgress(t, progress, total)
			if b, err := os.ReadFile(down.Path); err != nil || !bytes.Equal(b, plain) {
				t.Fatalf("file differs: %v", err)
			}
			if st, _ := os.Stat(down.Path); st.Mode().Perm() != 0o600 {
				t.Fatalf("mode %v", st.Mode())
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Fatalf("%d files in the directory", len(ents))
			}
		})
	}
}

func checkProgress(t *testing.T, p [][2]int64, total int64) {
	t.Helper()
	if len(p) < 2 || p[0] != [2]int64{0, total} || p[len(p)-1] != [2]int64{total, total} {
		t.Fatalf("progress %v, total %d", p, total)
	}
	for i := 1; i < len(p); i++ {
		if p[i][0] < p[i-1][0] || p[i][1] != total {
			t.Fatalf("progress not monotonic: %v", p)
		}
	}
}

func TestDiscover(t *testing.T) {
	for _, tc := range []struct {
		fx   *fakeXMPP
		jid  string
		max  int64
		want error
	}{
		{fx: &fakeXMPP{maxSize: "5242880"}, jid: "upload.localhost", max: 5242880},
		{fx: &fakeXMPP{maxSize: "5242880", onDomain: true}, jid: "localhost", max: 5242880},
		{fx: &fakeXMPP{}, jid: "upload.localhost", max: 0},
		{fx: &fakeXMPP{maxSize: "lots"}, jid: "upload.localhost", max: 0},
		{fx: &fakeXMPP{noService: true}, want: media.ErrNoService},
	} {
		svc, err := media.Discover(t.Context(), tc.fx.session(t))
		if !errors.Is(err, tc.want) || (err == nil && (svc.JID.String() != tc.jid || svc.MaxSize != tc.max)) {
			t.Errorf("Discover = %v %d, %v; want %s %d, %v", svc.JID, svc.MaxSize, err, tc.jid, tc.max, tc.want)
		}
	}
}

func TestUploadErrors(t *testing.T) {
	plain := randomBytes(1000)
	t.Run("too large", func(t *testing.T) {
		fx, fs, opts := setup(t)
		fx.maxSize = "1015" // 1000 + 16 does not fit
		_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
		if !errors.Is(err, media.ErrFileTooLarge) || len(fx.slotRequests()) != 0 || len(fs.putHeaders()) != 0 {
			t.Fatalf("%v, %d slot requests", err, len(fx.slotRequests()))
		}
		fx.maxSize = "1016" // fits exactly
		if _, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts); err != nil {
			t.Fatal(err)
		}
		big := media.MaxFileSize + 1
		if _, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(nil), int64(big), "a", opts); !errors.Is(err, media.ErrFileTooLarge) {
			t.Fatalf("over GCM's limit: %v", err)
		}
	})
	t.Run("no service", func(t *testing.T) {
		fx, _, opts := setup(t)
		fx.noService = true
		_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
		if !errors.Is(err, media.ErrNoService) {
			t.Fatal(err)
		}
	})
	t.Run("slot refused", func(t *testing.T) {
		fx, _, opts := setup(t)
		fx.slot = func(string, int64, string) string {
			return `<error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>File too large</text></error>`
		}
		_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
		var se stanza.Error
		if !errors.Is(err, media.ErrSlotRefused) || !errors.As(err, &se) || se.Condition != stanza.NotAcceptable {
			t.Fatal(err)
		}
	})
	for name, slot := range map[string]string{
		"http get": `<put url='https://127.0.0.1/x'/><get url='http://127.0.0.1/x'/>`,
		"http put": `<put url='http://127.0.0.1/x'/><get url='https://127.0.0.1/x'/>`,
		"no put":   `<get url='https://127.0.0.1/x'/>`,
		"no get":   `<put url='https://127.0.0.1/x'/>`,
	} {
		t.Run(name, func(t *testing.T) {
			fx, fs, opts := setup(t)
			fx.slot = func(string, int64, string) string { return slot }
			_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
			if !errors.Is(err, media.ErrNotHTTPS) || len(fs.putHeaders()) != 0 {
				t.Fatal(err)
			}
		})
	}
	t.Run("unusable get", func(t *testing.T) {
		fx, _, opts := setup(t)
		fx.slot = func(string, int64, string) string {
			return `<put url='https://127.0.0.1/x'/><get url='https://u:p@127.0.0.1/x'/>`
		}
		_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
		if !errors.Is(err, media.ErrSlotRefused) {
			t.Fatal(err)
		}
	})
	for name, status := range map[string]int{"500": 500, "413": 413, "401": 401} {
		t.Run("PUT "+name, func(t *testing.T) {
			fx, fs, opts := setup(t)
			fs.putStatus = status
			_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
			var se *media.StatusError
			if !errors.Is(err, media.ErrHTTPStatus) || !errors.As(err, &se) || se.StatusCode != status || strings.Contains(err.Error(), "127.0.0.1") {
				t.Fatal(err)
			}
		})
	}
	for name, r := range map[string]io.Reader{
		"short": bytes.NewReader(plain[:900]),
		"long":  io.MultiReader(bytes.NewReader(plain), strings.NewReader("x")),
	} {
		t.Run(name+" reader", func(t *testing.T) {
			fx, fs, opts := setup(t)
			_, _, err := media.Upload(t.Context(), fx.session(t), r, 1000, "a", opts)
			if !errors.Is(err, media.ErrSizeMismatch) {
				t.Fatal(err)
			}
			// The server never got a complete file: once its handler is
			// done (the partial "~" file gone), the directory is empty.
			deadline := time.Now().Add(5 * time.Second)
			for {
				ents, _ := os.ReadDir(fs.dir)
				if len(ents) == 0 {
					break
				}
				if !strings.HasSuffix(ents[0].Name(), "~") || time.Now().After(deadline) {
					t.Fatalf("server stored %q", ents[0].Name())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	t.Run("reader error", func(t *testing.T) {
		fx, _, opts := setup(t)
		boom := errors.New("boom")
		r := io.MultiReader(bytes.NewReader(plain[:500]), &errReader{boom})
		_, _, err := media.Upload(t.Context(), fx.session(t), r, 1000, "a", opts)
		if !errors.Is(err, boom) {
			t.Fatal(err)
		}
	})
	t.Run("bad thumbnail", func(t *testing.T) {
		fx, _, opts := setup(t)
		opts.Thumbnail = []byte("png")
		_, _, err := media.Upload(t.Context(), fx.session(t), bytes.NewReader(plain), 1000, "a", opts)
		if !errors.Is(err, media.ErrBadThumbnail) {
			t.Fatal(err)
		}
	})
	t.Run("thumbnail", func(t *testing.T) {
		fx, _, opts := setup(t)
		opts.Thumbnail = []byte{0xff, 0xd8, 0xff, 0xdb, 1, 2}
		l, _ := uploadBytes(t, fx, opts, plain, "p.jpg")
		got, err := media.ParseBody(l.Body())
		if err != nil || !bytes.Equal(got.Thumbnail(), opts.Thumbnail) || strings.Count(l.Body(), "\n") != 1 {
			t.Fatalf("%v", err)
		}
	})
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

func TestDownloadErrors(t *testing.T) {
	fx, fs, opts := setup(t)
	plain := randomBytes(100_000)
	l, _ := uploadBytes(t, fx, opts, plain, "f.bin")
	body := l.Body()
	variant := func(mode string) *media.Link {
		v, err := media.ParseBody(strings.Replace(body, "/files/", "/"+mode+"/", 1))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tc := range []struct {
		mode string
		opts media.DownloadOptions
		want error
	}{
		{mode: "404", want: media.ErrHTTPStatus},
		{mode: "500", want: media.ErrHTTPStatus},
		{mode: "flip", want: media.ErrAuthentication},
		{mode: "extra", want: media.ErrAuthentication},
		{mode: "more", want: media.ErrAuthentication},
		{mode: "truncate", want: media.ErrTruncated},
		{mode: "short", want: media.ErrTruncated},
		{mode: "redirect-http", want: media.ErrInsecureRedirect},
		{mode: "files", opts: media.DownloadOptions{MaxSize: 99_999}, want: media.ErrLimitExceeded},
		{mode: "chunked", opts: media.DownloadOptions{MaxSize: 50_000}, want: media.ErrLimitExceeded},
		{mode: "stall", opts: media.DownloadOptions{IdleTimeout: 300 * time.Millisecond}, want: media.ErrStalled},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			dir := t.TempDir()
			opts := tc.opts
			opts.HTTPClient = fs.client()
			_, err := media.Download(t.Context(), variant(tc.mode), dir, &opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if s := err.Error(); strings.Contains(s, "127.0.0.1") || strings.Contains(s, "/"+tc.mode+"/") {
				t.Fatalf("error %q shows the URL", s)
			}
			emptyDir(t, dir)
		})
	}
	// The well-behaved variants work, exactly at the limit too.
	for _, tc := range []struct {
		mode string
		max  int64
	}{{"files", 100_000}, {"chunked", 100_000}, {"redirect", 0}, {"chunked", -1}} {
		dir := t.TempDir()
		f, err := media.Download(t.Context(), variant(tc.mode), dir, &media.DownloadOptions{HTTPClient: fs.client(), MaxSize: tc.max})
		if err != nil || f.SHA256 != sha256.Sum256(plain) {
			t.Fatalf("%s, limit %d: %v", tc.mode, tc.max, err)
		}
	}
	// A wrong key.
	wrong, err := media.ParseBody(body[:len(body)-1] + string("01"[(strings.IndexByte("0123456789abcdef", body[len(body)-1])+1)%2]))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, err := media.Download(t.Context(), wrong, dir, &media.DownloadOptions{HTTPClient: fs.client()}); !errors.Is(err, media.ErrAuthentication) {
		t.Fatalf("wrong key: %v", err)
	}
	emptyDir(t, dir)
	// Cancelled.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := media.Download(ctx, l, dir, &media.DownloadOptions{HTTPClient: fs.client()}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	emptyDir(t, dir)
	// Cancelled half way, from the progress callback.
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	_, err = media.Download(ctx, l, dir, &media.DownloadOptions{HTTPClient: fs.client(), Progress: func(done, total int64) {
		if done > total/2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled half way: %v", err)
	}
	emptyDir(t, dir)
	// Not a directory, no directory.
	if _, err := media.Download(t.Context(), l, filepath.Join(dir, "nope"), &media.DownloadOptions{HTTPClient: fs.client()}); err == nil {
		t.Fatal("missing directory accepted")
	}
	// The default client does not trust the test server.
	if _, err := media.Download(t.Context(), l, dir, nil); err == nil || strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("default client: %v", err)
	}
	emptyDir(t, dir)
	// opts.Name overrides the link's name, made safe.
	f, err := media.Download(t.Context(), l, dir, &media.DownloadOptions{HTTPClient: fs.client(), Name: "../../x\u202e.txt"})
	if err != nil || f.Name != "x_.txt" || f.Path != filepath.Join(dir, "x_.txt") {
		t.Fatalf("Name option: %+v %v", f, err)
	}
}

// TestDownloadLegacyIV decrypts a file encrypted with a 16-byte IV, as
// older clients send (96 hex digits in the fragment).
func TestDownloadLegacyIV(t *testing.T) {
	fs := newFileServer(t)
	key, iv := randomBytes(32), randomBytes(16)
	plain := randomBytes(5000)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCMWithNonceSize(block, 16)
	if err := os.WriteFile(filepath.Join(fs.dir, "7"), aead.Seal(nil, iv, plain, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	body := "aesgcm://" + strings.TrimPrefix(fs.ts.URL, "https://") + "/files/7/old.txt#" + hex.EncodeToString(iv) + hex.EncodeToString(key)
	l, err := media.ParseBody(body)
	if err != nil || !l.LegacyIV() {
		t.Fatal(err)
	}
	f, err := media.Download(t.Context(), l, t.TempDir(), &media.DownloadOptions{HTTPClient: fs.client()})
	if err != nil || f.SHA256 != sha256.Sum256(plain) || f.Name != "old.txt" {
		t.Fatalf("%+v %v", f, err)
	}
}

// readLog is a reader of endless zeros that records whether it was read
// after done was set.
type readLog struct {
	mu    sync.Mutex
	done  bool
	late  int
	reads int
}

func (r *readLog) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	if r.done {
		r.late++
	}
	time.Sleep(100 * time.Microsecond)
	clear(p)
	return len(p), nil
}

// TestUploadNoReadAfterReturn: a server that answers before it read the
// body (as Prosody does with 413 for a wrong Content-Length) makes Upload
// return early; it must not read from the caller's reader or call
// Progress after it returned.
func TestUploadNoReadAfterReturn(t *testing.T) {
	fx, fs, opts := setup(t)
	fs.putStatus = http.StatusRequestEntityTooLarge
	var mu sync.Mutex
	returned, lateProgress := false, 0
	opts.Progress = func(done, total int64) {
		mu.Lock()
		defer mu.Unlock()
		if returned {
			lateProgress++
		}
	}
	r := &readLog{}
	_, _, err := media.Upload(t.Context(), fx.session(t), r, 50<<20, "a", opts)
	mu.Lock()
	returned = true
	mu.Unlock()
	r.mu.Lock()
	r.done = true
	r.mu.Unlock()
	if !errors.Is(err, media.ErrHTTPStatus) {
		t.Fatalf("Upload: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if r.late != 0 || lateProgress != 0 {
		t.Fatalf("%d reads and %d progress calls after Upload returned", r.late, lateProgress)
	}
	t.Logf("%d reads before the answer", r.reads)
}
