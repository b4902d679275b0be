package ratelimit

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
	"github.com/drl-go/distributed-rate-limiter/newkeys"
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

// floodIDs is the number of fake ids of TestFloodLeavesLegitDecisions:
// 100k in the normal suite (with and without -race); FLOOD_IDS=1000000
// runs the 1M.
func floodIDs(t *testing.T) int {
	if s := os.Getenv("FLOOD_IDS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err)
		return n
	}
	return 100_000
}

// TestFloodLeavesLegitDecisions: a flood of fake ids at 10 times the
// legitimate rate (10 one-off ids after each legitimate request) changes
// none of the legitimate users' decisions, compared with a run without the
// flood (the oracle); the hot users stay resident; the heap grows by less
// than floodHeapBound; and the flood's Redis keys are at most one per fake
// id, each with a TTL of at most two windows.
func TestFloodLeavesLegitDecisions(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	rule := Rule{Name: "flood", Limit: 60, Window: time.Minute, Mode: Hybrid}
	const (
		maxKeys = 1000
		legit   = 50
		perFake = 10
	)
	fakes := floodIDs(t)
	steps := fakes / perFake
	run := func(flood bool) ([]bool, *Limiter, string) {
		prefix := testPrefix(t, c)
		now := base
		l := manualHybrid(t, true, c, prefix, rule, func() time.Time { return now }, maxKeys)
		got := make([]bool, 0, steps)
		fake := 0
		for i := range steps {
			// A step a millisecond: each legitimate user asks every 50 ms,
			// more often than the sync interval (100 ms), as a user whose
			// State pays for itself does (Cache.FirstSight forgets rarer ones).
			now = base.Add(time.Duration(i) * time.Millisecond)
			d, err := l.Allow(ctx, rule.Name, fmt.Sprint("legit-", i%legit), now)
			require.NoError(t, err)
			got = append(got, d.Allowed)
			if flood {
				for range perFake {
					_, err := l.Allow(ctx, rule.Name, fmt.Sprint("fake-", fake), now)
					require.NoError(t, err)
					fake++
				}
			}
			if i%100 == 99 {
				require.NoError(t, l.Sync(ctx))
			}
		}
		return got, l, prefix
	}
	start := time.Now()
	oracle, _, _ := run(false)
	t.Logf("oracle: %d legitimate decisions in %v", len(oracle), time.Since(start))
	require.Contains(t, oracle, false, "the oracle denies some requests")
	require.Contains(t, oracle, true, "the oracle admits some requests")

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start = time.Now()
	got, l, prefix := run(true)
	took := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	require.Equal(t, oracle, got, "the legitimate users' decisions under the flood")

	l.hybrid.cache.Wait()
	resident := 0
	for u := range legit {
		ref := l.hybrid.cache.Get(fmt.Sprint("legit-", u), 0)
		if s := l.hybrid.cache.State(ref); s != nil && !s.Orphaned() {
			resident++
		}
	}
	require.Equal(t, legit, resident, "legitimate users resident after the flood")

	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	require.Less(t, growth, int64(floodHeapBound(maxKeys)), "heap growth")

	keys, err := redistest.ScanKeys(ctx, c, prefix+":{*")
	require.NoError(t, err)
	require.LessOrEqual(t, len(keys), 2*(fakes+legit), "Redis keys under the flood's prefix")
	pipe := c.Pipeline()
	ttls := make([]*redis.DurationCmd, len(keys))
	for i, k := range keys {
		ttls[i] = pipe.PTTL(ctx, k)
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	expired := 0
	for i, cmd := range ttls {
		if cmd.Val() == -2 { // gone since the scan: expired (a long run outlasts the TTL of its first keys)
			expired++
			continue
		}
		require.GreaterOrEqual(t, cmd.Val(), time.Duration(0), "key %s has no TTL", keys[i]) // 0: expiring this ms
		require.LessOrEqual(t, cmd.Val(), 2*rule.Window, "TTL of %s", keys[i])
	}
	t.Logf("%d fake ids, %d legitimate decisions in %v; heap +%d B (bound %d); %d Redis keys (%d expired since the scan); %+v",
		fakes, len(got), took, growth, floodHeapBound(maxKeys), len(keys), expired, l.Stats())
}

// floodHeapBound is the most the heap may grow under the flood: the local
// state of maxKeys keys at 4 KiB each (a State and its share of ristretto's
// and the front table's structures, generously) and 16 MiB for the
// doorkeeper and the Redis client's buffers; none of it grows with the
// number of fake ids.
func floodHeapBound(maxKeys int64) int64 { return maxKeys*4<<10 + 16<<20 }

// TestFloodThroughTheGate: with a newkeys.Gate in front of the Limiter (5
// identities never seen per client network and second), a flood of 10 fake
// ids per legitimate request from 8 networks reaches Redis only as far as
// the gate lets it: the Redis keys are exactly the legitimate users' plus
// the fake ids the gate admitted, at most 5 × 8 a second, and the
// legitimate users' decisions are those of a run without the flood.
func TestFloodThroughTheGate(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	rule := Rule{Name: "gate", Limit: 30, Window: time.Minute, Mode: Strict}
	const (
		steps, legit, perFake, nets, perSecond = 3000, 50, 10, 8, 5
	)
	run := func(flood bool) (got []bool, admittedFakes int, prefix string) {
		prefix = testPrefix(t, c)
		now := base
		l, err := New(Config{Redis: c, KeyPrefix: prefix, ManualSync: true, Now: func() time.Time { return now },
			Rules: []Rule{rule}})
		require.NoError(t, err)
		defer l.Close()
		gate, err := newkeys.New(newkeys.Config{PerSecond: perSecond})
		require.NoError(t, err)
		fake := 0
		for i := range steps {
			now = base.Add(time.Duration(i) * 10 * time.Millisecond)
			user := fmt.Sprint("legit-", i%legit)
			ok, _ := gate.Admit(user, fmt.Sprint("legit-net-", i%legit), now)
			require.True(t, ok, "a legitimate user's own network is never flooded")
			d, err := l.Allow(ctx, rule.Name, user, now)
			require.NoError(t, err)
			got = append(got, d.Allowed)
			if !flood {
				continue
			}
			for range perFake {
				id := fmt.Sprint("fake-", fake)
				if ok, _ := gate.Admit(id, fmt.Sprint("bot-net-", fake%nets), now); ok {
					_, err := l.Allow(ctx, rule.Name, id, now)
					require.NoError(t, err)
					admittedFakes++
				}
				fake++
			}
		}
		return got, admittedFakes, prefix
	}
	oracle, _, _ := run(false)
	got, admitted, prefix := run(true)
	require.Equal(t, oracle, got, "the legitimate users' decisions under the flood")
	seconds := steps * 10 / 1000
	require.Positive(t, admitted)
	require.LessOrEqual(t, admitted, perSecond*nets*seconds, "the gate's budget")
	keys, err := redistest.ScanKeys(ctx, c, prefix+":{*")
	require.NoError(t, err)
	require.Len(t, keys, legit+admitted, "Redis keys: the legitimate users' and the fake ids the gate admitted")
	t.Logf("%d fake ids offered, %d admitted by the gate (budget %d), %d Redis keys", steps*perFake, admitted, perSecond*nets*seconds, len(keys))
}
