// Package media shares files end-to-end encrypted the way OMEMO clients do
// (XEP-0454, OMEMO Media Sharing): the file is encrypted with a fresh key,
// uploaded through the server's HTTP File Upload service (XEP-0363), and the
// key travels in an aesgcm:// URL that is sent as the body of an OMEMO
// message.
//
// Sending: Upload takes an *xmpp.Session, a reader and its size, and returns
// a *Link whose Body is the message body to encrypt and send, with the
// file's name, size and SHA-256. Receiving: ParseBody turns a decrypted
// message body into a *Link (or an error matching ErrInvalidLink for an
// ordinary message), and Download fetches, decrypts and stores the file.
//
//	link, file, err := media.Upload(ctx, session, f, size, "photo.jpg", nil)
//	// send link.Body() in an OMEMO message, then link.Wipe()
//
//	link, err := media.ParseBody(body) // a received, decrypted body
//	file, err := media.Download(ctx, link, dir, &media.DownloadOptions{MaxSize: 100 << 20})
//
// # Security properties
//
//   - Every file gets its own key and IV, 32 and 12 bytes from crypto/rand,
//     and is encrypted with AES-256-GCM; the 16-byte tag is appended to the
//     ciphertext. Nothing is ever encrypted twice under one key.
//   - The upload server and anyone on the network path see the ciphertext,
//     its size (plaintext + 16 bytes), the file name given to Upload (it is
//     part of the URL), the uploader's JID and the times of upload and
//     downloads; never the key or the plaintext. The key reaches the
//     recipients only inside the OMEMO message, so its confidentiality and
//     authenticity are those of the OMEMO session.
//   - A Link (and the body string) is a bearer secret: whoever has it can
//     fetch and decrypt the file. Links print redacted with the fmt package
//     (only the host shows), the key type never prints, and no error of the
//     package contains a URL, a key or a message body. Clients must not turn
//     aesgcm URLs into clickable links (XEP-0454 §7).
//   - Only https URLs are used: a slot with a non-https PUT or GET URL is
//     refused (ErrNotHTTPS), as is a redirect to a non-https URL
//     (ErrInsecureRedirect); the default HTTP client requires TLS 1.2.
//   - A downloaded file is authenticated as a whole before it appears: the
//     plaintext is decrypted while it streams into a hidden temporary file
//     (mode 0600) in the destination directory, and only if the GCM tag
//     verifies is the file moved to its final name; on any failure (wrong
//     tag, truncation, extra bytes, limit exceeded, HTTP error, stall,
//     cancellation) the temporary file is removed. Until then the partial
//     plaintext exists only in that temporary file.
//   - File names from the network are reduced to a safe base name (no path
//     elements, "..", NUL, control or bidirectional-formatting characters),
//     and an existing file is never overwritten.
//   - Memory use is constant: a file of any size (up to GCM's limit of
//     64 GiB) is encrypted, uploaded, downloaded and decrypted in streams,
//     with buffers of a few tens of KiB. The encrypted size is known in
//     advance, so the upload has a Content-Length.
//   - Downloads have a size limit (DownloadOptions.MaxSize), uploads are
//     checked against the service's max-file-size before anything is sent,
//     and a transfer that makes no progress for a while fails (ErrStalled).
//
// Limits of the scheme itself: GCM is not key-committing, so a malicious
// sender could craft a file that decrypts (to different contents) under two
// keys; the SHA-256 in File is of what was actually received. Links with a
// 16-byte IV, as older clients send, are accepted for download; Upload
// always uses 12 bytes. The GCM implementation (mellium.im/omemo's internal
// gcmstream) streams, which crypto/cipher cannot; its GHASH is constant
// time (no table lookups or branches that depend on the key or the data),
// so it does not leak the hash key through cache timing to code running on
// the same machine.
package media // import "mellium.im/omemo/media"
