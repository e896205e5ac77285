package media

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"mellium.im/omemo/internal/gcmstream"
)

// DefaultMaxSize is the download limit when the options set none: 1 GiB
// of plaintext.
const DefaultMaxSize = 1 << 30

// DownloadOptions are the options of Download; the zero value (or nil)
// uses the defaults.
type DownloadOptions struct {
	// HTTPClient does the GET; nil means a default client with time
	// limits (see DefaultIdleTimeout). A redirect to a non-https URL is
	// refused whatever the client's policy.
	HTTPClient *http.Client
	// MaxSize is the largest plaintext to accept, in bytes: 0 means
	// DefaultMaxSize, a negative value MaxFileSize. A larger
	// Content-Length is refused before the body is read, a body that
	// grows beyond it is cut off; both fail with ErrLimitExceeded.
	MaxSize int64
	// Progress, if not nil, is called as the encrypted file comes in,
	// with the bytes received so far and the total (the Content-Length,
	// or -1 if the server sent none), on Download's goroutine.
	Progress func(done, total int64)
	// IdleTimeout is how long the download may make no progress before it
	// fails with ErrStalled: 0 means DefaultIdleTimeout, a negative value
	// no limit (the context still applies).
	IdleTimeout time.Duration
	// Name is the file name to store the file under instead of the one in
	// the link; it is made safe in the same way.
	Name string
}

// Download fetches the link's https URL, decrypts the body as it arrives
// into a temporary file in dir (hidden, mode 0600), verifies the GCM tag
// and only then moves the file into place under a safe name, streaming:
// memory use does not depend on the file size.
//
// The name (the link's, or opts.Name) is reduced to its last path
// element; NUL, control, bidirectional-formatting and other invisible
// format characters, "/", "\" and the characters Windows forbids are
// replaced by "_", leading and trailing dots and spaces dropped, so ".."
// and "" become "file"; long names are shortened. An existing file is
// never overwritten: "name (1).ext", "name (2).ext", … are tried instead.
//
// A status other than 200 (*StatusError, ErrHTTPStatus), a body larger
// than the limit (ErrLimitExceeded), shorter than announced
// (ErrTruncated) or failing authentication (ErrAuthentication: a wrong
// key, or a changed, cut or extended file), a stall (ErrStalled) or any
// other error leaves no file behind: the temporary file is removed.
// (A server that sends more bytes than its Content-Length announces is
// cut off there by net/http, and what arrived fails authentication.)
func Download(ctx context.Context, l *Link, dir string, opts *DownloadOptions) (File, error) {
	if opts == nil {
		opts = &DownloadOptions{}
	}
	if l == nil || l.sec.ivLen == 0 {
		return File{}, ErrWiped
	}
	if !strings.HasPrefix(l.fetch, https) {
		return File{}, ErrNotHTTPS
	}
	limit := opts.MaxSize
	switch {
	case limit == 0:
		limit = DefaultMaxSize
	case limit < 0 || limit > MaxFileSize:
		limit = MaxFileSize
	}
	name := l.name
	if opts.Name != "" {
		name = safeName(opts.Name)
	}
	if st, err := os.Stat(dir); err != nil {
		return File{}, fmt.Errorf("media: destination: %w", err)
	} else if !st.IsDir() {
		return File{}, fmt.Errorf("media: destination %s is not a directory", dir)
	}

	ctx, wd, cancel := newWatchdog(ctx, opts.IdleTimeout)
	defer cancel(nil)
	defer wd.stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.fetch, nil)
	if err != nil {
		return File{}, fmt.Errorf("media: GET: %w", stripURL(err))
	}
	// Ciphertext does not compress; and a transparently decompressed body
	// would escape the length checks.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := httpClient(opts.HTTPClient).Do(req)
	if err != nil {
		return File{}, fmt.Errorf("media: GET: %w", transferError(ctx, err, nil))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		drain(resp.Body)
		return File{}, &StatusError{Method: http.MethodGet, StatusCode: resp.StatusCode}
	}
	total := resp.ContentLength
	switch {
	case total >= 0 && total < TagSize:
		return File{}, ErrTruncated
	case total > limit+TagSize:
		return File{}, fmt.Errorf("%w: %d bytes announced, the limit is %d", ErrLimitExceeded, total-TagSize, limit)
	}
	wd.kick()
	if opts.Progress != nil {
		opts.Progress(0, total)
	}

	tmp, err := os.CreateTemp(dir, ".omemo-media-*.part")
	if err != nil {
		return File{}, fmt.Errorf("media: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()

	f, err := receive(ctx, l, resp.Body, tmp, total, limit+TagSize, opts, wd)
	if err != nil {
		return File{}, err
	}
	if err := tmp.Sync(); err != nil {
		return File{}, fmt.Errorf("media: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return File{}, fmt.Errorf("media: %w", err)
	}
	final, err := place(tmp.Name(), dir, name)
	if err != nil {
		return File{}, err
	}
	done = true
	f.Path = final
	f.Name = filepath.Base(final)
	return f, nil
}

// receive decrypts body into w and verifies the tag.
func receive(ctx context.Context, l *Link, body io.Reader, w io.Writer, total, max int64, opts *DownloadOptions, wd *watchdog) (File, error) {
	c, err := gcmstream.New(l.sec.key[:], l.sec.iv[:l.sec.ivLen], nil)
	if err != nil {
		return File{}, err
	}
	defer c.Wipe()
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), bufSize)
	o := gcmstream.NewOpener(c, bw)
	in := &meter{ctx: ctx, r: body, total: total, max: max, progress: opts.Progress, wd: wd}
	n, err := io.CopyBuffer(o, in, make([]byte, bufSize))
	if err != nil {
		switch {
		case in.err == nil:
			// The error is on the writing side (disk full, …).
			return File{}, fmt.Errorf("media: %w", err)
		case errors.Is(in.err, ErrLimitExceeded):
			return File{}, fmt.Errorf("%w: more than %d bytes", ErrLimitExceeded, max-TagSize)
		case context.Cause(ctx) != nil:
			return File{}, context.Cause(ctx)
		case errors.Is(in.err, io.ErrUnexpectedEOF):
			return File{}, fmt.Errorf("%w: %d of %d bytes", ErrTruncated, in.n, total)
		}
		return File{}, fmt.Errorf("media: GET: %w", stripURL(in.err))
	}
	if total >= 0 && n != total {
		return File{}, fmt.Errorf("%w: %d of %d bytes", ErrTruncated, n, total)
	}
	if n < TagSize {
		return File{}, fmt.Errorf("%w: %d bytes", ErrTruncated, n)
	}
	if err := o.Close(); err != nil {
		if errors.Is(err, gcmstream.ErrAuth) {
			return File{}, ErrAuthentication
		}
		return File{}, fmt.Errorf("media: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return File{}, fmt.Errorf("media: %w", err)
	}
	var f File
	f.Size = n - TagSize
	h.Sum(f.SHA256[:0])
	return f, nil
}

// maxTries bounds the "name (n).ext" candidates.
const maxTries = 10000

// place gives the temporary file tmp its final name in dir without ever
// replacing an existing file: a hard link fails if the name exists, and
// where hard links are not supported a name is reserved with O_EXCL and
// then renamed over.
func place(tmp, dir, name string) (string, error) {
	ext := filepath.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	if stem == "" {
		stem, ext = name, ""
	}
	for i := 0; i < maxTries; i++ {
		candidate := name
		if i > 0 {
			candidate = stem + " (" + strconv.Itoa(i) + ")" + ext
		}
		p := filepath.Join(dir, candidate)
		err := os.Link(tmp, p)
		if err == nil {
			_ = os.Remove(tmp)
			return p, nil
		}
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		// No hard links here: reserve the name, then rename over it.
		r, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("media: %w", err)
		}
		_ = r.Close()
		if err := os.Rename(tmp, p); err != nil {
			_ = os.Remove(p)
			return "", fmt.Errorf("media: %w", err)
		}
		return p, nil
	}
	return "", fmt.Errorf("media: no free name for %q in %s", name, dir)
}

// maxNameBytes is the longest name safeName returns; file systems allow
// 255 bytes, and " (9999)" must still fit.
const maxNameBytes = 200

// safeName makes a file name from the network safe to create in a
// directory: see Download.
func safeName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ToValidUTF8(name, "_")
	name = strings.Map(func(r rune) rune {
		switch {
		case r == 0, unicode.IsControl(r), unicode.Is(unicode.Cf, r),
			r == unicode.ReplacementChar, strings.ContainsRune(`<>:"|?*`, r),
			unicode.IsSpace(r) && r != ' ':
			return '_'
		}
		return r
	}, name)
	name = strings.Trim(name, ". ")
	if name == "" {
		return "file"
	}
	// Windows device names, with or without extension.
	stem, _, _ := strings.Cut(name, ".")
	switch strings.ToUpper(strings.TrimSpace(stem)) {
	case "CON", "PRN", "AUX", "NUL",
		"COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9",
		"LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9":
		name = "_" + name
	}
	if len(name) > maxNameBytes {
		ext := filepath.Ext(name)
		if len(ext) > 16 || !utf8.ValidString(ext) {
			ext = ""
		}
		stem := name[:len(name)-len(ext)]
		cut := maxNameBytes - len(ext)
		for cut > 0 && !utf8.RuneStart(stem[cut]) {
			cut--
		}
		name = strings.TrimRight(stem[:cut], ". ") + ext
	}
	return name
}
