package ratelimit

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestMetrics: the registered collector reports the Limiter's decisions,
// by mode, path and result, and Close unregisters it.
func TestMetrics(t *testing.T) {
	forEachFront(t, testMetrics)
}

func testMetrics(t *testing.T, front bool) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, MaxLocalKeys: 64, Registerer: reg, noFront: !front,
		Rules: []Rule{
			{Name: "h", Limit: 3, Window: time.Minute},
			{Name: "s", Limit: 1, Window: time.Minute, Mode: Strict},
			{Name: "l", Limit: 2, Window: time.Minute, Mode: Local},
		}})
	require.NoError(t, err)
	for range 5 {
		_, err := l.Allow(ctx, "h", "u", base)
		require.NoError(t, err)
	}
	for range 2 {
		_, err := l.Allow(ctx, "s", "u", base)
		require.NoError(t, err)
	}
	for range 3 {
		_, err := l.Allow(ctx, "l", "u", base)
		require.NoError(t, err)
	}
	require.NoError(t, l.Sync(ctx))
	st := l.Stats()
	require.Equal(t, int64(2), st.LocalModeAllowed, "local admissions: %+v", st)
	require.Equal(t, int64(1), st.LocalModeDenied, "local denials: %+v", st)
	require.Equal(t, int64(3), st.HybridInProcessAllowed+st.HybridRedisAllowed, "hybrid admissions: %+v", st)
	require.Equal(t, st.HybridRedis, st.HybridRedisAllowed+st.HybridRedisDenied, "no errors: %+v", st)
	require.Equal(t, int64(2), st.HybridInProcessDenied+st.HybridRedisDenied, "hybrid denials: %+v", st)
	require.Equal(t, int64(1), st.StrictAllowed)
	require.Equal(t, int64(1), st.StrictDenied)
	require.Equal(t, int64(1), st.SyncPasses)

	want := `
# HELP ratelimit_decisions_total Decisions made, by mode (local, hybrid, strict), where (local: in process; redis: a script call) and result.
# TYPE ratelimit_decisions_total counter
ratelimit_decisions_total{mode="hybrid",path="local",result="allowed"} ` + itoa(st.HybridInProcessAllowed) + `
ratelimit_decisions_total{mode="hybrid",path="local",result="denied"} ` + itoa(st.HybridInProcessDenied) + `
ratelimit_decisions_total{mode="hybrid",path="redis",result="allowed"} ` + itoa(st.HybridRedisAllowed) + `
ratelimit_decisions_total{mode="hybrid",path="redis",result="denied"} ` + itoa(st.HybridRedisDenied) + `
ratelimit_decisions_total{mode="local",path="local",result="allowed"} 2
ratelimit_decisions_total{mode="local",path="local",result="denied"} 1
ratelimit_decisions_total{mode="strict",path="redis",result="allowed"} 1
ratelimit_decisions_total{mode="strict",path="redis",result="denied"} 1
# HELP ratelimit_sync_passes_total Hybrid sync passes run, by outcome (ok, error).
# TYPE ratelimit_sync_passes_total counter
ratelimit_sync_passes_total{outcome="error"} 0
ratelimit_sync_passes_total{outcome="ok"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "ratelimit_decisions_total", "ratelimit_sync_passes_total"))
	n, err := testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Equal(t, 28, n, "series")

	require.NoError(t, l.Close())
	n, err = testutil.GatherAndCount(reg)
	require.NoError(t, err)
	require.Zero(t, n, "Close unregisters")
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
