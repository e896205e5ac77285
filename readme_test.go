package omemo_test

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeQuickStart keeps the README's quick start identical to the body
// of Example, which the compiler checks.
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	r := string(readme)
	i := strings.Index(r, "## Quick start")
	if i < 0 {
		t.Fatal("README has no quick start")
	}
	r = r[i:]
	start := strings.Index(r, "```go\n")
	end := strings.Index(r[start+6:], "```")
	if start < 0 || end < 0 {
		t.Fatal("no Go block in the quick start")
	}
	snippet := strings.TrimSpace(r[start+6 : start+6+end])

	e := string(example)
	j := strings.Index(e, "func Example() {")
	k := strings.LastIndex(e, "}")
	if j < 0 || k < j {
		t.Fatal("no Example in example_test.go")
	}
	var lines []string
	for _, l := range strings.Split(strings.Trim(e[j+len("func Example() {"):k], "\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "\t"))
	}
	body := strings.TrimSpace(strings.Join(lines, "\n"))
	if body != snippet {
		t.Fatalf("README quick start and Example differ:\nREADME:\n%s\n\nExample:\n%s", snippet, body)
	}
	if n := strings.Count(snippet, "\n") + 1; n >= 30 {
		t.Fatalf("quick start has %d lines, want under 30", n)
	}
}

// TestReadmeExamples keeps the Go blocks of README sections identical to
// the bodies of examples, which the compiler checks.
func TestReadmeExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ section, file, fn string }{
		{"### Group chat", "example_room_test.go", "ExamplePlugin_SendGroup"},
		{"### Encrypted files", "example_file_test.go", "ExamplePlugin_SendFile"},
		{"### Staying connected, losing nothing", "reconnect/example_test.go", "Example"},
	} {
		t.Run(c.fn, func(t *testing.T) {
			r := string(readme)
			i := strings.Index(r, c.section+"\n")
			if i < 0 {
				t.Fatalf("README has no section %q", c.section)
			}
			r = r[i:]
			start := strings.Index(r, "```go\n")
			if start < 0 {
				t.Fatalf("no Go block in %q", c.section)
			}
			end := strings.Index(r[start+6:], "```")
			if end < 0 {
				t.Fatalf("unterminated Go block in %q", c.section)
			}
			snippet := strings.TrimSpace(r[start+6 : start+6+end])
			example, err := os.ReadFile(c.file)
			if err != nil {
				t.Fatal(err)
			}
			e := string(example)
			decl := "func " + c.fn + "() {"
			j := strings.Index(e, decl)
			k := strings.LastIndex(e, "}")
			if j < 0 || k < j {
				t.Fatalf("no %s in %s", c.fn, c.file)
			}
			var lines []string
			for _, l := range strings.Split(strings.Trim(e[j+len(decl):k], "\n"), "\n") {
				lines = append(lines, strings.TrimPrefix(l, "\t"))
			}
			if body := strings.TrimSpace(strings.Join(lines, "\n")); body != snippet {
				t.Fatalf("README %q and %s differ:\nREADME:\n%s\n\nExample:\n%s", c.section, c.fn, snippet, body)
			}
		})
	}
}
