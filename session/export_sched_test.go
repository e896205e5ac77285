package session

import "time"

// FireRotation runs the next rotation check of m now, as its timer
// would, for tests.
func FireRotation(m *Manager) {
	m.rotMu.Lock()
	defer m.rotMu.Unlock()
	if m.rotTimer != nil {
		m.rotTimer.Reset(0)
	}
}

// RotationRetry is the wait of m before the next retry of a failed
// rotation check, zero after a check that succeeded, for tests.
func RotationRetry(m *Manager) time.Duration {
	m.rotMu.Lock()
	defer m.rotMu.Unlock()
	return m.rotRetry
}

// SetOwnListChecks replaces the delays of the checks of the own device
// lists after a publish, for tests (for the watches started until restore);
// restore puts the defaults back.
func SetOwnListChecks(d ...time.Duration) (restore func()) {
	testOwnListChecks.Store(&d)
	return func() { testOwnListChecks.Store(nil) }
}

// OwnListWatches is the number of own device lists m is checking.
func OwnListWatches(m *Manager) int {
	m.watchMu.Lock()
	defer m.watchMu.Unlock()
	return len(m.watching)
}
