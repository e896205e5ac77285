package main

import (
	"regexp"
	"strconv"
	"strings"
	"testing"

	"mellium.im/omemo/internal/prosodytest"
)

// demoArgs are the flags that point the demo at srv.
func demoArgs(srv *prosodytest.Server) []string {
	return []string{
		"-addr", srv.Addr, "-insecure-skip-verify", "-timeout", "30s",
		"-alice", srv.JID("alice").String(), "-alice-password", srv.Password("alice"),
		"-bob", srv.JID("bob").String(), "-bob-password", srv.Password("bob"),
	}
}

var (
	sharedSum     = regexp.MustCompile(`shares the file "omemo-demo\.txt" \((\d+) bytes of text, sha256 ([0-9a-f]{64})\)`)
	downloadedSum = regexp.MustCompile(`as "omemo-demo\.txt": (\d+) bytes, sha256 ([0-9a-f]{64})`)
	// An aesgcm link, or its key and IV (88 or 96 hex digits).
	linkKey = regexp.MustCompile(`[0-9a-fA-F]{88}|aesgcm://\S`)
)

// TestDemo runs the whole demo against a Prosody with HTTP File Upload, as
// scripts/demo.sh and docker-compose.yml start it.
func TestDemo(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		decrypted int
	}{
		{"default", nil, 10},
		{"one device, legacy bob", []string{"-alice-devices", "1", "-bob-legacy"}, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := prosodytest.StartWithUpload(t,
				prosodytest.User{Name: "alice", Password: "alice-pw"},
				prosodytest.User{Name: "bob", Password: "bob-pw"})
			var out, errOut strings.Builder
			code := run(append(demoArgs(srv), tc.args...), &out, &errOut)
			text := out.String()
			if code != 0 {
				t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, text, errOut.String())
			}
			for _, want := range []string{
				"upload service  " + prosodytest.UploadDomain + " (HTTP File Upload, files up to " + byteSize(prosodytest.UploadMaxSize) + ")",
				"── 5. alice (laptop) → bob@localhost: a file ──",
				`bob decrypted the link of "omemo-demo.txt" on localhost:`,
				"bob downloaded the ciphertext from localhost:",
				"the key travelled only inside the OMEMO message",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("output lacks %q:\n%s", want, text)
				}
			}
			ok := "\nOK: 5 messages sent (one of them a file's link), " + strconv.Itoa(tc.decrypted) + " decryptions as expected, 1 file downloaded with the right SHA-256, none rejected.\n"
			if !strings.HasSuffix(text, ok) {
				t.Errorf("output does not end with %q:\n%s", ok, text)
			}
			shared, downloaded := sharedSum.FindStringSubmatch(text), downloadedSum.FindStringSubmatch(text)
			if shared == nil || downloaded == nil {
				t.Fatalf("no size and sha256 of the shared or the downloaded file:\n%s", text)
			}
			if shared[1] != downloaded[1] || shared[2] != downloaded[2] {
				t.Errorf("shared %s bytes, sha256 %s; downloaded %s bytes, sha256 %s", shared[1], shared[2], downloaded[1], downloaded[2])
			}
			if m := linkKey.FindString(text + errOut.String()); m != "" {
				t.Errorf("the output shows the link or its key: %q", m)
			}
		})
	}
}

// TestDemoNoUploadService: a server without HTTP File Upload fails the
// demo, saying so.
func TestDemoNoUploadService(t *testing.T) {
	t.Parallel()
	srv := prosodytest.Start(t, prosodytest.User{Name: "alice"}, prosodytest.User{Name: "bob"})
	var out, errOut strings.Builder
	if code := run(demoArgs(srv), &out, &errOut); code != 1 {
		t.Fatalf("exit status %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	want := "\nFAILED: the server localhost offers no HTTP File Upload service (XEP-0363)"
	if !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
}
