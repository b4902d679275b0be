package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// redisState is everything Redis holds under a base key: its hash and the
// sliding log's member set (never a TTL, which moves with time).
func redisState(t *testing.T, c redis.UniversalClient, key string) string {
	t.Helper()
	ctx := context.Background()
	typ, err := c.Type(ctx, key).Result()
	require.NoError(t, err)
	var out string
	switch typ {
	case "hash":
		h, err := c.HGetAll(ctx, key).Result()
		require.NoError(t, err)
		out = fmt.Sprint(h)
	case "zset":
		z, err := c.ZRangeWithScores(ctx, key, 0, -1).Result()
		require.NoError(t, err)
		out = fmt.Sprint(z)
	}
	m, err := c.HGetAll(ctx, key+":m").Result()
	require.NoError(t, err)
	return typ + " " + out + fmt.Sprint(m)
}

// TestModesScriptsMatchReference runs random histories of takes, peeks and
// refunds through each strict script on Redis and through its Go form
// (localState: take, peek, refund), token buckets with bursts below, at
// and above the limit, and requires the same answers to the millisecond;
// a peek must leave what Redis holds as it was.
func TestModesScriptsMatchReference(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	store := global.NewStore(c, global.Options{})
	defer store.Close()
	ctx := context.Background()

	type cfg struct{ w, limit, burst int64 }
	for _, a := range allAlgorithms {
		cfgs := []cfg{{1000, 1, 1}, {1000, 10, 10}, {997, 3, 3}, {60_000, 100, 100}}
		if a == TokenBucket {
			cfgs = append(cfgs, cfg{60_000, 100, 5}, cfg{1000, 10, 20}, cfg{997, 3, 1}, cfg{1 << 20, 1 << 30, 1 << 31})
		}
		for _, k := range cfgs {
			t.Run(fmt.Sprintf("%v/w=%d/limit=%d/burst=%d", a, k.w, k.limit, k.burst), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(k.w), uint64(k.burst)))
				key := global.Key(prefix, t.Name(), "user")
				var ref localState
				now := base.UnixMilli()
				for i := range 400 {
					switch rng.IntN(10) {
					case 0:
						now -= rng.Int64N(k.w + 1)
					case 1:
						now += rng.Int64N(3 * k.w)
					default:
						now += rng.Int64N(k.w/8 + 1)
					}
					n := 1 + rng.Int64N(min(k.burst, 5))
					req := global.Request{Algorithm: global.Algorithm(a), Key: key, Now: now, Window: k.w, Limit: k.limit, N: n, Burst: k.burst}
					var want result
					before := redisState(t, c, key)
					switch rng.IntN(4) {
					case 0:
						req.Mode, req.N = global.Peek, 1
						want = ref.peek(a, now, k.w, k.limit, k.burst)
					case 1:
						req.Mode = global.Refund
						ref.refund(a, now, k.w, k.limit, n)
						want = ref.peek(a, now, k.w, k.limit, k.burst)
					default:
						want = ref.take(a, now, k.w, k.limit, k.burst, n)
					}
					got, err := store.Take(ctx, req)
					require.NoError(t, err)
					if got.Allowed != want.allowed || got.Remaining != want.remaining ||
						got.RetryAfter != want.retryAfter || got.ResetAfter != want.resetAfter {
						t.Fatalf("step %d (%v now=%d n=%d): script = %+v, reference = %+v", i, req.Mode, now, n, got, want)
					}
					if req.Mode == global.Peek {
						require.Equal(t, before, redisState(t, c, key), "step %d: a peek wrote", i)
					}
				}
			})
		}
	}
}

// apiModes are the rules the API tests run: every algorithm in every mode
// that runs it, the hybrid ones with their front table and without.
func apiModes() []struct {
	name  string
	rule  Rule
	front bool
} {
	var out []struct {
		name  string
		rule  Rule
		front bool
	}
	for _, a := range allAlgorithms {
		for _, m := range []Mode{Strict, Local, Hybrid} {
			if m == Hybrid && !a.supportsHybrid() {
				continue
			}
			for _, front := range []bool{true, false} {
				if m != Hybrid && !front {
					continue
				}
				name := fmt.Sprintf("%v/%v", a, m)
				if m == Hybrid {
					name += fmt.Sprintf("/front=%v", front)
				}
				out = append(out, struct {
					name  string
					rule  Rule
					front bool
				}{name, Rule{Name: "r", Limit: 10, Window: time.Second, Algorithm: a, Mode: m}, front})
			}
		}
	}
	return out
}

// newAPILimiter returns a Limiter of the one rule r, with manual sync and
// a fixed clock, under the test's prefix.
func newAPILimiter(t *testing.T, c redis.UniversalClient, prefix string, r Rule, front bool, strictN bool) *Limiter {
	t.Helper()
	// A long Timeout: these tests count exactly, and a call that times out
	// after Redis ran it is counted twice, by Redis and by the failure
	// policy (on the safe side, by design): a loaded machine must not turn
	// a slow call into one (TestAPIConcurrent failed 8 times in 90 so,
	// three race binaries at once; see docs/design.md, failure policies).
	l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, noFront: !front,
		StrictN: strictN, Rules: []Rule{r}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// TestPeekCountsNothing: in every mode and algorithm, along a history of
// requests, a peek leaves what Redis holds as it was and agrees with the
// next Allow: the same decision, one more Remaining when it admits, the
// same RetryAfter when it denies. Peeks between the requests change no
// decision: the requests are admitted exactly as a reference that never
// saw the peeks admits them.
func TestPeekCountsNothing(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range apiModes() {
		t.Run(m.name, func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			key := global.Key(prefix, "r", "u")
			ref := newTaker(m.rule.Algorithm)
			at := base
			for i := range 60 {
				at = at.Add(time.Duration(i%7) * 37 * time.Millisecond)
				before := redisState(t, c, key)
				p, err := l.Peek(ctx, "r", "u", at)
				require.NoError(t, err)
				require.Equal(t, before, redisState(t, c, key), "step %d: the peek wrote", i)
				d, err := l.Allow(ctx, "r", "u", at)
				require.NoError(t, err)
				want := ref.take(at.UnixMilli(), 1000, 10, 1)
				require.Equal(t, want.allowed, d.Allowed, "step %d: allow", i)
				require.Equal(t, d.Allowed, p.Allowed, "step %d: peek %+v, allow %+v", i, p, d)
				if d.Allowed {
					require.Equal(t, p.Remaining-1, d.Remaining, "step %d: peek %+v, allow %+v", i, p, d)
				} else {
					require.Equal(t, p.RetryAfter, d.RetryAfter, "step %d: peek %+v, allow %+v", i, p, d)
				}
				if i%10 == 9 {
					require.NoError(t, l.Sync(ctx))
				}
			}
		})
	}
}

// TestAboveLimitIsDenied: n above the limit is a denial that counts
// nothing, with RetryAfter the whole window and the Remaining of a peek;
// with StrictN it is an error, and a negative n always is.
func TestAboveLimitIsDenied(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range apiModes() {
		t.Run(m.name, func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			key := global.Key(prefix, "r", "u")
			d, err := l.AllowN(ctx, "r", "u", base, 3)
			require.NoError(t, err)
			require.True(t, d.Allowed)
			before := redisState(t, c, key)
			d, err = l.AllowN(ctx, "r", "u", base, 11)
			require.NoError(t, err)
			require.Equal(t, Decision{Allowed: false, Remaining: 7, RetryAfter: time.Second, ResetAfter: d.ResetAfter}, d)
			require.Equal(t, before, redisState(t, c, key))
			d, err = l.AllowN(ctx, "r", "u", base, 7)
			require.NoError(t, err)
			require.True(t, d.Allowed, "the denial took nothing")
			_, err = l.AllowN(ctx, "r", "u", base, -1)
			require.ErrorIs(t, err, ErrInvalidArgument)

			strict := newAPILimiter(t, c, prefix+"s", m.rule, m.front, true)
			_, err = strict.AllowN(ctx, "r", "u", base, 11)
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.ErrorContains(t, err, "could never pass")
		})
	}
}

// exhaust takes one at a time from user at at until a denial, and returns
// how many were admitted.
func exhaust(t *testing.T, l *Limiter, user string, at time.Time) int {
	t.Helper()
	for i := range 1000 {
		d, err := l.Allow(context.Background(), "r", user, at)
		require.NoError(t, err)
		if !d.Allowed {
			return i
		}
	}
	t.Fatal("never denied")
	return 0
}

// TestReset: after Reset the user gets exactly Limit again, every key of
// the algorithm is gone from Redis, and another user's usage is untouched.
func TestReset(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range apiModes() {
		t.Run(m.name, func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			require.Equal(t, 10, exhaust(t, l, "a", base))
			_, err := l.AllowN(ctx, "r", "b", base, 4)
			require.NoError(t, err)
			require.NoError(t, l.Sync(ctx))
			other, err := l.Peek(ctx, "r", "b", base)
			require.NoError(t, err)

			require.NoError(t, l.Reset(ctx, "r", "a"))
			key := global.Key(prefix, "r", "a")
			n, err := c.Exists(ctx, key, key+":m").Result()
			require.NoError(t, err)
			require.Zero(t, n, "Redis still holds the user's keys")

			at := base.Add(time.Millisecond)
			require.Equal(t, 10, exhaust(t, l, "a", at), "after Reset")
			require.NoError(t, l.Sync(ctx))
			require.Equal(t, 0, exhaust(t, l, "a", at), "after a sync")
			got, err := l.Peek(ctx, "r", "b", base)
			require.NoError(t, err)
			require.Equal(t, other, got, "the other user")
			require.Equal(t, 6, exhaust(t, l, "b", base), "the other user")

			require.ErrorIs(t, l.Reset(ctx, "nope", "a"), ErrUnknownRule)
			require.ErrorIs(t, l.Reset(ctx, "r", ""), ErrInvalidKey)
		})
	}
}

// TestRefund: a refund of k after the user reached the limit gives back
// exactly k admissions in the same window, and Redis holds k fewer (but
// for a hybrid key whose state took them into its lease); a refund for a
// window that no longer counts gives nothing back (for the sliding window
// two windows on).
func TestRefund(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range apiModes() {
		t.Run(m.name, func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			require.Equal(t, 10, exhaust(t, l, "a", base))
			require.NoError(t, l.Refund(ctx, "r", "a", base, 3))
			require.Equal(t, 3, exhaust(t, l, "a", base), "after a refund of 3")
			require.NoError(t, l.Sync(ctx))
			require.Equal(t, 0, exhaust(t, l, "a", base), "after a sync")

			require.ErrorIs(t, l.Refund(ctx, "r", "a", base, 0), ErrInvalidArgument)
			require.ErrorIs(t, l.Refund(ctx, "r", "a", base, 11), ErrInvalidArgument)
			require.ErrorIs(t, l.Refund(ctx, "r", "", base, 1), ErrInvalidKey)
			require.ErrorIs(t, l.Refund(ctx, "x", "a", base, 1), ErrUnknownRule)

			if m.rule.Algorithm == FixedWindow {
				// The window is over: nothing to give back in the next.
				next := base.Add(time.Second)
				require.Equal(t, 10, exhaust(t, l, "b", base))
				require.Equal(t, 10, exhaust(t, l, "b", next))
				require.NoError(t, l.Refund(ctx, "r", "b", base, 5))
				require.Equal(t, 0, exhaust(t, l, "b", next), "a refund for a window that is over")
			}
		})
	}
}

// TestRefundRedisCounts: what a refund leaves in Redis, exactly: a strict
// window count falls by n (never below 0); a hybrid refund of an instance
// without the key's state goes back to Redis, once even if the call is
// sent twice.
func TestRefundRedisCounts(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, a := range []Algorithm{SlidingWindow, FixedWindow} {
		for _, m := range []Mode{Strict, Hybrid} {
			t.Run(fmt.Sprintf("%v/%v", a, m), func(t *testing.T) {
				prefix := testPrefix(t, c)
				r := Rule{Name: "r", Limit: 10, Window: time.Second, Algorithm: a, Mode: m}
				l := newAPILimiter(t, c, prefix, r, true, false)
				key := global.Key(prefix, "r", "u")
				require.Equal(t, 10, exhaust(t, l, "u", base))
				require.NoError(t, l.Sync(ctx))
				count := func() int64 {
					v, err := c.HGet(ctx, key, "c").Int64()
					require.NoError(t, err)
					return v
				}
				require.EqualValues(t, 10, count())
				other := newAPILimiter(t, c, prefix, r, true, false) // holds no state of the key
				require.NoError(t, other.Refund(ctx, "r", "u", base, 4))
				require.EqualValues(t, 6, count())
				if m == Hybrid { // a copy of the refund's call applies once
					req := other.hybrid.refundRequest(other.rules.Load().byName["r"], "u", base.UnixMilli(), 2)
					for range 2 {
						_, err := other.store.Lease(ctx, req)
						require.NoError(t, err)
					}
					require.EqualValues(t, 4, count(), "a re-sent refund")
				}
				require.NoError(t, other.Refund(ctx, "r", "u", base, 10))
				require.EqualValues(t, 0, count(), "never below 0")
			})
		}
	}
}

// TestBurst: a token bucket of Burst 5 refilled at 100 a minute admits
// exactly 5 at once, then one every 600 ms, in every mode and in FailLocal's
// fallback.
func TestBurst(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range []Mode{Strict, Local} {
		t.Run(m.String(), func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newAPILimiter(t, c, prefix, Rule{Name: "r", Limit: 100, Window: time.Minute, Algorithm: TokenBucket, Burst: 5, Mode: m}, true, false)
			p, err := l.Peek(ctx, "r", "u", base)
			require.NoError(t, err)
			require.Equal(t, Decision{Allowed: true, Remaining: 5}, p)
			require.Equal(t, 5, exhaust(t, l, "u", base))
			d, err := l.Allow(ctx, "r", "u", base)
			require.NoError(t, err)
			require.Equal(t, Decision{Allowed: false, Remaining: 0, RetryAfter: 600 * time.Millisecond, ResetAfter: 3 * time.Second}, d)
			for k := 1; k <= 5; k++ {
				at := base.Add(time.Duration(k) * 600 * time.Millisecond)
				d, err := l.Allow(ctx, "r", "u", at.Add(-time.Millisecond))
				require.NoError(t, err)
				require.False(t, d.Allowed, "%d ms early", k*600-1)
				require.Equal(t, 1, exhaust(t, l, "u", at), "at %d ms", k*600)
			}
			// After a long pause the bucket holds 5 again, not more.
			require.Equal(t, 5, exhaust(t, l, "u", base.Add(time.Minute)))
			d, err = l.AllowN(ctx, "r", "u", base.Add(2*time.Minute), 6)
			require.NoError(t, err)
			require.False(t, d.Allowed, "6 > Burst can never pass")
			require.Equal(t, time.Minute, d.RetryAfter)
		})
	}
	t.Run("fallback", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		require.NoError(t, ln.Close()) // nothing listens there: Redis is down
		dead := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
		defer dead.Close()
		l, err := New(Config{Redis: dead, Now: fixedClock(base), ManualSync: true, Timeout: 50 * time.Millisecond,
			Rules: []Rule{{Name: "r", Limit: 100, Window: time.Minute, Algorithm: TokenBucket, Burst: 5, Mode: Strict}}})
		require.NoError(t, err)
		defer l.Close()
		p, err := l.Peek(ctx, "r", "u", base)
		require.NoError(t, err)
		require.Equal(t, Decision{Allowed: true, Remaining: 5}, p, "FailLocal's peek")
		require.Equal(t, 5, exhaust(t, l, "u", base))
		require.Equal(t, 1, exhaust(t, l, "u", base.Add(600*time.Millisecond)))
		require.EqualValues(t, 6, l.Stats().FallbackLocalAllowed)
	})
}

// TestPeekFromAnotherInstance: an instance that holds nothing of a key
// peeks from Redis, and agrees with its own next Allow: denied, with the
// same RetryAfter, once another instance took the whole limit; its peek
// writes nothing.
func TestPeekFromAnotherInstance(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range apiModes() {
		if m.rule.Mode == Local {
			continue
		}
		t.Run(m.name, func(t *testing.T) {
			prefix := testPrefix(t, c)
			a := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			b := newAPILimiter(t, c, prefix, m.rule, m.front, false)
			require.Equal(t, 10, exhaust(t, a, "u", base))
			require.NoError(t, a.Sync(ctx))
			key := global.Key(prefix, "r", "u")
			at := base.Add(50 * time.Millisecond) // a token bucket refills one in 100 ms
			before := redisState(t, c, key)
			p, err := b.Peek(ctx, "r", "u", at)
			require.NoError(t, err)
			require.Equal(t, before, redisState(t, c, key))
			require.False(t, p.Allowed)
			require.Positive(t, p.RetryAfter)
			d, err := b.Allow(ctx, "r", "u", at)
			require.NoError(t, err)
			require.False(t, d.Allowed)
			require.Equal(t, p.RetryAfter, d.RetryAfter)
		})
	}
}

// TestPeekWhileRedisIsDown: a peek the rule's failure policy answers
// counts nothing: FailOpen admits with the whole limit left, FailClosed
// denies for at least a second, FailLocal answers from its table (which
// still holds the limit after the peeks), FailError returns the error.
func TestPeekWhileRedisIsDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	dead := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer dead.Close()
	ctx := context.Background()
	l, err := New(Config{Redis: dead, Now: fixedClock(base), ManualSync: true, Timeout: 50 * time.Millisecond,
		Rules: []Rule{
			{Name: "open", Limit: 4, Window: time.Second, Mode: Strict, OnFailure: FailOpen},
			{Name: "closed", Limit: 4, Window: time.Second, Mode: Hybrid, OnFailure: FailClosed},
			{Name: "local", Limit: 4, Window: time.Second, Mode: Hybrid},
			{Name: "error", Limit: 4, Window: time.Second, Mode: Strict, OnFailure: FailError},
		}})
	require.NoError(t, err)
	defer l.Close()
	for range 5 {
		d, err := l.Peek(ctx, "open", "u", base)
		require.NoError(t, err)
		require.Equal(t, Decision{Allowed: true, Remaining: 4}, d)
		d, err = l.Peek(ctx, "closed", "u", base)
		require.NoError(t, err)
		require.False(t, d.Allowed)
		require.GreaterOrEqual(t, d.RetryAfter, time.Second)
		d, err = l.Peek(ctx, "local", "u", base)
		require.NoError(t, err)
		require.Equal(t, Decision{Allowed: true, Remaining: 4}, d)
		_, err = l.Peek(ctx, "error", "u", base)
		require.ErrorIs(t, err, ErrUnavailable)
	}
	st := l.Stats()
	require.Zero(t, st.FallbackOpen+st.FallbackClosed+st.FallbackLocalAllowed+st.FallbackLocalDenied, "peeks counted")
	require.Zero(t, st.PendingKeys, "peeks wait to be credited")
	d, err := l.AllowN(ctx, "local", "u", base, 4)
	require.NoError(t, err)
	require.True(t, d.Allowed)
}

// TestAPIConcurrent runs Allow, Peek and Refund of a few users together
// with sync passes, on hybrid rules with the front table and without and on
// a strict one, all in one window, under -race; each refund gives back part
// of an admission just made. Then each user gets exactly what is left of
// the limit: Limit less what was admitted and not refunded.
func TestAPIConcurrent(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	for _, m := range []struct {
		name  string
		mode  Mode
		front bool
	}{{"hybrid/front=on", Hybrid, true}, {"hybrid/front=off", Hybrid, false}, {"strict", Strict, true}} {
		for _, a := range []Algorithm{SlidingWindow, FixedWindow} {
			t.Run(fmt.Sprintf("%v/%s", a, m.name), func(t *testing.T) {
				prefix := testPrefix(t, c)
				const limit = 200
				l := newAPILimiter(t, c, prefix, Rule{Name: "r", Limit: limit, Window: time.Second, Algorithm: a, Mode: m.mode}, m.front, false)
				var net [3]atomic.Int64 // admitted less refunded, per user
				errs := make(chan error, 8)
				var wg sync.WaitGroup
				for g := range 4 {
					wg.Go(func() {
						rng := rand.New(rand.NewPCG(uint64(g), 7))
						for i := range 300 {
							u := rng.IntN(3)
							user := fmt.Sprintf("u%d", u)
							at := base.Add(time.Duration(i) * time.Millisecond)
							if rng.IntN(5) == 0 {
								if _, err := l.Peek(ctx, "r", user, at); err != nil {
									errs <- err
									return
								}
								continue
							}
							n := 1 + rng.Int64N(2)
							d, err := l.AllowN(ctx, "r", user, at, n)
							if err != nil {
								errs <- err
								return
							}
							if !d.Allowed {
								continue
							}
							net[u].Add(n)
							if rng.IntN(3) == 0 {
								k := 1 + rng.Int64N(n)
								if err := l.Refund(ctx, "r", user, at, k); err != nil {
									errs <- err
									return
								}
								net[u].Add(-k)
							}
						}
					})
				}
				wg.Go(func() {
					for range 10 {
						if err := l.Sync(ctx); err != nil {
							errs <- err
							return
						}
						time.Sleep(3 * time.Millisecond)
					}
				})
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				require.NoError(t, l.Sync(ctx))
				end := base.Add(999 * time.Millisecond)
				for u := range 3 {
					used := net[u].Load()
					require.LessOrEqual(t, used, int64(limit), "user %d", u)
					require.Equal(t, limit-int(used), exhaust(t, l, fmt.Sprintf("u%d", u), end), "user %d", u)
				}
			})
		}
	}
}
