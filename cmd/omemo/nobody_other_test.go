//go:build !unix

package main

import "testing"

func runAsNobody(t *testing.T, dir string, args []string) (string, int) {
	t.Skip("needs Unix users")
	return "", 0
}
