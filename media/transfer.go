package media

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// DefaultIdleTimeout is how long a transfer may make no progress before it
// fails with ErrStalled, unless the options say otherwise.
const DefaultIdleTimeout = time.Minute

// bufSize is the size of the copy buffers.
const bufSize = 64 << 10

// defaultClient is the HTTP client used when the options give none: the
// default transport's proxy and dialer settings, TLS 1.2 or later, time
// limits on every step that does not depend on the file size (dial 30 s,
// TLS handshake 15 s, response headers 60 s after the request was sent)
// and no overall time limit, which would cut large files short; stalls
// are caught by the idle timeout instead.
var defaultClient = sync.OnceValue(func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = 60 * time.Second
	t.ExpectContinueTimeout = time.Second
	return &http.Client{Transport: t}
})

// httpClient returns a shallow copy of c (or of the default client) whose
// redirect policy refuses non-https targets before applying c's own.
func httpClient(c *http.Client) *http.Client {
	if c == nil {
		c = defaultClient()
	}
	cc := *c
	next := c.CheckRedirect
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "https" {
			return ErrInsecureRedirect
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("media: stopped after 10 redirects")
		}
		return nil
	}
	return &cc
}

// watchdog cancels a context with ErrStalled when it was not kicked for
// its timeout.
type watchdog struct {
	t *time.Timer
	d time.Duration
}

// newWatchdog returns a context that is cancelled with cause ErrStalled
// after d without kick, and the watchdog; d < 0 disables it, 0 means
// DefaultIdleTimeout. stop must be called.
func newWatchdog(ctx context.Context, d time.Duration) (context.Context, *watchdog, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(ctx)
	if d == 0 {
		d = DefaultIdleTimeout
	}
	w := &watchdog{d: d}
	if d > 0 {
		w.t = time.AfterFunc(d, func() { cancel(ErrStalled) })
	}
	return ctx, w, cancel
}

func (w *watchdog) kick() {
	if w.t != nil {
		w.t.Reset(w.d)
	}
}

func (w *watchdog) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// transferError turns an error of an HTTP exchange into the error to
// return: the body's own error if it failed, ErrStalled if the watchdog
// fired, and the error without the URL net/http put in it otherwise.
func transferError(ctx context.Context, err, bodyErr error) error {
	if bodyErr != nil {
		return bodyErr
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrStalled) {
		return ErrStalled
	}
	return stripURL(err)
}

// meter counts the bytes read through it, kicks the watchdog, reports
// progress and, with a positive max, fails with ErrLimitExceeded beyond
// max bytes. It is safe for a Read on another goroutine (the HTTP
// transport's) racing with finish: after finish returned, it neither reads
// from r nor calls progress again.
type meter struct {
	mu       sync.Mutex
	ctx      context.Context
	r        io.Reader
	n, total int64
	max      int64
	progress func(done, total int64)
	wd       *watchdog
	atEOF    func() // called once at EOF (under the lock)
	err      error  // the first error other than io.EOF
	finished bool
}

var errFinished = errors.New("media: transfer finished")

func (m *meter) Read(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.finished {
		return 0, errFinished
	}
	if m.err != nil {
		return 0, m.err
	}
	// A cancelled transfer stops here even if data is still buffered.
	if err := context.Cause(m.ctx); err != nil {
		m.err = err
		return 0, err
	}
	n, err := m.r.Read(p)
	if n > 0 {
		m.n += int64(n)
		if m.max > 0 && m.n > m.max {
			m.err = ErrLimitExceeded
			return 0, m.err
		}
		m.wd.kick()
		if m.progress != nil {
			m.progress(m.n, m.total)
		}
	}
	switch {
	case err == io.EOF:
		if m.atEOF != nil {
			m.atEOF()
			m.atEOF = nil
		}
	case err != nil:
		m.err = err
	}
	return n, err
}

// Close implements io.Closer for http.Request.Body; the transport calls it
// when done with the body.
func (m *meter) Close() error { return nil }

// finish waits for a Read in progress and makes later ones fail; it
// returns the first error of the underlying reader, if any.
func (m *meter) finish() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.finished = true
	return m.err
}

// drain reads and discards at most 64 KiB of a response body, so that the
// connection can be reused, and closes it.
func drain(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 64<<10)
	_ = body.Close()
}
