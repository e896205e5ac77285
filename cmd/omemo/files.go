package main

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/media"
	"mellium.im/xmpp/jid"
)

// Encrypted files (XEP-0454): send -file uploads a file through the
// server's HTTP File Upload service, encrypted with a fresh key, and sends
// its aesgcm link in an OMEMO message; listen -download fetches, decrypts
// and verifies received files. The link (its fragment is the key) is never
// printed: a file message is shown with the file's name as its body and,
// in "file", the https URL without the fragment.

// fileJSON describes the file of a message with -json: for a sent file
// name, size and sha256; for a received one name and url (not
// downloaded), path, name, size and sha256 (downloaded), or name, url and
// error (the download failed).
type fileJSON struct {
	Path   string `json:"path,omitempty"`
	Name   string `json:"name"`
	Size   *int64 `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	URL    string `json:"url,omitempty"`
	Error  string `json:"error,omitempty"`
}

// linkJSON describes the file of a received message that was not
// downloaded; nil if the message has no file.
func linkJSON(m omemo.Message) *fileJSON {
	if m.File == nil {
		return nil
	}
	return &fileJSON{Name: m.File.Name(), URL: m.File.URL()}
}

// fileOf describes a file that was uploaded or downloaded (path is ""
// for an upload).
func fileOf(path, name string, f media.File) *fileJSON {
	size := f.Size
	return &fileJSON{Path: path, Name: name, Size: &size, SHA256: hex.EncodeToString(f.SHA256[:])}
}

// note is the text appended to a message line for its file, escaped; ""
// without a file.
func (f *fileJSON) note() string {
	switch {
	case f == nil:
		return ""
	case f.Error != "":
		return escapeText(" [file not downloaded: " + f.Error + "]")
	case f.Path != "":
		return escapeText(fmt.Sprintf(" [file saved as %s, %d bytes, sha256 %s]", f.Path, *f.Size, f.SHA256))
	}
	return escapeText(" [file, not downloaded: " + f.URL + "]")
}

// download fetches, decrypts and verifies the file of m into the -download
// directory and describes it. A failed download is reported on stderr and
// described with its error; nothing of it is left in the directory
// (media.Download). ok is false if ctx ended during the download.
func (c *client) download(ctx context.Context, m omemo.Message) (f *fileJSON, ok bool) {
	l := m.File
	name := l.Name()
	bar := c.out.bar("downloading " + name)
	got, err := media.Download(ctx, l, c.downloadDir, &media.DownloadOptions{HTTPClient: c.http, Progress: bar.progress()})
	bar.finish()
	if err != nil {
		if ctx.Err() != nil {
			return nil, false
		}
		from := m.From.Bare().String()
		if isRoom(m) {
			from = m.RealFrom.Bare().String() + " in " + m.Room.Bare().String()
		}
		c.out.warn("the file %q from %s was not downloaded: %v", name, from, err)
		return &fileJSON{Name: name, URL: l.URL(), Error: err.Error()}, true
	}
	c.out.progress("saved the file %q from %s as %s", name, m.From.Bare(), got.Path)
	return fileOf(got.Path, name, got), true
}

// checkDownloadDir checks listen -download's DIR and returns it absolute.
func checkDownloadDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("listen -download: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("listen -download: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("listen -download: %s is not a directory", dir)
	}
	return abs, nil
}

// httpClient returns the HTTP client of the file transfers: with
// -insecure-skip-verify one that accepts any certificate (for test
// servers, as the XMPP connection does), otherwise nil, media's default
// client, which verifies certificates.
func httpClient(g *globals) *http.Client {
	if !g.insecure {
		return nil
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSClientConfig = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// #nosec G402 -- only with -insecure-skip-verify, for test servers.
		InsecureSkipVerify: true,
	}
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = 60 * time.Second
	t.ExpectContinueTimeout = time.Second
	// No overall time limit: it would cut large files short; media's
	// idle timeout catches stalls.
	return &http.Client{Transport: t}
}

// sendFile is a file to send, open.
type sendFile struct {
	f    *os.File
	size int64
	name string
}

// openSendFile opens send -file's PATH: a regular file that can be read.
func openSendFile(path string) (*sendFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("send -file: %w", err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("send -file: %s is a directory, not a file", path)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("send -file: %s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("send -file: %w", err)
	}
	// The size of the file as opened.
	if fi, err = f.Stat(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("send -file: %w", err)
	}
	return &sendFile{f: f, size: fi.Size(), name: filepath.Base(path)}, nil
}

// uploadOptions are the options of an upload, with its progress bar;
// the caller finishes the bar.
func (c *client) uploadOptions(sf *sendFile) (*media.UploadOptions, *bar) {
	b := c.out.bar("uploading " + sf.name)
	return &media.UploadOptions{HTTPClient: c.http, Progress: b.progress()}, b
}

// sendFileTo uploads the file, sends its link to `to` and prints the
// result.
func (c *client) sendFileTo(ctx context.Context, to jid.JID, sf *sendFile) error {
	c.out.progress("uploading %s (%d bytes), then sending it to %s…", sf.name, sf.size, to.Bare())
	opts, b := c.uploadOptions(sf)
	res, file, err := c.plugin.SendFile(ctx, to, sf.f, sf.size, sf.name, opts)
	b.finish()
	if err != nil {
		return c.sendError(ctx, to, fileError(err))
	}
	c.printSent(to, res, fileOf("", file.Name, file))
	return nil
}

// sendFileToRoom uploads the file and sends its link to the room; it does
// not print the result (see printRoomSent).
func (c *client) sendFileToRoom(ctx context.Context, room jid.JID, sf *sendFile) (*omemo.SendResult, *fileJSON, error) {
	c.out.progress("uploading %s (%d bytes), then sending it to %s…", sf.name, sf.size, room)
	opts, b := c.uploadOptions(sf)
	res, file, err := c.plugin.SendGroupFile(ctx, room, sf.f, sf.size, sf.name, opts)
	b.finish()
	if err != nil {
		return nil, nil, c.sendRoomError(ctx, room, fileError(err))
	}
	return res, fileOf("", file.Name, file), nil
}

// fileError explains the upload errors a user can act on.
func fileError(err error) error {
	switch {
	case errors.Is(err, media.ErrNoService):
		return fmt.Errorf("the server offers no HTTP File Upload service (XEP-0363): %w", err)
	case errors.Is(err, media.ErrFileTooLarge):
		return fmt.Errorf("the file is too large for the server's upload service: %w", err)
	}
	return err
}

// sentText is the text of a sent file in the result line.
func (f *fileJSON) sentText() string {
	return fmt.Sprintf("the file %s (%d bytes, sha256 %s)", f.Name, *f.Size, f.SHA256)
}

// bar is a progress bar on stderr, drawn only when stderr is a terminal
// and -json is not set; otherwise it does nothing. update may be called
// from another goroutine than finish, but not after finish.
type bar struct {
	o     *output
	label string

	mu    sync.Mutex
	last  time.Time
	drawn bool
	width int // of the last line drawn
}

// bar returns a progress bar labelled label (escaped).
func (o *output) bar(label string) *bar {
	if o.json || !o.tty {
		return &bar{}
	}
	return &bar{o: o, label: escapeText(label)}
}

// progress returns the callback for media's options: nil when the bar
// draws nothing.
func (b *bar) progress() func(done, total int64) {
	if b.o == nil {
		return nil
	}
	return b.update
}

// barRedraw is the least time between two redraws.
const barRedraw = 100 * time.Millisecond

// update draws the bar for done of total bytes (total < 0: unknown).
func (b *bar) update(done, total int64) {
	if b.o == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.drawn && done != total && now.Sub(b.last) < barRedraw {
		return
	}
	b.last = now
	line := barLine(b.label, done, total)
	pad := ""
	if n := b.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	b.width = len(line)
	b.drawn = true
	b.o.mu.Lock()
	defer b.o.mu.Unlock()
	fmt.Fprint(b.o.stderr, "\r"+line+pad)
}

// finish ends the bar's line.
func (b *bar) finish() {
	if b.o == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.drawn {
		b.o.mu.Lock()
		fmt.Fprintln(b.o.stderr)
		b.o.mu.Unlock()
		b.drawn = false
	}
}

// barWidth is the number of cells of the bar itself.
const barWidth = 30

// barLine is one state of the bar: label [=====>    ]  42% 2.1/5.0 MiB.
func barLine(label string, done, total int64) string {
	if total <= 0 {
		if total == 0 {
			return fmt.Sprintf("%s [%s] 100%% %s", label, strings.Repeat("=", barWidth), size(done))
		}
		return fmt.Sprintf("%s %s", label, size(done))
	}
	done = min(max(done, 0), total)
	filled := int(done * barWidth / total)
	cells := strings.Repeat("=", filled)
	if filled < barWidth {
		cells += ">" + strings.Repeat(" ", barWidth-filled-1)
	}
	return fmt.Sprintf("%s [%s] %3d%% %s/%s", label, cells, done*100/total, size(done), size(total))
}

// size formats a byte count.
func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
