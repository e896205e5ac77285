package main

import (
	"os"
	"strings"
	"testing"
)

// TestReadmeUsage keeps the usage in the README's command-line section
// identical to what the command prints.
func TestReadmeUsage(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const open = "```\nomemo [global flags] COMMAND [flags] [args]\n"
	_, rest, ok := strings.Cut(string(readme), open)
	if !ok {
		t.Fatal("README has no usage block")
	}
	block, _, ok := strings.Cut(rest, "```\n")
	if !ok {
		t.Fatal("README's usage block does not end")
	}
	if got, want := "usage: omemo [global flags] COMMAND [flags] [args]\n"+block, usageText; got != want {
		t.Fatalf("README usage differs from the command's:\nREADME:\n%s\ncommand:\n%s", got, want)
	}
}
