package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHybridHotKeysOutlastAFlood: keys decided from the front table (which
// ristretto never sees) stay resident through a flood of one-request ids
// many times the cache's size: the flood's ids are first sightings, which
// the doorkeeper sends to Redis without a State (Cache.FirstSight), so they
// never reach ristretto; and each sync pass tells ristretto of the hot
// keys' uses. A gateway under a fake-id flood keeps deciding its real users
// locally.
//
// It runs under -race too. Before the doorkeeper the flood's ids went into
// ristretto, whose lossy access buffers drop most records under the race
// detector's slowdown, so that 27–39 of the 100 hot keys stayed and the
// test carried a !race build tag; with it, 100 of 100 stay, with and
// without -race.
func TestHybridHotKeysOutlastAFlood(t *testing.T) {
	forEachFront(t, testHybridHotKeysOutlastAFlood)
}

func testHybridHotKeysOutlastAFlood(t *testing.T, front bool) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	rule := Rule{Name: "flood", Limit: 1 << 20, Window: time.Hour}
	now := base
	const (
		maxKeys = 500
		hot     = 100
		flood   = 20 * maxKeys
	)
	l := manualHybrid(t, front, c, prefix, rule, func() time.Time { return now }, maxKeys)
	resident := func() int {
		n := 0
		for u := range hot {
			ref := l.hybrid.cache.Get(fmt.Sprint("hot-", u), 0)
			if s := l.hybrid.cache.State(ref); s != nil && !s.Orphaned() {
				n++
			}
		}
		return n
	}
	decideHot := func() {
		for u := range hot {
			for range 20 {
				d, err := l.Allow(ctx, rule.Name, fmt.Sprint("hot-", u), now)
				require.NoError(t, err)
				require.True(t, d.Allowed)
			}
		}
	}
	for range 5 { // the hot keys settle in the front table
		decideHot()
		now = now.Add(100 * time.Millisecond)
		require.NoError(t, l.Sync(ctx))
	}
	require.Equal(t, hot, resident(), "hot keys resident before the flood")
	for i := range flood {
		_, err := l.Allow(ctx, rule.Name, fmt.Sprint("fake-", i), now)
		require.NoError(t, err)
		if i%(flood/20) == 0 {
			decideHot()
			now = now.Add(100 * time.Millisecond)
			require.NoError(t, l.Sync(ctx))
		}
	}
	l.hybrid.cache.Wait()
	got := resident()
	t.Logf("%d of %d hot keys resident after %d fake ids; %+v", got, hot, flood, l.Stats())
	require.GreaterOrEqual(t, got, hot*97/100, "hot keys resident after the flood")
}
