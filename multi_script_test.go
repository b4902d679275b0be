package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// TestTakeAllMatchesReference drives the multi script (Store.TakeAll) with
// random subsets of four rules of one user, one per algorithm, in random
// order, n and time, against the Go reference (localState): when every
// rule's reference admits its n, the script admits and counts all, each
// answer equal to the reference's take; else it answers the first denying
// rule as the reference does, and Redis is unchanged.
func TestTakeAllMatchesReference(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	store := global.NewStore(c, global.Options{})
	defer store.Close()
	ctx := context.Background()

	type spec struct {
		a               Algorithm
		w, limit, burst int64
	}
	specs := []spec{{SlidingWindow, 1000, 6, 6}, {SlidingLog, 997, 4, 4}, {FixedWindow, 1000, 5, 5}, {TokenBucket, 1000, 3, 5}}
	refs := make([]localState, len(specs))
	keys := make([]string, len(specs))
	for j, s := range specs {
		keys[j] = global.Key(prefix, s.a.String(), "user")
	}
	state := func() string {
		out := ""
		for _, k := range keys {
			out += redisState(t, c, k) + "|"
		}
		return out
	}
	rng := rand.New(rand.NewPCG(1, 2))
	now := base.UnixMilli()
	var admitted, denied int
	for step := range 600 {
		switch rng.IntN(10) {
		case 0:
			now -= rng.Int64N(500)
		case 1:
			now += rng.Int64N(2500)
		default:
			now += rng.Int64N(120)
		}
		order := rng.Perm(len(specs))[:1+rng.IntN(len(specs))]
		req := global.MultiRequest{Now: now}
		ns := make([]int64, len(order))
		for i, j := range order {
			s := specs[j]
			ns[i] = 1 + rng.Int64N(min(s.burst, 3))
			req.Rules = append(req.Rules, global.Request{Algorithm: global.Algorithm(s.a), Key: keys[j], Window: s.w, Limit: s.limit, N: ns[i], Burst: s.burst})
		}
		wantDenied, want := -1, make([]result, len(order))
		for i, j := range order {
			s := specs[j]
			trial := refs[j].clone()
			if want[i] = trial.take(s.a, now, s.w, s.limit, s.burst, ns[i]); !want[i].allowed {
				wantDenied = i
				break
			}
		}
		before := state()
		got, err := store.TakeAll(ctx, req)
		require.NoError(t, err)
		where := fmt.Sprintf("step %d (now=%d, rules %v, n %v)", step, now, order, ns)
		require.Equal(t, wantDenied, got.Denied, where)
		check := func(i int) {
			g, w := got.Results[i], want[i]
			require.Equal(t, result{allowed: w.allowed, remaining: w.remaining, retryAfter: w.retryAfter, resetAfter: w.resetAfter},
				result{allowed: g.Allowed, remaining: g.Remaining, retryAfter: g.RetryAfter, resetAfter: g.ResetAfter}, "%s: rule %d", where, i)
		}
		if wantDenied >= 0 {
			denied++
			check(wantDenied)
			require.Equal(t, before, state(), "%s: a denial wrote", where)
			continue
		}
		admitted++
		for i, j := range order {
			s := specs[j]
			want[i] = refs[j].take(s.a, now, s.w, s.limit, s.burst, ns[i])
			check(i)
		}
	}
	t.Logf("600 calls: %d admitted under every rule, %d denied", admitted, denied)
	require.Positive(t, admitted)
	require.Positive(t, denied)
}
