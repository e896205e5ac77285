package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/media"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/store"
)

// Encrypted files between the plugin and a python-omemo client that
// implements XEP-0454 on its own (cryptography's AESGCM): the Go side
// uploads and the Python side downloads and decrypts, and the other way
// round, over Prosody's HTTP File Upload, for both OMEMO namespaces.
func TestIntegrationPythonFiles(t *testing.T) {
	requireSlixmpp(t)
	prosodytest.Require(t)
	cases := []struct {
		name, goUser, pyUser string
		pyBackends           []string
	}{
		{"omemo2", "goa", "pya", []string{ns.OMEMO2, ns.Legacy}},
		{"legacy", "gob", "pyb", []string{ns.Legacy}},
	}
	pys := make([]*pyClient, len(cases))
	var users []prosodytest.User
	for i, c := range cases {
		pys[i] = startPython(t, c.pyUser)
		users = append(users, prosodytest.User{Name: c.goUser, Contacts: []string{c.pyUser}}, prosodytest.User{Name: c.pyUser})
	}
	srv := prosodytest.StartWithUpload(t, users...)
	cafile := filepath.Join(srv.Dir, prosodytest.Domain+".crt")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			py := pys[i]
			py.connect(t, srv, c.pyUser, c.pyBackends...)
			gc := connect(t, srv, c.goUser, store.NewMemory(), omemo.Config{SendPresence: true}, true)
			pyJID, goJID := srv.JID(c.pyUser), srv.JID(c.goUser)
			for _, size := range []int{0, 1 << 10, 300 << 10} {
				data := make([]byte, size)
				_, _ = rand.Read(data)
				sum := sha256.Sum256(data)

				// Go → Python.
				_, file, err := gc.p.SendFile(ctx, pyJID, bytes.NewReader(data), int64(size), fmt.Sprintf("go-%d.bin", size),
					&media.UploadOptions{HTTPClient: srv.HTTPClient(t)})
				if err != nil {
					t.Fatal(err)
				}
				if file.SHA256 != sum {
					t.Fatal("upload hashed something else")
				}
				ev := py.expect(t)
				if !strings.HasPrefix(ev.Body, "aesgcm://") || ev.Namespace != c.pyBackends[0] {
					t.Fatalf("python got %.20q… over %s", ev.Body, ev.Namespace)
				}
				out := filepath.Join(t.TempDir(), "from-go")
				got := py.request(t, map[string]any{"op": "download", "url": ev.Body, "path": out, "cafile": cafile}, pyReqTimeout)
				if got.Event != "downloaded" || got.Size != int64(size) || got.SHA256 != hex.EncodeToString(sum[:]) {
					t.Fatalf("python downloaded %s", got.raw)
				}

				// Python → Go.
				in := filepath.Join(t.TempDir(), fmt.Sprintf("py-%d.bin", size))
				if err := os.WriteFile(in, data, 0o600); err != nil {
					t.Fatal(err)
				}
				sent := py.request(t, map[string]any{"op": "send_file", "to": goJID.String(), "path": in,
					"service": prosodytest.UploadDomain, "cafile": cafile}, pyReqTimeout)
				if sent.Event != "sent_file" || sent.SHA256 != hex.EncodeToString(sum[:]) {
					t.Fatalf("python send_file answered %s", sent.raw)
				}
				m := gc.expect(30 * time.Second)
				if m.File == nil {
					t.Fatalf("go got no file (%s)", m.Namespace)
				}
				dir := t.TempDir()
				f, err := media.Download(ctx, m.File, dir, &media.DownloadOptions{HTTPClient: srv.HTTPClient(t)})
				m.File.Wipe()
				if err != nil {
					t.Fatal(err)
				}
				if f.SHA256 != sum || f.Size != int64(size) || f.Name != filepath.Base(in) {
					t.Fatalf("go downloaded %+v", f)
				}
			}
		})
	}
}
