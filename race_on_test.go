//go:build race

package omemo

// raceSlowdown scales timing limits under the race detector.
const raceSlowdown = 10
