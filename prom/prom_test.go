package prom_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
	"github.com/drl-go/distributed-rate-limiter/prom"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var base = time.UnixMilli(1_700_000_000_000)

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// scrape returns the registry's series of the named families in the text
// format, sorted as testutil prints them.
func scrape(t *testing.T, reg *prometheus.Registry, names ...string) string {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var b strings.Builder
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, mf := range mfs {
		if !want[mf.GetName()] {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			fmt.Fprintf(&b, "%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), v)
		}
	}
	return b.String()
}

// TestPromDecisions: known decisions through a hybrid, a strict and a
// local rule show in the scraped registry per rule, mode, source and
// result, exactly, together with the leases and the sync pass.
func TestPromDecisions(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, MaxLocalKeys: 64,
		Rules: []ratelimit.Rule{
			{Name: "h", Limit: 1, Window: time.Minute, Algorithm: ratelimit.FixedWindow},
			{Name: "s", Limit: 1, Window: time.Minute, Mode: ratelimit.Strict},
			{Name: "l", Limit: 2, Window: time.Minute, Mode: ratelimit.Local},
		}})
	require.NoError(t, err)
	defer l.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prom.NewCollector(l))

	allow := func(rule, user string, times int) {
		for range times {
			_, err := l.Allow(ctx, rule, user, base)
			require.NoError(t, err)
		}
	}
	for _, u := range []string{"u1", "u2", "u3"} {
		allow("h", u, 3)
	}
	allow("s", "u", 2)
	allow("l", "u", 3)
	require.NoError(t, l.Refund(ctx, "s", "u", base, 1))
	require.NoError(t, l.Sync(ctx))

	st := l.Stats()
	rs := l.RuleStats()
	require.Len(t, rs, 3)
	h := rs[0]
	// Each hybrid key: a first request that Redis admits (a key not seen
	// lately is decided in Redis without local state), a second that
	// Redis denies (the key now has a State, which learns the counts), a
	// third denied in process from those counts. The pass reports the
	// three keys' denied requests.
	require.Equal(t, ratelimit.RuleStats{Name: "h", ID: "h", Mode: ratelimit.Hybrid, Limit: 1,
		LocalDenied: 3, RedisAllowed: 3, RedisDenied: 3, Reconciliations: 3}, h)
	require.Equal(t, ratelimit.RuleStats{Name: "s", ID: "s", Mode: ratelimit.Strict, Limit: 1, RedisAllowed: 1, RedisDenied: 1, GivenBack: 1}, rs[1])
	require.Equal(t, ratelimit.RuleStats{Name: "l", ID: "l", Mode: ratelimit.Local, Limit: 2, LocalAllowed: 2, LocalDenied: 1}, rs[2])
	// The per-rule counts add up to Stats's totals.
	require.Equal(t, st.HybridInProcessAllowed, h.LocalAllowed)
	require.Equal(t, st.HybridInProcessDenied, h.LocalDenied)
	require.Equal(t, st.HybridRedisAllowed, h.RedisAllowed)
	require.Equal(t, st.HybridRedisDenied, h.RedisDenied)

	want := `
# HELP ratelimit_decisions_total Decisions made, by rule, its mode (local, hybrid, strict), source (local: in process; redis: Redis answered; fallback: the rule's failure policy, Redis could not answer; shadow: a shadow rule's would-be decisions, which let every request through and are also counted under their real source) and result (allowed, denied). A hybrid rule's local decisions are counted at the sync pass after them.
# TYPE ratelimit_decisions_total counter
ratelimit_decisions_total{mode="hybrid",result="allowed",rule="h",source="fallback"} 0
ratelimit_decisions_total{mode="hybrid",result="allowed",rule="h",source="local"} 0
ratelimit_decisions_total{mode="hybrid",result="allowed",rule="h",source="redis"} 3
ratelimit_decisions_total{mode="hybrid",result="denied",rule="h",source="fallback"} 0
ratelimit_decisions_total{mode="hybrid",result="denied",rule="h",source="local"} 3
ratelimit_decisions_total{mode="hybrid",result="denied",rule="h",source="redis"} 3
ratelimit_decisions_total{mode="local",result="allowed",rule="l",source="local"} 2
ratelimit_decisions_total{mode="local",result="denied",rule="l",source="local"} 1
ratelimit_decisions_total{mode="strict",result="allowed",rule="s",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="s",source="redis"} 1
ratelimit_decisions_total{mode="strict",result="denied",rule="s",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="denied",rule="s",source="redis"} 1
# HELP ratelimit_given_back_total Admissions of the rule given back: by Refund, and by AllowAll when another of the request's rules denied or failed. ratelimit_decisions_total still counts them as allowed.
# TYPE ratelimit_given_back_total counter
ratelimit_given_back_total{rule="h"} 0
ratelimit_given_back_total{rule="l"} 0
ratelimit_given_back_total{rule="s"} 1
# HELP ratelimit_lease_tokens_total Tokens of hybrid rules leased to this instance (op granted) and given back unspent (op returned).
# TYPE ratelimit_lease_tokens_total counter
ratelimit_lease_tokens_total{op="granted",rule="h"} 0
ratelimit_lease_tokens_total{op="returned",rule="h"} 0
# HELP ratelimit_reconciliations_total Lease answers of sync passes for the hybrid rule's keys.
# TYPE ratelimit_reconciliations_total counter
ratelimit_reconciliations_total{rule="h"} 3
# HELP ratelimit_overshoot_reconciliations_total Reconciliations in which the key's global weighted count, as Redis reported it, exceeded the rule's limit.
# TYPE ratelimit_overshoot_reconciliations_total counter
ratelimit_overshoot_reconciliations_total{rule="h"} 0
# HELP ratelimit_resident_keys Hybrid key states held in the local cache now (an estimate that errs high; a key's first request makes none).
# TYPE ratelimit_resident_keys gauge
ratelimit_resident_keys 3
# HELP ratelimit_sync_passes_total Sync passes run, by outcome (ok, error).
# TYPE ratelimit_sync_passes_total counter
ratelimit_sync_passes_total{outcome="error"} 0
ratelimit_sync_passes_total{outcome="ok"} 1
# HELP ratelimit_breaker_state Each circuit breaker's state: 0 closed, 1 open, 2 half-open; node is the master's address on a cluster, empty for a single node.
# TYPE ratelimit_breaker_state gauge
ratelimit_breaker_state{node=""} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "ratelimit_decisions_total",
		"ratelimit_given_back_total", "ratelimit_lease_tokens_total", "ratelimit_reconciliations_total", "ratelimit_overshoot_reconciliations_total",
		"ratelimit_sync_passes_total", "ratelimit_breaker_state", "ratelimit_resident_keys"))

	// The pass histograms: one pass, which sent the three hybrid keys.
	mfs, err := reg.Gather()
	require.NoError(t, err)
	hist := map[string]uint64{}
	sums := map[string]float64{}
	for _, mf := range mfs {
		if h := mf.GetMetric()[0].GetHistogram(); h != nil {
			hist[mf.GetName()], sums[mf.GetName()] = h.GetSampleCount(), h.GetSampleSum()
		}
	}
	require.Equal(t, map[string]uint64{"ratelimit_sync_pass_duration_seconds": 1, "ratelimit_sync_pass_keys": 1}, hist)
	require.Equal(t, float64(3), sums["ratelimit_sync_pass_keys"])
	require.Greater(t, sums["ratelimit_sync_pass_duration_seconds"], 0.0)

	n, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Equal(t, 41, n, "series")
}

// TestPromFallback: with Redis refusing connections, each policy's
// decisions count under source fallback, per rule.
func TestPromFallback(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Redis: rdb, Now: fixedClock(base), ManualSync: true, Timeout: 100 * time.Millisecond,
		Rules: []ratelimit.Rule{
			{Name: "open", Limit: 5, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailOpen},
			{Name: "closed", Limit: 5, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailClosed},
			{Name: "local", Limit: 2, Window: time.Minute, OnFailure: ratelimit.FailLocal},
		}})
	require.NoError(t, err)
	defer l.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prom.NewCollector(l))
	for _, rule := range []string{"open", "closed", "local"} {
		for range 3 {
			_, err := l.Allow(ctx, rule, "u", base)
			require.NoError(t, err)
		}
	}
	got := scrape(t, reg, "ratelimit_decisions_total", "ratelimit_health")
	require.Equal(t, `ratelimit_decisions_total{mode="hybrid",result="allowed",rule="local",source="fallback"} 2
ratelimit_decisions_total{mode="hybrid",result="allowed",rule="local",source="local"} 0
ratelimit_decisions_total{mode="hybrid",result="allowed",rule="local",source="redis"} 0
ratelimit_decisions_total{mode="hybrid",result="denied",rule="local",source="fallback"} 1
ratelimit_decisions_total{mode="hybrid",result="denied",rule="local",source="local"} 0
ratelimit_decisions_total{mode="hybrid",result="denied",rule="local",source="redis"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="closed",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="closed",source="redis"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="open",source="fallback"} 3
ratelimit_decisions_total{mode="strict",result="allowed",rule="open",source="redis"} 0
ratelimit_decisions_total{mode="strict",result="denied",rule="closed",source="fallback"} 3
ratelimit_decisions_total{mode="strict",result="denied",rule="closed",source="redis"} 0
ratelimit_decisions_total{mode="strict",result="denied",rule="open",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="denied",rule="open",source="redis"} 0
ratelimit_health{} 1
`, got)
	st := l.Stats()
	require.Equal(t, int64(3), st.FallbackOpen)
	require.Equal(t, int64(3), st.FallbackClosed)
	require.Equal(t, int64(2), st.FallbackLocalAllowed)
	require.Equal(t, int64(1), st.FallbackLocalDenied)
}

// TestPromOvershoot provokes a real overshoot: two instances configured
// with different limits for one hybrid rule. B (limit 10) admits 8 and
// closes, giving its leases back, so that Redis holds 8; A (limit 2) is
// denied by Redis twice (its first request has no State), then in process
// from the counts Redis told it, and its
// sync pass, reporting that request, gets a lease answer of 8 against its
// limit of 2: one overshooting reconciliation of 6 tokens, which is what
// Redis holds less the limit.
func TestPromOvershoot(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	ctx := context.Background()
	mk := func(limit int64) *ratelimit.Limiter {
		l, err := ratelimit.New(ratelimit.Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true,
			Rules: []ratelimit.Rule{{Name: "o", Limit: limit, Window: time.Minute, Algorithm: ratelimit.FixedWindow}}})
		require.NoError(t, err)
		return l
	}
	b := mk(10)
	for range 8 {
		d, err := b.Allow(ctx, "o", "u", base)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	require.NoError(t, b.Close())
	bs := b.RuleStats()[0]
	require.Equal(t, int64(8), bs.LocalAllowed+bs.RedisAllowed)
	require.Equal(t, bs.LeaseGranted, bs.LeaseReturned+bs.LocalAllowed, "every leased token was spent or returned")
	require.Zero(t, bs.Overshoots)

	a := mk(2)
	defer a.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prom.NewCollector(a))
	for range 3 { // the first without a State, the second learns the counts, the third is denied in process
		d, err := a.Allow(ctx, "o", "u", base)
		require.NoError(t, err)
		require.False(t, d.Allowed)
	}
	as := a.RuleStats()[0]
	require.Equal(t, int64(2), as.RedisDenied)
	require.NoError(t, a.Sync(ctx))
	require.Equal(t, int64(1), a.RuleStats()[0].LocalDenied)

	held, err := c.HGet(ctx, global.Key(prefix, "o", "u"), "c").Int64()
	require.NoError(t, err)
	require.Equal(t, int64(8), held)
	as = a.RuleStats()[0]
	require.Equal(t, int64(1), as.Reconciliations)
	require.Equal(t, int64(1), as.Overshoots)
	require.Equal(t, held-2, as.OvershootTokens)
	require.Equal(t, held-2, as.MaxOvershoot)
	want := `
# HELP ratelimit_overshoot_tokens_total Sum over overshooting reconciliations of the count's excess over the limit, in tokens rounded up.
# TYPE ratelimit_overshoot_tokens_total counter
ratelimit_overshoot_tokens_total{rule="o"} 6
# HELP ratelimit_overshoot_max_tokens The largest excess over the limit seen at a reconciliation since the Limiter started (never reset).
# TYPE ratelimit_overshoot_max_tokens gauge
ratelimit_overshoot_max_tokens{rule="o"} 6
# HELP ratelimit_overshoot_reconciliations_total Reconciliations in which the key's global weighted count, as Redis reported it, exceeded the rule's limit.
# TYPE ratelimit_overshoot_reconciliations_total counter
ratelimit_overshoot_reconciliations_total{rule="o"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "ratelimit_overshoot_tokens_total",
		"ratelimit_overshoot_max_tokens", "ratelimit_overshoot_reconciliations_total"))
}

// TestPromScrapeWhileDeciding: scrapes run while decisions and the sync
// loop do (the race detector watches), counters never go down between
// scrapes, and after Close the decisions add up to those made.
func TestPromScrapeWhileDeciding(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	l, err := ratelimit.New(ratelimit.Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), SyncInterval: 2 * time.Millisecond, MaxLocalKeys: 64,
		Rules: []ratelimit.Rule{
			{Name: "h", Limit: 20, Window: time.Minute},
			{Name: "s", Limit: 20, Window: time.Minute, Mode: ratelimit.Strict},
		}})
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prom.NewCollector(l))
	total := func() float64 {
		mfs, err := reg.Gather()
		require.NoError(t, err)
		var sum float64
		for _, mf := range mfs {
			if mf.GetName() == "ratelimit_decisions_total" {
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
			}
		}
		return sum
	}
	const workers, each = 2, 300
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				_, err := l.Allow(context.Background(), []string{"h", "s"}[i%2], fmt.Sprint("u", (w+i)%7), base)
				require.NoError(t, err)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	last := 0.0
	for scraping := true; scraping; {
		select {
		case <-done:
			scraping = false
		default:
			n := total()
			require.GreaterOrEqual(t, n, last, "counters never go down")
			last = n
			time.Sleep(time.Millisecond)
		}
	}
	require.NoError(t, l.Close())
	require.Equal(t, float64(workers*each), total())
}

// TestPromShadow: a shadow rule at limit 2 lets 5 requests through; the
// scraped registry shows its 2 admissions and 3 would-be denials under
// source "shadow", beside the real decisions, and a rule that is not a
// shadow has no shadow series.
func TestPromShadow(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	ctx := context.Background()
	l, err := ratelimit.New(ratelimit.Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true,
		Rules: []ratelimit.Rule{
			{Name: "shadow", Limit: 2, Window: time.Minute, Mode: ratelimit.Strict, Shadow: true},
			{Name: "real", Limit: 2, Window: time.Minute, Mode: ratelimit.Local},
		}})
	require.NoError(t, err)
	defer l.Close()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(prom.NewCollector(l))
	for range 5 {
		d, err := l.Allow(ctx, "shadow", "u", base)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	_, err = l.Allow(ctx, "real", "u", base)
	require.NoError(t, err)
	require.Equal(t, `ratelimit_decisions_total{mode="local",result="allowed",rule="real",source="local"} 1
ratelimit_decisions_total{mode="local",result="denied",rule="real",source="local"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="shadow",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="allowed",rule="shadow",source="redis"} 2
ratelimit_decisions_total{mode="strict",result="allowed",rule="shadow",source="shadow"} 2
ratelimit_decisions_total{mode="strict",result="denied",rule="shadow",source="fallback"} 0
ratelimit_decisions_total{mode="strict",result="denied",rule="shadow",source="redis"} 3
ratelimit_decisions_total{mode="strict",result="denied",rule="shadow",source="shadow"} 3
`, scrape(t, reg, "ratelimit_decisions_total"))
}
