package media

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"mellium.im/omemo/internal/gcmstream"
	"mellium.im/xmpp"
	"mellium.im/xmpp/disco"
	"mellium.im/xmpp/disco/items"
	"mellium.im/xmpp/jid"
	"mellium.im/xmpp/stanza"
	"mellium.im/xmpp/upload"
)

// TagSize is the number of bytes encryption adds to a file: the GCM tag
// appended to the ciphertext.
const TagSize = gcmstream.TagSize

// MaxFileSize is the largest file GCM can encrypt with one key and IV.
const MaxFileSize = gcmstream.MaxSize

// contentType is the type of every upload: the server sees ciphertext.
const contentType = "application/octet-stream"

// maxProbe bounds the number of disco#items entries Discover asks for
// their features.
const maxProbe = 32

// File describes a file that was uploaded or downloaded.
type File struct {
	// Path is where Download put the file; "" for Upload.
	Path string
	// Name is the file name: as sent in the slot request (Upload) or as
	// stored (Download), made safe (see Download).
	Name string
	// Size is the size of the plaintext in bytes.
	Size int64
	// SHA256 is the SHA-256 digest of the plaintext.
	SHA256 [sha256.Size]byte
}

// Service is an HTTP File Upload (XEP-0363) service.
type Service struct {
	// JID is the address of the service.
	JID jid.JID
	// MaxSize is the largest file the service accepts in bytes
	// (max-file-size), or 0 if it announces no limit.
	MaxSize int64
}

// Discover finds the HTTP File Upload service of the session's server:
// the server itself if it advertises urn:xmpp:http:upload:0, otherwise the
// first of its disco#items that does, with its max-file-size.
// It returns ErrNoService if there is none.
func Discover(ctx context.Context, s *xmpp.Session) (Service, error) {
	domain := s.LocalAddr().Domain()
	svc, ok, err := probe(ctx, s, domain)
	if err != nil {
		return Service{}, fmt.Errorf("media: disco#info %s: %w", domain, err)
	}
	if ok {
		return svc, nil
	}
	var candidates []jid.JID
	iter := disco.FetchItems(ctx, items.Item{JID: domain}, s)
	for iter.Next() && len(candidates) < maxProbe {
		if it := iter.Item(); it.Node == "" && !it.JID.Equal(domain) {
			candidates = append(candidates, it.JID)
		}
	}
	err = iter.Err()
	if cerr := iter.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Service{}, fmt.Errorf("media: disco#items %s: %w", domain, err)
	}
	for _, j := range candidates {
		// An item that does not answer is not the upload service.
		if svc, ok, err := probe(ctx, s, j); err == nil && ok {
			return svc, nil
		}
		if ctx.Err() != nil {
			return Service{}, ctx.Err()
		}
	}
	return Service{}, ErrNoService
}

// probe asks j for its features and reads max-file-size from the form of
// type urn:xmpp:http:upload:0.
func probe(ctx context.Context, s *xmpp.Session, j jid.JID) (Service, bool, error) {
	info, err := disco.GetInfo(ctx, "", j, s)
	if err != nil {
		return Service{}, false, err
	}
	found := false
	for _, f := range info.Features {
		if f.Var == upload.NS {
			found = true
		}
	}
	if !found {
		return Service{}, false, nil
	}
	svc := Service{JID: j}
	for i := range info.Form {
		f := &info.Form[i]
		if typ, _ := f.GetString("FORM_TYPE"); typ != upload.NS {
			continue
		}
		if v, ok := f.Raw("max-file-size"); ok && len(v) == 1 {
			if n, err := strconv.ParseInt(strings.TrimSpace(v[0]), 10, 64); err == nil && n > 0 {
				svc.MaxSize = n
			}
		}
	}
	return svc, true, nil
}

// UploadOptions are the options of Upload; the zero value (or nil) uses
// the defaults.
type UploadOptions struct {
	// HTTPClient does the PUT; nil means a default client with time
	// limits (see DefaultIdleTimeout). A redirect to a non-https URL is
	// refused whatever the client's policy.
	HTTPClient *http.Client
	// Service is the upload service; nil means Discover. Callers that
	// upload many files can Discover once and pass the result.
	Service *Service
	// Progress, if not nil, is called as the encrypted file goes out, with
	// the bytes sent so far and the total (the size plus TagSize). It is
	// called from the HTTP transport's goroutine and must return quickly;
	// it is not called after Upload returned.
	Progress func(done, total int64)
	// IdleTimeout is how long the upload may make no progress before it
	// fails with ErrStalled: 0 means DefaultIdleTimeout, a negative value
	// no limit (the context still applies).
	IdleTimeout time.Duration
	// Thumbnail is an optional JPEG of at most MaxThumbnailSize bytes to
	// embed in the message body (XEP-0454 §4); it travels only in the
	// encrypted message.
	Thumbnail []byte
}

// Upload encrypts the size bytes read from r with a fresh random key and
// IV (AES-256-GCM, XEP-0454) and uploads them through HTTP File Upload
// (XEP-0363): it requests a slot for the name and the encrypted size
// (size + TagSize) from the upload service, then PUTs the ciphertext and
// the tag with that Content-Length and the slot's Authorization, Cookie
// and Expires headers, streaming: memory use does not depend on size.
//
// A file whose encrypted size exceeds the service's max-file-size is
// refused with ErrFileTooLarge before anything is uploaded. r must yield
// exactly size bytes (else ErrSizeMismatch, and the server never gets a
// complete file); Upload does not read from r after it returned.
//
// The name goes to the upload service in the slot request (made safe as
// in Download) and usually becomes the last segment of the URL: the
// server and anyone who gets the link see it. The returned Link's Body is
// the message body to send in an OMEMO message; File has the name, size
// and SHA-256 of the plaintext.
func Upload(ctx context.Context, s *xmpp.Session, r io.Reader, size int64, name string, opts *UploadOptions) (*Link, File, error) {
	if opts == nil {
		opts = &UploadOptions{}
	}
	if size < 0 {
		return nil, File{}, fmt.Errorf("media: negative size %d", size)
	}
	if size > MaxFileSize {
		return nil, File{}, fmt.Errorf("%w: %d bytes exceed GCM's limit of %d", ErrFileTooLarge, size, int64(MaxFileSize))
	}
	if opts.Thumbnail != nil && checkJPEG(opts.Thumbnail) != nil {
		return nil, File{}, ErrBadThumbnail
	}
	name = safeName(name)
	total := size + TagSize
	if total > math.MaxInt {
		return nil, File{}, fmt.Errorf("%w: %d bytes do not fit an int on this platform", ErrFileTooLarge, total)
	}

	var svc Service
	if opts.Service != nil {
		svc = *opts.Service
	} else {
		var err error
		if svc, err = Discover(ctx, s); err != nil {
			return nil, File{}, err
		}
	}
	if svc.MaxSize > 0 && total > svc.MaxSize {
		return nil, File{}, fmt.Errorf("%w: %d bytes encrypted, the service accepts at most %d", ErrFileTooLarge, total, svc.MaxSize)
	}

	slot, err := upload.GetSlot(ctx, upload.File{Name: name, Size: int(total), Type: contentType}, svc.JID, s)
	if err != nil {
		var se stanza.Error
		if errors.As(err, &se) {
			return nil, File{}, fmt.Errorf("%w: %w", ErrSlotRefused, se)
		}
		return nil, File{}, fmt.Errorf("media: slot request: %w", err)
	}
	if slot.PutURL == nil || slot.PutURL.Scheme != "https" || slot.PutURL.Host == "" {
		return nil, File{}, fmt.Errorf("%w: PUT URL", ErrNotHTTPS)
	}
	sec, err := newSecret()
	if err != nil {
		return nil, File{}, err
	}
	defer sec.wipe()
	link, err := newLink(slot.GetURL, sec, opts.Thumbnail)
	if err != nil {
		if errors.Is(err, ErrNotHTTPS) {
			return nil, File{}, fmt.Errorf("%w: GET URL", ErrNotHTTPS)
		}
		return nil, File{}, fmt.Errorf("%w: unusable GET URL: %w", ErrSlotRefused, err)
	}

	plain := &sizedReader{r: r, left: size, h: sha256.New()}
	f, err := put(ctx, slot, plain, &sec, total, opts)
	if err != nil {
		link.Wipe()
		return nil, File{}, err
	}
	f.Name = name
	f.Size = size
	return link, f, nil
}

// put encrypts plain with sec and PUTs the result (total bytes) to the
// slot.
func put(ctx context.Context, slot upload.Slot, plain *sizedReader, sec *secret, total int64, opts *UploadOptions) (File, error) {
	c, err := gcmstream.New(sec.key[:], sec.iv[:sec.ivLen], nil)
	if err != nil {
		return File{}, err
	}
	defer c.Wipe()

	ctx, wd, cancel := newWatchdog(ctx, opts.IdleTimeout)
	defer cancel(nil)
	defer wd.stop()
	body := &meter{
		ctx:      ctx,
		r:        gcmstream.NewSealer(c, plain),
		total:    total,
		progress: opts.Progress,
		wd:       wd,
		// Once the body is out the server has to store it: the
		// transport's response header timeout (or the context) applies.
		atEOF: wd.stop,
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, slot.PutURL.String(), body)
	if err != nil {
		return File{}, stripURL(err)
	}
	req.ContentLength = total
	req.Header.Set("Content-Type", contentType)
	// XEP-0363 §4: only these headers, newlines stripped, values in order.
	for _, h := range []string{"Authorization", "Cookie", "Expires"} {
		for _, v := range slot.Header.Values(h) {
			req.Header.Add(h, strings.NewReplacer("\r", "", "\n", "").Replace(v))
		}
	}
	if opts.Progress != nil {
		opts.Progress(0, total)
	}
	resp, err := httpClient(opts.HTTPClient).Do(req)
	bodyErr := body.finish()
	if err != nil {
		return File{}, fmt.Errorf("media: PUT: %w", transferError(ctx, err, bodyErr))
	}
	drain(resp.Body)
	if bodyErr != nil {
		return File{}, bodyErr
	}
	if resp.StatusCode/100 != 2 {
		return File{}, &StatusError{Method: http.MethodPut, StatusCode: resp.StatusCode}
	}
	if body.n != total {
		// The server answered before it had the whole body.
		return File{}, fmt.Errorf("media: PUT: server answered %d after %d of %d bytes", resp.StatusCode, body.n, total)
	}
	var f File
	plain.h.Sum(f.SHA256[:0])
	return f, nil
}

// sizedReader reads exactly left bytes from r, hashing them, and fails
// with ErrSizeMismatch if r ends early or has more.
type sizedReader struct {
	r    io.Reader
	left int64
	h    hash.Hash
	eof  bool
}

func (s *sizedReader) Read(p []byte) (int, error) {
	if s.eof {
		return 0, io.EOF
	}
	if s.left == 0 {
		// The size is reached: r must be at its end.
		var one [1]byte
		for i := 0; i < 100; i++ {
			n, err := s.r.Read(one[:])
			if n > 0 {
				return 0, fmt.Errorf("%w: the reader has more bytes", ErrSizeMismatch)
			}
			if err == io.EOF {
				s.eof = true
				return 0, io.EOF
			}
			if err != nil {
				return 0, err
			}
		}
		return 0, io.ErrNoProgress
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.h.Write(p[:n])
	s.left -= int64(n)
	if err == io.EOF {
		if s.left > 0 {
			return n, fmt.Errorf("%w: the reader ended %d bytes early", ErrSizeMismatch, s.left)
		}
		s.eof = true
		if n > 0 {
			return n, nil
		}
	}
	return n, err
}
