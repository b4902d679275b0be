package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestFallbackAdmissionsUndone: with Redis down (a redis-server the test
// killed), an AllowAll that a FailClosed rule denies gives back what the
// FailLocal and FailOpen rules before it admitted (their pending credits,
// and FailLocal's local count), so it returns the denial with no error; a
// Refund while Redis is down gives back an admission of the outage. Once
// Redis is back, the sync pass credits Redis with exactly the admissions
// that stand.
func TestFallbackAdmissionsUndone(t *testing.T) {
	proc := redistest.StartProc(t)
	proc.Kill()
	clock := &vclock{t: windowStart.Add(time.Second)}
	rules := []Rule{
		{Name: "local", Limit: 2, Window: time.Minute, Mode: Strict}, // FailLocal: 2 ÷ 1 instance
		{Name: "open", Limit: 100, Window: time.Minute, Algorithm: FixedWindow, Mode: Strict, OnFailure: FailOpen},
		{Name: "closed", Limit: 100, Window: time.Minute, Mode: Strict, OnFailure: FailClosed},
	}
	l, err := New(Config{Redis: faultClient(t, proc.Addr()), Rules: rules, KeyPrefix: "undo", Now: clock.Now,
		ManualSync: true, Timeout: 50 * time.Millisecond})
	require.NoError(t, err)
	defer l.Close()
	ctx := context.Background()
	all := []Check{{Rule: "local", N: 1}, {Rule: "open", N: 1}, {Rule: "closed", N: 1}}
	for range 3 {
		md, err := l.AllowAll(ctx, "u", clock.Now(), all...)
		require.NoError(t, err, "nothing left counted")
		require.False(t, md.Allowed)
		require.Equal(t, "closed", md.Rule)
	}
	allow := func(rule string) bool {
		t.Helper()
		d, err := l.Allow(ctx, rule, "u", clock.Now())
		require.NoError(t, err)
		return d.Allowed
	}
	require.True(t, allow("local"), "the denied AllowAll calls gave FailLocal's share back")
	require.True(t, allow("local"))
	require.False(t, allow("local"), "2 ÷ 1 instance")
	require.NoError(t, l.Refund(ctx, "local", "u", clock.Now(), 1), "an admission of the outage, not yet sent")
	require.True(t, allow("local"), "the refund gave it back locally")
	require.False(t, allow("local"))
	require.True(t, allow("open"))

	proc.Restart(t)
	clock.Advance(time.Second)
	require.NoError(t, l.Sync(ctx))
	require.Equal(t, Healthy, l.Health().State)
	for rule, want := range map[string]int64{"local": 0, "open": 99, "closed": 100} {
		d, err := l.Peek(ctx, rule, "u", clock.Now())
		require.NoError(t, err)
		require.Equal(t, want, d.Remaining, "rule %s: Redis counts the admissions that stand", rule)
	}
}
