package trust_test

import (
	"context"
	"fmt"
	"slices"

	"mellium.im/omemo/trust"
)

func ExampleBTBV() {
	// The prompt is only asked about devices BTBV does not trust blindly.
	prompt := func(ctx context.Context, undecided []trust.Device) (map[trust.Key]string, error) {
		decisions := make(map[trust.Key]string)
		for _, d := range undecided {
			fmt.Printf("asking about %s device %d\n", d.JID, d.DeviceID)
			decisions[d.Key()] = trust.LevelDistrusted
		}
		return decisions, nil
	}
	policy := trust.BTBV(prompt)

	var phoneKey, laptopKey, newKey, carolKey [32]byte
	phoneKey[0], laptopKey[0], newKey[0], carolKey[0] = 1, 2, 3, 4

	known := []trust.Device{
		// Bob's phone key was verified manually.
		{JID: "bob@example.net", DeviceID: 11, IdentityKey: phoneKey, Level: trust.LevelTrusted},
		{JID: "bob@example.net", DeviceID: 12, IdentityKey: laptopKey, Level: trust.LevelBlindlyTrusted},
	}
	undecided := []trust.Device{
		// A new key appeared on Bob's account after verification.
		{JID: "bob@example.net", DeviceID: 13, IdentityKey: newKey, Level: policy.Default()},
		// Carol is contacted for the first time.
		{JID: "carol@example.com", DeviceID: 21, IdentityKey: carolKey, Level: policy.Default()},
	}

	decisions, err := policy.Decide(context.Background(), undecided, known)
	if err != nil {
		fmt.Println(err)
		return
	}
	keys := make([]trust.Key, 0, len(decisions))
	for k := range decisions {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b trust.Key) int { return int(a.IdentityKey[0]) - int(b.IdentityKey[0]) })
	for _, k := range keys {
		level, _ := policy.Evaluate(decisions[k])
		fmt.Printf("%s key %d: %s (%s)\n", k.JID, k.IdentityKey[0], decisions[k], level)
	}
	// Output:
	// asking about bob@example.net device 13
	// bob@example.net key 3: distrusted (distrusted)
	// carol@example.com key 4: blindly-trusted (trusted)
}
