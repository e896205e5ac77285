package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"mellium.im/omemo/media"
	"mellium.im/xmpp/jid"
)

// fileName is the name of the file alice shares.
const fileName = "omemo-demo.txt"

// maxDownload is the download limit of bob's client: the demo's file is a
// few hundred bytes.
const maxDownload = 1 << 20

// newHTTPClient returns the client for the HTTPS upload and download:
// TLS 1.2 or later, the certificate verified unless insecure
// (-insecure-skip-verify, for the self-signed certificate of a local test
// server), time limits on connecting, the TLS handshake and the response
// headers.
func newHTTPClient(insecure bool) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSClientConfig = &tls.Config{
		// #nosec G402 -- only with -insecure-skip-verify, for a local test server.
		InsecureSkipVerify: insecure,
		MinVersion:         tls.VersionTLS12,
	}
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = 30 * time.Second
	return &http.Client{Transport: t}
}

// discoverUpload finds the HTTP File Upload service of c's server.
func discoverUpload(c *client, timeout time.Duration) (media.Service, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	svc, err := media.Discover(ctx, c.s)
	if errors.Is(err, media.ErrNoService) {
		return svc, fmt.Errorf("the server %s offers no HTTP File Upload service (XEP-0363), which the file step of the demo needs: enable Prosody's mod_http_file_share (the servers of docker-compose.yml and scripts/demo.sh have it)", c.s.LocalAddr().Domain())
	}
	if err != nil {
		return svc, fmt.Errorf("%s: looking for the HTTP File Upload service: %w", c.name, err)
	}
	return svc, nil
}

func describeService(svc media.Service) string {
	limit := "no size limit announced"
	if svc.MaxSize > 0 {
		limit = "files up to " + byteSize(svc.MaxSize)
	}
	return fmt.Sprintf("%s (HTTP File Upload, %s)", svc.JID, limit)
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// demoFile returns the text alice shares: a few hundred bytes, different
// on every run.
func demoFile(from *client) ([]byte, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s: a file shared with mellium.im/omemo's demo.\n", fileName)
	fmt.Fprintf(&b, "Written by %s, OMEMO device %d, at %s.\n", from.name, from.deviceID(), time.Now().UTC().Format(time.RFC3339))
	b.WriteString("It was encrypted with AES-256-GCM under a fresh key before it left the\n")
	b.WriteString("device; the upload service stores only the ciphertext. The key travels\n")
	b.WriteString("in an aesgcm:// link inside an OMEMO message (XEP-0454).\n")
	fmt.Fprintf(&b, "Random, so that no two runs share a file: %x\n", nonce)
	return b.Bytes(), nil
}

// fileStep is the last step of the script: from shares a file with to;
// every client in expect must decrypt the link, downloader fetches and
// checks the file.
type fileStep struct {
	from       *client
	to         jid.JID
	expect     []*client
	downloader *client
}

// shareFile runs the file step. It returns the number of decrypted links.
func shareFile(w io.Writer, st fileStep, svc media.Service, hc *http.Client, timeout time.Duration, names map[uint32]string, keys map[[32]byte]string, fingerprints map[string]string) (int, error) {
	content, err := demoFile(st.from)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(content)
	fmt.Fprintf(w, "  shares the file %q (%d bytes of text, sha256 %s)\n", fileName, len(content), hex.EncodeToString(sum[:]))

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	res, sent, err := st.from.p.SendFile(ctx, st.to, bytes.NewReader(content), int64(len(content)), fileName,
		&media.UploadOptions{HTTPClient: hc, Service: &svc})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("%s: sharing %s: %w", st.from.name, fileName, err)
	}
	if sent.Size != int64(len(content)) || sent.SHA256 != sum {
		return 0, fmt.Errorf("%s: SendFile reports %d bytes, sha256 %x; the file has %d bytes, sha256 %x", st.from.name, sent.Size, sent.SHA256, len(content), sum)
	}
	fmt.Fprintf(w, "  encrypted it with a fresh AES-256-GCM key and uploaded the ciphertext (%d bytes) to %s over HTTPS\n", sent.Size+media.TagSize, svc.JID)
	fmt.Fprintf(w, "  sent the aesgcm:// link (URL, key and IV) in an OMEMO message, encrypted for %s\n", describeRecipients(res.Recipients, names))
	for _, f := range res.Failures {
		fmt.Fprintf(w, "  could not encrypt for %s device %d: %v\n", f.JID, f.DeviceID, f.Err)
	}
	printWire(w, st.from, res.ID)

	// Every decrypted link carries the key: wipe them all when done.
	var links []*media.Link
	defer func() {
		for _, l := range links {
			l.Wipe()
		}
	}()
	var link *media.Link
	for _, rc := range st.expect {
		m, err := rc.expect(timeout)
		if err != nil {
			return 0, err
		}
		if m.File == nil {
			return 0, fmt.Errorf("%s decrypted a message that is not the link of %s", rc.name, fileName)
		}
		links = append(links, m.File)
		sender := keys[m.IdentityKey]
		if sender != st.from.name || names[m.SenderDevice] != st.from.name {
			return 0, fmt.Errorf("%s: file link attributed to device %d with identity key of %q, want %s", rc.name, m.SenderDevice, sender, st.from.name)
		}
		if rc == st.downloader {
			link = m.File
		}
		what := fmt.Sprintf("the link of %q on %s (its key and IV not shown)", m.File.Name(), m.File.Host())
		printDecrypted(w, rc.name, what, m, names, fingerprints[sender])
	}
	if link == nil {
		return 0, fmt.Errorf("%s is not among the recipients of the file", st.downloader.name)
	}

	dir, err := os.MkdirTemp("", "omemo-demo-download-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel = context.WithTimeout(context.Background(), timeout)
	got, err := media.Download(ctx, link, dir, &media.DownloadOptions{HTTPClient: hc, MaxSize: maxDownload})
	cancel()
	if err != nil {
		return 0, fmt.Errorf("%s: downloading %s: %w", st.downloader.name, fileName, err)
	}
	fmt.Fprintf(w, "  %s downloaded the ciphertext from %s, verified the GCM tag and decrypted it\n", st.downloader.name, link.Host())
	fmt.Fprintf(w, "      into a temporary directory as %q: %d bytes, sha256 %s\n", got.Name, got.Size, hex.EncodeToString(got.SHA256[:]))
	onDisk, err := os.ReadFile(got.Path)
	if err != nil {
		return 0, fmt.Errorf("%s: reading the downloaded file: %w", st.downloader.name, err)
	}
	if got.SHA256 != sent.SHA256 || got.Size != sent.Size || !bytes.Equal(onDisk, content) {
		return 0, fmt.Errorf("%s: the downloaded file (%d bytes, sha256 %x) differs from the one %s shared (%d bytes, sha256 %x)", st.downloader.name, got.Size, got.SHA256, st.from.name, sent.Size, sent.SHA256)
	}
	fmt.Fprintf(w, "      the same SHA-256 as %s's SendFile reported; the first line reads %q\n", st.from.name, firstLine(onDisk))
	fmt.Fprintf(w, "      the key travelled only inside the OMEMO message: the server stored and served ciphertext\n")
	return len(st.expect), nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}
