package newkeys_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/drl-go/distributed-rate-limiter/newkeys"
)

// A gateway that is not net/http asks the gate before the Limiter: here
// two identities never seen come from one /24 with a budget of one a
// second.
func Example() {
	gate, err := newkeys.New(newkeys.Config{PerSecond: 1})
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 12, 4, 10, 0, 0, 400_000_000, time.UTC)
	client := gate.Network(netip.MustParseAddr("198.51.100.7"))
	for _, user := range []string{"alice", "mallory-1", "alice"} {
		ok, wait := gate.Admit(user, client, now)
		fmt.Println(user, ok, wait)
	}
	// Output:
	// alice true 0s
	// mallory-1 false 600ms
	// alice true 0s
}
