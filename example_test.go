package ratelimit_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// The examples replay fixed timestamps so that their output never changes.
// A gateway passes time.Now() to Allow and leaves Config.Now unset.
var t0 = time.UnixMilli(1_700_000_000_000) // 2023-11-14T22:13:20Z, a whole second

// Three requests per second for each user, shared by every gateway
// instance that uses the same Redis. An embedded miniredis stands in for
// the real Redis here.
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	lim, err := ratelimit.New(ratelimit.Config{
		Redis: rdb,
		Rules: []ratelimit.Rule{
			{Name: "GET /v1/orders", Limit: 3, Window: time.Second}, // SlidingWindow, Hybrid: the defaults
		},
		Now: func() time.Time { return t0 }, // the clock the timestamps are checked against
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()

	ctx := context.Background()
	var last ratelimit.Decision
	for i := range 4 {
		at := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		d, err := lim.Allow(ctx, "GET /v1/orders", "user-42", at)
		if err != nil {
			panic(err)
		}
		fmt.Printf("+%v: allowed=%v remaining=%d retry-after=%v reset-after=%v\n",
			at.Sub(t0), d.Allowed, d.Remaining, d.RetryAfter, d.ResetAfter)
		last = d
	}
	fmt.Println("Retry-After:", last.RetryAfterSeconds())

	// Retrying after RetryAfter succeeds when nothing else came in between.
	d, err := lim.Allow(ctx, "GET /v1/orders", "user-42", t0.Add(300*time.Millisecond+last.RetryAfter))
	if err != nil {
		panic(err)
	}
	fmt.Println("retry allowed:", d.Allowed)
	// Output:
	// +0s: allowed=true remaining=2 retry-after=0s reset-after=2s
	// +100ms: allowed=true remaining=1 retry-after=0s reset-after=1.9s
	// +200ms: allowed=true remaining=0 retry-after=0s reset-after=1.8s
	// +300ms: allowed=false remaining=0 retry-after=1.034s reset-after=1.7s
	// Retry-After: 2
	// retry allowed: true
}

// AllowN takes several units at once, e.g. a batch call that costs one per
// item. The check and the count are one atomic step: a denied call takes
// nothing.
func ExampleLimiter_AllowN() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	lim, err := ratelimit.New(ratelimit.Config{
		Redis: rdb,
		Rules: []ratelimit.Rule{
			{Name: "POST /v1/batch", Limit: 10, Window: time.Second, Algorithm: ratelimit.FixedWindow},
		},
		Now: func() time.Time { return t0 },
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()

	ctx := context.Background()
	for _, n := range []int64{4, 4, 4, 2} {
		d, err := lim.AllowN(ctx, "POST /v1/batch", "user-42", t0, n)
		if err != nil {
			panic(err)
		}
		fmt.Printf("n=%d: allowed=%v remaining=%d\n", n, d.Allowed, d.Remaining)
	}

	// More than the limit could never pass: it is denied, and its
	// RetryAfter is the rule's whole window (Config.StrictN makes it an
	// error instead). A negative n is an error.
	d, err := lim.AllowN(ctx, "POST /v1/batch", "user-42", t0, 11)
	fmt.Println(d.Allowed, d.RetryAfter, err)
	_, err = lim.AllowN(ctx, "POST /v1/batch", "user-42", t0, -1)
	fmt.Println(errors.Is(err, ratelimit.ErrInvalidArgument))
	_, err = lim.AllowN(ctx, "DELETE /v1/batch", "user-42", t0, 1)
	fmt.Println(errors.Is(err, ratelimit.ErrUnknownRule))
	// Output:
	// n=4: allowed=true remaining=6
	// n=4: allowed=true remaining=2
	// n=4: allowed=false remaining=2
	// n=2: allowed=true remaining=0
	// false 1s <nil>
	// true
	// true
}

// RetryAfterSeconds rounds RetryAfter up to whole seconds, the unit of the
// HTTP Retry-After header.
func ExampleDecision_RetryAfterSeconds() {
	for _, wait := range []time.Duration{0, time.Millisecond, 1034 * time.Millisecond, 2 * time.Second} {
		d := ratelimit.Decision{RetryAfter: wait}
		fmt.Printf("%v -> Retry-After: %d\n", wait, d.RetryAfterSeconds())
	}
	// Output:
	// 0s -> Retry-After: 0
	// 1ms -> Retry-After: 1
	// 1.034s -> Retry-After: 2
	// 2s -> Retry-After: 2
}

// A gateway resolves its rules once, at startup, and decides through the
// RuleLimiter: the same decisions as Limiter.Allow, without looking the
// rule's name up on every request.
func ExampleLimiter_Rule() {
	lim, err := ratelimit.New(ratelimit.Config{
		Rules: []ratelimit.Rule{{Name: "POST /v1/login", Limit: 2, Window: time.Minute, Mode: ratelimit.Local}},
		Now:   func() time.Time { return t0 },
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	login, err := lim.Rule("POST /v1/login")
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for i := range 3 {
		d, err := login.Allow(ctx, "203.0.113.7", t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			panic(err)
		}
		fmt.Println(login.Name(), login.Limit(), d.Allowed, d.RetryAfterSeconds())
	}
	_, err = lim.Rule("POST /v1/logout")
	fmt.Println(errors.Is(err, ratelimit.ErrUnknownRule))
	// Output:
	// POST /v1/login 2 true 0
	// POST /v1/login 2 true 0
	// POST /v1/login 2 false 68
	// true
}

// A Local rule is decided in the process, with no Redis and no coordination:
// each gateway instance enforces the limit on its own. A Limiter whose rules
// are all Local needs no Config.Redis.
func Example_local() {
	rule := ratelimit.Rule{Name: "GET /v1/catalog", Limit: 2, Window: time.Second, Mode: ratelimit.Local}
	newInstance := func() *ratelimit.Limiter {
		lim, err := ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{rule}, Now: func() time.Time { return t0 }})
		if err != nil {
			panic(err)
		}
		return lim
	}
	a, b := newInstance(), newInstance()
	defer a.Close()
	defer b.Close()

	ctx := context.Background()
	for i, lim := range []*ratelimit.Limiter{a, a, a, b, b, b} {
		d, err := lim.Allow(ctx, rule.Name, "user-42", t0.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			panic(err)
		}
		fmt.Printf("instance %c: allowed=%v\n", "aaabbb"[i], d.Allowed)
	}

	// A closed Limiter refuses work.
	_ = a.Close()
	_, err := a.Allow(ctx, rule.Name, "user-42", t0)
	fmt.Println(errors.Is(err, ratelimit.ErrClosed))
	// Output:
	// instance a: allowed=true
	// instance a: allowed=true
	// instance a: allowed=false
	// instance b: allowed=true
	// instance b: allowed=true
	// instance b: allowed=false
	// true
}

// Two gateway instances share a limit of 1000 per minute in the hybrid
// mode: each decides locally from leases it reserves in Redis, and a sync
// pass (here run by hand, at virtual ticks) reports demand and renews the
// leases. Together they never admit more than the limit.
func Example_hybrid() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()

	now := t0
	rule := ratelimit.Rule{Name: "search", Limit: 1000, Window: time.Minute} // Mode: Hybrid
	var gateways []*ratelimit.Limiter
	for range 2 {
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		defer rdb.Close()
		lim, err := ratelimit.New(ratelimit.Config{
			Redis: rdb, Rules: []ratelimit.Rule{rule},
			SyncInterval: 100 * time.Millisecond,
			ManualSync:   true, // deterministic: Sync runs the passes
			Now:          func() time.Time { return now },
		})
		if err != nil {
			panic(err)
		}
		defer lim.Close()
		gateways = append(gateways, lim)
	}

	ctx := context.Background()
	admitted := 0
	// 30 ticks of 100 ms; 50 requests per tick, alternating gateways.
	for range 30 {
		for i := range 50 {
			d, err := gateways[i%2].Allow(ctx, rule.Name, "user-42", now.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				panic(err)
			}
			if d.Allowed {
				admitted++
			}
		}
		now = now.Add(100 * time.Millisecond)
		for _, g := range gateways {
			if err := g.Sync(ctx); err != nil {
				panic(err)
			}
		}
	}
	var local, remote int64
	for _, g := range gateways {
		st := g.Stats()
		local += st.HybridInProcessAllowed + st.HybridInProcessDenied
		remote += st.HybridRedis
	}
	fmt.Printf("admitted %d of 1500; decided locally %d, in Redis %d\n", admitted, local, remote)
	// Output:
	// admitted 1000 of 1500; decided locally 1490, in Redis 10
}

// Each rule says what it decides when Redis cannot answer. Here Redis is
// down from the start (a closed miniredis): New still succeeds, the
// Limiter starts degraded, and the rules' policies decide, with no error.
func ExampleRule_onFailure() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	defer rdb.Close()
	mr.Close() // Redis is down

	lim, err := ratelimit.New(ratelimit.Config{
		Redis: rdb,
		Rules: []ratelimit.Rule{
			{Name: "search", Limit: 2, Window: time.Minute}, // FailLocal, the default: enforced in process
			{Name: "login", Limit: 5, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailClosed},
			{Name: "export", Limit: 5, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailError},
		},
		Now:     func() time.Time { return t0 },
		Timeout: 50 * time.Millisecond,
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	fmt.Println("health:", lim.Health().State)

	ctx := context.Background()
	for range 3 {
		d, _ := lim.Allow(ctx, "search", "user-42", t0)
		fmt.Println("search allowed:", d.Allowed)
	}
	d, _ := lim.Allow(ctx, "login", "user-42", t0)
	fmt.Println("login allowed:", d.Allowed, "retry after:", d.RetryAfterSeconds(), "s")
	_, err = lim.Allow(ctx, "export", "user-42", t0)
	fmt.Println("export:", errors.Is(err, ratelimit.ErrUnavailable))
	fmt.Println("fallbacks:", lim.Stats().FallbackLocalAllowed, "allowed locally,", lim.Stats().FallbackLocalDenied, "denied locally")
	// Output:
	// health: degraded
	// search allowed: true
	// search allowed: true
	// search allowed: false
	// login allowed: false retry after: 1 s
	// export: true
	// fallbacks: 2 allowed locally, 1 denied locally
}

// exampleLimiter returns a Limiter of rules on an embedded miniredis, with
// its clock at t0, and a function that closes them.
func exampleLimiter(rules ...ratelimit.Rule) (*ratelimit.Limiter, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	lim, err := ratelimit.New(ratelimit.Config{Redis: rdb, Rules: rules, Now: func() time.Time { return t0 }})
	if err != nil {
		panic(err)
	}
	return lim, func() { lim.Close(); rdb.Close(); mr.Close() }
}

// Peek tells what Allow would answer, counting nothing: a gateway can set
// the RateLimit headers of a response, or refuse a request before doing any
// work, without spending the user's budget.
func ExampleLimiter_Peek() {
	lim, done := exampleLimiter(ratelimit.Rule{Name: "GET /v1/orders", Limit: 2, Window: time.Second, Mode: ratelimit.Strict})
	defer done()
	ctx := context.Background()
	for range 3 {
		p, err := lim.Peek(ctx, "GET /v1/orders", "user-42", t0)
		if err != nil {
			panic(err)
		}
		d, err := lim.Allow(ctx, "GET /v1/orders", "user-42", t0)
		if err != nil {
			panic(err)
		}
		fmt.Printf("peek: allowed=%v remaining=%d; allow: allowed=%v remaining=%d\n", p.Allowed, p.Remaining, d.Allowed, d.Remaining)
	}
	// Output:
	// peek: allowed=true remaining=2; allow: allowed=true remaining=1
	// peek: allowed=true remaining=1; allow: allowed=true remaining=0
	// peek: allowed=false remaining=0; allow: allowed=false remaining=0
}

// Reset gives a user the whole limit back (support unblocking a user, say);
// other users keep their usage.
func ExampleLimiter_Reset() {
	lim, done := exampleLimiter(ratelimit.Rule{Name: "login", Limit: 3, Window: time.Minute, Algorithm: ratelimit.SlidingLog})
	defer done()
	ctx := context.Background()
	for _, user := range []string{"alice", "bob"} {
		for range 3 {
			if _, err := lim.Allow(ctx, "login", user, t0); err != nil {
				panic(err)
			}
		}
	}
	if err := lim.Reset(ctx, "login", "alice"); err != nil {
		panic(err)
	}
	for _, user := range []string{"alice", "bob"} {
		d, err := lim.Peek(ctx, "login", user, t0)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s: allowed=%v remaining=%d\n", user, d.Allowed, d.Remaining)
	}
	// Output:
	// alice: allowed=true remaining=3
	// bob: allowed=false remaining=0
}

// Refund gives back admissions that were counted but not served: here the
// upstream failed on a batch of 4, so the user gets them back, in the same
// window as they were counted in.
func ExampleLimiter_Refund() {
	lim, done := exampleLimiter(ratelimit.Rule{Name: "POST /v1/batch", Limit: 10, Window: time.Second, Algorithm: ratelimit.FixedWindow})
	defer done()
	ctx := context.Background()
	d, err := lim.AllowN(ctx, "POST /v1/batch", "user-42", t0, 10)
	if err != nil {
		panic(err)
	}
	fmt.Println("allowed:", d.Allowed, "remaining:", d.Remaining)
	// ... the upstream answers 503 for 4 of them ...
	if err := lim.Refund(ctx, "POST /v1/batch", "user-42", t0, 4); err != nil {
		panic(err)
	}
	d, err = lim.AllowN(ctx, "POST /v1/batch", "user-42", t0.Add(10*time.Millisecond), 4)
	if err != nil {
		panic(err)
	}
	fmt.Println("allowed:", d.Allowed, "remaining:", d.Remaining)
	// Output:
	// allowed: true remaining: 0
	// allowed: true remaining: 0
}

// A token bucket's Burst caps what a user may send at once below the
// rate: 100 a minute, but at most 5 at once, then one every 600 ms.
func ExampleRule_burst() {
	lim, done := exampleLimiter(ratelimit.Rule{Name: "POST /v1/search", Limit: 100, Window: time.Minute,
		Algorithm: ratelimit.TokenBucket, Burst: 5})
	defer done()
	ctx := context.Background()
	admitted := 0
	var d ratelimit.Decision
	for {
		var err error
		if d, err = lim.Allow(ctx, "POST /v1/search", "user-42", t0); err != nil {
			panic(err)
		}
		if !d.Allowed {
			break
		}
		admitted++
	}
	fmt.Println("at once:", admitted, "retry after:", d.RetryAfter)
	d, err := lim.Allow(ctx, "POST /v1/search", "user-42", t0.Add(d.RetryAfter))
	if err != nil {
		panic(err)
	}
	fmt.Println("600 ms later:", d.Allowed)
	// Output:
	// at once: 5 retry after: 600ms
	// 600 ms later: true
}

// AllowAll checks a request against several rules, all or nothing: here a
// burst limit of 2 per second and a budget of 3 per minute. The third
// request, denied by the second's rule, consumes nothing under the
// minute's, so the fourth still fits in it; the fifth is denied by the
// minute's rule.
func ExampleLimiter_AllowAll() {
	lim, err := ratelimit.New(ratelimit.Config{
		Now: func() time.Time { return t0 }, // the requests' timestamps are checked against the clock
		Rules: []ratelimit.Rule{
			{Name: "per-second", Limit: 2, Window: time.Second, Mode: ratelimit.Local},
			{Name: "per-minute", Limit: 3, Window: time.Minute, Mode: ratelimit.Local},
		}})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	ctx := context.Background()
	checks := []ratelimit.Check{{Rule: "per-second", N: 1}, {Rule: "per-minute", N: 1}}
	for i, at := range []time.Duration{0, 0, 0, 2500 * time.Millisecond, 3500 * time.Millisecond} {
		d, err := lim.AllowAll(ctx, "alice", t0.Add(at), checks...)
		if err != nil {
			panic(err)
		}
		fmt.Printf("request %d at +%v: allowed %v, decided by %s, %d remaining\n", i+1, at, d.Allowed, d.Rule, d.Remaining)
	}
	// Output:
	// request 1 at +0s: allowed true, decided by per-second, 1 remaining
	// request 2 at +0s: allowed true, decided by per-second, 0 remaining
	// request 3 at +0s: allowed false, decided by per-second, 0 remaining
	// request 4 at +2.5s: allowed true, decided by per-minute, 0 remaining
	// request 5 at +3.5s: allowed false, decided by per-minute, 0 remaining
}

// Overrides give a rule another limit for the users of a class: a plan
// from the caller's own store (ClassOf), an allow list of unlimited
// internal callers and a deny list (Config.Classes). A class with a Limit
// keeps the rule's counters: here "free" users get 2 of the rule's 5.
func ExampleOverride() {
	plans := map[string]string{"alice": "free", "bob": "pro"} // the caller's cache of its plans
	lim, err := ratelimit.New(ratelimit.Config{
		Rules: []ratelimit.Rule{{
			Name: "search", Limit: 5, Window: time.Minute, Mode: ratelimit.Local,
			Classes: map[string]ratelimit.Override{
				"free":     {Limit: 2},
				"internal": {Unlimited: true},
				"blocked":  {Deny: true},
			},
		}},
		Classes: map[string]string{"svc-indexer": "internal", "user:666": "blocked"},
		ClassOf: func(ctx context.Context, user string) (string, error) {
			return plans[user], nil // "" (no class, as "bob" here: no "pro" class): the rule itself
		},
		Now: func() time.Time { return t0 },
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()

	for _, user := range []string{"alice", "bob", "svc-indexer", "user:666"} {
		admitted := 0
		var last ratelimit.Decision
		for range 6 {
			d, err := lim.Allow(context.Background(), "search", user, t0)
			if err != nil {
				panic(err)
			}
			if d.Allowed {
				admitted++
			}
			last = d
		}
		fmt.Printf("%s: %d of 6 admitted, then remaining=%d retry-after=%v\n", user, admitted, last.Remaining, last.RetryAfter)
	}
	// Output:
	// alice: 2 of 6 admitted, then remaining=0 retry-after=1m10s
	// bob: 5 of 6 admitted, then remaining=0 retry-after=52s
	// svc-indexer: 6 of 6 admitted, then remaining=9223372036854775807 retry-after=0s
	// user:666: 0 of 6 admitted, then remaining=0 retry-after=1m0s
}

// Reload changes the rules while requests flow. A rule keeps its users'
// counts across a Reload that keeps its ID (default: its Name), here
// through a rename and a new limit; a shadow rule counts but never denies,
// and RuleStats tell what it would have denied. (Local mode keeps the
// example free of Redis; Strict and Hybrid rules keep their counters in
// Redis the same way.)
func ExampleLimiter_Reload() {
	ctx := context.Background()
	lim, err := ratelimit.New(ratelimit.Config{
		Rules: []ratelimit.Rule{
			{Name: "orders", Limit: 2, Window: time.Minute, Mode: ratelimit.Local},
		},
		Now: func() time.Time { return t0 },
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	try := func(rule string) {
		d, err := lim.Allow(ctx, rule, "alice", t0)
		if err != nil {
			fmt.Println(rule, err)
			return
		}
		fmt.Println(rule, "allowed:", d.Allowed, "remaining:", d.Remaining)
	}
	try("orders")
	try("orders")
	try("orders")

	// Rename the rule and raise its limit: alice's two requests still count.
	// A second rule starts in shadow mode, to see what it would deny.
	err = lim.Reload([]ratelimit.Rule{
		{Name: "GET /v1/orders", ID: "orders", Limit: 3, Window: time.Minute, Mode: ratelimit.Local},
		{Name: "burst", Limit: 1, Window: time.Minute, Mode: ratelimit.Local, Shadow: true},
	})
	if err != nil {
		panic(err)
	}
	try("orders")
	try("GET /v1/orders")
	try("GET /v1/orders")
	try("burst")
	try("burst")
	for _, st := range lim.RuleStats() {
		if st.Shadow {
			fmt.Printf("%s (shadow): would admit %d, would deny %d\n", st.Name, st.ShadowAllowed, st.ShadowDenied)
		}
	}

	// A change of algorithm, mode or window under the same ID is refused:
	// the counters would be misread. Nothing changes.
	err = lim.Reload([]ratelimit.Rule{
		{Name: "GET /v1/orders", ID: "orders", Limit: 3, Window: time.Hour, Mode: ratelimit.Local},
	})
	fmt.Println(errors.Is(err, ratelimit.ErrInvalidArgument))
	// Output:
	// orders allowed: true remaining: 1
	// orders allowed: true remaining: 0
	// orders allowed: false remaining: 0
	// orders ratelimit: unknown rule: "orders"
	// GET /v1/orders allowed: true remaining: 0
	// GET /v1/orders allowed: false remaining: 0
	// burst allowed: true remaining: 0
	// burst allowed: true remaining: 0
	// burst (shadow): would admit 1, would deny 1
	// true
}
