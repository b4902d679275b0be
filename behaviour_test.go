package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// The behaviour functions of this file run on a backend: the single test
// Redis (limiter_test.go's tests) or the test Redis Cluster
// (cluster_test.go), so that both runs check the same code.

// backend is a Redis the behaviour functions run on.
type backend struct {
	// c is a client of it, for the functions' own checks and for
	// Limiters that need not have a client of their own.
	c redis.UniversalClient
	// prefix is the test's key prefix, its keys deleted when the test ends.
	prefix string
	// client returns a new client of its own, closed when the test ends.
	client func(t *testing.T) redis.UniversalClient
}

// singleNode is the test Redis (REDIS_ADDR) as a backend.
func singleNode(t *testing.T) backend {
	t.Helper()
	c := testRedis(t)
	return backend{c: c, prefix: testPrefix(t, c), client: func(t *testing.T) redis.UniversalClient {
		cl := redis.NewClient(&redis.Options{Addr: redisAddr()})
		t.Cleanup(func() { _ = cl.Close() })
		return cl
	}}
}

// The behaviour functions' Limiters wait on Redis for up to behaveTimeout
// (the machine may be loaded: the cluster's six processes share it with the
// tests) and their rules fail with an error when Redis cannot answer
// (FailError), so that a slow Redis shows as the error it is rather than as
// FailLocal's admissions breaking an exact count.
const behaveTimeout = 5 * time.Second

// newBehaving returns a Limiter of rule (with OnFailure FailError) on c
// under prefix, with clock now and Timeout behaveTimeout, closed when the
// test ends.
func newBehaving(t *testing.T, c redis.UniversalClient, prefix string, rule Rule, now time.Time, cfg Config) *Limiter {
	t.Helper()
	rule.OnFailure = FailError
	cfg.Redis, cfg.Rules, cfg.KeyPrefix, cfg.Now, cfg.Timeout = c, []Rule{rule}, prefix, fixedClock(now), behaveTimeout
	l, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

// hammerUsers runs goroutines goroutines on each Limiter, each making
// attempts Allow calls for every user at now (each goroutine starting at
// another user), and returns how many each user was admitted.
func hammerUsers(t *testing.T, lims []*Limiter, rule string, users []string, now time.Time, goroutines, attempts int) []int64 {
	t.Helper()
	return hammerWith(t, lims, users, goroutines, attempts, func(l *Limiter, user string) (bool, error) {
		d, err := l.Allow(context.Background(), rule, user, now)
		return d.Allowed, err
	})
}

// hammerWith is hammerUsers with the decision of its choice.
func hammerWith(t *testing.T, lims []*Limiter, users []string, goroutines, attempts int, decide func(l *Limiter, user string) (bool, error)) []int64 {
	t.Helper()
	admitted := make([]atomic.Int64, len(users))
	var wg sync.WaitGroup
	g := 0
	for _, l := range lims {
		for range goroutines {
			off := g
			g++
			wg.Go(func() {
				for range attempts {
					for j := range users {
						u := (off + j) % len(users)
						allowed, err := decide(l, users[u])
						if err != nil {
							t.Error(err)
							return
						}
						if allowed {
							admitted[u].Add(1)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	out := make([]int64, len(users))
	for i := range admitted {
		out[i] = admitted[i].Load()
	}
	return out
}

// concurrency is how hard a concurrency behaviour hammers: instances
// Limiters, each with a client of its own, goroutines goroutines each,
// attempts rounds over users each, against rules of limit Limit.
type concurrency struct {
	instances, goroutines, attempts int
	limit                           int64
	users                           []string
}

// behaveStrictExactUnderConcurrency: strict Limiters deciding at once for
// the same users at one instant admit each user exactly what one exact
// limiter would. The exact algorithms admit exactly Limit; the sliding
// window admits exactly what approx.go computes with 0.6·Limit requests
// counted in the previous window (it weighs 0.6, 0.4 of the way into the
// window). The window is a minute: the keys' TTLs (two windows) run on the
// wall clock while the requests' stamps stand still, and a second's window
// let the first users' previous-window counts expire before a slow run got
// to them.
func behaveStrictExactUnderConcurrency(t *testing.T, b backend, p concurrency) {
	ctx := context.Background()
	w := time.Minute
	wms := w.Milliseconds()
	now := time.UnixMilli((base.UnixMilli()/wms+1)*wms + wms*4/10)
	prevCount := p.limit * 6 / 10
	for _, a := range allAlgorithms {
		t.Run(a.String(), func(t *testing.T) {
			rule := Rule{Name: "conc-" + a.String(), Limit: p.limit, Window: w, Algorithm: a, Mode: Strict}
			want := p.limit
			if a == SlidingWindow {
				// Fill the previous window, then compute the reference.
				l := newBehaving(t, b.c, b.prefix, rule, base, Config{})
				for _, u := range p.users {
					d, err := l.AllowN(ctx, rule.Name, u, now.Add(-w), prevCount)
					require.NoError(t, err)
					require.True(t, d.Allowed, "user %q: the previous window's requests", u)
				}
				ref := slidingWindow{}
				ref.take(now.Add(-w).UnixMilli(), wms, p.limit, prevCount)
				want = 0
				for ref.take(now.UnixMilli(), wms, p.limit, 1).allowed {
					want++
				}
				require.Equal(t, p.limit-prevCount*6/10, want)
			}
			var lims []*Limiter
			for range p.instances {
				lims = append(lims, newBehaving(t, b.client(t), b.prefix, rule, base, Config{}))
			}
			got := hammerUsers(t, lims, rule.Name, p.users, now, p.goroutines, p.attempts)
			for i, u := range p.users {
				require.Equal(t, want, got[i], "user %q: admitted %d, want exactly %d", u, got[i], want)
			}
		})
	}
}

// behaveHybridWithinLimit: hybrid Limiters, each with a client of its own
// and a background sync loop every 5 ms, deciding at once for the same
// users at one instant, admit each user at most Limit (docs/design.md, "The
// bound": every token is counted in Redis when it is leased, so with Redis
// keeping its data nothing is over-admitted); once they close, giving every
// lease back, Redis counts exactly what each user was admitted.
func behaveHybridWithinLimit(t *testing.T, b backend, p concurrency) {
	for _, a := range []Algorithm{SlidingWindow, FixedWindow} {
		t.Run(a.String(), func(t *testing.T) {
			rule := Rule{Name: "hbound-" + a.String(), Limit: p.limit, Window: time.Minute, Algorithm: a, Mode: Hybrid}
			now := base.Add(10 * time.Second)
			var lims []*Limiter
			for range p.instances {
				lims = append(lims, newBehaving(t, b.client(t), b.prefix, rule, now,
					Config{SyncInterval: 5 * time.Millisecond, MaxLocalKeys: 1024}))
			}
			got := hammerUsers(t, lims, rule.Name, p.users, now, p.goroutines, p.attempts)
			var st Stats
			for _, l := range lims {
				require.NoError(t, l.Close())
				s := l.Stats()
				st.HybridInProcessAllowed += s.HybridInProcessAllowed
				st.HybridRedisAllowed += s.HybridRedisAllowed
				st.HybridRedis += s.HybridRedis
				st.SyncPasses += s.SyncPasses
				st.RedisErrors += s.RedisErrors
			}
			var total int64
			for i, u := range p.users {
				require.LessOrEqual(t, got[i], p.limit, "user %q over its limit", u)
				require.Positive(t, got[i], "user %q", u)
				key := global.Key(b.prefix, rule.Name, u)
				require.Equal(t, got[i], windowCount(t, b.c, key, now, rule.Window),
					"user %q: after every lease is returned Redis must count exactly the admissions", u)
				total += got[i]
			}
			require.Equal(t, total, st.HybridInProcessAllowed+st.HybridRedisAllowed, "admitted decisions in Stats")
			t.Logf("%d users: admitted %d of %d offered (limit %d each; per user %v); allowed locally %d, by Redis %d "+
				"(%d decisions went to Redis); %d sync passes, %d Redis errors",
				len(p.users), total, int64(len(p.users)*p.instances*p.goroutines*p.attempts), p.limit, got,
				st.HybridInProcessAllowed, st.HybridRedisAllowed, st.HybridRedis, st.SyncPasses, st.RedisErrors)
		})
	}
}

// windowCount returns the key's count in Redis (admissions plus unreturned
// leases) for the window that holds now, through any client. A key that a
// later call (a sync pass on the clock) has rolled into the next window
// keeps that count as its previous window's; a sliding-window key says so,
// and any other state of the key fails the test rather than reading as 0.
func windowCount(t *testing.T, c redis.UniversalClient, key string, now time.Time, w time.Duration) int64 {
	t.Helper()
	cur, prev, rolled := keyWindows(t, c, key, now, w)
	if rolled {
		return prev
	}
	return cur
}

// keyWindows reads key's window counts as of now's window of w: cur, that
// window's count, or, when a later call rolled the key into the next window
// (rolled), cur is that next window's and prev now's. A missing key reads
// 0, 0; any other window fails the test.
func keyWindows(t *testing.T, c redis.UniversalClient, key string, now time.Time, w time.Duration) (cur, prev int64, rolled bool) {
	t.Helper()
	v, err := c.HMGet(context.Background(), key, "w", "c", "p").Result()
	require.NoError(t, err)
	if v[0] == nil {
		return 0, 0, false
	}
	field := func(x any) (n int64) {
		if x != nil {
			fmt.Sscan(x.(string), &n)
		}
		return n
	}
	idx, want := field(v[0]), now.UnixMilli()/w.Milliseconds()
	switch {
	case idx == want:
		return field(v[1]), field(v[2]), false
	case idx == want+1 && v[2] != nil:
		return field(v[1]), field(v[2]), true
	}
	t.Fatalf("%s: Redis holds window %d, not %d or the one after", key, idx, want)
	return 0, 0, false
}

// behaveKeysExpire: every key written carries a TTL of at most two windows
// of w, and is gone two windows after its last use: one key per user and
// algorithm, two for the sliding log.
func behaveKeysExpire(t *testing.T, b backend, w time.Duration, users []string) {
	ctx := context.Background()
	var rules []Rule
	for _, a := range allAlgorithms {
		rules = append(rules, Rule{Name: "exp-" + a.String(), Limit: 3, Window: w, Algorithm: a, Mode: Strict, OnFailure: FailError})
	}
	l, err := New(Config{Redis: b.c, Rules: rules, KeyPrefix: b.prefix, Timeout: behaveTimeout})
	require.NoError(t, err)
	defer l.Close()
	var keys []string
	for _, r := range rules {
		for _, u := range users {
			for range 5 {
				_, err := l.Allow(ctx, r.Name, u, time.Now())
				require.NoError(t, err)
			}
			// Read the TTLs at once: on a loaded machine the keys of
			// the first rules and users could expire while the last
			// ones are decided.
			userKeys, err := redistest.ScanKeys(ctx, b.c, global.Key(b.prefix, r.Name, u)+"*")
			require.NoError(t, err)
			for _, k := range userKeys {
				ttl, err := b.c.PTTL(ctx, k).Result()
				require.NoError(t, err)
				require.True(t, ttl > 0 && ttl <= 2*w, "key %s has TTL %v, want in (0, %v]", k, ttl, 2*w)
			}
			keys = append(keys, userKeys...)
		}
	}
	require.Len(t, keys, 5*len(users), "one key per user and algorithm, two for the sliding log: %v", keys)
	time.Sleep(2*w + 50*time.Millisecond)
	var left []string
	for _, k := range keys { // one key a call: on a cluster the users' keys are on other slots
		n, err := b.c.Exists(ctx, k).Result()
		require.NoError(t, err)
		if n != 0 {
			left = append(left, k)
		}
	}
	require.Empty(t, left, "keys still present two windows after their last use")
}

// behaveRejectsBadInput runs the argument checks against one rule of every
// mode.
func behaveRejectsBadInput(t *testing.T, b backend) {
	ctx := context.Background()
	for _, m := range modesAndFronts {
		t.Run(m.name, func(t *testing.T) {
			l, err := New(Config{Redis: b.c, KeyPrefix: b.prefix, Now: fixedClock(base), MaxKeyBytes: 16, noFront: !m.front, StrictN: true,
				Rules: []Rule{{Name: "r", Limit: 10, Window: time.Second, Mode: m.mode}}})
			require.NoError(t, err)
			defer l.Close()
			rl, err := l.Rule("r")
			require.NoError(t, err)
			require.Equal(t, "r", rl.Name())
			for _, tc := range []struct {
				name string
				rule string
				user string
				now  time.Time
				n    int64
				want error
			}{
				{"unknown rule", "nope", "u", base, 1, ErrUnknownRule},
				{"empty key", "r", "", base, 1, ErrInvalidKey},
				{"huge key", "r", strings.Repeat("x", 17), base, 1, ErrInvalidKey},
				{"negative n", "r", "u", base, -3, ErrInvalidArgument},
				{"n over limit (StrictN)", "r", "u", base, 11, ErrInvalidArgument},
				{"zero time", "r", "u", time.Time{}, 1, ErrInvalidArgument},
				{"before epoch", "r", "u", time.UnixMilli(-5), 1, ErrInvalidArgument},
				{"far past", "r", "u", base.Add(-time.Hour), 1, ErrInvalidArgument},
				{"far future", "r", "u", base.Add(time.Hour), 1, ErrInvalidArgument},
				{"past 2^50 ms", "r", "u", time.UnixMilli(1<<50 + 1), 1, ErrInvalidArgument},
			} {
				d, err := l.AllowN(ctx, tc.rule, tc.user, tc.now, tc.n)
				require.ErrorIs(t, err, tc.want, tc.name)
				require.False(t, d.Allowed, tc.name)
				if tc.rule == "r" { // the same through the rule's RuleLimiter
					d, err = rl.AllowN(ctx, tc.user, tc.now, tc.n)
					require.ErrorIs(t, err, tc.want, tc.name)
					require.False(t, d.Allowed, tc.name)
				}
			}
			_, err = l.Rule("nope")
			require.ErrorIs(t, err, ErrUnknownRule)
			// The boundary itself is fine: 16 bytes, skew of exactly 5 minutes.
			_, err = l.Allow(ctx, "r", strings.Repeat("x", 16), base.Add(5*time.Minute))
			require.NoError(t, err)
			require.NoError(t, l.Close())
			_, err = l.Allow(ctx, "r", "u", base)
			require.ErrorIs(t, err, ErrClosed)
			_, err = rl.Allow(ctx, "u", base)
			require.ErrorIs(t, err, ErrClosed)
			_, err = rl.Peek(ctx, "u", base)
			require.ErrorIs(t, err, ErrClosed)
			require.ErrorIs(t, rl.Reset(ctx, "u"), ErrClosed)
			require.ErrorIs(t, rl.Refund(ctx, "u", base, 1), ErrClosed)
			require.ErrorIs(t, l.Sync(ctx), ErrClosed)
			require.NoError(t, l.Close(), "Close is idempotent")
		})
	}
}

// behaveNoScriptFallback: after SCRIPT FLUSH (on every node of a cluster)
// the scripts run again through EVAL, alone and in pipelines.
func behaveNoScriptFallback(t *testing.T, b backend, users []string) {
	ctx := context.Background()
	r := Rule{Name: "flush", Limit: 100, Window: time.Minute, Mode: Strict}
	l := newBehaving(t, b.c, b.prefix, r, base, Config{})
	require.NoError(t, b.c.ScriptFlush(ctx).Err())
	d, err := l.Allow(ctx, r.Name, users[0], base)
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.NoError(t, b.c.ScriptFlush(ctx).Err())
	var wg sync.WaitGroup
	var admitted atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			d, err := l.Allow(ctx, r.Name, users[i%len(users)], base)
			if err != nil {
				t.Error(err)
			} else if d.Allowed {
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(50), admitted.Load())
}

// behaveAllowAllAtomic: Limiters deciding AllowAll at once for the same
// users under three Strict rules (a fixed window of 0.4·Limit, a token
// bucket of Limit, a sliding log of 0.6·Limit) admit each user exactly the
// tightest limit, and the other rules count exactly those admissions: the
// requests the tight rule denied consumed nothing under them, though they
// were decided in the same script call.
func behaveAllowAllAtomic(t *testing.T, b backend, p concurrency) {
	ctx := context.Background()
	rules := []Rule{
		{Name: "all-tight", Limit: p.limit * 4 / 10, Window: time.Minute, Algorithm: FixedWindow, Mode: Strict, OnFailure: FailError},
		{Name: "all-wide", Limit: p.limit, Window: time.Minute, Algorithm: TokenBucket, OnFailure: FailError},
		{Name: "all-log", Limit: p.limit * 6 / 10, Window: time.Minute, Algorithm: SlidingLog, OnFailure: FailError},
	}
	newLimiter := func(c redis.UniversalClient) *Limiter {
		l, err := New(Config{Redis: c, Rules: rules, KeyPrefix: b.prefix, Now: fixedClock(base), Timeout: behaveTimeout})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, l.Close()) })
		return l
	}
	var lims []*Limiter
	for range p.instances {
		lims = append(lims, newLimiter(b.client(t)))
	}
	checks := []Check{{Rule: "all-wide", N: 1}, {Rule: "all-tight", N: 1}, {Rule: "all-log", N: 1}}
	got := hammerWith(t, lims, p.users, p.goroutines, p.attempts, func(l *Limiter, user string) (bool, error) {
		d, err := l.AllowAll(ctx, user, base, checks...)
		return d.Allowed, err
	})
	want := rules[0].Limit
	for i, u := range p.users {
		require.Equal(t, want, got[i], "user %q: admitted", u)
		for _, r := range rules[1:] {
			d, err := lims[0].Peek(ctx, r.Name, u, base)
			require.NoError(t, err)
			require.Equal(t, r.Limit-want, d.Remaining, "user %q: rule %s counts the admitted requests only", u, r.Name)
		}
	}
}

// behaveAllowAllMixed: Limiters deciding AllowAll at once for the same
// users under a Strict rule and two Hybrid ones (a sliding and a fixed
// window, wide: they never deny) admit each user exactly the Strict rule's
// limit, and once the leases are back (Close) each Hybrid key counts
// exactly those admissions: the requests the Strict rule denied, decided
// in the same script as the Hybrid keys' Redis-bound parts, or after their
// leases served them, consumed nothing under them.
func behaveAllowAllMixed(t *testing.T, b backend, p concurrency) {
	ctx := context.Background()
	rules := []Rule{
		{Name: "mixed-tight", Limit: p.limit * 4 / 10, Window: time.Minute, Mode: Strict, OnFailure: FailError},
		{Name: "mixed-wide", Limit: 10 * p.limit, Window: time.Minute, Mode: Hybrid, OnFailure: FailError},
		{Name: "mixed-fixed", Limit: 10 * p.limit, Window: time.Minute, Algorithm: FixedWindow, Mode: Hybrid, OnFailure: FailError},
	}
	var lims []*Limiter
	for range p.instances {
		l, err := New(Config{Redis: b.client(t), Rules: rules, KeyPrefix: b.prefix, Now: fixedClock(base), Timeout: behaveTimeout, ManualSync: true})
		require.NoError(t, err)
		t.Cleanup(func() { _ = l.Close() }) // if the test fails before its Close
		lims = append(lims, l)
	}
	checks := []Check{{Rule: "mixed-wide", N: 1}, {Rule: "mixed-tight", N: 1}, {Rule: "mixed-fixed", N: 1}}
	got := hammerWith(t, lims, p.users, p.goroutines, p.attempts, func(l *Limiter, user string) (bool, error) {
		d, err := l.AllowAll(ctx, user, base, checks...)
		return d.Allowed, err
	})
	for _, l := range lims {
		require.NoError(t, l.Close()) // the leases go back
	}
	want := rules[0].Limit
	for i, u := range p.users {
		require.Equal(t, want, got[i], "user %q: admitted", u)
		for _, r := range rules[1:] {
			require.Equal(t, want, windowCount(t, b.c, global.Key(b.prefix, r.Name, u), base, r.Window),
				"user %q: rule %s counts the admitted requests only", u, r.Name)
		}
	}
}
