package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
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

// TestAllowAllAtomic: the behaviour on the single node (the cluster suite
// runs it too).
func TestAllowAllAtomic(t *testing.T) {
	behaveAllowAllAtomic(t, singleNode(t), clusterLoad)
}

// scriptCalls counts the script calls (EVALSHA and EVAL) a client sends,
// alone or in pipelines.
type scriptCalls struct{ n atomic.Int64 }

func (h *scriptCalls) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptCalls) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}

func (h *scriptCalls) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			h.count(cmd)
		}
		return next(ctx, cmds)
	}
}

func (h *scriptCalls) count(cmd redis.Cmder) {
	if name := cmd.Name(); name == "evalsha" || name == "eval" {
		h.n.Add(1)
	}
}

// TestAllowAllStrictInOneCall: three Strict rules of different algorithms
// cost one script call per AllowAll, admitted or denied; a Hybrid rule
// beside them is decided first and refunded when a strict rule denies, and
// the strict rules' counts after a denial are those of the admitted
// requests only.
func TestAllowAllStrictInOneCall(t *testing.T) {
	ctx := context.Background()
	l, calls := countedLimiter(t, []Rule{
		{Name: "second", Limit: 3, Window: time.Second, Mode: Strict},
		{Name: "minute", Limit: 10, Window: time.Minute, Algorithm: TokenBucket},
		{Name: "log", Limit: 20, Window: time.Minute, Algorithm: SlidingLog},
		{Name: "hour", Limit: 100, Window: time.Hour, Mode: Hybrid},
	})
	strict := []Check{{Rule: "second", N: 1}, {Rule: "minute", N: 1}, {Rule: "log", N: 1}}
	for i := range 5 {
		calls.n.Store(0)
		d, err := l.AllowAll(ctx, "u", base, strict...)
		require.NoError(t, err)
		require.Equal(t, i < 3, d.Allowed, "request %d", i)
		require.Equal(t, "second", d.Rule)
		require.Equal(t, int64(1), calls.n.Load(), "request %d: script calls", i)
	}
	for _, rule := range []string{"minute", "log"} {
		p, err := l.Peek(ctx, rule, "u", base)
		require.NoError(t, err)
		require.Equal(t, int64(3), l.mustLimit(t, rule)-p.Remaining, "%s counts the 3 admitted requests only", rule)
	}

	// A rule named twice is decided alone, once per check: 2 of "log"
	// (3 counted of 20) in two plain strict calls, no multi script.
	calls.n.Store(0)
	twice, err := l.AllowAll(ctx, "u", base, Check{Rule: "log", N: 1}, Check{Rule: "log", N: 1})
	require.NoError(t, err)
	require.True(t, twice.Allowed)
	require.Equal(t, int64(15), twice.Remaining, "20 less the 3 before and these 2")
	require.Equal(t, int64(2), calls.n.Load(), "script calls for a rule named twice")
	require.NoError(t, l.Refund(ctx, "log", "u", base, 2)) // as before, for what follows

	// With the hybrid rule: denied by "second" (still full), hour refunded.
	all := append([]Check{{Rule: "hour", N: 1}}, strict...)
	for range 3 {
		d, err := l.AllowAll(ctx, "u", base, all...)
		require.NoError(t, err)
		require.False(t, d.Allowed)
		require.Equal(t, "second", d.Rule)
	}
	p, err := l.Peek(ctx, "hour", "u", base)
	require.NoError(t, err)
	require.Equal(t, int64(100), p.Remaining, "the hybrid rule's admissions were refunded")
	next := base.Add(2 * time.Second) // the sliding window of "second" is empty again
	d, err := l.AllowAll(ctx, "u", next, all...)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.Equal(t, "second", d.Rule, "the fewest remaining: 2 of 3")
	require.Equal(t, int64(2), d.Remaining)
}

// mustLimit returns the limit of rule name.
func (l *Limiter) mustLimit(t *testing.T, name string) int64 {
	rl, err := l.Rule(name)
	require.NoError(t, err)
	return rl.Limit()
}

// TestAllowAllRedisDown: when the strict rules' call finds Redis gone,
// each rule's failure policy decides in order; a FailOpen admission that a
// FailClosed rule after it turns into a denial stays counted, and the
// error says so.
func TestAllowAllRedisDown(t *testing.T) {
	ctx := context.Background()
	proc := redistest.StartProc(t)
	c := proc.Client(t)
	l, err := New(Config{Redis: c, KeyPrefix: "multi-down", ManualSync: true, Now: fixedClock(base), Timeout: 200 * time.Millisecond,
		Rules: []Rule{
			{Name: "open", Limit: 3, Window: time.Second, Mode: Strict, OnFailure: FailOpen},
			{Name: "closed", Limit: 3, Window: time.Second, Mode: Strict, OnFailure: FailClosed},
			{Name: "local", Limit: 3, Window: time.Second, Mode: Strict, OnFailure: FailLocal},
			{Name: "error", Limit: 3, Window: time.Second, Mode: Strict, OnFailure: FailError},
		}})
	require.NoError(t, err)
	defer l.Close()
	d, err := l.AllowAll(ctx, "u", base, Check{Rule: "open", N: 1}, Check{Rule: "closed", N: 1})
	require.NoError(t, err)
	require.True(t, d.Allowed, "Redis up")
	proc.Kill()

	d, err = l.AllowAll(ctx, "u", base, Check{Rule: "open", N: 1}, Check{Rule: "closed", N: 1})
	require.NoError(t, err, "FailOpen's admission given back: its credit was not sent yet")
	require.False(t, d.Allowed)
	require.Equal(t, "closed", d.Rule)

	d, err = l.AllowAll(ctx, "u", base, Check{Rule: "open", N: 1}, Check{Rule: "local", N: 1})
	require.NoError(t, err)
	require.True(t, d.Allowed, "FailOpen and FailLocal admit")

	_, err = l.AllowAll(ctx, "u", base, Check{Rule: "local", N: 1}, Check{Rule: "error", N: 1})
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorContains(t, err, `rule "error"`)
}

// TestAllowAllMixed: the behaviour on the single node (the cluster suite
// runs it too).
func TestAllowAllMixed(t *testing.T) {
	behaveAllowAllMixed(t, singleNode(t), clusterLoad)
}

// TestAllowAllHybridInOneCall: a Strict rule and two Hybrid rules cost one
// script call per AllowAll: a sparse user's first request (no state), its
// next ones (a state without lease, the lease sized by its demand), and
// later ones that leases serve in process (the Strict rule alone in the
// call); before, each Hybrid key without lease cost a call of its own. A
// denial by the Strict rule leaves the Hybrid keys counting only the
// admitted requests; a denial by a Hybrid rule leaves the Strict one so.
func TestAllowAllHybridInOneCall(t *testing.T) {
	ctx := context.Background()
	l, calls := countedLimiter(t, []Rule{
		{Name: "second", Limit: 5, Window: time.Second, Mode: Strict},
		{Name: "hour", Limit: 100, Window: time.Hour, Mode: Hybrid},
		{Name: "day", Limit: 3, Window: 24 * time.Hour, Algorithm: FixedWindow, Mode: Hybrid},
	})
	c, prefix := l.cfg.Redis, l.cfg.KeyPrefix
	checks := []Check{{Rule: "second", N: 1}, {Rule: "hour", N: 1}}

	const sparse = 50
	calls.n.Store(0)
	for u := range sparse { // one request each: first sightings
		d, err := l.AllowAll(ctx, fmt.Sprint("s", u), base, checks...)
		require.NoError(t, err)
		require.True(t, d.Allowed)
	}
	require.Equal(t, int64(sparse), calls.n.Load(), "script calls for %d sparse users", sparse)

	for i := range 8 { // one user: first sighting, then a state, then leases
		calls.n.Store(0)
		d, err := l.AllowAll(ctx, "u", base, checks...)
		require.NoError(t, err)
		require.Equal(t, i < 5, d.Allowed, "request %d", i)
		require.Equal(t, int64(1), calls.n.Load(), "request %d: script calls", i)
	}
	st := l.Stats()
	t.Logf("stats after the dense user: %+v", st)

	// Denied by the Hybrid "day" (3 a day) after its 3: "second", in the
	// same call or not, counts the 3 only.
	dayChecks := []Check{{Rule: "second", N: 1}, {Rule: "day", N: 1}}
	for i := range 5 {
		d, err := l.AllowAll(ctx, "v", base, dayChecks...)
		require.NoError(t, err)
		require.Equal(t, i < 3, d.Allowed, "request %d", i)
		if !d.Allowed {
			require.Equal(t, "day", d.Rule)
		}
	}
	p, err := l.Peek(ctx, "second", "v", base)
	require.NoError(t, err)
	require.Equal(t, int64(2), p.Remaining, "second counts the 3 admitted only")

	require.NoError(t, l.Close()) // the leases go back
	for u := range sparse {
		require.Equal(t, int64(1), windowCount(t, c, global.Key(prefix, "hour", fmt.Sprint("s", u)), base, time.Hour))
	}
	require.Equal(t, int64(5), windowCount(t, c, global.Key(prefix, "hour", "u"), base, time.Hour),
		"hour counts the 5 admitted by second, not the 3 it denied")
	require.Equal(t, int64(3), windowCount(t, c, global.Key(prefix, "day", "v"), base, 24*time.Hour))
}

// countedLimiter returns a Limiter of rules on the test Redis (a prefix of
// the test's own, manual sync, the clock at base) whose script calls are
// counted.
func countedLimiter(t *testing.T, rules []Rule) (*Limiter, *scriptCalls) {
	t.Helper()
	calls := &scriptCalls{}
	c := redis.NewClient(&redis.Options{Addr: redistest.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	c.AddHook(calls)
	l, err := New(Config{Redis: c, KeyPrefix: testPrefix(t, c), ManualSync: true, Now: fixedClock(base), Rules: rules})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l, calls
}
