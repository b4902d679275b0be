package ratelimit

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// classBook is a Config.ClassOf that tests change as they go: the class of
// each user, and the users it was asked for.
type classBook struct {
	mu    sync.Mutex
	class map[string]string
	asked []string
	err   error
}

func (b *classBook) set(user, class string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.class == nil {
		b.class = make(map[string]string)
	}
	b.class[user] = class
}

func (b *classBook) classOf(_ context.Context, user string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked = append(b.asked, user)
	return b.class[user], b.err
}

func (b *classBook) calls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.asked...)
}

// overrideModes are the modes every override test runs in.
var overrideModes = []Mode{Strict, Hybrid, Local}

// newOverrides returns a Limiter of rules in mode on c under prefix (c is
// unused for Local), with the hybrid sync passes run only by Sync, and
// closes it with the test. cfg's Classes and ClassOf are kept.
func newOverrides(t *testing.T, c *redis.Client, prefix string, mode Mode, cfg Config, rules ...Rule) *Limiter {
	t.Helper()
	for i := range rules {
		rules[i].Mode = mode
	}
	cfg.Rules, cfg.KeyPrefix, cfg.Now, cfg.ManualSync = rules, prefix, fixedClock(base), true
	if mode != Local {
		cfg.Redis = c
	}
	l, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// keyExists reports whether any Redis key of user under rule exists (the
// base key and those derived from it).
func keyExists(t *testing.T, c *redis.Client, prefix, rule, user string) bool {
	t.Helper()
	keys, err := c.Keys(context.Background(), global.Key(prefix, rule, user)+"*").Result()
	require.NoError(t, err)
	return len(keys) > 0
}

// TestOverrideSharesCounters: a class's limit applies to the rule's own
// counters. One user, at one instant, changes class between requests: each
// request is admitted exactly when the user's count so far is below the
// limit of the class it is made in (the oracle), in every mode and for
// every algorithm whose count is a number of requests; Redis holds the
// oracle's count.
func TestOverrideSharesCounters(t *testing.T) {
	c := testRedis(t)
	classes := map[string]Override{"free": {Limit: 2}, "pro": {Limit: 8}}
	limitOf := map[string]int64{"": 5, "free": 2, "pro": 8}
	steps := []string{"free", "free", "free", "", "", "", "", "free", "pro", "pro", "pro", "pro", "", "free"}
	for _, mode := range overrideModes {
		for _, algo := range []Algorithm{SlidingWindow, FixedWindow, SlidingLog} {
			if mode == Hybrid && !algo.supportsHybrid() {
				continue
			}
			t.Run(mode.String()+"/"+algo.String(), func(t *testing.T) {
				prefix := testPrefix(t, c)
				var book classBook
				l := newOverrides(t, c, prefix, mode, Config{ClassOf: book.classOf},
					Rule{Name: "r", Limit: 5, Window: time.Minute, Algorithm: algo, Classes: classes})
				var count int64
				for i, class := range steps {
					book.set("u", class)
					want := count < limitOf[class]
					if want {
						count++
					}
					d, err := l.Allow(context.Background(), "r", "u", base)
					require.NoError(t, err)
					require.Equal(t, want, d.Allowed, "step %d (class %q, count %d)", i, class, count)
				}
				require.Equal(t, int64(8), count) // the oracle reached pro's limit
				if mode != Local {
					require.NoError(t, l.Close()) // gives hybrid leases back
					if algo != SlidingLog {
						require.Equal(t, count, windowCount(t, c, global.Key(prefix, "r", "u"), base, time.Minute))
					}
				}
			})
		}
	}
}

// TestOverrideTokenBucket: a class's Limit and Burst replace the bucket's:
// Burst requests at once, then one per Window/Limit.
func TestOverrideTokenBucket(t *testing.T) {
	c := testRedis(t)
	for _, mode := range []Mode{Strict, Local} {
		t.Run(mode.String(), func(t *testing.T) {
			l := newOverrides(t, c, testPrefix(t, c), mode, Config{Classes: map[string]string{"u": "free"}},
				Rule{Name: "r", Limit: 10, Window: time.Minute, Algorithm: TokenBucket, Classes: map[string]Override{"free": {Limit: 2, Burst: 3}}})
			admitted := func(at time.Time, n int) (got int) {
				for range n {
					d, err := l.Allow(context.Background(), "r", "u", at)
					require.NoError(t, err)
					if d.Allowed {
						got++
					}
				}
				return got
			}
			require.Equal(t, 3, admitted(base, 5))                                      // the class's burst
			require.Equal(t, 0, admitted(base.Add(30*time.Second-time.Millisecond), 1)) // one token per 30 s
			require.Equal(t, 1, admitted(base.Add(30*time.Second), 2))
			other, err := l.Allow(context.Background(), "r", "v", base)
			require.NoError(t, err)
			require.Equal(t, int64(9), other.Remaining) // users of no class get the rule
		})
	}
}

// TestOverrideUnlimitedNeverTouchesRedis: an Unlimited class admits every
// request with Remaining math.MaxInt64, counts nothing and writes no key;
// RuleStats counts its decisions (not its peeks) under the rule.
func TestOverrideUnlimitedNeverTouchesRedis(t *testing.T) {
	c := testRedis(t)
	for _, mode := range overrideModes {
		t.Run(mode.String(), func(t *testing.T) {
			prefix := testPrefix(t, c)
			var book classBook
			book.set("svc", "internal")
			l := newOverrides(t, c, prefix, mode, Config{Classes: map[string]string{"ops": "internal"}, ClassOf: book.classOf},
				Rule{Name: "r", Limit: 3, Window: time.Minute, Classes: map[string]Override{"internal": {Unlimited: true}}})
			for _, user := range []string{"ops", "svc"} {
				for i := range 50 {
					d, err := l.AllowN(context.Background(), "r", user, base, 2)
					require.NoError(t, err)
					require.Equal(t, Decision{Allowed: true, Remaining: math.MaxInt64}, d, "%s: request %d", user, i)
				}
				d, err := l.Peek(context.Background(), "r", user, base)
				require.NoError(t, err)
				require.True(t, d.Allowed)
				require.NoError(t, l.Refund(context.Background(), "r", user, base, 1)) // nothing to give back
			}
			require.NoError(t, l.Sync(context.Background()))
			if mode != Local {
				require.False(t, keyExists(t, c, prefix, "r", "ops"))
				require.False(t, keyExists(t, c, prefix, "r", "svc"))
			}
			st := l.RuleStats()[0]
			require.Equal(t, int64(100), st.UnlimitedAllowed)
			require.Zero(t, st.LocalAllowed+st.RedisAllowed+st.FallbackAllowed+st.DenyDenied)
			calls := book.calls() // once per Allow, Peek and Refund of "svc"; never for "ops", listed
			require.Len(t, calls, 52)
			require.NotContains(t, calls, "ops")
		})
	}
}

// TestOverrideDenyList: a user of a Deny class is denied (RetryAfter the
// rule's Window), nothing is counted or written, and the others are
// limited as before.
func TestOverrideDenyList(t *testing.T) {
	c := testRedis(t)
	for _, mode := range overrideModes {
		t.Run(mode.String(), func(t *testing.T) {
			prefix := testPrefix(t, c)
			l := newOverrides(t, c, prefix, mode, Config{Classes: map[string]string{"user:42": "blocked"}},
				Rule{Name: "r", Limit: 3, Window: time.Minute, Classes: map[string]Override{"blocked": {Deny: true}}})
			for range 4 {
				d, err := l.Allow(context.Background(), "r", "user:42", base)
				require.NoError(t, err)
				require.Equal(t, Decision{RetryAfter: time.Minute}, d)
			}
			var admitted int
			for range 5 {
				d, err := l.Allow(context.Background(), "r", "user:7", base)
				require.NoError(t, err)
				if d.Allowed {
					admitted++
				}
			}
			require.Equal(t, 3, admitted)
			if mode != Local {
				require.False(t, keyExists(t, c, prefix, "r", "user:42"))
			}
			require.Equal(t, int64(4), l.RuleStats()[0].DenyDenied)
		})
	}
}

// TestClassOfErrorPropagates: an error of ClassOf fails the decision (and
// the peek, refund and AllowAll) with the error wrapped, counting nothing.
func TestClassOfErrorPropagates(t *testing.T) {
	c := testRedis(t)
	boom := errors.New("plan store down")
	for _, mode := range overrideModes {
		t.Run(mode.String(), func(t *testing.T) {
			prefix := testPrefix(t, c)
			book := classBook{err: boom}
			l := newOverrides(t, c, prefix, mode, Config{ClassOf: book.classOf},
				Rule{Name: "r", Limit: 3, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 1}}},
				Rule{Name: "plain", Limit: 3, Window: time.Minute})
			ctx := context.Background()
			_, err := l.Allow(ctx, "r", "u", base)
			require.ErrorIs(t, err, boom)
			_, err = l.Peek(ctx, "r", "u", base)
			require.ErrorIs(t, err, boom)
			require.ErrorIs(t, l.Refund(ctx, "r", "u", base, 1), boom)
			_, err = l.AllowAll(ctx, "u", base, Check{Rule: "plain", N: 1}, Check{Rule: "r", N: 1})
			require.ErrorIs(t, err, boom)
			d, err := l.Allow(ctx, "plain", "u", base) // a rule without classes never asks
			require.NoError(t, err)
			require.Equal(t, int64(2), d.Remaining) // AllowAll counted nothing under "plain"
			if mode != Local {
				require.False(t, keyExists(t, c, prefix, "r", "u"))
			}
			require.Equal(t, []string{"u", "u", "u", "u"}, book.calls())
		})
	}
}

// TestClassOfCalls: ClassOf gets the caller's context and the user, once
// per decision (once per AllowAll), never for a bad key, a user that
// Config.Classes lists, or a rule without classes.
func TestClassOfCalls(t *testing.T) {
	type ctxKey struct{}
	var asked []string
	l := newOverrides(t, nil, "p", Local, Config{
		Classes: map[string]string{"listed": "free"},
		ClassOf: func(ctx context.Context, user string) (string, error) {
			require.Equal(t, "req-1", ctx.Value(ctxKey{}))
			asked = append(asked, user)
			return "", nil
		},
	},
		Rule{Name: "a", Limit: 3, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 1}}},
		Rule{Name: "b", Limit: 3, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 1}}},
		Rule{Name: "plain", Limit: 3, Window: time.Minute})
	ctx := context.WithValue(context.Background(), ctxKey{}, "req-1")
	_, err := l.Allow(ctx, "a", "alice", base)
	require.NoError(t, err)
	_, err = l.AllowAll(ctx, "bob", base, Check{Rule: "a", N: 1}, Check{Rule: "plain", N: 1}, Check{Rule: "b", N: 1})
	require.NoError(t, err)
	_, err = l.Allow(ctx, "plain", "carol", base)
	require.NoError(t, err)
	_, err = l.Allow(ctx, "a", "listed", base)
	require.NoError(t, err)
	_, err = l.Allow(ctx, "a", "", base)
	require.ErrorIs(t, err, ErrInvalidKey)
	require.Equal(t, []string{"alice", "bob"}, asked)

	d, err := l.Allow(ctx, "a", "listed", base) // the class's limit, 1, is spent
	require.NoError(t, err)
	require.False(t, d.Allowed)
}

// TestOverrideValidation: bad overrides are errors wrapping
// ErrInvalidArgument that name the rule, the class and the field.
func TestOverrideValidation(t *testing.T) {
	rule := func(a Algorithm, o Override) Rule {
		return Rule{Name: "api", Limit: 10, Window: time.Minute, Algorithm: a, Mode: Local, Classes: map[string]Override{"gold": o}}
	}
	for _, tc := range []struct {
		name    string
		rule    Rule
		classes map[string]string
		want    []string
	}{
		{"nothing set", rule(SlidingWindow, Override{}), nil, []string{`"api"`, `"gold"`, "Limit, Unlimited and Deny"}},
		{"two set", rule(SlidingWindow, Override{Limit: 3, Deny: true}), nil, []string{`"api"`, `"gold"`, "exactly one"}},
		{"negative limit", rule(SlidingWindow, Override{Limit: -1}), nil, []string{`"api"`, `"gold"`, "field Limit -1"}},
		{"burst without limit", rule(TokenBucket, Override{Unlimited: true, Burst: 2}), nil, []string{`"gold"`, "field Burst"}},
		{"burst on sliding window", rule(SlidingWindow, Override{Limit: 3, Burst: 4}), nil, []string{`"gold"`, "field Burst"}},
		{"burst above 2x", rule(TokenBucket, Override{Limit: 3, Burst: 7}), nil, []string{`"gold"`, "field Burst 7"}},
		{"log limit too big", rule(SlidingLog, Override{Limit: 5000}), nil, []string{`"gold"`, "field Limit 5000"}},
		{"empty class", Rule{Name: "api", Limit: 1, Window: time.Second, Mode: Local, Classes: map[string]Override{"": {Limit: 1}}}, nil, []string{`"api"`, "empty class"}},
		{"unknown class in Config.Classes", rule(SlidingWindow, Override{Limit: 3}), map[string]string{"u": "golld"}, []string{"Config.Classes", `"golld"`}},
		{"empty user in Config.Classes", rule(SlidingWindow, Override{Limit: 3}), map[string]string{"": "gold"}, []string{"Config.Classes", "user key"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{Rules: []Rule{tc.rule}, Classes: tc.classes})
			require.ErrorIs(t, err, ErrInvalidArgument)
			for _, w := range tc.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

// TestOverrideConcurrentStrict: concurrent requests of a user in a class
// and of a user without are admitted exactly up to their limits.
func TestOverrideConcurrentStrict(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	var lims []*Limiter
	for range 3 {
		lims = append(lims, newOverrides(t, c, prefix, Strict, Config{Classes: map[string]string{"small": "free"}},
			Rule{Name: "r", Limit: 100, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 30}}}))
	}
	var small, big atomic.Int64
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			l := lims[g%len(lims)]
			for range 25 {
				for user, n := range map[string]*atomic.Int64{"small": &small, "big": &big} {
					d, err := l.Allow(context.Background(), "r", user, base)
					if err != nil {
						t.Error(err)
						return
					}
					if d.Allowed {
						n.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, int64(30), small.Load()) // 300 attempts each
	require.Equal(t, int64(100), big.Load())
	var redisAllowed int64
	for _, l := range lims {
		redisAllowed += l.RuleStats()[0].RedisAllowed
	}
	require.Equal(t, int64(130), redisAllowed) // the class's decisions count under the rule
}

// TestOverrideHybridInstances: under a Hybrid rule, a user of a class with
// a smaller limit gets exactly the class's limit across two instances that
// sync between rounds, and a user of no class the rule's, on the same key
// counts.
func TestOverrideHybridInstances(t *testing.T) {
	forEachFront(t, func(t *testing.T, front bool) {
		c := testRedis(t)
		prefix := testPrefix(t, c)
		var lims []*Limiter
		for range 2 {
			l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, noFront: !front,
				Classes: map[string]string{"small": "free"},
				Rules:   []Rule{{Name: "r", Limit: 20, Window: time.Minute, Mode: Hybrid, Classes: map[string]Override{"free": {Limit: 7}}}}})
			require.NoError(t, err)
			t.Cleanup(func() { _ = l.Close() })
			lims = append(lims, l)
		}
		admitted := map[string]int64{}
		for round := range 8 {
			for _, l := range lims {
				for range 3 {
					for _, user := range []string{"small", "big"} {
						d, err := l.Allow(context.Background(), "r", user, base.Add(time.Duration(round)*time.Millisecond))
						require.NoError(t, err)
						if d.Allowed {
							admitted[user]++
						}
					}
				}
			}
			for _, l := range lims {
				require.NoError(t, l.Sync(context.Background()))
			}
			require.LessOrEqual(t, admitted["small"], int64(7), "round %d", round)
			require.LessOrEqual(t, admitted["big"], int64(20), "round %d", round)
		}
		require.Equal(t, map[string]int64{"small": 7, "big": 20}, admitted) // 48 attempts each
		for _, l := range lims {
			require.NoError(t, l.Close())
		}
		require.Equal(t, int64(7), windowCount(t, c, global.Key(prefix, "r", "small"), base, time.Minute))
	})
}

// TestOverrideHybridClassChange: a hybrid user who changes class keeps one
// count in Redis, whichever class's state leases from it: after 4 of 5
// under the rule, a class of 2 admits nothing more, and back under the rule
// 1 more passes; the old class's unspent lease goes back at the next sync.
func TestOverrideHybridClassChange(t *testing.T) {
	forEachFront(t, func(t *testing.T, front bool) {
		c := testRedis(t)
		prefix := testPrefix(t, c)
		var book classBook
		l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base), ManualSync: true, noFront: !front, ClassOf: book.classOf,
			Rules: []Rule{{Name: "r", Limit: 5, Window: time.Minute, Mode: Hybrid, Classes: map[string]Override{"free": {Limit: 2}}}}})
		require.NoError(t, err)
		t.Cleanup(func() { _ = l.Close() })
		allow := func(n int) (got int) {
			for range n {
				d, err := l.Allow(context.Background(), "r", "u", base)
				require.NoError(t, err)
				if d.Allowed {
					got++
				}
			}
			return got
		}
		require.Equal(t, 4, allow(4))
		require.NoError(t, l.Sync(context.Background()))
		book.set("u", "free")
		require.Equal(t, 0, allow(3))
		book.set("u", "")
		require.Equal(t, 1, allow(3))
		require.NoError(t, l.Sync(context.Background()))
		require.Equal(t, int64(5), windowCount(t, c, global.Key(prefix, "r", "u"), base, time.Minute))
	})
}

// TestOverrideResetAndRefund: Reset clears a user's usage whatever its
// class (the class's hybrid state included), and Refund gives back to the
// class's state.
func TestOverrideResetAndRefund(t *testing.T) {
	c := testRedis(t)
	for _, mode := range overrideModes {
		t.Run(mode.String(), func(t *testing.T) {
			l := newOverrides(t, c, testPrefix(t, c), mode, Config{Classes: map[string]string{"u": "free"}},
				Rule{Name: "r", Limit: 5, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 2}}})
			ctx := context.Background()
			allow := func(n int) (got int) {
				for range n {
					d, err := l.Allow(ctx, "r", "u", base)
					require.NoError(t, err)
					if d.Allowed {
						got++
					}
				}
				return got
			}
			require.Equal(t, 2, allow(3))
			require.NoError(t, l.Refund(ctx, "r", "u", base, 1))
			require.Equal(t, 1, allow(2))
			require.Error(t, l.Refund(ctx, "r", "u", base, 3)) // above the class's limit
			require.NoError(t, l.Reset(ctx, "r", "u"))
			require.Equal(t, 2, allow(3))
		})
	}
}

// TestOverrideStrictNUsesClassLimit: with StrictN, an n above the class's
// limit is an error, one within it is not.
func TestOverrideStrictNUsesClassLimit(t *testing.T) {
	l := newOverrides(t, nil, "p", Local, Config{StrictN: true, Classes: map[string]string{"u": "free"}},
		Rule{Name: "r", Limit: 5, Window: time.Minute, Classes: map[string]Override{"free": {Limit: 2}}})
	_, err := l.AllowN(context.Background(), "r", "u", base, 3)
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.True(t, strings.Contains(err.Error(), "limit 2"), err.Error())
	d, err := l.AllowN(context.Background(), "r", "v", base, 3)
	require.NoError(t, err)
	require.True(t, d.Allowed)
}

// TestOverrideAllowAllClasses: in AllowAll, an Unlimited or Deny class is
// decided without Redis and stays out of the strict script: a Deny class
// denies before anything is counted under the other rules; an Unlimited
// one lets the other Strict rules decide, still together.
func TestOverrideAllowAllClasses(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	cls := map[string]Override{"blocked": {Deny: true}, "internal": {Unlimited: true}}
	l := newOverrides(t, c, prefix, Strict, Config{Classes: map[string]string{"mallory": "blocked", "svc": "internal"}},
		Rule{Name: "api", Limit: 2, Window: time.Minute, Classes: cls},
		Rule{Name: "day", Limit: 3, Window: time.Hour},
		Rule{Name: "hour", Limit: 5, Window: time.Hour})
	ctx := context.Background()
	checks := []Check{{Rule: "day", N: 1}, {Rule: "api", N: 1}, {Rule: "hour", N: 1}}

	a := allowAll{l: l, user: "svc", checks: checks, rules: make([]*rule, 3)}
	var uc userClass
	for i, ch := range checks {
		r, err := l.ruleFor(ctx, l.rules.Load().byName[ch.Rule], "svc", &uc)
		require.NoError(t, err)
		a.rules[i] = r
	}
	together, hybrid, alone := a.split()
	require.Equal(t, []int{0, 2}, together, "day and hour in one script")
	require.Empty(t, hybrid)
	require.Equal(t, []int{1}, alone, "the Unlimited class alone")

	d, err := l.AllowAll(ctx, "mallory", base, checks...)
	require.NoError(t, err)
	require.False(t, d.Allowed)
	require.Equal(t, "api", d.Rule)
	require.False(t, keyExists(t, c, prefix, "day", "mallory"), "nothing counted under day")
	require.False(t, keyExists(t, c, prefix, "api", "mallory"))

	admitted := 0
	for range 4 {
		d, err := l.AllowAll(ctx, "svc", base, checks...)
		require.NoError(t, err)
		if d.Allowed {
			admitted++
		}
	}
	require.Equal(t, 3, admitted, "day's 3; api unlimited")
	require.False(t, keyExists(t, c, prefix, "api", "svc"), "the Unlimited class counts nothing")
	require.Equal(t, 2, allowed(t, l, "hour", "svc", 5), "hour counted the 3 admitted")
}
