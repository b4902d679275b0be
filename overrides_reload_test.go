package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestOverrideReloadClassLimitKeepsCounts: a Reload that changes a class's
// Limit (and renames the rule, keeping its ID) keeps the user's counts in
// Redis, strict; an Unlimited class in between counts nothing; AllowAll's
// one-script path judges the class's newest limit.
func TestOverrideReloadClassLimitKeepsCounts(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	rules := func(name string, free Override) []Rule {
		return []Rule{
			{Name: name, ID: "api", Limit: 10, Window: time.Minute, Mode: Strict, Classes: map[string]Override{"free": free}},
			{Name: "day", Limit: 100, Window: time.Hour, Mode: Strict},
		}
	}
	l := newOverrides(t, c, prefix, Strict, Config{Classes: map[string]string{"alice": "free"}}, rules("api", Override{Limit: 3})...)

	require.Equal(t, 2, allowed(t, l, "api", "alice", 2))
	require.Equal(t, 4, allowed(t, l, "api", "bob", 4)) // no class: the rule's 10

	require.NoError(t, l.Reload(rules("GET /api", Override{Limit: 5})))
	require.Equal(t, 3, allowed(t, l, "GET /api", "alice", 5), "2 counted before the Reload, 5 now")
	require.Equal(t, 6, allowed(t, l, "GET /api", "bob", 10), "4 counted before the Reload, 10 now")

	require.NoError(t, l.Reload(rules("GET /api", Override{Unlimited: true})))
	require.Equal(t, 4, allowed(t, l, "GET /api", "alice", 4), "unlimited")
	require.NoError(t, l.Reload(rules("GET /api", Override{Limit: 6})))
	require.Equal(t, 1, allowed(t, l, "GET /api", "alice", 3), "5 counted, the unlimited ones not")

	// AllowAll: both rules Strict, in one script, with the class's limit.
	ctx := context.Background()
	d, err := l.AllowAll(ctx, "alice", base, Check{Rule: "GET /api", N: 1}, Check{Rule: "day", N: 1})
	require.NoError(t, err)
	require.False(t, d.Allowed)
	require.Equal(t, "GET /api", d.Rule)
	require.NoError(t, l.Reload(rules("GET /api", Override{Limit: 7})))
	d, err = l.AllowAll(ctx, "alice", base, Check{Rule: "GET /api", N: 1}, Check{Rule: "day", N: 1})
	require.NoError(t, err)
	require.True(t, d.Allowed)
	require.Equal(t, "GET /api", d.Rule)
	require.Equal(t, int64(0), d.Remaining, "7 of the class's 7")
	require.Equal(t, 99, allowed(t, l, "day", "alice", 100), "day counted the one AllowAll that passed, not the denied one")

	var st RuleStats
	for _, s := range l.RuleStats() {
		if s.ID == "api" {
			st = s
		}
	}
	require.Equal(t, int64(4), st.UnlimitedAllowed)
	require.Equal(t, int64(2+3+1+1+4+6), st.RedisAllowed, "the rule's and its class's, across the Reloads")
}

// TestOverrideReloadCores: a class with a Limit keeps its core (so a Hybrid
// class its index and States) across a Reload by (rule ID, class); a new
// class gets a fresh index, never one used before; a class that turns
// Unlimited or goes away marks its core removed (its leases go back); a
// class a variant shares its base's pending credits.
func TestOverrideReloadCores(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	rules := func(classes map[string]Override) []Rule {
		return []Rule{{Name: "r", Limit: 10, Window: time.Minute, Mode: Hybrid, Classes: classes}}
	}
	l := newOverrides(t, c, prefix, Hybrid, Config{}, rules(map[string]Override{"a": {Limit: 2}, "b": {Limit: 3}})...)
	set := l.rules.Load()
	r := set.byName["r"]
	a, b := r.classes["a"], r.classes["b"]
	require.Equal(t, []int{0, 1, 2}, []int{r.hybridIndex, a.hybridIndex, b.hybridIndex})
	require.Equal(t, r.ruleCore, a.base)
	require.Equal(t, r.key(prefix, "u"), a.key(prefix, "u"), "the rule's Redis key")

	require.NoError(t, l.Reload(rules(map[string]Override{"a": {Limit: 4}, "b": {Unlimited: true}, "c": {Limit: 1}})))
	r2 := l.rules.Load().byName["r"]
	require.Equal(t, r.ruleCore, r2.ruleCore)
	require.Equal(t, a.ruleCore, r2.classes["a"].ruleCore, "kept by (ID, class)")
	require.Equal(t, int64(4), a.cur.Load().Limit, "the core's newest version")
	require.Equal(t, r.ruleCore, r2.classes["b"].ruleCore, "an Unlimited class decides on the rule's core")
	require.True(t, b.removed.Load(), "b's limit core is gone")
	require.False(t, a.removed.Load())
	require.Equal(t, 3, r2.classes["c"].hybridIndex, "a new class: a fresh index")

	require.NoError(t, l.Reload(rules(map[string]Override{"b": {Limit: 5}})))
	r3 := l.rules.Load().byName["r"]
	require.Equal(t, b.ruleCore, r3.classes["b"].ruleCore, "b's core comes back")
	require.False(t, b.removed.Load())
	require.True(t, a.removed.Load())
	require.Len(t, *l.hybrid.cores.Load(), 4)

	// Pending credits are the rule's, whatever the class.
	l.pending.add(r3.classes["b"], "u", base.UnixMilli(), 1)
	require.True(t, l.pending.has(r3, "u"))
	require.True(t, l.pending.has(r2.classes["c"], "u"))
}

// TestOverrideReloadConfigClasses: a Reload that leaves a class of
// Config.Classes undefined is refused, naming it, and changes nothing.
func TestOverrideReloadConfigClasses(t *testing.T) {
	rule := Rule{Name: "r", Limit: 5, Window: time.Minute, Mode: Local, Classes: map[string]Override{"blocked": {Deny: true}}}
	l, err := New(Config{Rules: []Rule{rule}, Classes: map[string]string{"mallory": "blocked"}, Now: fixedClock(base)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })

	err = l.Reload([]Rule{{Name: "r", Limit: 5, Window: time.Minute, Mode: Local}})
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.Contains(t, err.Error(), "Config.Classes")
	require.Contains(t, err.Error(), `"blocked"`)
	require.Equal(t, 0, allowed(t, l, "r", "mallory", 2), "still denied: the old set stays")

	err = l.Reload([]Rule{{Name: "r", Limit: 5, Window: time.Minute, Mode: Local, Classes: map[string]Override{"blocked": {Limit: -1}}}})
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.Contains(t, err.Error(), `rule 0 ("r"): class "blocked": field Limit -1`)
}
