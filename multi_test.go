package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// TestAllowAll: a request under two rules (5 and 3 a minute) is admitted
// only while both admit; once the tighter one denies, the other's count
// stays where it was (a peek tells), in every mode; the decision names the
// rule that decided. Bad input counts nothing.
func TestAllowAll(t *testing.T) {
	c := testRedis(t)
	for _, mode := range []Mode{Strict, Hybrid, Local} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			l, err := New(Config{Redis: c, KeyPrefix: testPrefix(t, c), ManualSync: true, Now: fixedClock(base),
				Rules: []Rule{
					{Name: "wide", Limit: 5, Window: time.Minute, Mode: mode},
					{Name: "tight", Limit: 3, Window: time.Minute, Mode: mode},
				}})
			require.NoError(t, err)
			defer l.Close()
			checks := []Check{{Rule: "wide", N: 1}, {Rule: "tight", N: 1}}
			for i := range 3 {
				d, err := l.AllowAll(ctx, "u", base, checks...)
				require.NoError(t, err)
				require.True(t, d.Allowed, "request %d", i)
				require.Equal(t, "tight", d.Rule, "the fewest remaining")
				require.Equal(t, int64(2-i), d.Remaining)
			}
			for range 4 {
				d, err := l.AllowAll(ctx, "u", base, checks...)
				require.NoError(t, err)
				require.False(t, d.Allowed)
				require.Equal(t, "tight", d.Rule)
				require.Positive(t, d.RetryAfter)
			}
			p, err := l.Peek(ctx, "wide", "u", base)
			require.NoError(t, err)
			require.Equal(t, int64(2), p.Remaining, "the denied requests left nothing counted under wide")
			// The tight rule first: a denial costs one decision, same counts.
			d, err := l.AllowAll(ctx, "u", base, Check{Rule: "tight", N: 1}, Check{Rule: "wide", N: 1})
			require.NoError(t, err)
			require.False(t, d.Allowed)
			p, err = l.Peek(ctx, "wide", "u", base)
			require.NoError(t, err)
			require.Equal(t, int64(2), p.Remaining)

			for _, bad := range [][]Check{nil, {{Rule: "wide", N: 1}, {Rule: "nope", N: 1}}, {{Rule: "wide", N: 1}, {Rule: "tight", N: 0}}, {{Rule: "wide", N: -1}}} {
				_, err := l.AllowAll(ctx, "v", base, bad...)
				require.Error(t, err, "%v", bad)
			}
			_, err = l.AllowAll(ctx, "", base, checks...)
			require.ErrorIs(t, err, ErrInvalidKey)
			p, err = l.Peek(ctx, "wide", "v", base)
			require.NoError(t, err)
			require.Equal(t, int64(5), p.Remaining, "bad input counted nothing")
		})
	}
}

// TestAllowAllConcurrent: goroutines of two instances send requests under
// both rules at once (the race detector watches); afterwards the wide
// rule's count is exactly what AllowAll admitted, never more than the tight
// limit, and a denial consumed nothing.
func TestAllowAllConcurrent(t *testing.T) {
	c := testRedis(t)
	for _, mode := range []Mode{Strict, Hybrid} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			prefix := testPrefix(t, c)
			rules := []Rule{
				{Name: "wide", Limit: 1000, Window: time.Minute, Mode: mode},
				{Name: "tight", Limit: 40, Window: time.Minute, Mode: mode},
			}
			var lims []*Limiter
			for range 2 {
				l, err := New(Config{Redis: c, KeyPrefix: prefix, ManualSync: true, Now: fixedClock(base), Rules: rules})
				require.NoError(t, err)
				defer l.Close()
				lims = append(lims, l)
			}
			const users = 4
			admitted := make([]int64, users)
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, l := range lims {
				for g := range 4 {
					wg.Go(func() {
						for i := range 40 {
							u := (g + i) % users
							d, err := l.AllowAll(ctx, fmt.Sprint("u", u), base, Check{Rule: "wide", N: 1}, Check{Rule: "tight", N: 1})
							if err != nil {
								t.Error(err)
								return
							}
							if d.Allowed {
								mu.Lock()
								admitted[u]++
								mu.Unlock()
							}
						}
					})
				}
			}
			wg.Wait()
			for _, l := range lims {
				require.NoError(t, l.Sync(ctx))
			}
			for _, l := range lims {
				require.NoError(t, l.Close()) // hybrid leases go back
			}
			for u := range users {
				require.LessOrEqual(t, admitted[u], int64(40))
				got := windowCount(t, c, global.Key(prefix, "wide", fmt.Sprint("u", u)), base, time.Minute)
				require.Equal(t, admitted[u], got, "u%d: the wide rule counts exactly the requests admitted under both", u)
			}
		})
	}
}
