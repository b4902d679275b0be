package ratelimit

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// TestRuleStatsOvershootAccounting: a sync pass's lease answer counts as a
// reconciliation, and as an overshoot by the excess of the key's weighted
// count over the limit (rounded up), unless the call failed or came back
// stale; every answer, failed ones included, counts in the pass's keys.
func TestRuleStatsOvershootAccounting(t *testing.T) {
	l := &Limiter{passes: newPassStats()}
	h := &hybrid{l: l}
	sw := testRule(Rule{Name: "sw", Limit: 10, Window: time.Second}, 1000)
	fw := testRule(Rule{Name: "fw", Limit: 10, Window: time.Second, Algorithm: FixedWindow}, 1000)
	mid := int64(7_000_500) // half way into a window

	h.reconcile(sw, global.LeaseResult{Now: mid, Prev: 10, Cur: 8}, nil) // 5 + 8 = 13: 3 over
	h.reconcile(sw, global.LeaseResult{Now: mid, Prev: 3, Cur: 9}, nil)  // 1.5 + 9 = 10.5: 1 over, rounded up
	h.reconcile(sw, global.LeaseResult{Now: mid, Prev: 10, Cur: 5}, nil) // 5 + 5: at the limit, not over
	h.reconcile(sw, global.LeaseResult{Now: mid, Prev: 0, Cur: 99}, errors.New("down"))
	h.reconcile(sw, global.LeaseResult{Now: mid, Cur: 99, Stale: true}, nil)
	h.reconcile(fw, global.LeaseResult{Now: mid, Prev: 100, Cur: 10}, nil) // the previous window does not count
	h.reconcile(fw, global.LeaseResult{Now: mid, Prev: 0, Cur: 12}, nil)

	c := &sw.stats
	require.Equal(t, int64(3), c.reconciled.Load())
	require.Equal(t, int64(2), c.overshoots.Load())
	require.Equal(t, int64(4), c.overSum.Load())
	require.Equal(t, int64(3), c.overMax.Load())
	c = &fw.stats
	require.Equal(t, int64(2), c.reconciled.Load())
	require.Equal(t, int64(1), c.overshoots.Load())
	require.Equal(t, int64(2), c.overSum.Load())
	require.Equal(t, int64(2), c.overMax.Load())
	require.Equal(t, int64(7), l.passes.keys.Load())

	// Far above the limit (instances configured apart), the count does
	// not overflow.
	big := testRule(Rule{Name: "big", Limit: 1, Window: 100 * 365 * 24 * time.Hour}, maxWindow.Milliseconds())
	require.Equal(t, int64(1<<40-1), big.overshoot(global.LeaseResult{Now: 1, Cur: 1 << 40}))
}

// TestRuleStatsLeaseCounts: an answered lease call counts its grant and
// the tokens its request gave back.
func TestRuleStatsLeaseCounts(t *testing.T) {
	var c ruleCounters
	req := global.LeaseRequest{Returns: [2]global.Return{{Window: 6, N: 2}, {Window: 7, N: 3}}}
	c.lease(req, global.LeaseResult{Granted: 4})
	c.lease(global.LeaseRequest{}, global.LeaseResult{})
	require.Equal(t, int64(4), c.granted.Load())
	require.Equal(t, int64(5), c.returned.Load())
}

// TestSyncStatsHistogram: observations land in the first bucket whose
// bound is at least them; the snapshot's buckets are cumulative.
func TestSyncStatsHistogram(t *testing.T) {
	h := newHistogram(passKeysBounds, 1)
	for _, v := range []int64{0, 0, 1, 2, 10, 11, 5_000_000} {
		h.observe(v)
	}
	s := h.snapshot()
	require.Equal(t, passKeysBounds, s.UpperBounds)
	require.Equal(t, []uint64{2, 3, 5, 6, 6, 6, 6, 6}, s.Counts)
	require.Equal(t, uint64(7), s.Count)
	require.Equal(t, float64(5_000_024), s.Sum)

	d := newHistogram(passSecondsBounds, 1e-9)
	d.observe(int64(3 * time.Millisecond))
	s = d.snapshot()
	require.Equal(t, uint64(0), s.Counts[2], "≤ 2.5 ms")
	require.Equal(t, uint64(1), s.Counts[3], "≤ 5 ms")
	require.InDelta(t, 0.003, s.Sum, 1e-12)
}

// TestStatsEvictions: keys beyond MaxLocalKeys are let go of by the cache,
// and Stats counts them.
func TestStatsEvictions(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	l := manualHybrid(t, true, c, prefix, Rule{Name: "e", Limit: 5, Window: time.Minute}, fixedClock(base), 8)
	for i := range 200 {
		for range 2 { // a key's first request in a while makes no State; its second does
			_, err := l.Allow(t.Context(), "e", fmt.Sprint("u", i), base)
			require.NoError(t, err)
		}
	}
	l.hybrid.cache.Wait()
	ev := l.Stats().Evictions
	require.Greater(t, ev, int64(100), "a cache of 8 keys holds at most 8 of 200")
	require.LessOrEqual(t, ev, int64(200))
}

// TestSyncStatsLoop: the Limiter's own loop times every pass, and Close's
// last one too: after Close the histograms count every pass Stats counts,
// and their keys every reconciliation.
func TestSyncStatsLoop(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	// A fixed clock (the ticker is real), so that no window ends under the
	// test and drops a lease.
	// A limit of 5 for 10 users and 100 requests or more: keys at their
	// limit are denied in process, and the passes report those requests.
	l, err := New(Config{Redis: c, KeyPrefix: prefix, SyncInterval: 2 * time.Millisecond, MaxLocalKeys: 64, Now: fixedClock(base),
		Rules: []Rule{{Name: "p", Limit: 5, Window: time.Minute}}})
	require.NoError(t, err)
	for i := 0; i < 100 || l.Stats().SyncPasses < 5; i++ {
		_, err := l.Allow(t.Context(), "p", fmt.Sprint("u", i%10), base)
		require.NoError(t, err)
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, l.Close())
	st, ss, rs := l.Stats(), l.SyncStats(), l.RuleStats()[0]
	require.Equal(t, uint64(st.SyncPasses), ss.Duration.Count)
	require.Equal(t, uint64(st.SyncPasses), ss.Keys.Count)
	require.Greater(t, ss.Duration.Sum, 0.0)
	require.GreaterOrEqual(t, ss.Keys.Sum, float64(rs.Reconciliations), "every reconciliation is a key of a pass")
	require.Positive(t, rs.Reconciliations)
	// (≥: a call that comes back stale leaves its returns counted, unspent.)
	require.GreaterOrEqual(t, rs.LeaseGranted, rs.LeaseReturned+rs.LocalAllowed, "no token spent that was not leased")
}

// BenchmarkRuleStatsReconcile: what the accounting adds to a sync pass per
// key sent (not to any decision).
func BenchmarkRuleStatsReconcile(b *testing.B) {
	l := &Limiter{passes: newPassStats()}
	h := &hybrid{l: l}
	r := testRule(Rule{Name: "b", Limit: 10, Window: time.Second}, 1000)
	res := global.LeaseResult{Now: 7_000_500, Prev: 10, Cur: 8}
	for b.Loop() {
		h.reconcile(r, res, nil)
	}
}

// TestRuleStatsAddUpToStats: with decisions on two hybrid rules and a
// strict one from several goroutines while passes run, the per-rule counts
// after Close add up to Stats's totals, and to every decision made.
func TestRuleStatsAddUpToStats(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, MaxLocalKeys: 256,
		Rules: []Rule{
			{Name: "a", Limit: 50, Window: time.Minute},
			{Name: "b", Limit: 7, Window: time.Minute, Algorithm: FixedWindow},
			{Name: "s", Limit: 20, Window: time.Minute, Mode: Strict},
		}})
	require.NoError(t, err)
	const workers, each = 4, 150
	var wg, syncs sync.WaitGroup
	stop := make(chan struct{})
	syncs.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				require.NoError(t, l.Sync(t.Context()))
				time.Sleep(time.Millisecond)
			}
		}
	})
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				rule := []string{"a", "b", "s"}[i%3]
				_, err := l.Allow(t.Context(), rule, fmt.Sprint("u", (w+i)%5), base)
				require.NoError(t, err)
			}
		})
	}
	wg.Wait()
	close(stop)
	syncs.Wait()
	require.NoError(t, l.Close())

	st := l.Stats()
	var hyb, strict RuleStats
	for _, r := range l.RuleStats() {
		require.Zero(t, r.FallbackAllowed+r.FallbackDenied)
		dst := &hyb
		if r.Mode == Strict {
			dst = &strict
			require.Zero(t, r.LocalAllowed+r.LocalDenied+r.LeaseGranted+r.Reconciliations)
		} else {
			// A call that comes back stale leaves its returns counted,
			// unspent, in Redis: they are neither spent nor returned.
			require.GreaterOrEqual(t, r.LeaseGranted, r.LeaseReturned+r.LocalAllowed, "rule %s: no token spent that was not leased", r.Name)
			require.Zero(t, r.Overshoots, "rule %s: leases never overshoot", r.Name)
		}
		dst.LocalAllowed += r.LocalAllowed
		dst.LocalDenied += r.LocalDenied
		dst.RedisAllowed += r.RedisAllowed
		dst.RedisDenied += r.RedisDenied
	}
	require.Equal(t, st.HybridInProcessAllowed, hyb.LocalAllowed)
	require.Equal(t, st.HybridInProcessDenied, hyb.LocalDenied)
	require.Equal(t, st.HybridRedisAllowed, hyb.RedisAllowed)
	require.Equal(t, st.HybridRedisDenied, hyb.RedisDenied)
	require.Equal(t, st.StrictAllowed, strict.RedisAllowed)
	require.Equal(t, st.StrictDenied, strict.RedisDenied)
	total := hyb.LocalAllowed + hyb.LocalDenied + hyb.RedisAllowed + hyb.RedisDenied + strict.RedisAllowed + strict.RedisDenied
	require.Equal(t, int64(workers*each), total)
}
