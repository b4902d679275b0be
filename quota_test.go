package ratelimit

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLimitForIsTheClassQuota: RuleLimiter.LimitFor and
// MultiDecision.Quotas report each user's quota, the class's where a class
// overrides the rule (a Limit class, Unlimited as math.MaxInt64, Deny as
// 0), in every mode, from AllowAll admitted or denied.
func TestLimitForIsTheClassQuota(t *testing.T) {
	c := testRedis(t)
	for _, mode := range overrideModes {
		t.Run(mode.String(), func(t *testing.T) {
			cls := map[string]Override{"free": {Limit: 2}, "internal": {Unlimited: true}, "blocked": {Deny: true}}
			l := newOverrides(t, c, testPrefix(t, c), mode,
				Config{Classes: map[string]string{"f": "free", "i": "internal", "b": "blocked"}},
				Rule{Name: "api", Limit: 5, Window: time.Minute, Classes: cls},
				Rule{Name: "day", Limit: 50, Window: time.Hour})
			ctx := context.Background()
			want := map[string]int64{"plain": 5, "f": 2, "i": math.MaxInt64, "b": 0}
			for user, q := range want {
				rl, err := l.Rule("api")
				require.NoError(t, err)
				got, err := rl.LimitFor(ctx, user)
				require.NoError(t, err)
				require.Equal(t, q, got, "LimitFor(%s)", user)
				require.Equal(t, int64(5), rl.Limit(), "Limit is the rule's")
				for range 4 { // the last ones are denials, but for i
					md, err := l.AllowAll(ctx, user, base, Check{Rule: "day", N: 1}, Check{Rule: "api", N: 1})
					require.NoError(t, err)
					require.Equal(t, []Quota{
						{Rule: "day", ID: "day", Limit: 50, Window: time.Hour},
						{Rule: "api", ID: "api", Limit: q, Window: time.Minute},
					}, md.Quotas, "AllowAll of %s", user)
				}
			}
			rl, err := l.Rule("day")
			require.NoError(t, err)
			got, err := rl.LimitFor(ctx, "f")
			require.NoError(t, err)
			require.Equal(t, int64(50), got, "a rule without classes: its Limit")
		})
	}
}

// TestCheckByID: a Check names its rule by ID, which a Reload that renames
// the rule keeps (and its counts); MultiDecision.Rule is the rule's newest
// Name. A Check naming no rule, or both a name and an ID, is an error.
func TestCheckByID(t *testing.T) {
	c := testRedis(t)
	l := newOverrides(t, c, testPrefix(t, c), Strict, Config{},
		Rule{Name: "orders", ID: "o1", Limit: 3, Window: time.Minute},
		Rule{Name: "day", Limit: 10, Window: time.Hour})
	ctx := context.Background()
	byID := []Check{{ID: "day", N: 1}, {ID: "o1", N: 1}}
	md, err := l.AllowAll(ctx, "u", base, byID...)
	require.NoError(t, err)
	require.True(t, md.Allowed)
	require.Equal(t, "orders", md.Rule)

	require.NoError(t, l.Reload([]Rule{
		{Name: "orders-v2", ID: "o1", Limit: 3, Window: time.Minute, Mode: Strict},
		{Name: "day", Limit: 10, Window: time.Hour, Mode: Strict}}))
	var admitted int
	for range 4 {
		md, err := l.AllowAll(ctx, "u", base, byID...)
		require.NoError(t, err)
		if md.Allowed {
			admitted++
		} else {
			require.Equal(t, "orders-v2", md.Rule)
		}
		require.Equal(t, Quota{Rule: "orders-v2", ID: "o1", Limit: 3, Window: time.Minute}, md.Quotas[1], "the newest name")
	}
	require.Equal(t, 2, admitted, "the ID kept the first request's count")
	_, err = l.AllowAll(ctx, "u", base, Check{Rule: "orders", N: 1})
	require.True(t, errors.Is(err, ErrUnknownRule), "the old name is gone: %v", err)

	_, err = l.AllowAll(ctx, "u", base, Check{N: 1})
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.ErrorContains(t, err, "names no rule")
	_, err = l.AllowAll(ctx, "u", base, Check{Rule: "day", ID: "day", N: 1})
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = l.AllowAll(ctx, "u", base, Check{ID: "nope", N: 1})
	require.ErrorIs(t, err, ErrUnknownRule)

	rl, err := l.Rule("day")
	require.NoError(t, err)
	require.Equal(t, "day", rl.ID())
	require.Equal(t, time.Hour, rl.Window())
}

// TestAllowAllReportsEnforcedBeforeShadow: the admission AllowAll reports
// is an enforced rule's even where a shadow rule has fewer remaining (a
// client is told the limit that applies to it), a shadow rule's only when
// every rule is one; Quotas mark the shadow rule.
func TestAllowAllReportsEnforcedBeforeShadow(t *testing.T) {
	c := testRedis(t)
	l := newOverrides(t, c, testPrefix(t, c), Strict, Config{},
		Rule{Name: "trial", Limit: 1, Window: time.Minute, Shadow: true},
		Rule{Name: "api", Limit: 10, Window: time.Minute},
		Rule{Name: "trial2", Limit: 5, Window: time.Minute, Shadow: true})
	ctx := context.Background()
	for i := range 3 {
		md, err := l.AllowAll(ctx, "u", base, Check{Rule: "trial", N: 1}, Check{Rule: "api", N: 1})
		require.NoError(t, err)
		require.True(t, md.Allowed, "a shadow rule never denies")
		require.Equal(t, "api", md.Rule)
		require.Equal(t, int64(9-i), md.Remaining)
		require.Equal(t, []bool{true, false}, []bool{md.Quotas[0].Shadow, md.Quotas[1].Shadow})
	}
	md, err := l.AllowAll(ctx, "u", base, Check{Rule: "trial2", N: 1}, Check{Rule: "trial", N: 1})
	require.NoError(t, err)
	require.True(t, md.Allowed)
	require.Equal(t, "trial", md.Rule, "all shadow: the fewest remaining")
}
