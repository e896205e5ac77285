//go:build race

package session_test

// raceEnabled reports a build with the race detector, which makes the
// largest tests too slow at full size.
const raceEnabled = true
