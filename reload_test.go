package ratelimit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// newReloadable returns a Limiter on the test Redis with rules, synced by
// hand, closed with the test.
func newReloadable(t *testing.T, rules ...Rule) *Limiter {
	t.Helper()
	c := testRedis(t)
	l, err := New(Config{Redis: c, Rules: rules, KeyPrefix: testPrefix(t, c), Now: fixedClock(base), ManualSync: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	return l
}

// allowed runs n requests of user under rule at base and returns how many
// were admitted.
func allowed(t *testing.T, l *Limiter, rule, user string, n int) int {
	t.Helper()
	got := 0
	for range n {
		d, err := l.Allow(context.Background(), rule, user, base)
		require.NoError(t, err)
		if d.Allowed {
			got++
		}
	}
	return got
}

// TestRuleIDNamesTheKey: a rule's counters in Redis are named by its ID;
// without one, by its Name, as before IDs existed.
func TestRuleIDNamesTheKey(t *testing.T) {
	l := newReloadable(t,
		Rule{Name: "GET /orders", ID: "orders-v1", Limit: 5, Window: time.Minute, Mode: Strict},
		Rule{Name: "plain", Limit: 5, Window: time.Minute, Mode: Strict})
	require.Equal(t, 1, allowed(t, l, "GET /orders", "u", 1))
	require.Equal(t, 1, allowed(t, l, "plain", "u", 1))
	ctx := context.Background()
	for id, want := range map[string]int64{"orders-v1": 1, "GET /orders": 0, "plain": 1} {
		n, err := l.cfg.Redis.Exists(ctx, global.Key(l.cfg.KeyPrefix, id, "u")).Result()
		require.NoError(t, err)
		require.Equal(t, want, n, "key of %q", id)
	}
}

// TestReloadRenameKeepsCounts: against real Redis, in every mode, users
// count under name A, a Reload renames the rule to B under the same ID,
// and the count carries on: A is unknown, B admits what A left.
func TestReloadRenameKeepsCounts(t *testing.T) {
	for _, mode := range []Mode{Strict, Hybrid, Local} {
		t.Run(mode.String(), func(t *testing.T) {
			l := newReloadable(t, Rule{Name: "A", ID: "r1", Limit: 5, Window: time.Minute, Mode: mode})
			require.Equal(t, 3, allowed(t, l, "A", "u", 3))
			require.NoError(t, l.Sync(context.Background()))
			require.NoError(t, l.Reload([]Rule{{Name: "B", ID: "r1", Limit: 5, Window: time.Minute, Mode: mode}}))
			_, err := l.Allow(context.Background(), "A", "u", base)
			require.ErrorIs(t, err, ErrUnknownRule)
			require.Equal(t, 2, allowed(t, l, "B", "u", 4), "B admits what A left of 5")
			rs := l.RuleStats()
			require.Len(t, rs, 1)
			require.Equal(t, "B", rs[0].Name)
			require.Equal(t, "r1", rs[0].ID)
		})
	}
}

// TestReloadChangesLimitKeepsState: a Reload that raises a kept rule's
// limit admits exactly the difference for a user at the old limit, from
// the same local state (Local) or counters (Strict, Hybrid); RuleStats
// counters carry on; lowering it denies at once.
func TestReloadChangesLimitKeepsState(t *testing.T) {
	for _, mode := range []Mode{Strict, Hybrid, Local} {
		t.Run(mode.String(), func(t *testing.T) {
			rule := Rule{Name: "r", Limit: 3, Window: time.Minute, Mode: mode}
			l := newReloadable(t, rule)
			require.Equal(t, 3, allowed(t, l, "r", "u", 5))
			require.NoError(t, l.Sync(context.Background()))
			before := l.RuleStats()[0]
			rule.Limit = 5
			require.NoError(t, l.Reload([]Rule{rule}))
			require.Equal(t, 2, allowed(t, l, "r", "u", 4))
			require.NoError(t, l.Sync(context.Background()))
			after := l.RuleStats()[0]
			require.Equal(t, int64(5), after.Limit)
			sum := func(s RuleStats) int64 {
				return s.LocalAllowed + s.LocalDenied + s.RedisAllowed + s.RedisDenied
			}
			require.Equal(t, int64(5), sum(before))
			require.Equal(t, int64(9), sum(after), "counters carry on across Reload")
			rule.Limit = 4
			require.NoError(t, l.Reload([]Rule{rule}))
			require.Equal(t, 0, allowed(t, l, "r", "u", 1))
		})
	}
}

// TestReloadRejectsBadSets: a bad set is an error wrapping
// ErrInvalidArgument that names the rule and field, and changes nothing.
func TestReloadRejectsBadSets(t *testing.T) {
	rule := Rule{Name: "r", Limit: 2, Window: time.Minute, Mode: Strict}
	l := newReloadable(t, rule)
	ok := Rule{Name: "ok", Limit: 1, Window: time.Minute, Mode: Strict}
	for _, c := range []struct {
		rules []Rule
		want  string
	}{
		{nil, "no rules"},
		{[]Rule{ok, {Name: "", Limit: 1, Window: time.Minute}}, `rule 1 (""): field Name is empty`},
		{[]Rule{ok, {Name: "r", Limit: 0, Window: time.Minute}}, `rule 1 ("r"): field Limit 0 is not positive`},
		{[]Rule{ok, {Name: "ok", Limit: 1, Window: time.Minute}}, `rule 1: duplicate name "ok"`},
		{[]Rule{ok, {Name: "x", ID: "ok", Limit: 1, Window: time.Minute}}, `rule 1 ("x"): duplicate ID "ok"`},
		{[]Rule{{Name: "r", Limit: 2, Window: time.Minute, Mode: Strict, Algorithm: FixedWindow}}, `rule 0 ("r"): ID "r" counted with sliding_window`},
		{[]Rule{{Name: "r", Limit: 2, Window: time.Second, Mode: Strict}}, `window 1m0s; its counters would be misread as sliding_window, mode strict, window 1s`},
		{[]Rule{{Name: "x", ID: "r", Limit: 2, Window: time.Minute, Mode: Local}}, `rule 0 ("x"): ID "r" counted with sliding_window, mode strict`},
		{[]Rule{ok, {Name: "h", Limit: 2, Window: time.Minute, Mode: Hybrid}}, `rule 1 ("h"): field Mode hybrid, but the Limiter was built without hybrid rules`},
	} {
		err := l.Reload(c.rules)
		require.ErrorIs(t, err, ErrInvalidArgument, "%v", c.rules)
		require.ErrorContains(t, err, c.want)
	}
	// Nothing changed: r still decides at 2, ok is unknown.
	require.Equal(t, 2, allowed(t, l, "r", "u", 3))
	_, err := l.Allow(context.Background(), "ok", "u", base)
	require.ErrorIs(t, err, ErrUnknownRule)

	// A Local-only Limiter cannot take a rule that needs Redis.
	lo, err := New(Config{Rules: []Rule{{Name: "l", Limit: 1, Window: time.Minute, Mode: Local}}, Now: fixedClock(base)})
	require.NoError(t, err)
	defer lo.Close()
	err = lo.Reload([]Rule{{Name: "s", Limit: 1, Window: time.Minute, Mode: Strict}})
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.ErrorContains(t, err, `rule 0 ("s"): field Mode strict needs Redis`)
}

// TestReloadRemovesRules: a removed rule is unknown to Allow, Peek, Reset,
// Refund, AllowAll and its RuleLimiter; a RuleLimiter follows its rule's
// new Name and Limit; a removed ID that comes back has its counts back.
func TestReloadRemovesRules(t *testing.T) {
	a := Rule{Name: "a", Limit: 3, Window: time.Minute, Mode: Local}
	b := Rule{Name: "b", Limit: 3, Window: time.Minute, Mode: Strict}
	l := newReloadable(t, a, b)
	ctx := context.Background()
	rla, err := l.Rule("a")
	require.NoError(t, err)
	rlb, err := l.Rule("b")
	require.NoError(t, err)
	require.Equal(t, 2, allowed(t, l, "a", "u", 2))

	b2 := b
	b2.Name, b2.ID, b2.Limit = "b2", "b", 7
	require.NoError(t, l.Reload([]Rule{b2}))
	for _, err := range []error{
		func() error { _, err := l.Allow(ctx, "a", "u", base); return err }(),
		func() error { _, err := l.Peek(ctx, "a", "u", base); return err }(),
		l.Reset(ctx, "a", "u"),
		l.Refund(ctx, "a", "u", base, 1),
		func() error { _, err := l.AllowAll(ctx, "u", base, Check{Rule: "a", N: 1}); return err }(),
		func() error { _, err := rla.Allow(ctx, "u", base); return err }(),
		func() error { _, err := rla.Peek(ctx, "u", base); return err }(),
		rla.Reset(ctx, "u"),
	} {
		require.ErrorIs(t, err, ErrUnknownRule)
	}
	require.Equal(t, "b2", rlb.Name())
	require.Equal(t, int64(7), rlb.Limit())
	got := 0
	for range 8 {
		d, err := rlb.Allow(ctx, "u", base)
		require.NoError(t, err)
		if d.Allowed {
			got++
		}
	}
	require.Equal(t, 7, got, "the RuleLimiter decides at the new limit")

	require.NoError(t, l.Reload([]Rule{a, b2}))
	require.Equal(t, 1, allowed(t, l, "a", "u", 2), "a's local state came back with its ID")
	d, err := rla.Allow(ctx, "u2", base)
	require.NoError(t, err)
	require.True(t, d.Allowed, "the RuleLimiter finds its rule again")
	st := l.Stats()
	require.Equal(t, [2]int64{4, 1}, [2]int64{st.LocalModeAllowed, st.LocalModeDenied}, "Local counts across the removal")
}

// TestReloadHybridLeases: removing a Hybrid rule gives its keys' leases
// back to Redis at the next sync pass; a Hybrid rule added by Reload gets
// a new index and decides, and the two rules' keys never meet.
func TestReloadHybridLeases(t *testing.T) {
	h1 := Rule{Name: "h1", Limit: 100, Window: time.Minute, Mode: Hybrid}
	l := newReloadable(t, h1)
	ctx := context.Background()
	// Build demand and a lease.
	for range 3 {
		require.Equal(t, 5, allowed(t, l, "h1", "u", 5))
		require.NoError(t, l.Sync(ctx))
	}
	require.Equal(t, 5, allowed(t, l, "h1", "u", 5)) // demand since the last pass, from the lease
	s := l.hybrid.cache.Find("u", 0)
	require.NotNil(t, s)
	s.Lock()
	lease := s.Lease
	s.Unlock()
	require.Positive(t, lease, "the key holds a lease")

	h2 := Rule{Name: "h2", Limit: 2, Window: time.Minute, Mode: Hybrid}
	require.NoError(t, l.Reload([]Rule{h2}))
	require.NoError(t, l.Sync(ctx))
	s.Lock()
	lease = s.Lease
	s.Unlock()
	require.Zero(t, lease, "the removed rule's lease went back")
	k, err := l.store.Counts(ctx, global.Key(l.cfg.KeyPrefix, "h1", "u"))
	require.NoError(t, err)
	require.Equal(t, int64(20), k.Cur, "Redis counts what was admitted, no lease")

	require.Equal(t, 2, allowed(t, l, "h2", "u", 4))
	require.NoError(t, l.Sync(ctx))
	require.Equal(t, uint16(1), l.hybrid.cache.Find("u", 1).Rule, "h2 has index 1, not h1's 0")
	// h1 back: index 0 and its counts again.
	require.NoError(t, l.Reload([]Rule{h1, h2}))
	require.Equal(t, 80, allowed(t, l, "h1", "u", 90))
	require.NoError(t, l.Sync(ctx))
}

// TestReloadUnderLoad: goroutines decide under a Strict, a Hybrid and a
// Local rule while another goroutine reloads the set repeatedly, the
// limits alternating between 40 and 60 (plus renames). Exact counts: the
// strict rule admitted as many as Redis counted (a peek at a final limit
// of 1000 says so), and every rule admitted at least the lower limit and
// at most the higher one, whichever set each decision met.
func TestReloadUnderLoad(t *testing.T) {
	set := func(limit int64, suffix string) []Rule {
		return []Rule{
			{Name: "s" + suffix, ID: "s", Limit: limit, Window: time.Minute, Mode: Strict},
			{Name: "h" + suffix, ID: "h", Limit: limit, Window: time.Minute, Mode: Hybrid},
			{Name: "l" + suffix, ID: "l", Limit: limit, Window: time.Minute, Mode: Local},
		}
	}
	l := newReloadable(t, set(40, "")...)
	ctx := context.Background()
	rls := make([]*RuleLimiter, 3)
	for i, name := range []string{"s", "h", "l"} {
		var err error
		rls[i], err = l.Rule(name)
		require.NoError(t, err)
	}
	const workers, each, reloads = 4, 60, 50
	var admitted [3]atomic.Int64
	var wg sync.WaitGroup
	done := make(chan struct{})
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				for r, rl := range rls {
					d, err := rl.Allow(ctx, "u", base)
					if err != nil {
						t.Errorf("worker %d, request %d, rule %d: %v", w, i, r, err)
						return
					}
					if d.Allowed {
						admitted[r].Add(1)
					}
				}
			}
		}()
	}
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() {
		defer rwg.Done()
		for i := 0; i < reloads; i++ {
			select {
			case <-done:
				return
			default:
			}
			limit, suffix := int64(40), ""
			if i%2 == 0 {
				limit, suffix = 60, "-renamed"
			}
			if err := l.Reload(set(limit, suffix)); err != nil {
				t.Error(err)
				return
			}
			if err := l.Sync(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	rwg.Wait()
	require.NoError(t, l.Sync(ctx))
	for r := range admitted {
		n := admitted[r].Load()
		require.GreaterOrEqual(t, n, int64(40), "rule %d", r)
		require.LessOrEqual(t, n, int64(60), "rule %d", r)
	}
	require.NoError(t, l.Reload(set(1000, "")))
	d, err := l.Peek(ctx, "s", "u", base)
	require.NoError(t, err)
	require.Equal(t, 1000-admitted[0].Load(), d.Remaining, "Redis counted exactly the strict admissions")
	st := l.RuleStats()[0]
	require.Equal(t, admitted[0].Load(), st.RedisAllowed)
	require.Equal(t, int64(workers*each)-admitted[0].Load(), st.RedisDenied)
}

// TestShadowRule: a shadow rule at limit 2 lets 5 requests through, with
// its real Remaining and no RetryAfter; RuleStats say 2 admitted and 3
// would-be denied. A Reload that clears Shadow enforces the same counts.
func TestShadowRule(t *testing.T) {
	for _, mode := range []Mode{Strict, Hybrid, Local} {
		t.Run(mode.String(), func(t *testing.T) {
			rule := Rule{Name: "r", Limit: 2, Window: time.Minute, Mode: mode, Shadow: true}
			l := newReloadable(t, rule)
			ctx := context.Background()
			for i := range 5 {
				d, err := l.Allow(ctx, "r", "u", base)
				require.NoError(t, err)
				require.True(t, d.Allowed, "request %d", i)
				require.Zero(t, d.RetryAfter)
				require.Equal(t, int64(max(1-i, 0)), d.Remaining, "request %d", i)
			}
			d, err := l.Peek(ctx, "r", "u", base)
			require.NoError(t, err)
			require.True(t, d.Allowed)
			require.NoError(t, l.Sync(ctx))
			st := l.RuleStats()[0]
			require.True(t, st.Shadow)
			require.Equal(t, int64(2), st.ShadowAllowed)
			require.Equal(t, int64(3), st.ShadowDenied)
			require.Equal(t, int64(2), st.LocalAllowed+st.RedisAllowed)
			require.Equal(t, int64(3), st.LocalDenied+st.RedisDenied)

			rule.Shadow = false
			require.NoError(t, l.Reload([]Rule{rule}))
			require.Equal(t, 0, allowed(t, l, "r", "u", 1), "enforced on the shadow's counts")
			st = l.RuleStats()[0]
			require.False(t, st.Shadow)
			require.Equal(t, int64(3), st.ShadowDenied, "no shadow decision since")
		})
	}
}

// TestShadowInAllowAll: a shadow rule never denies an AllowAll, and when a
// real rule after it denies, only what the shadow rule really counted is
// refunded.
func TestShadowInAllowAll(t *testing.T) {
	l := newReloadable(t,
		Rule{Name: "shadow", Limit: 1, Window: time.Minute, Mode: Strict, Shadow: true},
		Rule{Name: "real", Limit: 2, Window: time.Minute, Mode: Strict})
	ctx := context.Background()
	checks := []Check{{Rule: "shadow", N: 1}, {Rule: "real", N: 1}}
	for i, want := range []bool{true, true, false, false} {
		d, err := l.AllowAll(ctx, "u", base, checks...)
		require.NoError(t, err)
		require.Equal(t, want, d.Allowed, "request %d", i)
		if !want {
			require.Equal(t, "real", d.Rule)
		}
	}
	// The shadow rule counted 1 (the first request): the others were
	// would-be denials, which counted nothing and refunded nothing.
	require.NoError(t, l.Reload([]Rule{{Name: "shadow", Limit: 10, Window: time.Minute, Mode: Strict}, {Name: "real", Limit: 2, Window: time.Minute, Mode: Strict}}))
	d, err := l.Peek(ctx, "shadow", "u", base)
	require.NoError(t, err)
	require.Equal(t, int64(9), d.Remaining)
	st := l.RuleStats()[0]
	require.Equal(t, int64(1), st.ShadowAllowed)
	require.Equal(t, int64(3), st.ShadowDenied)
}

// TestReloadClosed: Reload after Close is ErrClosed.
func TestReloadClosed(t *testing.T) {
	l, err := New(Config{Rules: []Rule{{Name: "l", Limit: 1, Window: time.Minute, Mode: Local}}, Now: fixedClock(base)})
	require.NoError(t, err)
	require.NoError(t, l.Close())
	require.True(t, errors.Is(l.Reload([]Rule{{Name: "l", Limit: 2, Window: time.Minute, Mode: Local}}), ErrClosed))
}
