package rulesfile_test

import (
	"context"
	"fmt"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/rulesfile"
)

// A Limiter built from a rules file, then an edited file applied while it
// runs: the rule is renamed and its limit raised under the same id, so
// alice's 2 requests still count and she gets 1 more of the new limit 3.
// The rule is Local, so the example needs no Redis; the clock is fixed.
func Example() {
	v1, err := rulesfile.Parse("rules.yaml", []byte(`
rules:
  - id: orders
    name: orders-v1
    limit: 2
    window: 1m
    mode: local
`))
	if err != nil {
		panic(err)
	}
	now := time.UnixMilli(1_700_000_010_000)
	lim, err := ratelimit.New(ratelimit.Config{Rules: v1.Rules(), Now: func() time.Time { return now }})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	allow := func(rule string) {
		d, err := lim.Allow(context.Background(), rule, "alice", now)
		fmt.Println(rule, d.Allowed, d.Remaining, err)
	}
	allow("orders-v1")
	allow("orders-v1")
	allow("orders-v1")

	v2, err := rulesfile.Parse("rules.yaml", []byte(`
rules:
  - id: orders
    name: orders-v2
    limit: 3
    window: 1m
    mode: local
`))
	if err != nil {
		panic(err)
	}
	if err := v2.Apply(lim); err != nil {
		panic(err)
	}
	allow("orders-v2")
	allow("orders-v2")

	_, err = rulesfile.Parse("rules.yaml", []byte(`
rules:
  - id: orders
    name: orders-v3
    limit: 3
    window: 5x
`))
	fmt.Println(err)
	// Output:
	// orders-v1 true 1 <nil>
	// orders-v1 true 0 <nil>
	// orders-v1 false 0 <nil>
	// orders-v2 true 0 <nil>
	// orders-v2 false 0 <nil>
	// rules.yaml:6: rules[0].window: "5x" is not a duration (e.g. 1m, 1h, 500ms)
}
