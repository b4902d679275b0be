package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Rule indexes in rules.
const (
	getOrders  = 0 // 10 per second, sliding window, strict
	postOrders = 1 // 5 per second, token bucket, strict
	getCatalog = 2 // 20 per second, sliding window, local
)

func TestRulesAreWhatTheTestsAssume(t *testing.T) {
	want := []struct {
		limit int64
		algo  ratelimit.Algorithm
		mode  ratelimit.Mode
	}{
		getOrders:  {10, ratelimit.SlidingWindow, ratelimit.Strict},
		postOrders: {5, ratelimit.TokenBucket, ratelimit.Strict},
		getCatalog: {20, ratelimit.SlidingWindow, ratelimit.Local},
	}
	if len(rules) != len(want) {
		t.Fatalf("%d rules, want %d", len(rules), len(want))
	}
	for i, w := range want {
		r := rules[i]
		if r.Limit != w.limit || r.Window != time.Second || r.Algorithm != w.algo || r.Mode != w.mode {
			t.Errorf("rule %d = %+v, want limit %d per 1s, %v, %v", i, r, w.limit, w.algo, w.mode)
		}
	}
	if users[0].load >= 0 {
		t.Errorf("users[0] = %+v, want the hot user", users[0])
	}
}

func TestRunIsDeterministic(t *testing.T) {
	ctx := context.Background()
	var a, b bytes.Buffer
	if err := run(ctx, defaultOptions(), &a); err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, defaultOptions(), &b); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Fatalf("two runs differ:\n%s\n---\n%s", a.String(), b.String())
	}
	out := a.String()
	for _, s := range []string{"embedded miniredis", "GET /v1/orders", "POST /v1/orders", "GET /v1/catalog", "\nsummary: "} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	// Six lines of setup, a blank line, two header lines, a row per second
	// and user, a blank line and the summary.
	if got, want := strings.Count(out, "\n"), 6+1+2+5*len(users)+1+1; got != want {
		t.Errorf("output has %d lines, want %d:\n%s", got, want, out)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	for _, o := range []options{
		{Seconds: 0, Instances: 3, RPS: 50},
		{Seconds: 5, Instances: 0, RPS: 50},
		{Seconds: 5, Instances: 3, RPS: 0},
	} {
		if err := run(context.Background(), o, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%+v) = nil, want an error", o)
		}
	}
}

// TestSlidingWindowIsExactAcrossInstances replays every request of the
// strict sliding-window rule through the window formula and requires each
// decision the three instances got from the shared store to be the one a
// single limiter would make:
//
//	admit iff prev·(W − elapsed) + (cur + 1)·W ≤ limit·W
//
// with cur and prev the admitted counts of the user's current and previous
// aligned windows.
func TestSlidingWindowIsExactAcrossInstances(t *testing.T) {
	opts := defaultOptions()
	sim, err := simulate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	const w = int64(1000)
	limit := rules[getOrders].Limit
	admitted := make([][]int64, len(users)) // [user][second]
	for u := range admitted {
		admitted[u] = make([]int64, opts.Seconds)
	}
	served := make(map[int]bool) // instances that admitted the hot user
	for i, e := range sim.events {
		if e.rule != getOrders {
			continue
		}
		if i > 0 && e.at < sim.events[i-1].at {
			t.Fatalf("event %d at %d ms precedes event %d", i, e.at, i-1)
		}
		sec, elapsed := e.at/w, e.at%w
		cur := admitted[e.user][sec]
		prev := int64(0)
		if sec > 0 {
			prev = admitted[e.user][sec-1]
		}
		want := prev*(w-elapsed)+(cur+1)*w <= limit*w
		if e.decision.Allowed != want {
			t.Fatalf("event %d (%s at %d ms, instance %d, prev %d, cur %d): allowed = %v, want %v",
				i, users[e.user].id, e.at, e.instance, prev, cur, e.decision.Allowed, want)
		}
		if want {
			admitted[e.user][sec]++
			if e.user == 0 {
				served[e.instance] = true
			}
		}
	}

	hot := admitted[0]
	var total int64
	for s, n := range hot {
		if n > limit {
			t.Errorf("second %d: hot user admitted %d, more than the limit %d", s, n, limit)
		}
		total += n
	}
	n := int64(opts.Seconds)
	if total > limit*n || total < limit*(n-1) {
		t.Errorf("hot user admitted %d in %d s, want between %d and %d", total, n, limit*(n-1), limit*n)
	}
	if hot[0] != limit {
		t.Errorf("first second: hot user admitted %d, want the full %d", hot[0], limit)
	}
	if len(served) != opts.Instances {
		t.Errorf("hot user admitted by %d instances, want all %d", len(served), opts.Instances)
	}
}

func TestDenialsCarryRetryAfter(t *testing.T) {
	sim, err := simulate(context.Background(), defaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for i, e := range sim.events {
		d := e.decision
		if d.Limit != rules[e.rule].Limit {
			t.Fatalf("event %d: Limit = %d, want %d", i, d.Limit, rules[e.rule].Limit)
		}
		if d.Allowed {
			if d.RetryAfter != 0 {
				t.Fatalf("event %d: allowed with RetryAfter %v", i, d.RetryAfter)
			}
			continue
		}
		denied++
		if d.RetryAfter <= 0 || d.RetryAfterSeconds() < 1 || d.RetryAfter > 2*time.Second {
			t.Fatalf("event %d (%s on %s): denied with RetryAfter %v (%d s), want in (0, 2s] and ≥ 1 s",
				i, users[e.user].id, rules[e.rule].Name, d.RetryAfter, d.RetryAfterSeconds())
		}
	}
	if denied == 0 {
		t.Fatal("no request was denied")
	}
}

// TestTokenBucketBound: GCRA admits at most a full bucket plus the refill
// over the elapsed time: limit + limit·T/W over T.
func TestTokenBucketBound(t *testing.T) {
	opts := defaultOptions()
	sim, err := simulate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	limit := rules[postOrders].Limit
	var first, last, total int64 = -1, 0, 0
	var perSecond = make([]int64, opts.Seconds)
	for _, e := range sim.events {
		if e.rule != postOrders || e.user != 0 || !e.decision.Allowed {
			continue
		}
		if first < 0 {
			first = e.at
		}
		last = e.at
		total++
		perSecond[e.at/1000]++
	}
	if bound := limit + limit*(last-first)/1000; total > bound {
		t.Errorf("hot user admitted %d over %d ms, more than %d", total, last-first, bound)
	}
	// Not "limit per window": the first second holds the burst and its refill.
	if perSecond[0] <= limit {
		t.Errorf("first second admitted %d, want more than the bucket's %d", perSecond[0], limit)
	}
}

// TestLocalRuleIsPerInstance: the local rule's state lives in each
// instance, so together they admit more than the limit, but each instance
// alone never does within an aligned window.
func TestLocalRuleIsPerInstance(t *testing.T) {
	opts := defaultOptions()
	sim, err := simulate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	limit := rules[getCatalog].Limit
	perInstance := make([][]int64, opts.Instances) // [instance][second]
	for i := range perInstance {
		perInstance[i] = make([]int64, opts.Seconds)
	}
	for _, e := range sim.events {
		if e.rule == getCatalog && e.user == 0 && e.decision.Allowed {
			perInstance[e.instance][e.at/1000]++
		}
	}
	for s := range opts.Seconds {
		var sum int64
		for i := range perInstance {
			n := perInstance[i][s]
			if n > limit {
				t.Errorf("second %d, instance %d: admitted %d, more than %d", s, i, n, limit)
			}
			sum += n
		}
		if sum <= limit {
			t.Errorf("second %d: the instances admitted %d together, want more than one instance's %d", s, sum, limit)
		}
	}
}

// TestStrictIgnoresInstanceCount: strict decisions live in the shared store,
// so spreading the same traffic over one or five instances changes none of
// them.
func TestStrictIgnoresInstanceCount(t *testing.T) {
	ctx := context.Background()
	one, five := defaultOptions(), defaultOptions()
	one.Instances, five.Instances = 1, 5
	a, err := simulate(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	b, err := simulate(ctx, five)
	if err != nil {
		t.Fatal(err)
	}
	requireSameStrictDecisions(t, a, b)
}

// TestRealRedisAgrees runs the demo against the Redis at REDIS_ADDR (default
// 127.0.0.1:6379) and requires the same strict decisions as on miniredis.
func TestRealRedisAgrees(t *testing.T) {
	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		addr = "127.0.0.1:6379"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: addr})
	err := c.Ping(ctx).Err()
	_ = c.Close()
	if err != nil {
		t.Skipf("no Redis at %s: %v", addr, err)
	}

	embedded, err := simulate(context.Background(), defaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	opts := defaultOptions()
	opts.Redis = addr
	remote, err := simulate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	requireSameStrictDecisions(t, embedded, remote)
}

func requireSameStrictDecisions(t *testing.T, a, b *simulation) {
	t.Helper()
	if len(a.events) != len(b.events) {
		t.Fatalf("%d events vs %d", len(a.events), len(b.events))
	}
	for i := range a.events {
		ea, eb := a.events[i], b.events[i]
		if ea.at != eb.at || ea.user != eb.user || ea.rule != eb.rule {
			t.Fatalf("event %d: different requests %+v vs %+v", i, ea, eb)
		}
		if rules[ea.rule].Mode == ratelimit.Strict && ea.decision != eb.decision {
			t.Fatalf("event %d (%s on %s at %d ms): %+v vs %+v",
				i, users[ea.user].id, rules[ea.rule].Name, ea.at, ea.decision, eb.decision)
		}
	}
}
