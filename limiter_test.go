package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// base is the tests' fixed start instant.
var base = time.UnixMilli(1_700_000_000_000)

// TestScriptsMatchReference runs the same random histories through each Lua
// script on Redis and through its Go form, and requires identical answers:
// decision, remaining, retry-after and reset-after, to the millisecond.
func TestScriptsMatchReference(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	store := global.NewStore(c, global.Options{})
	defer store.Close()
	ctx := context.Background()

	for _, a := range allAlgorithms {
		for _, cfg := range []struct{ w, limit int64 }{{1000, 1}, {1000, 10}, {60_000, 100}, {997, 3}, {1000, 1000}, {1 << 20, 1 << 30}} {
			if a == SlidingLog && cfg.limit > 1000 {
				continue // the sliding log keeps one member per request: too many here
			}
			t.Run(fmt.Sprintf("%v/w=%d/limit=%d", a, cfg.w, cfg.limit), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(cfg.w), uint64(cfg.limit)))
				key := global.Key(prefix, t.Name(), "user")
				ref := newTaker(a)
				now := base.UnixMilli()
				for i := range 400 {
					switch rng.IntN(10) {
					case 0: // an older timestamp
						now -= rng.Int64N(cfg.w + 1)
					case 1: // a long pause
						now += rng.Int64N(3 * cfg.w)
					default:
						now += rng.Int64N(cfg.w/8 + 1)
					}
					n := 1 + rng.Int64N(min(cfg.limit, 5))
					want := ref.take(now, cfg.w, cfg.limit, n)
					got, err := store.Take(ctx, global.Request{
						Algorithm: global.Algorithm(a), Key: key, Now: now, Window: cfg.w, Limit: cfg.limit, N: n,
					})
					require.NoError(t, err)
					if got.Allowed != want.allowed || got.Remaining != want.remaining ||
						got.RetryAfter != want.retryAfter || got.ResetAfter != want.resetAfter {
						t.Fatalf("step %d (now=%d n=%d): script = %+v, reference = %+v", i, now, n, got, want)
					}
				}
			})
		}
	}
}

// newStrict returns a strict Limiter on c with one rule, and closes it with
// the test.
func newStrict(t *testing.T, c redis.UniversalClient, prefix string, r Rule) *Limiter {
	t.Helper()
	r.Mode = Strict
	l, err := New(Config{Redis: c, Rules: []Rule{r}, KeyPrefix: prefix, Now: fixedClock(base)})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

// TestRetryAfterOnRedis: after a denial at t, a retry at t+RetryAfter−1 ms
// is denied and one at t+RetryAfter is admitted, for every algorithm.
func TestRetryAfterOnRedis(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	for _, a := range allAlgorithms {
		t.Run(a.String(), func(t *testing.T) {
			r := Rule{Name: "r-" + a.String(), Limit: 5, Window: time.Second, Algorithm: a}
			l := newStrict(t, c, prefix, r)
			now := base.Add(250 * time.Millisecond)
			denials := 0
			for i := range 40 {
				now = now.Add(37 * time.Millisecond)
				d, err := l.Allow(ctx, r.Name, "u", now)
				require.NoError(t, err)
				if d.Allowed {
					require.Zero(t, d.RetryAfter)
					continue
				}
				denials++
				require.Positive(t, d.RetryAfter, "step %d", i)
				early, err := l.Allow(ctx, r.Name, "u", now.Add(d.RetryAfter-time.Millisecond))
				require.NoError(t, err)
				require.False(t, early.Allowed, "step %d: retry 1 ms early was admitted", i)
				now = now.Add(d.RetryAfter)
				onTime, err := l.Allow(ctx, r.Name, "u", now)
				require.NoError(t, err)
				require.True(t, onTime.Allowed, "step %d: retry after %v was denied", i, d.RetryAfter)
			}
			require.Greater(t, denials, 3, "the history must exercise denials")
		})
	}
}

// TestConcurrentInstances: 8 Limiters, each with its own client, 32
// goroutines each, one user at one instant. The exact algorithms admit
// exactly Limit; the sliding window admits exactly what approx.go computes
// with 600 requests counted in the previous window. (The cluster suite runs
// the same behaviour: behaviour_test.go.)
func TestConcurrentInstances(t *testing.T) {
	behaveStrictExactUnderConcurrency(t, singleNode(t),
		concurrency{instances: 8, goroutines: 32, attempts: 8, limit: 1000, users: []string{"hot"}}) // 2048 attempts
}

// hammer runs goroutines goroutines on each Limiter, each making attempts
// Allow calls for user "hot" at now, and returns how many were admitted.
func hammer(t *testing.T, lims []*Limiter, rule string, now time.Time, goroutines, attempts int) int64 {
	t.Helper()
	return hammerUsers(t, lims, rule, []string{"hot"}, now, goroutines, attempts)[0]
}

// TestKeysExpire: every key written carries a TTL of at most two windows,
// and is gone two windows after its last use.
func TestKeysExpire(t *testing.T) {
	behaveKeysExpire(t, singleNode(t), 150*time.Millisecond, []string{"user"})
}

// TestNoScriptFallback: after SCRIPT FLUSH the scripts run again through
// EVAL, alone and in pipelines.
func TestNoScriptFallback(t *testing.T) {
	behaveNoScriptFallback(t, singleNode(t), []string{"u"})
}

// TestServerTime: with ServerTime the script's clock is Redis's, not the
// request's: a request stamped in the past still lands in the current
// window of the server.
func TestServerTime(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	r := Rule{Name: "srv", Limit: 1, Window: time.Hour, Algorithm: FixedWindow, Mode: Strict}
	stale := time.Now().Add(-24 * time.Hour)
	l, err := New(Config{Redis: c, Rules: []Rule{r}, KeyPrefix: prefix, ServerTime: true, MaxSkew: -1})
	require.NoError(t, err)
	defer l.Close()
	_, err = l.Allow(ctx, r.Name, "u", stale)
	require.NoError(t, err)
	d, err := l.Allow(ctx, r.Name, "u", stale)
	require.NoError(t, err)
	require.False(t, d.Allowed)
	srv, err := c.Time(ctx).Result()
	require.NoError(t, err)
	want := srv.Truncate(time.Hour).Add(time.Hour).Sub(srv)
	require.InDelta(t, want.Seconds(), d.RetryAfter.Seconds(), 2, "retry should run to the end of the server's hour")
}

// TestKeyLayout: every key of a user carries the user as its hash tag, even
// when the user or rule contains braces.
func TestKeyLayout(t *testing.T) {
	for _, tc := range []struct{ rule, user, want string }{
		{"GET /v1/orders", "alice", "rl:{alice}:GET /v1/orders"},
		{"GET /v1/orders/{id}", "}bob{", "rl:{%7Dbob%7B}:GET /v1/orders/%7Bid%7D"},
		{"r", "100%", "rl:{100%25}:r"},
		{"x:m", "u", "rl:{u}:x%3Am"},
		{"x", "u:v", "rl:{u:v}:x"},
	} {
		if got := global.Key("rl", tc.rule, tc.user); got != tc.want {
			t.Errorf("Key(rl, %q, %q) = %q, want %q", tc.rule, tc.user, got, tc.want)
		}
	}
}

// TestDerivedKeysNeverCollide: the keys derived from a base key (the
// sliding log's ":m"; before operations lived in the key's hash, a lease or
// credit's ":op:<id>", which old instances may still write while a fleet
// upgrades) are never the base key of another rule, whatever the rule
// names; and base keys are one to one.
func TestDerivedKeysNeverCollide(t *testing.T) {
	names := []string{"x", "x:m", "x:op:1", "x%3Am", "m", ":m", "x:", "{x}:m", "x:%", "op"}
	users := []string{"u", "u:m", "}u{", "%"}
	base := map[string][2]string{}
	for _, r := range names {
		for _, u := range users {
			k := global.Key("rl", r, u)
			if prev, dup := base[k]; dup {
				t.Fatalf("Key(%q, %q) = Key(%q, %q) = %q", r, u, prev[0], prev[1], k)
			}
			base[k] = [2]string{r, u}
		}
	}
	for k, ru := range base {
		for _, derived := range []string{k + ":m", k + ":op:1"} {
			if other, dup := base[derived]; dup {
				t.Errorf("%q (derived from rule %q, user %q) is the base key of rule %q, user %q", derived, ru[0], ru[1], other[0], other[1])
			}
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	ok := Rule{Name: "ok", Limit: 1, Window: time.Second}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // in the error text
	}{
		{"no rules", Config{}, "Rules is empty"},
		{"zero limit", Config{Rules: []Rule{{Name: "a", Limit: 0, Window: time.Second, Mode: Local}}}, `rule 0 ("a"): field Limit 0`},
		{"negative limit", Config{Rules: []Rule{{Name: "a", Limit: -5, Window: time.Second, Mode: Local}}}, "Limit -5"},
		{"zero window", Config{Rules: []Rule{{Name: "a", Limit: 1, Mode: Local}}}, "Window 0s is below 1ms"},
		{"sub-ms window", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Microsecond, Mode: Local}}}, "below 1ms"},
		{"fractional ms window", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: 1500 * time.Microsecond, Mode: Local}}}, "whole number"},
		{"empty name", Config{Rules: []Rule{{Limit: 1, Window: time.Second, Mode: Local}}}, "Name is empty"},
		{"duplicate", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, Mode: Local}, {Name: "a", Limit: 2, Window: time.Second, Mode: Local}}}, `duplicate name "a"`},
		{"bad algorithm", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, Algorithm: 9, Mode: Local}}}, "Algorithm 9"},
		{"bad mode", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, Mode: 9}}}, "Mode 9"},
		{"huge product", Config{Rules: []Rule{{Name: "a", Limit: 1 << 40, Window: time.Hour, Mode: Local}}}, "exceeds 2^50"},
		{"strict without redis", Config{Rules: []Rule{ok}}, "Config.Redis is nil"},
		{"brace prefix", Config{Rules: []Rule{ok}, KeyPrefix: "a{b"}, "KeyPrefix"},
		{"negative key size", Config{Rules: []Rule{ok}, MaxKeyBytes: -1}, "MaxKeyBytes"},
		{"tiny sync", Config{Rules: []Rule{ok}, SyncInterval: time.Microsecond}, "SyncInterval"},
		{"negative sync duty", Config{Rules: []Rule{ok}, SyncDuty: -0.5}, "SyncDuty -0.5 is not in (0, 1]"},
		{"sync duty above 1", Config{Rules: []Rule{ok}, SyncDuty: 1.5}, "SyncDuty 1.5"},
		{"NaN sync duty", Config{Rules: []Rule{ok}, SyncDuty: math.NaN()}, "SyncDuty NaN"},
		{"huge local keys", Config{Rules: []Rule{ok}, MaxLocalKeys: 1 << 40}, "MaxLocalKeys"},
		{"negative lease keys", Config{Rules: []Rule{ok}, Pipeline: PipelineConfig{LeaseKeysPerCall: -1}}, "Pipeline has a negative field"},
		{"huge sliding log", Config{Rules: []Rule{{Name: "a", Limit: 1001, Window: time.Second, Algorithm: SlidingLog, Mode: Local}}}, "exceeds 1000 for sliding_log"},
		{"negative local keys", Config{Rules: []Rule{ok}, MaxLocalKeys: -1}, "MaxLocalKeys"},
		{"200-year window", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: 200 * 365 * 24 * time.Hour, Mode: Local}}}, "exceeds 100 years"},
		{"negative timeout", Config{Rules: []Rule{ok}, Timeout: -time.Second}, "Timeout"},
		{"negative pending", Config{Rules: []Rule{ok}, MaxPendingKeys: -1}, "MaxPendingKeys"},
		{"negative breaker", Config{Rules: []Rule{ok}, Breaker: BreakerConfig{Backoff: -1}}, "Breaker"},
		{"jitter above 1", Config{Rules: []Rule{ok}, Breaker: BreakerConfig{Jitter: 2}}, "Jitter"},
		{"negative burst", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, Algorithm: TokenBucket, Burst: -1, Mode: Local}}}, "Burst -1 is negative"},
		{"burst off token bucket", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, Burst: 1, Mode: Local}}}, "only token_bucket has a burst"},
		{"burst above 2×limit", Config{Rules: []Rule{{Name: "a", Limit: 10, Window: time.Second, Algorithm: TokenBucket, Burst: 21, Mode: Local}}}, "exceeds 2 × limit"},
		{"bad policy", Config{Rules: []Rule{{Name: "a", Limit: 1, Window: time.Second, OnFailure: 9, Mode: Local}}}, "OnFailure 9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.cfg)
			require.Nil(t, l)
			require.ErrorIs(t, err, ErrInvalidArgument)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

// TestNewDoesNotMutateConfig: New leaves the caller's Config and Rules as
// they were.
func TestNewDoesNotMutateConfig(t *testing.T) {
	rules := []Rule{{Name: "a", Limit: 1, Window: time.Second, Mode: Local}, {Name: "b", Limit: 1, Window: time.Second, Mode: Local}}
	cfg := Config{Rules: rules}
	l, err := New(cfg)
	require.NoError(t, err)
	defer l.Close()
	require.Zero(t, cfg.SyncInterval)
	require.Equal(t, Mode(Local), rules[0].Mode)
	require.Equal(t, "", cfg.KeyPrefix)
}

// TestAllowRejectsBadInput runs the argument checks against one rule of
// every mode.
func TestAllowRejectsBadInput(t *testing.T) {
	behaveRejectsBadInput(t, singleNode(t))
}

// TestLocalModeMatchesStrict: the local mode is the same algorithm in
// process: fed the same single-instance history it decides as Redis does.
func TestLocalModeMatchesStrict(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	for _, a := range allAlgorithms {
		t.Run(a.String(), func(t *testing.T) {
			r := Rule{Name: "lm-" + a.String(), Limit: 20, Window: 500 * time.Millisecond, Algorithm: a}
			strict := newStrict(t, c, prefix, r)
			r.Mode = Local
			loc, err := New(Config{Rules: []Rule{r}, Now: fixedClock(base)})
			require.NoError(t, err)
			defer loc.Close()
			rng := rand.New(rand.NewPCG(1, 2))
			now := base
			for i := range 300 {
				now = now.Add(time.Duration(rng.IntN(40)) * time.Millisecond)
				n := 1 + rng.Int64N(3)
				ds, err := strict.AllowN(ctx, r.Name, "u", now, n)
				require.NoError(t, err)
				dl, err := loc.AllowN(ctx, r.Name, "u", now, n)
				require.NoError(t, err)
				require.Equal(t, ds, dl, "step %d", i)
			}
		})
	}
}

// TestRuleLimiterMatchesAllow: a RuleLimiter decides as Limiter.AllowN
// does with the rule's name, rule by rule.
func TestRuleLimiterMatchesAllow(t *testing.T) {
	ctx := context.Background()
	rules := []Rule{
		{Name: "a", Limit: 5, Window: 100 * time.Millisecond, Mode: Local},
		{Name: "b", Limit: 9, Window: time.Second, Algorithm: TokenBucket, Mode: Local},
	}
	byName, err := New(Config{Rules: rules, Now: fixedClock(base)})
	require.NoError(t, err)
	defer byName.Close()
	byHandle, err := New(Config{Rules: rules, Now: fixedClock(base)})
	require.NoError(t, err)
	defer byHandle.Close()
	handles := map[string]*RuleLimiter{}
	for _, r := range rules {
		handles[r.Name], err = byHandle.Rule(r.Name)
		require.NoError(t, err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	now := base
	for i := range 400 {
		now = now.Add(time.Duration(rng.IntN(20)) * time.Millisecond)
		rule, user, n := rules[rng.IntN(2)].Name, fmt.Sprint("u", rng.IntN(3)), 1+rng.Int64N(2)
		want, err := byName.AllowN(ctx, rule, user, now, n)
		require.NoError(t, err)
		got, err := handles[rule].AllowN(ctx, user, now, n)
		require.NoError(t, err)
		require.Equal(t, want, got, "step %d", i)
		require.Equal(t, ruleByName(rules, rule).Limit, handles[rule].Limit())
	}
}

func ruleByName(rules []Rule, name string) Rule {
	for _, r := range rules {
		if r.Name == name {
			return r
		}
	}
	panic("no rule " + name)
}

// TestDecisionFitsInRegisters: the compiler keeps a struct in registers
// only if it has at most four fields and 32 bytes; a larger Decision costs
// every decision a trip through memory (see Decision).
func TestDecisionFitsInRegisters(t *testing.T) {
	typ := reflect.TypeFor[Decision]()
	if typ.NumField() > 4 || typ.Size() > 32 {
		t.Fatalf("Decision has %d fields and %d bytes; at most 4 and 32 keep it in registers", typ.NumField(), typ.Size())
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {time.Millisecond, 1}, {time.Second, 1}, {time.Second + time.Millisecond, 2}, {59500 * time.Millisecond, 60}} {
		if got := (Decision{RetryAfter: tc.d}).RetryAfterSeconds(); got != tc.want {
			t.Errorf("Decision{RetryAfter: %v}.RetryAfterSeconds() = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// TestErrorsAreDistinct guards the sentinels' identities.
func TestErrorsAreDistinct(t *testing.T) {
	errs := []error{ErrUnknownRule, ErrInvalidKey, ErrInvalidArgument, ErrClosed}
	for i, a := range errs {
		for j, b := range errs {
			if (i == j) != errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, errors.Is(a, b))
			}
		}
	}
}

// TestAllowRejectsTimestampsPast2To50: with the skew check off, a
// timestamp past 2^50 ms is still an error in every mode (beyond it Lua's
// doubles and Go's integers would disagree), and one just below is
// decided.
func TestAllowRejectsTimestampsPast2To50(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	for _, m := range modesAndFronts {
		l, err := New(Config{Redis: c, KeyPrefix: prefix, MaxSkew: -1, ManualSync: true, noFront: !m.front,
			Rules: []Rule{{Name: m.name, Limit: 10, Window: time.Second, Mode: m.mode}}})
		require.NoError(t, err)
		_, err = l.Allow(context.Background(), m.name, "u", time.UnixMilli(1<<50+1))
		require.ErrorIs(t, err, ErrInvalidArgument, m.name)
		require.ErrorContains(t, err, "2^50")
		d, err := l.Allow(context.Background(), m.name, "u", time.UnixMilli(1<<50))
		require.NoError(t, err, m.name)
		require.True(t, d.Allowed, m.name)
		require.NoError(t, l.Close())
	}
}

// modesAndFronts are the ways a rule can be decided: every mode, and the
// hybrid mode with its front table and without (see forEachFront).
var modesAndFronts = []struct {
	name  string
	mode  Mode
	front bool
}{
	{"hybrid/front=on", Hybrid, true},
	{"hybrid/front=off", Hybrid, false},
	{"strict", Strict, true},
	{"local", Local, true},
}

// TestLocalFutureStampsKeepOthersState: a Local rule's table sweeps idle
// entries on the clock's timeline, not on the requests' stamps: a flood of
// new users stamped 4 minutes ahead (inside MaxSkew) does not wipe the
// state of a user at its limit, who stays denied within its window.
func TestLocalFutureStampsKeepOthersState(t *testing.T) {
	r := Rule{Limit: 5, Window: time.Second}
	eachTarget(t, r, allAlgorithms, []Mode{Local}, base, func(t *testing.T, victim target) {
		run(t, victim, append(steps(5, step{0, 1, true, unchecked, unchecked}),
			step{0, 1, false, unchecked, unchecked}))
		ctx := context.Background()
		for i := range 64 * 300 { // enough new keys to make every shard sweep
			_, err := victim.lim.Allow(ctx, victim.rule, fmt.Sprint("other-", i), base.Add(4*time.Minute))
			require.NoError(t, err)
		}
		// Had the flood swept the victim's entry, it would have a fresh
		// budget within its window.
		run(t, victim, steps(5, step{1 * ms, 1, false, unchecked, unchecked}))
	})
}

// TestSlidingLogCallsStayShort: a sliding-log call adds at most 100
// entries (n = 101 is an error in every mode), and its Limit is at most
// 1 000, so that no call holds Redis for long.
func TestSlidingLogCallsStayShort(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	for _, mode := range []Mode{Strict, Local} {
		l, err := New(Config{Redis: c, KeyPrefix: prefix, Now: fixedClock(base),
			Rules: []Rule{{Name: "log", Limit: 1000, Window: time.Second, Algorithm: SlidingLog, Mode: mode}}})
		require.NoError(t, err)
		_, err = l.AllowN(context.Background(), "log", "u", base, 101)
		require.ErrorIs(t, err, ErrInvalidArgument, mode.String())
		d, err := l.AllowN(context.Background(), "log", "u", base, 100)
		require.NoError(t, err, mode.String())
		require.True(t, d.Allowed)
		require.NoError(t, l.Close())
	}
}
