package media

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
)

// Errors of ParseBody (and of Upload for a slot URL it cannot turn into a
// link). Every one of them also matches ErrInvalidLink.
var (
	// ErrInvalidLink matches every error about a body that is not an
	// OMEMO media sharing link: a client shows such a body as text.
	ErrInvalidLink = errors.New("media: not an aesgcm link")
	// ErrNotAESGCM: the body does not start with "aesgcm://" (http://,
	// https://, any other text).
	ErrNotAESGCM = errors.New("media: not an aesgcm:// URL")
	// ErrMissingFragment: the aesgcm URL has no "#" with the IV and key.
	ErrMissingFragment = errors.New("media: aesgcm URL without key fragment")
	// ErrFragmentLength: the fragment is not 88 (12-byte IV) or 96
	// (16-byte IV) characters long.
	ErrFragmentLength = errors.New("media: key fragment is not 88 or 96 hex digits")
	// ErrFragmentHex: the fragment has a character that is not a hex digit.
	ErrFragmentHex = errors.New("media: key fragment is not hexadecimal")
	// ErrTrailingText: there is text besides the URL and the thumbnail:
	// white space, a second line that is not a thumbnail, a third line.
	ErrTrailingText = errors.New("media: text besides the aesgcm URL")
	// ErrBadURL: the URL is malformed (no host, user info, a character
	// that must be percent-encoded, a bad escape or port).
	ErrBadURL = errors.New("media: malformed aesgcm URL")
	// ErrBadThumbnail: the second line is a data: URI but not a base64
	// JPEG of at most MaxThumbnailSize bytes.
	ErrBadThumbnail = errors.New("media: malformed thumbnail data URI")
)

// Errors of Upload and Download.
var (
	// ErrNotHTTPS: an upload slot URL (PUT or GET) or a URL to fetch is not
	// https; XEP-0454 forbids turning it into an aesgcm URL.
	ErrNotHTTPS = errors.New("media: URL is not https")
	// ErrNoService: the server offers no HTTP File Upload (XEP-0363)
	// service.
	ErrNoService = errors.New("media: no HTTP File Upload service")
	// ErrFileTooLarge: the encrypted file would be larger than the upload
	// service's max-file-size, or larger than GCM allows; nothing was
	// uploaded.
	ErrFileTooLarge = errors.New("media: file larger than the upload service accepts")
	// ErrSlotRefused: the upload service refused the slot request, or
	// answered with an unusable slot. A stanza error from the service is
	// wrapped too (errors.As with stanza.Error).
	ErrSlotRefused = errors.New("media: upload slot refused")
	// ErrSizeMismatch: the reader given to Upload had fewer or more bytes
	// than the size given with it; the upload was aborted before the
	// server got a complete file.
	ErrSizeMismatch = errors.New("media: reader size differs from the given size")
	// ErrHTTPStatus: the HTTP server answered with an unexpected status;
	// the error is a *StatusError.
	ErrHTTPStatus = errors.New("media: unexpected HTTP status")
	// ErrInsecureRedirect: the HTTP server redirected to a non-https URL.
	ErrInsecureRedirect = errors.New("media: redirect to a non-https URL")
	// ErrStalled: no data moved for the idle timeout.
	ErrStalled = errors.New("media: transfer stalled")
	// ErrLimitExceeded: the file to download is larger than the limit (as
	// announced by Content-Length or as it arrives).
	ErrLimitExceeded = errors.New("media: download larger than the limit")
	// ErrTruncated: the download ended before the announced length, or
	// is shorter than a tag.
	ErrTruncated = errors.New("media: download truncated")
	// ErrAuthentication: the downloaded file failed GCM authentication: a
	// wrong key, or a file modified, truncated or extended on the server
	// or on the way.
	ErrAuthentication = errors.New("media: file failed authentication")
	// ErrWiped: the link's key was wiped.
	ErrWiped = errors.New("media: link key was wiped")
)

// linkError is a parse error: it matches its kind and ErrInvalidLink.
type linkError struct{ kind error }

func (e *linkError) Error() string { return e.kind.Error() }

func (e *linkError) Is(target error) bool {
	return target == ErrInvalidLink || target == e.kind
}

func invalid(kind error) error { return &linkError{kind} }

// StatusError is the error for an unexpected HTTP status; it matches
// ErrHTTPStatus.
type StatusError struct {
	// Method is the HTTP method, "PUT" or "GET".
	Method string
	// StatusCode is the status the server answered with.
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("media: %s: unexpected HTTP status %d %s", e.Method, e.StatusCode, http.StatusText(e.StatusCode))
}

// Is reports whether target is ErrHTTPStatus.
func (e *StatusError) Is(target error) bool { return target == ErrHTTPStatus }

// stripURL removes the *url.Error layer net/http puts around request
// errors: it repeats the URL, and errors of this package never carry one.
func stripURL(err error) error {
	var ue *url.Error
	for errors.As(err, &ue) {
		err = ue.Err
	}
	return err
}
