package ratelimit

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestFallbackAdmissionsUndone: with Redis down (a redis-server the test
// killed), an AllowAll that a FailClosed rule denies gives back what the
// FailLocal and FailOpen rules before it admitted (their pending credits,
// and FailLocal's local count), so it returns the denial with no error; a
// Refund while Redis is down (its breaker open: the call is not sent) gives
// back an admission of the outage. Once
// Redis is back, the sync pass credits Redis with exactly the admissions
// that stand.
func TestFallbackAdmissionsUndone(t *testing.T) {
	proc := redistest.StartProc(t)
	proc.Kill()
	clock := &vclock{t: windowStart.Add(time.Second)}
	rules := []Rule{
		{Name: "local", Limit: 2, Window: time.Minute, Mode: Strict}, // FailLocal: 2 ÷ 1 instance
		{Name: "open", Limit: 100, Window: time.Minute, Algorithm: FixedWindow, Mode: Strict, OnFailure: FailOpen},
		{Name: "closed", Limit: 100, Window: time.Minute, Mode: Strict, OnFailure: FailClosed},
	}
	l := faultLimiter(t, proc, clock, "undo", 50*time.Millisecond, rules)
	ctx := context.Background()
	all := []Check{{Rule: "local", N: 1}, {Rule: "open", N: 1}, {Rule: "closed", N: 1}}
	for range 3 {
		md, err := l.AllowAll(ctx, "u", clock.Now(), all...)
		require.NoError(t, err, "nothing left counted")
		require.False(t, md.Allowed)
		require.Equal(t, "closed", md.Rule)
	}
	allow := func(rule string) bool {
		t.Helper()
		d, err := l.Allow(ctx, rule, "u", clock.Now())
		require.NoError(t, err)
		return d.Allowed
	}
	require.True(t, allow("local"), "the denied AllowAll calls gave FailLocal's share back")
	require.True(t, allow("local"))
	require.False(t, allow("local"), "2 ÷ 1 instance")
	require.True(t, l.store.Refuses(l.rules.Load().byName["local"].key(l.cfg.KeyPrefix, "u")), "the breaker is open: a refund's call is never sent")
	require.NoError(t, l.Refund(ctx, "local", "u", clock.Now(), 1), "an admission of the outage, not yet sent")
	require.True(t, allow("local"), "the refund gave it back locally")
	require.False(t, allow("local"))
	require.True(t, allow("open"))

	proc.Restart(t)
	clock.Advance(time.Second)
	require.NoError(t, l.Sync(ctx))
	require.Equal(t, Healthy, l.Health().State)
	for rule, want := range map[string]int64{"local": 0, "open": 99, "closed": 100} {
		d, err := l.Peek(ctx, rule, "u", clock.Now())
		require.NoError(t, err)
		require.Equal(t, want, d.Remaining, "rule %s: Redis counts the admissions that stand", rule)
	}
}

// TestAllowAllHybridBesidePendingStrict: while a Strict key of the user has
// admissions made without Redis not yet credited (so the multi script is
// not sent), a Hybrid rule beside it is still decided, by its own call: 53
// requests under a Hybrid limit of 10 are admitted exactly 10 times, before
// and after an outage (a review found them all admitted, the Hybrid rule
// skipped).
func TestAllowAllHybridBesidePendingStrict(t *testing.T) {
	proc := redistest.StartProc(t)
	clock := &vclock{t: windowStart.Add(time.Second)}
	rules := []Rule{
		{Name: "s", Limit: 1000, Window: time.Minute, Mode: Strict, OnFailure: FailOpen},
		{Name: "h", Limit: 10, Window: time.Minute, Mode: Hybrid, OnFailure: FailClosed},
	}
	l := faultLimiter(t, proc, clock, "beside", 200*time.Millisecond, rules)
	ctx := context.Background()
	all := []Check{{Rule: "s", N: 1}, {Rule: "h", N: 1}}
	admitted := 0
	allowAll := func() {
		t.Helper()
		md, err := l.AllowAll(ctx, "u", clock.Now(), all...)
		require.NoError(t, err)
		if md.Allowed {
			admitted++
		} else {
			require.Equal(t, "h", md.Rule)
		}
	}
	for range 3 { // the Hybrid key gets a state
		allowAll()
	}
	proc.Kill()
	d, err := l.Allow(ctx, "s", "u", clock.Now()) // FailOpen: pending
	require.NoError(t, err)
	require.True(t, d.Allowed)
	proc.Restart(t)
	for range 50 {
		allowAll()
	}
	require.Equal(t, 10, admitted, "h's limit, exactly")
}

// TestAloneFallbackUndoneWhenScriptDenies: a Hybrid key with admissions
// of an outage not yet credited is decided alone by its failure policy
// (FailLocal admits), then the multi script, sent for the Strict rule
// beside it once Redis is back, denies: AllowAll gives the FailLocal
// admission back (a review found it kept). The sync pass then credits
// Redis with the outage's one admission only.
func TestAloneFallbackUndoneWhenScriptDenies(t *testing.T) {
	proc := redistest.StartProc(t)
	clock := &vclock{t: windowStart.Add(time.Second)}
	rules := []Rule{
		{Name: "h", Limit: 100, Window: time.Minute, Mode: Hybrid},
		{Name: "s", Limit: 1, Window: time.Minute, Mode: Strict, OnFailure: FailClosed},
	}
	l := faultLimiter(t, proc, clock, "alone", 200*time.Millisecond, rules)
	ctx := context.Background()
	allow := func(rule string) bool {
		t.Helper()
		d, err := l.Allow(ctx, rule, "u", clock.Now())
		require.NoError(t, err)
		return d.Allowed
	}
	require.True(t, allow("h")) // a first sighting, decided in Redis
	require.True(t, allow("h")) // the key's State
	require.True(t, allow("s")) // s is at its limit
	h := l.rules.Load().byName["h"]
	require.NotNil(t, l.hybrid.cache.Find("u", h.hybridIndex))
	require.NoError(t, l.Sync(ctx)) // the lease goes back: Redis counts h's 2

	proc.Kill()
	require.True(t, allow("h"), "FailLocal, Redis down")
	require.EqualValues(t, 1, l.Health().Pending)
	proc.Restart(t)            // with no data: Redis lost every key
	clock.Advance(time.Second) // past the breaker's backoff: the next call probes
	require.True(t, allow("s"), "the probe")
	require.False(t, allow("s"), "s is at its limit again")

	md, err := l.AllowAll(ctx, "u", clock.Now(), Check{Rule: "h", N: 1}, Check{Rule: "s", N: 1})
	require.NoError(t, err, "h's admission given back: nothing left counted")
	require.False(t, md.Allowed)
	require.Equal(t, "s", md.Rule, "denied by the script, not by the breaker")
	require.EqualValues(t, 1, l.RuleStats()[0].GivenBack)

	require.NoError(t, l.Sync(ctx))
	require.EqualValues(t, 0, l.Health().Pending)
	k, err := l.store.Counts(ctx, h.key(l.cfg.KeyPrefix, "u"))
	require.NoError(t, err)
	require.Equal(t, int64(3), k.Cur, "2 before the outage (restored from what the State knew), 1 during it; not the one given back")
}

// TestDroppedFallbackUndone: past Config.MaxPendingKeys (1, taken by
// user a), FailLocal's admissions of user b cannot wait for Redis; when a
// FailClosed rule then denies the AllowAll, b's local count still falls
// back, so three denied AllowAll calls leave b its whole share of 2.
func TestDroppedFallbackUndone(t *testing.T) {
	proc := redistest.StartProc(t)
	proc.Kill()
	clock := &vclock{t: windowStart.Add(time.Second)}
	l, err := New(Config{Redis: faultClient(t, proc.Addr()), KeyPrefix: "dropped", Now: clock.Now,
		ManualSync: true, Timeout: 50 * time.Millisecond, MaxPendingKeys: 1, Rules: []Rule{
			{Name: "local", Limit: 2, Window: time.Minute, Mode: Strict},
			{Name: "closed", Limit: 100, Window: time.Minute, Mode: Strict, OnFailure: FailClosed},
		}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	allow := func(user string) bool {
		t.Helper()
		d, err := l.Allow(ctx, "local", user, clock.Now())
		require.NoError(t, err)
		return d.Allowed
	}
	require.True(t, allow("a"))
	for range 3 {
		md, err := l.AllowAll(ctx, "b", clock.Now(), Check{Rule: "local", N: 1}, Check{Rule: "closed", N: 1})
		require.NoError(t, err, "given back, though never pending")
		require.Equal(t, "closed", md.Rule)
	}
	require.True(t, allow("b"))
	require.True(t, allow("b"))
	require.False(t, allow("b"), "2 ÷ 1 instance")
	st := l.Stats()
	require.EqualValues(t, 1, st.PendingKeys)
	require.EqualValues(t, 5, st.PendingDropped, "b's five admissions, three of them given back since")
	require.EqualValues(t, 3, l.RuleStats()[0].GivenBack)
}

// TestGiveBackEndsRecovering: a Limiter Recovering (its breaker closed,
// one key pending) whose last pending admission is given back is Healthy
// at once, not at the next sync pass.
func TestGiveBackEndsRecovering(t *testing.T) {
	c := testRedis(t)
	l, err := New(Config{Redis: c, KeyPrefix: testPrefix(t, c), ManualSync: true, Now: fixedClock(base),
		Rules: []Rule{{Name: "r", Limit: 10, Window: time.Minute, Mode: Strict, OnFailure: FailOpen}}})
	require.NoError(t, err)
	defer l.Close()
	r := l.rules.Load().byName["r"]
	ms := base.UnixMilli()
	l.health.onBreaker(global.BreakerStatus{State: global.Open, Since: base, Reason: errors.New("down")})
	res, err := l.fallback(r, "u", ms, 0, 1, global.ErrBreakerOpen)
	require.NoError(t, err)
	require.True(t, res.allowed)
	l.health.onBreaker(global.BreakerStatus{State: global.Closed, Since: base})
	require.Equal(t, Recovering, l.Health().State, "one key pending")
	require.True(t, l.unfallback(r, "u", ms, 1, res.dropped))
	h := l.Health()
	require.Equal(t, Healthy, h.State)
	require.EqualValues(t, 0, h.Pending)
}

// faultLimiter returns a Limiter of rules on proc (through faultClient:
// no retries), clocked by clock, with manual sync and the given Timeout,
// closed when the test ends.
func faultLimiter(t *testing.T, proc *redistest.Proc, clock *vclock, prefix string, timeout time.Duration, rules []Rule) *Limiter {
	t.Helper()
	l, err := New(Config{Redis: faultClient(t, proc.Addr()), Rules: rules, KeyPrefix: prefix, Now: clock.Now,
		ManualSync: true, Timeout: timeout})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l
}
