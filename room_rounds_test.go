package omemo

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo/bundle"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/session"
	"mellium.im/omemo/session/sessiontest"
	"mellium.im/xmpp/jid"
)

// roundDelay is how long each counted download takes. It must be well above
// the time it takes to launch a round's downloads on a loaded machine under
// the race detector, or a download launched late is counted one round too
// deep (seen in CI with 20 ms).
const roundDelay = 200 * time.Millisecond

// roundCounter is a Network whose downloads take a while and are recorded
// with their depth: 1 + the largest depth among the downloads that had
// answered when it was asked (the number of sequential round trips it
// waited for), as the end-to-end benchmark measures them on the wire.
type roundCounter struct {
	session.Network
	delay time.Duration

	mu       sync.Mutex
	on       bool
	answered []int // depths of the answered downloads
	depths   []int
}

func (r *roundCounter) begin() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on, r.answered, r.depths = true, nil, nil
}

func (r *roundCounter) end() (calls, rounds int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.on = false
	for _, d := range r.depths {
		rounds = max(rounds, d)
	}
	return len(r.depths), rounds
}

func (r *roundCounter) call(f func()) {
	r.mu.Lock()
	on := r.on
	depth := 1
	for _, d := range r.answered {
		depth = max(depth, d+1)
	}
	r.mu.Unlock()
	if !on {
		f()
		return
	}
	time.Sleep(r.delay)
	f()
	r.mu.Lock()
	r.answered = append(r.answered, depth)
	r.depths = append(r.depths, depth)
	r.mu.Unlock()
}

func (r *roundCounter) DownloadBundle(ctx context.Context, ns, j string, id uint32) (b bundle.Bundle, err error) {
	r.call(func() { b, err = r.Network.DownloadBundle(ctx, ns, j, id) })
	return b, err
}

func (r *roundCounter) DownloadDeviceList(ctx context.Context, ns, j string) (l devicelist.List, err error) {
	r.call(func() { l, err = r.Network.DownloadDeviceList(ctx, ns, j) })
	return l, err
}

// The first message to a room of 10 members costs two sequential rounds of
// PEP downloads: every member's device lists at once, then every bundle at
// once (the bundles that reveal identity keys also build the sessions).
func TestFirstRoomMessageRounds(t *testing.T) {
	srv := sessiontest.NewServer()
	rc := &roundCounter{Network: srv.Network("alice@example.org"), delay: roundDelay}
	alice := newDeviceOn(t, rc, "alice@example.org/a", both, true)
	alice.p.TrackRoom(jid.MustParse(testRoom + "/alice"))
	var members []*device
	for i := range 10 {
		name := fmt.Sprintf("m%d@example.org", i)
		members = append(members, newDevice(t, srv, name+"/d", both, true))
		alice.deliver(occupantPresence(fmt.Sprintf("m%d", i), name+"/d", "alice@example.org/a"))
	}
	alice.deliver(occupantPresence("alice", "alice@example.org/a", "alice@example.org/a", 110, 100))
	rc.begin()
	res, err := alice.p.SendGroup(context.Background(), jid.MustParse(testRoom), "first")
	calls, rounds := rc.end()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Recipients) != 10 {
		t.Fatalf("reached %d devices", len(res.Recipients))
	}
	t.Logf("first message to a room of 10 members: %d PEP downloads in %d sequential rounds", calls, rounds)
	if rounds != 2 {
		t.Fatalf("%d sequential rounds, want 2", rounds)
	}
}
