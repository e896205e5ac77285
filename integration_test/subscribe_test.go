package integration_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/store"
)

// TestIntegrationSubscribe: without a presence subscription no PEP
// notification flows; an explicit subscription makes a new device of the
// contact known without any refresh.
func TestIntegrationSubscribe(t *testing.T) {
	srv := prosodytest.Start(t, prosodytest.User{Name: "frank"}, prosodytest.User{Name: "gina"})
	frankJID := srv.JID("frank")
	cfg := omemo.Config{SendPresence: true}
	frank1 := connect(t, srv, "frank", store.NewMemory(), cfg, true)
	gina := connect(t, srv, "gina", store.NewMemory(), cfg, true)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := gina.p.Subscribe(ctx, frankJID); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	known := func() []uint32 {
		devs, err := gina.p.Manager().Devices(ctx, frankJID.String())
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint32
		for _, d := range devs {
			if len(d.Active) > 0 {
				ids = append(ids, d.DeviceID)
			}
		}
		return ids
	}
	if ids := known(); !slices.Contains(ids, frank1.p.Manager().DeviceID()) {
		t.Fatalf("after Subscribe gina knows %v, want frank's device %d", ids, frank1.p.Manager().DeviceID())
	}

	frank2 := connect(t, srv, "frank", store.NewMemory(), cfg, true)
	want := frank2.p.Manager().DeviceID()
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(known(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("frank's new device %d never reached gina through the subscription (knows %v)", want, known())
		}
		time.Sleep(50 * time.Millisecond)
	}
	send(t, gina, frankJID, "hi frank")
	for _, c := range []*client{frank1, frank2} {
		if m := c.expect(5 * time.Second); m.Body != "hi frank" {
			t.Fatalf("%s got %+v", c.name, m)
		}
	}
}
