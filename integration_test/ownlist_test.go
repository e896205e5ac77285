package integration_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"mellium.im/omemo"
	"mellium.im/omemo/devicelist"
	"mellium.im/omemo/internal/prosodytest"
	"mellium.im/omemo/ns"
	"mellium.im/omemo/store"
	"mellium.im/xmpp/jid"
)

// TestIntegrationOwnDevicesStartTogether: 2 and 4 devices of one account
// call Start at the same time, with the default configuration (no
// presence, so no own-list notifications). Each fetches the own device
// list, adds itself and publishes; without read-back the last publish
// dropped the others (3 of 3 runs). Every device must be on the final
// list of both namespaces, every time: 10 runs of each.
func TestIntegrationOwnDevicesStartTogether(t *testing.T) {
	const runs = 10
	var users []prosodytest.User
	for _, n := range []int{2, 4} {
		for r := range runs {
			users = append(users, prosodytest.User{Name: fmt.Sprintf("own%dr%d", n, r)})
		}
	}
	srv := prosodytest.Start(t, users...)
	// All runs at once: each waits a few seconds for the background checks.
	var wg sync.WaitGroup
	errs := make([][]error, len(users))
	for i, u := range users {
		n := 2
		if i >= runs {
			n = 4
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = startTogether(t, srv, u.Name, n)
		}()
	}
	wg.Wait()
	for i, u := range users {
		for _, err := range errs[i] {
			t.Errorf("%s: %v", u.Name, err)
		}
	}
}

// startTogether starts n devices of account name at once and returns what
// went wrong.
func startTogether(t *testing.T, srv *prosodytest.Server, name string, n int) []error {
	clients := make([]*client, n)
	for i := range clients {
		c, err := dial(t, srv, name, store.NewMemory(), omemo.Config{})
		if err != nil {
			return []error{err}
		}
		clients[i] = c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = c.p.Start(ctx)
		}()
	}
	close(start)
	wg.Wait()
	var want []uint32
	for i, c := range clients {
		if errs[i] != nil {
			return []error{fmt.Errorf("device %d: Start: %w", i, errs[i])}
		}
		want = append(want, c.p.Manager().DeviceID())
	}
	for _, c := range clients {
		if err := c.p.Manager().WaitOwnList(ctx); err != nil {
			return []error{err}
		}
	}
	slices.Sort(want)
	var out []error
	for _, namespace := range []string{ns.OMEMO2, ns.Legacy} {
		l, err := devicelist.Fetch(ctx, clients[0].s, jid.JID{}, namespace)
		if err != nil {
			return append(out, err)
		}
		var got []uint32
		for _, d := range l.Devices {
			got = append(got, d.ID)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			out = append(out, fmt.Errorf("the %s device list holds %v, want all %d devices %v", namespace, got, n, want))
		}
	}
	return out
}
