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
		now = nextNow(rng, now, 500, 2500, 120)
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

// TestTakeAllLeasesMatchSingleCalls drives the multi script with random
// subsets of two strict rules and two hybrid keys of one user (lease
// exchanges admitting n, asking for a lease, reporting attempts, now and
// then on a key Redis lost that the caller knew), against the single-rule
// scripts run on copies of the keys (the oracle): when every copy admits,
// TakeAll admits all and each answer and key equals the copy's (but for a
// hybrid key's version, which starts at the server's clock); else it
// answers the first rule that denied on its copy, with that copy's
// answer, and Redis is unchanged.
func TestTakeAllLeasesMatchSingleCalls(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	store := global.NewStore(c, global.Options{})
	defer store.Close()
	ctx := context.Background()

	strict := []global.Request{
		{Algorithm: global.SlidingWindow, Key: global.Key(prefix, "sw", "user"), Window: 1000, Limit: 6},
		{Algorithm: global.FixedWindow, Key: global.Key(prefix, "fw", "user"), Window: 1000, Limit: 5},
	}
	leases := []global.LeaseRequest{
		{Key: global.Key(prefix, "hs", "user"), Window: 1000, Limit: 8},
		{Key: global.Key(prefix, "hf", "user"), Window: 500, Limit: 4, Fixed: true},
	}
	probe := func(k string) string { return k + ":probe" }
	copyKey := func(k string) {
		require.NoError(t, c.Del(ctx, probe(k)).Err())
		if c.Exists(ctx, k).Val() == 1 {
			require.NoError(t, c.Copy(ctx, k, probe(k), 0, true).Err())
		}
	}
	// state is a key's hash but for its version, an absent p or ap as 0
	// (admit.lua does not write a new key's zeros; every reader takes an
	// absent count for 0).
	state := func(k string) string {
		h, err := c.HGetAll(ctx, k).Result()
		require.NoError(t, err)
		delete(h, "v")
		if len(h) > 0 {
			for _, f := range []string{"p", "ap"} {
				if _, ok := h[f]; !ok {
					h[f] = "0"
				}
			}
		}
		return fmt.Sprint(h)
	}
	all := func() string {
		out := ""
		for _, q := range strict {
			out += redisState(t, c, q.Key) + "|"
		}
		for _, q := range leases {
			out += redisState(t, c, q.Key) + "|"
		}
		return out
	}
	rng := rand.New(rand.NewPCG(3, 4))
	now := base.UnixMilli()
	var admitted, denied, restored, granted int
	for step := range 800 {
		now = nextNow(rng, now, 300, 1500, 80)
		req := global.MultiRequest{Now: now}
		for _, i := range rng.Perm(len(strict))[:rng.IntN(len(strict)+1)] {
			q := strict[i]
			q.Now, q.N = now, 1+rng.Int64N(2)
			req.Rules = append(req.Rules, q)
		}
		for _, i := range rng.Perm(len(leases))[:rng.IntN(len(leases)+1)] {
			q := leases[i]
			q.Now, q.N, q.Want, q.Attempts = now, 1+rng.Int64N(2), rng.Int64N(4), rng.Int64N(3)
			if rng.IntN(8) == 0 { // a key Redis lost, that the caller knew
				require.NoError(t, c.Del(ctx, q.Key).Err())
				q.Known = global.Known{Window: now / q.Window, Prev: rng.Int64N(3), Cur: rng.Int64N(3), Version: 7}
			}
			req.Leases = append(req.Leases, q)
		}
		if len(req.Rules)+len(req.Leases) == 0 {
			continue
		}
		where := fmt.Sprintf("step %d (now=%d)", step, now)
		// The oracle: each rule alone, on a copy of its key.
		wantDenied, wantLeaseDenied := -1, -1
		wantRes := make([]global.Result, len(req.Rules))
		wantLease := make([]global.LeaseResult, len(req.Leases))
		for i, q := range req.Rules {
			copyKey(q.Key)
			q.Key = probe(q.Key)
			res, err := store.Take(ctx, q)
			require.NoError(t, err)
			if wantRes[i] = res; !res.Allowed && wantDenied < 0 {
				wantDenied = i
			}
		}
		for i, q := range req.Leases {
			copyKey(q.Key)
			q.Key = probe(q.Key)
			res, err := store.Lease(ctx, q)
			require.NoError(t, err)
			if wantLease[i] = res; !res.Allowed && wantDenied < 0 && wantLeaseDenied < 0 {
				wantLeaseDenied = i
			}
		}
		before := all()
		got, err := store.TakeAll(ctx, req)
		require.NoError(t, err, where)
		require.Equal(t, wantDenied, got.Denied, where)
		require.Equal(t, wantLeaseDenied, got.LeaseDenied, where)
		sameLease := func(i int) {
			w, g := wantLease[i], got.LeaseResults[i]
			w.Version, g.Version = 0, 0
			require.Equal(t, w, g, "%s: lease %d", where, i)
		}
		switch {
		case wantDenied >= 0:
			require.Equal(t, wantRes[wantDenied], got.Results[wantDenied], where)
		case wantLeaseDenied >= 0:
			sameLease(wantLeaseDenied) // the counts as the script read them
			v, _ := c.HGet(ctx, req.Leases[wantLeaseDenied].Key, "v").Int64()
			require.Equal(t, v, got.LeaseResults[wantLeaseDenied].Version, "%s: the version as it is (0: none)", where)
		}
		if wantDenied >= 0 || wantLeaseDenied >= 0 {
			denied++
			require.Equal(t, before, all(), "%s: a denial wrote", where)
			continue
		}
		admitted++
		for i, q := range req.Rules {
			require.Equal(t, wantRes[i], got.Results[i], where)
			require.Equal(t, redisState(t, c, probe(q.Key)), redisState(t, c, q.Key), where)
		}
		for i, q := range req.Leases {
			sameLease(i)
			require.Equal(t, state(probe(q.Key)), state(q.Key), where)
			if got.LeaseResults[i].Restored {
				restored++
			}
			granted += int(got.LeaseResults[i].Granted)
		}
	}
	t.Logf("800 steps: %d admitted under every rule, %d denied; %d restored keys; %d tokens leased", admitted, denied, restored, granted)
	require.Positive(t, admitted)
	require.Positive(t, denied)
	require.Positive(t, restored)
	require.Positive(t, granted)
}

// nextNow moves a random walk's clock now (ms): back by up to back one step
// in ten, ahead by up to jump one in ten, else ahead by up to step.
func nextNow(rng *rand.Rand, now, back, jump, step int64) int64 {
	switch rng.IntN(10) {
	case 0:
		return now - rng.Int64N(back)
	case 1:
		return now + rng.Int64N(jump)
	}
	return now + rng.Int64N(step)
}
