package main

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
)

// testFile is a file the tests send.
type testFile struct {
	name string
	data []byte
	path string
}

func (f testFile) sha() string {
	sum := sha256.Sum256(f.data)
	return hex.EncodeToString(sum[:])
}

// recorder keeps every process of a test, to scan all their output.
type recorder struct {
	mu    sync.Mutex
	procs []*proc
}

func (r *recorder) add(p *proc) *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.procs = append(r.procs, p)
	return p
}

// secretRE matches what must never be printed: an aesgcm link, a URL
// fragment of hex digits, or a run of hex digits as long as an IV and a
// key.
var secretRE = regexp.MustCompile(`aesgcm://|#[0-9a-fA-F]{24,}|[0-9a-fA-F]{88,}`)

// checkSecrets fails the test if the output of a process shows a key: a
// match of secretRE or one of the given secrets (hex keys the test made).
func (r *recorder) checkSecrets(t *testing.T, secrets ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		all := strings.Join(p.stdout(), "\n") + "\n" + p.stderr.String()
		if m := secretRE.FindString(all); m != "" {
			t.Errorf("%v printed %q:\n%s", p.cmd.Args[1:], m, all)
		}
		for _, s := range secrets {
			if strings.Contains(strings.ToLower(all), strings.ToLower(s)) {
				t.Errorf("%v printed a key:\n%s", p.cmd.Args[1:], all)
			}
		}
		// stderr is a pipe: no progress bar.
		if strings.Contains(p.stderr.String(), "\r") {
			t.Errorf("%v drew a progress bar on a pipe:\n%q", p.cmd.Args[1:], p.stderr)
		}
	}
}

// runOK runs a command to completion and fails the test unless it exits
// with 0; it returns the process.
func (c *cli) runOK(t *testing.T, r *recorder, args ...string) *proc {
	t.Helper()
	p := r.add(c.start(t, args...))
	_ = p.stdin.Close()
	if code := p.wait(60 * time.Second); code != 0 {
		t.Fatalf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", args, code, strings.Join(p.stdout(), "\n"), p.stderr)
	}
	return p
}

// withoutInsecure returns args without -insecure-skip-verify.
func withoutInsecure(args []string) []string {
	return slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "-insecure-skip-verify" })
}

// dirNames lists a directory.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// checkSaved checks a downloaded file's line against the file sent.
func checkSaved(t *testing.T, got *fileJSON, want testFile, dir string) {
	t.Helper()
	if got == nil || got.Path == "" || got.Size == nil || got.URL != "" || got.Error != "" {
		t.Fatalf("file %+v, want it downloaded", got)
	}
	if got.Name != want.name || *got.Size != int64(len(want.data)) || got.SHA256 != want.sha() ||
		filepath.Dir(got.Path) != dir || filepath.Base(got.Path) != want.name {
		t.Fatalf("file %+v (size %d), want %s, %d bytes, sha256 %s in %s", got, *got.Size, want.name, len(want.data), want.sha(), dir)
	}
	b, err := os.ReadFile(got.Path)
	if err != nil || !bytes.Equal(b, want.data) {
		t.Fatalf("saved file %s differs from the one sent (%v)", got.Path, err)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != got.SHA256 {
		t.Fatalf("printed sha256 %s, the saved file's is %x", got.SHA256, sum)
	}
}

// checkLink checks the file of a message that was not downloaded.
func checkLink(t *testing.T, got *fileJSON, name string) {
	t.Helper()
	if got == nil || got.Name != name || got.Path != "" || got.Size != nil || got.SHA256 != "" || got.Error != "" ||
		!strings.HasPrefix(got.URL, "https://localhost:") || strings.Contains(got.URL, "#") || !strings.Contains(got.URL, "/file_share/") {
		t.Fatalf("file %+v, want the name %q and the https URL without fragment", got, name)
	}
}

// TestCLIFiles sends encrypted files (XEP-0454) from the command to the
// command through Prosody's HTTP File Upload, one to one and in a room:
// files of 0 bytes, 1 KiB and 5 MiB arrive with the SHA-256 the sender
// printed; without -download only the name and the URL are printed and
// nothing is saved; links with path tricks are saved inside the
// directory, failed downloads (bad tag, 404, an untrusted certificate)
// leave nothing; the key never shows.
func TestCLIFiles(t *testing.T) {
	began := time.Now()
	srv := prosodytest.StartWithUpload(t,
		prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"},
		prosodytest.User{Name: "carol"}, prosodytest.User{Name: "dave"},
	)
	c := &cli{bin: buildCLI(t), srv: srv}
	r := &recorder{}
	state := t.TempDir()
	src := t.TempDir()
	files := []testFile{{name: "empty.bin"}, {name: "one KiB.txt", data: make([]byte, 1<<10)}, {name: "big.bin", data: make([]byte, 5<<20)}}
	for i := range files {
		_, _ = rand.Read(files[i].data)
		files[i].path = filepath.Join(src, files[i].name)
		if err := os.WriteFile(files[i].path, files[i].data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The devices, at once.
	fps := map[string]fingerprintJSON{}
	var starts []*proc
	for _, name := range []string{"alice", "bob", "carol", "dave"} {
		starts = append(starts, r.add(c.start(t, c.args(state, name, "-json", "fingerprint")...)))
	}
	for _, p := range starts {
		if code := p.wait(30 * time.Second); code != 0 || len(p.stdout()) != 1 {
			t.Fatalf("%v: exit %d, stdout %q; stderr:\n%s", p.cmd.Args[1:], code, p.stdout(), p.stderr)
		}
		fp := decode[fingerprintJSON](t, p.stdout()[0])
		fps[strings.TrimSuffix(fp.JID, "@localhost")] = fp
	}
	t.Logf("devices after %v", time.Since(began))

	// sendFile sends a file and checks the result line.
	sendFile := func(t *testing.T, to []string, f testFile) {
		t.Helper()
		var args []string
		if len(to) == 1 {
			args = c.args(state, "alice", "-json", "send", "-to", to[0]+"@localhost", "-file", f.path)
		} else {
			args = c.args(state, "alice", "-json", "send", "-room", to[0], "-file", f.path)
		}
		p := c.runOK(t, r, args...)
		lines := p.stdout()
		if len(lines) != 1 {
			t.Fatalf("send -file printed %q", lines)
		}
		var (
			file    *fileJSON
			devices []recipientJSON
			errs    []string
			id      string
		)
		if len(to) == 1 {
			v := decode[sendJSON](t, lines[0])
			if v.To != to[0]+"@localhost" {
				t.Fatalf("send -file result %s", lines[0])
			}
			file, devices, errs, id = v.File, v.Devices, v.Errors, v.ID
		} else {
			v := decode[roomSendJSON](t, lines[0])
			if v.Room != to[0] {
				t.Fatalf("send -room -file result %s", lines[0])
			}
			file, devices, errs, id = v.File, v.Devices, v.Errors, v.ID
		}
		if id == "" || errs == nil || len(errs) != 0 || file == nil || file.Name != f.name || file.Size == nil ||
			*file.Size != int64(len(f.data)) || file.SHA256 != f.sha() || file.Path != "" || file.URL != "" {
			t.Fatalf("send -file result %s, want %s, %d bytes, sha256 %s", lines[0], f.name, len(f.data), f.sha())
		}
		var want []recipientJSON
		for _, name := range to[min(1, len(to)-1):] {
			want = append(want, recipientJSON{JID: name + "@localhost", Device: fps[name].Device, Backend: ns.OMEMO2})
		}
		slices.SortFunc(devices, func(a, b recipientJSON) int { return strings.Compare(a.JID, b.JID) })
		if !slices.Equal(devices, want) {
			t.Fatalf("send -file encrypted for %+v, want %+v", devices, want)
		}
		// The same order in the JSON as the contract.
		if len(to) == 1 && !strings.HasPrefix(lines[0], fmt.Sprintf(`{"to":"%s@localhost","id":"%s","file":{"name":`, to[0], id)) {
			t.Errorf("JSON line %s", lines[0])
		}
		if !strings.Contains(lines[0], fmt.Sprintf(`"file":{"name":%q,"size":%d,"sha256":"%s"},"devices":[`, f.name, len(f.data), f.sha())) {
			t.Errorf("JSON line %s", lines[0])
		}
	}

	t.Run("direct", func(t *testing.T) {
		down := t.TempDir()
		l := r.add(c.start(t, c.args(state, "bob", "-json", "listen", "-download", down, "-count", "3", "-for", "90s")...))
		for _, f := range files {
			sendFile(t, []string{"bob"}, f)
		}
		if code := l.wait(60 * time.Second); code != 0 {
			t.Fatalf("listen -download: exit %d; stderr:\n%s", code, l.stderr)
		}
		lines := l.stdout()
		if len(lines) != 3 {
			t.Fatalf("listen -download printed %q", lines)
		}
		t.Logf("listen -download printed:\n%s", strings.Join(lines, "\n"))
		for i, f := range files {
			m := decode[messageJSON](t, lines[i])
			if m.From != "alice@localhost" || m.Device != fps["alice"].Device || m.Body != f.name {
				t.Fatalf("received %s", lines[i])
			}
			checkSaved(t, m.File, f, down)
			if want := fmt.Sprintf(`,"file":{"path":%q,"name":%q,"size":%d,"sha256":"%s"}}`, m.File.Path, f.name, len(f.data), f.sha()); !strings.HasSuffix(lines[i], want) {
				t.Errorf("JSON line %s, want it to end with %s", lines[i], want)
			}
		}
		if got := dirNames(t, down); len(got) != 3 {
			t.Fatalf("download directory holds %q", got)
		}

		// Without -download: the name and the URL, nothing fetched.
		cwd := t.TempDir()
		l = r.add(c.startIn(t, cwd, nil, c.args(state, "carol", "-json", "listen", "-count", "1", "-for", "60s")...))
		// In text mode.
		out := strings.Join(c.runOK(t, r, c.args(state, "alice", "send", "-to", "carol@localhost", "-file", files[1].path)...).stdout(), "\n")
		if !regexp.MustCompile(`^sent the file one KiB\.txt \(1024 bytes, sha256 ` + files[1].sha() + `\) as \S+ to carol@localhost, encrypted for 1 device\(s\): carol@localhost/\d+ \(OMEMO 2\)$`).MatchString(out) {
			t.Fatalf("send -file printed %q", out)
		}
		if code := l.wait(60 * time.Second); code != 0 {
			t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
		}
		lines = l.stdout()
		if len(lines) != 1 {
			t.Fatalf("listen printed %q", lines)
		}
		m := decode[messageJSON](t, lines[0])
		checkLink(t, m.File, files[1].name)
		if m.Body != files[1].name || !strings.HasSuffix(lines[0], fmt.Sprintf(`,"file":{"name":%q,"url":%q}}`, files[1].name, m.File.URL)) {
			t.Fatalf("listen printed %s", lines[0])
		}
		if got := dirNames(t, cwd); len(got) != 0 {
			t.Fatalf("listen without -download saved %q", got)
		}
	})

	t.Run("room", func(t *testing.T) {
		room := "files@" + prosodytest.MUCDomain
		c.runOK(t, r, c.args(state, "alice", "-json", "room", "create", "-members", "bob@localhost,carol@localhost", room)...)
		down, cwd := t.TempDir(), t.TempDir()
		lb := r.add(c.start(t, c.args(state, "bob", "-json", "listen", "-room", room, "-download", down, "-count", "3", "-for", "90s")...))
		// carol in text mode, without -download.
		lc := r.add(c.startIn(t, cwd, nil, c.args(state, "carol", "listen", "-room", room, "-count", "3", "-for", "90s")...))
		joined(t, lb, room, "bob")
		waitStderr(t, lc, "listening")
		for _, f := range files {
			sendFile(t, []string{room, "bob", "carol"}, f)
		}
		for _, p := range []*proc{lb, lc} {
			if code := p.wait(60 * time.Second); code != 0 {
				t.Fatalf("%v: exit %d; stderr:\n%s", p.cmd.Args[1:], code, p.stderr)
			}
		}
		lines := lb.stdout()
		if len(lines) != 4 {
			t.Fatalf("listen -room -download printed %q", lines)
		}
		for i, f := range files {
			m := decode[roomMessageJSON](t, lines[i+1])
			if m.Room != room || m.Nick != "alice" || m.From != "alice@localhost" || m.Body != f.name {
				t.Fatalf("received %s", lines[i+1])
			}
			checkSaved(t, m.File, f, down)
		}
		lines = lc.stdout()
		t.Logf("listen -room (text) printed:\n%s\nstderr:\n%s", strings.Join(lines, "\n"), lc.stderr)
		if len(lines) != 3 {
			t.Fatalf("listen -room (text) printed %q", lines)
		}
		textRE := regexp.MustCompile(`^\[` + regexp.QuoteMeta(room) + `\] "alice" \(alice@localhost\) \[device \d+, OMEMO 2, [a-z-]+(?:, key exchange)?\]: (.+) \[file, not downloaded: (https://localhost:\d+/file_share/[^ #]+)\]$`)
		for i, f := range files {
			m := textRE.FindStringSubmatch(lines[i])
			if m == nil || m[1] != f.name {
				t.Fatalf("text line %q, want the name %q and the URL", lines[i], f.name)
			}
		}
		if got := dirNames(t, cwd); len(got) != 0 {
			t.Fatalf("listen without -download saved %q", got)
		}
	})

	// Links made by the test to its own HTTPS server: path tricks in the
	// name, a wrong key, a missing file, an untrusted certificate.
	var keys []string
	hs := newFileServer(t)
	link := func(path string, data []byte, wrongKey bool) string {
		key, iv := make([]byte, 32), make([]byte, 12)
		_, _ = rand.Read(key)
		_, _ = rand.Read(iv)
		hs.put(path, seal(t, key, iv, data))
		if wrongKey {
			_, _ = rand.Read(key)
		}
		frag := hex.EncodeToString(iv) + hex.EncodeToString(key)
		keys = append(keys, frag, hex.EncodeToString(key))
		return "aesgcm://" + hs.host + path + "#" + frag
	}

	t.Run("names and failures", func(t *testing.T) {
		root := t.TempDir()
		down := filepath.Join(root, "downloads")
		if err := os.Mkdir(down, 0o700); err != nil {
			t.Fatal(err)
		}
		escape := testFile{name: "escape.bin", data: []byte("one")}
		win := testFile{name: "win.bin", data: []byte("two")}
		dots := testFile{name: "file", data: []byte("three")}
		links := []string{
			link("/x/..%2F..%2F"+escape.name, escape.data, false),
			link("/x/..%5C..%5C"+win.name, win.data, false),
			link("/x/..%2F..%2F", dots.data, false),
			link("/x/badtag.bin", []byte("four"), true),
			"aesgcm://" + hs.host + "/x/missing.bin#" + strings.Repeat("ab", 44),
		}
		l := r.add(c.start(t, c.args(state, "bob", "-json", "listen", "-download", down, "-count", fmt.Sprint(len(links)), "-for", "60s")...))
		for _, body := range links {
			c.runOK(t, r, c.args(state, "dave", "send", "-to", "bob@localhost", "--", body)...)
		}
		if code := l.wait(60 * time.Second); code != 0 {
			t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
		}
		lines := l.stdout()
		if len(lines) != len(links) {
			t.Fatalf("listen printed %q", lines)
		}
		t.Logf("listen -download printed:\n%s\nstderr:\n%s", strings.Join(lines, "\n"), l.stderr)
		for i, f := range []testFile{escape, win, dots} {
			checkSaved(t, decode[messageJSON](t, lines[i]).File, f, down)
		}
		for i, want := range []string{"authentication", "404"} {
			m := decode[messageJSON](t, lines[3+i])
			if m.File == nil || m.File.Path != "" || m.File.Size != nil || !strings.Contains(m.File.Error, want) ||
				!strings.HasPrefix(m.File.URL, "https://"+hs.host+"/x/") || strings.Contains(m.File.URL, "#") {
				t.Fatalf("failed download printed %s, want an error with %q", lines[3+i], want)
			}
			if !strings.Contains(l.stderr.String(), "omemo: warning: the file \""+m.File.Name+"\" from dave@localhost was not downloaded") {
				t.Errorf("no warning for %s; stderr:\n%s", m.File.Name, l.stderr)
			}
		}
		if got := dirNames(t, down); !slices.Equal(got, []string{"escape.bin", "file", "win.bin"}) {
			t.Fatalf("download directory holds %q", got)
		}
		if got := dirNames(t, root); !slices.Equal(got, []string{"downloads"}) {
			t.Fatalf("a file was saved outside the download directory: %q", got)
		}
	})

	t.Run("certificates", func(t *testing.T) {
		// Without -insecure-skip-verify the test server's self-signed
		// certificate is refused (at login already).
		down := t.TempDir()
		p := r.add(c.start(t, withoutInsecure(c.args(state, "bob", "-json", "listen", "-download", down, "-for", "20s"))...))
		if code := p.wait(30 * time.Second); code != exitError || !strings.Contains(p.stderr.String(), "certificate") || len(p.stdout()) != 0 {
			t.Fatalf("listen without -insecure-skip-verify: exit %d, stdout %q; stderr:\n%s", code, p.stdout(), p.stderr)
		}
		// With the server's certificate trusted (SSL_CERT_FILE), the
		// login and the downloads from the server are verified and work,
		// while a download from a server whose certificate is not trusted
		// fails, leaving nothing.
		untrusted := testFile{name: "untrusted.bin", data: []byte("five")}
		body := link("/y/"+untrusted.name, untrusted.data, false)
		trustServer := []string{"SSL_CERT_FILE=" + filepath.Join(srv.Dir, prosodytest.Domain+".crt"), "SSL_CERT_DIR=" + t.TempDir()}
		l := r.add(c.startIn(t, "", trustServer, withoutInsecure(c.args(state, "bob", "-json", "listen", "-download", down, "-count", "2", "-for", "60s"))...))
		c.runOK(t, r, c.args(state, "dave", "send", "-to", "bob@localhost", "--", body)...)
		sendFile(t, []string{"bob"}, files[1])
		if code := l.wait(60 * time.Second); code != 0 {
			t.Fatalf("listen: exit %d; stderr:\n%s", code, l.stderr)
		}
		lines := l.stdout()
		if len(lines) != 2 {
			t.Fatalf("listen printed %q", lines)
		}
		m := decode[messageJSON](t, lines[0])
		if m.File == nil || m.File.Path != "" || !strings.Contains(m.File.Error, "certificate") ||
			!strings.Contains(l.stderr.String(), "omemo: warning: the file \"untrusted.bin\"") {
			t.Fatalf("download from an untrusted server printed %s; stderr:\n%s", lines[0], l.stderr)
		}
		checkSaved(t, decode[messageJSON](t, lines[1]).File, files[1], down)
		if got := dirNames(t, down); !slices.Equal(got, []string{files[1].name}) {
			t.Fatalf("download directory holds %q", got)
		}
		if n := hs.requests(); n == 0 {
			t.Errorf("the untrusted server got no request")
		}
	})

	r.checkSecrets(t, keys...)
	t.Logf("took %v", time.Since(began))
}

// seal encrypts data as XEP-0454 does: AES-256-GCM, the tag appended.
func seal(t *testing.T, key, iv, data []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return g.Seal(nil, iv, data, nil)
}

// fileServer is an HTTPS server of the test (with a certificate nobody
// trusts) that serves files at exact, unclean paths.
type fileServer struct {
	host string

	mu    sync.Mutex
	files map[string][]byte
	n     int
}

func newFileServer(t *testing.T) *fileServer {
	fs := &fileServer{files: map[string][]byte{}}
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		b, ok := fs.files[r.URL.EscapedPath()]
		fs.n++
		fs.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}))
	// The client that does not trust the certificate makes the server
	// log a handshake error.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)
	fs.host = strings.TrimPrefix(s.URL, "https://")
	return fs
}

func (fs *fileServer) put(path string, b []byte) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.files[path] = b
}

func (fs *fileServer) requests() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.n
}

// TestSendFileErrors: a file that cannot be sent fails before connecting
// (nothing is sent), and -file with a TEXT is a usage error.
func TestSendFileErrors(t *testing.T) {
	addr := closedAddr(t)
	dir := t.TempDir()
	global := []string{"-jid", "alice@example.org", "-password", "secret", "-addr", addr, "-store", filepath.Join(dir, "alice.db")}
	unreadable := filepath.Join(dir, "secret.txt")
	if err := os.WriteFile(unreadable, []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"send", "-to", "bob@example.org", "-file", filepath.Join(dir, "missing.txt")}, exitError, "send -file: stat " + filepath.Join(dir, "missing.txt") + ": no such file or directory"},
		{[]string{"send", "-to", "bob@example.org", "-file", dir}, exitError, "send -file: " + dir + " is a directory, not a file"},
		{[]string{"send", "-room", "team@conference.example.org", "-file", dir}, exitError, "is a directory"},
		{[]string{"send", "-to", "bob@example.org", "-file", "/dev/null"}, exitError, "is not a regular file"},
		{[]string{"send", "-to", "bob@example.org", "-file", unreadable, "hello"}, exitUsage, "send: -file and TEXT are mutually exclusive"},
		{[]string{"send", "-room", "team@conference.example.org", "-file", unreadable, "--", "hello"}, exitUsage, "-file and TEXT are mutually exclusive"},
	}
	if runtime.GOOS != "windows" && os.Geteuid() != 0 {
		cases = append(cases, struct {
			args []string
			code int
			want string
		}{[]string{"send", "-to", "bob@example.org", "-file", unreadable}, exitError, "permission denied"})
	}
	for _, tc := range cases {
		out, errOut, code := runCLI(append(slices.Clone(global), tc.args...)...)
		if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "connecting") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d and %q, before connecting", tc.args, code, out, errOut, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "alice.db")); err == nil {
		t.Error("a state file was created")
	} else if !os.IsNotExist(err) {
		t.Error(err)
	}
	// listen -download needs a directory.
	for _, d := range []string{filepath.Join(dir, "missing"), unreadable} {
		_, errOut, code := runCLI(append(slices.Clone(global), "listen", "-download", d)...)
		if code != exitError || !strings.Contains(errOut, "listen -download") || strings.Contains(errOut, "connecting") {
			t.Errorf("listen -download %s: exit %d, stderr %q", d, code, errOut)
		}
	}
}
