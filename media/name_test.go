package media

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestSafeName(t *testing.T) {
	for in, want := range map[string]string{
		"photo.jpg":             "photo.jpg",
		"très cool.jpg":         "très cool.jpg",
		"":                      "file",
		".":                     "file",
		"..":                    "file",
		"...":                   "file",
		"../../etc/passwd":      "passwd",
		`..\..\windows\win.ini`: "win.ini",
		"/abs/path/x.txt":       "x.txt",
		"dir/":                  "file",
		".bashrc":               "bashrc",
		"a\x00b":                "a_b",
		"a\nb\rc\td":            "a_b_c_d",
		"a\x7fb\u0085c":         "a_b_c",
		"evil\u202egnp.exe":     "evil_gnp.exe",
		"zero\u200bwidth":       "zero_width",
		"bad\xffutf8":           "bad_utf8",
		`a<b>c:d"e|f?g*h`:       "a_b_c_d_e_f_g_h",
		" spaced . ":            "spaced",
		"CON":                   "_CON",
		"nul.txt":               "_nul.txt",
		"console.txt":           "console.txt",
		"\ufffd.txt":            "_.txt",
	} {
		if got := safeName(in); got != want {
			t.Errorf("safeName(%q) = %q, want %q", in, got, want)
		}
	}
	long := strings.Repeat("é", 300) + ".tar.gz"
	got := safeName(long)
	if len(got) > maxNameBytes || !utf8.ValidString(got) || !strings.HasSuffix(got, ".gz") {
		t.Errorf("long name: %d bytes %q", len(got), got)
	}
}

func FuzzSafeName(f *testing.F) {
	for _, s := range []string{"a.txt", "../x", "\x00", "é.é", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got := safeName(in)
		if got == "" || got == "." || got == ".." || len(got) > maxNameBytes || !utf8.ValidString(got) {
			t.Fatalf("safeName(%q) = %q", in, got)
		}
		if strings.ContainsAny(got, "/\\\x00") || strings.HasPrefix(got, ".") || filepath.Base(got) != got {
			t.Fatalf("safeName(%q) = %q", in, got)
		}
		for _, r := range got {
			if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
				t.Fatalf("safeName(%q) = %q has %U", in, got, r)
			}
		}
		if safeName(got) != got {
			t.Fatalf("safeName not idempotent on %q", got)
		}
	})
}

func TestPlaceNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("a.txt", "old")
	write("a (1).txt", "old1")
	write("noext", "old")
	for _, tc := range []struct{ name, want string }{
		{"a.txt", "a (2).txt"},
		{"a.txt", "a (3).txt"},
		{"noext", "noext (1)"},
		{"new.txt", "new.txt"},
	} {
		tmp := write(".tmp-"+tc.want, "new "+tc.want)
		p, err := place(tmp, dir, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if p != filepath.Join(dir, tc.want) {
			t.Fatalf("place(%q) = %q, want %q", tc.name, p, tc.want)
		}
		if b, _ := os.ReadFile(p); string(b) != "new "+tc.want {
			t.Fatalf("%s has %q", p, b)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) {
			t.Fatalf("temporary file left: %v", err)
		}
	}
	for name, content := range map[string]string{"a.txt": "old", "a (1).txt": "old1", "noext": "old"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != content {
			t.Fatalf("%s overwritten: %q", name, b)
		}
	}
}
