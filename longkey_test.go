package ratelimit

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestLongKeyCountedUnderItsDigest: a 500-byte user key is counted exactly
// like a short one, strict and hybrid, apart from another 500-byte key that
// differs in its last byte; and its Redis keys hold the 24-byte digest form
// (global.MaxPlainUserBytes), not the key.
func TestLongKeyCountedUnderItsDigest(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	rules := []Rule{
		{Name: "strict", Limit: 5, Window: time.Minute, Mode: Strict},
		{Name: "hybrid", Limit: 5, Window: time.Minute, Mode: Hybrid},
	}
	l, err := New(Config{Redis: c, Rules: rules, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true})
	require.NoError(t, err)
	defer l.Close()
	a := strings.Repeat("a", 499) + "1"
	b := strings.Repeat("a", 499) + "2"
	for _, r := range rules {
		for _, user := range []string{a, b} {
			admitted := 0
			for range 8 {
				d, err := l.Allow(ctx, r.Name, user, base)
				require.NoError(t, err)
				if d.Allowed {
					admitted++
				}
			}
			require.Equal(t, 5, admitted, "%s: admissions of a 500-byte key", r.Name)
		}
	}
	require.NoError(t, l.Sync(ctx))
	keys, err := redistest.ScanKeys(ctx, c, prefix+":{*")
	require.NoError(t, err)
	require.NotEmpty(t, keys)
	for _, k := range keys {
		require.NotContains(t, k, strings.Repeat("a", 65), "a Redis key holds the user key")
		require.Contains(t, k, global.DigestMarker)
		require.LessOrEqual(t, len(k), len(prefix)+len(":{%#}:strict:m")+22, "Redis key %q", k)
	}
	require.Equal(t, int64(5), redisCount(t, c, global.Key(prefix, "strict", a), base, time.Minute))
	require.Equal(t, int64(5), redisCount(t, c, global.Key(prefix, "strict", b), base, time.Minute))
}
