//go:build race

package store

// raceBuild scales down the corruption tests under the race detector,
// which makes their large reads of the store file slow.
const raceBuild = true
