//go:build !race

package media_test

// raceEnabled reports whether the race detector is on: it slows the
// cipher down about tenfold, so the large-file tests use smaller files.
const raceEnabled = false
