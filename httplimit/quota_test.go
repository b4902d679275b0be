package httplimit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// TestHeadersFollowReload: a Reload that renames a rule and raises its
// limit changes the headers of the next request (no new Middleware), and
// the rule's counts are kept (its ID is the same).
func TestHeadersFollowReload(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			clk := newClock(t0)
			rule := orders(3)
			rule.ID = "o"
			lim := newLimiter(t, mode, clk, rule)
			m := newMiddleware(t, lim, clk, httplimit.Options{})
			mux := http.NewServeMux()
			require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders"))
			for range 2 {
				require.Equal(t, 200, do(mux, "GET", "/v1/orders", "alice").Code)
			}
			renamed := rule
			renamed.Name, renamed.Limit, renamed.Mode = "orders-v2", 5, mode
			require.NoError(t, lim.Reload([]ratelimit.Rule{renamed}))

			rec := do(mux, "GET", "/v1/orders", "alice")
			require.Equal(t, 200, rec.Code)
			require.Equal(t, `"orders-v2";q=5;w=60`, rec.Header().Get("RateLimit-Policy"))
			require.Equal(t, `"orders-v2";r=2;t=12`, rec.Header().Get("RateLimit"), "2 counted before the Reload")
			for range 2 {
				require.Equal(t, 200, do(mux, "GET", "/v1/orders", "alice").Code)
			}
			rec = do(mux, "GET", "/v1/orders", "alice")
			require.Equal(t, 429, rec.Code)
			var p httplimit.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
			require.Equal(t, []string{"orders-v2"}, p.ViolatedPolicies)
			require.Contains(t, p.Detail, "(5 per 1m0s)")
		})
	}
}

// TestPolicyIsTheCallersQuota: RateLimit-Policy's q is the caller's class's
// limit; an Unlimited class's rule is not listed (a route of it alone gets
// no fields), and a Deny class's is q=0 and a 429. A route of two rules
// lists what applies to each caller; the cached field is rebuilt per class.
func TestPolicyIsTheCallersQuota(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			clk := newClock(t0)
			rule := orders(3)
			rule.Classes = map[string]ratelimit.Override{"pro": {Limit: 10}, "internal": {Unlimited: true}, "blocked": {Deny: true}}
			day := ratelimit.Rule{Name: "day", Limit: 100, Window: time.Hour, Algorithm: ratelimit.FixedWindow, Mode: mode}
			rule.Mode = mode
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
			t.Cleanup(func() { _ = rdb.Close() })
			cfg := ratelimit.Config{Now: clk.Now, Timeout: 10 * time.Second, Rules: []ratelimit.Rule{rule, day},
				Classes: map[string]string{"user:p": "pro", "user:i": "internal", "user:b": "blocked"}}
			if mode != ratelimit.Local {
				cfg.Redis = rdb
			}
			lim, err := ratelimit.New(cfg)
			require.NoError(t, err)
			t.Cleanup(func() { _ = lim.Close() })
			m := newMiddleware(t, lim, clk, httplimit.Options{})
			mux := http.NewServeMux()
			require.NoError(t, m.Handle(mux, "GET /one", http.HandlerFunc(ok), "orders"))
			require.NoError(t, m.Handle(mux, "GET /two", http.HandlerFunc(ok), "orders", "day"))

			for _, c := range []struct {
				user, path     string
				status         int
				policy, remain string
			}{
				{"alice", "/one", 200, `"orders";q=3;w=60`, `"orders";r=2;t=12`},
				{"p", "/one", 200, `"orders";q=10;w=60`, `"orders";r=9;t=12`},
				{"i", "/one", 200, ``, ``},
				{"b", "/one", 429, `"orders";q=0;w=60`, `"orders";r=0;t=60`},
				{"alice", "/two", 200, `"orders";q=3;w=60, "day";q=100;w=3600`, `"orders";r=1;t=12`},
				{"i", "/two", 200, `"day";q=100;w=3600`, `"day";r=99;t=2712`},
				{"p", "/two", 200, `"orders";q=10;w=60, "day";q=100;w=3600`, `"orders";r=8;t=12`},
			} {
				rec := do(mux, "GET", c.path, c.user)
				require.Equal(t, c.status, rec.Code, "%s %s", c.user, c.path)
				require.Equal(t, c.policy, rec.Header().Get("RateLimit-Policy"), "%s %s", c.user, c.path)
				require.Equal(t, c.remain, rec.Header().Get("RateLimit"), "%s %s", c.user, c.path)
			}
		})
	}
}

// TestShadowRuleNotAdvertised: a shadow rule decides and counts but never
// denies, so the headers leave it out, even when it would deny.
func TestShadowRuleNotAdvertised(t *testing.T) {
	clk := newClock(t0)
	trial := ratelimit.Rule{Name: "trial", Limit: 1, Window: time.Minute, Shadow: true}
	lim := newLimiter(t, ratelimit.Local, clk, trial, orders(5))
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "trial", "orders"))
	require.NoError(t, m.Handle(mux, "GET /trial", http.HandlerFunc(ok), "trial"))
	for i := range 3 {
		rec := do(mux, "GET", "/v1/orders", "alice")
		require.Equal(t, 200, rec.Code)
		require.Equal(t, `"orders";q=5;w=60`, rec.Header().Get("RateLimit-Policy"))
		require.Equal(t, `"orders";r=`+string(rune('4'-i))+`;t=12`, rec.Header().Get("RateLimit"))
	}
	rec := do(mux, "GET", "/trial", "alice")
	require.Equal(t, 200, rec.Code)
	require.Empty(t, rec.Header().Get("RateLimit-Policy"))
	require.Empty(t, rec.Header().Get("RateLimit"))
	st := lim.RuleStats()[0]
	require.Equal(t, "trial", st.Name)
	require.EqualValues(t, 3, st.ShadowDenied, "counted apart: 1 admitted, 3 would-be denials")
}

// TestFailOpenGivenBack: with Redis down, a request that a FailOpen rule
// admits and a FailClosed rule then denies is a 429, and the Limiter gives
// the FailOpen admission back, whether it waits for Redis as a credit or
// was beyond Config.MaxPendingKeys (here 1, taken by bob): nothing is left
// counted, nothing logged.
func TestFailOpenGivenBack(t *testing.T) {
	clk := newClock(t0)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	open := ratelimit.Rule{Name: "open", Limit: 100, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailOpen}
	closed := ratelimit.Rule{Name: "closed", Limit: 100, Window: time.Minute, Mode: ratelimit.Strict, OnFailure: ratelimit.FailClosed}
	lim, err := ratelimit.New(ratelimit.Config{Now: clk.Now, Timeout: time.Second, Redis: rdb, MaxPendingKeys: 1,
		Rules: []ratelimit.Rule{open, closed}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	var logs bytes.Buffer
	m := newMiddleware(t, lim, clk, httplimit.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /x", http.HandlerFunc(ok), "open", "closed"))
	require.NoError(t, m.Handle(mux, "GET /open", http.HandlerFunc(ok), "open"))
	mr.Close() // Redis down: the failure policies decide

	rec := do(mux, "GET", "/x", "alice")
	require.Equal(t, 429, rec.Code, rec.Body.String())
	require.NotEmpty(t, rec.Header().Get("Retry-After"))
	require.Equal(t, 200, do(mux, "GET", "/open", "bob").Code) // the one pending key
	rec = do(mux, "GET", "/x", "alice")
	require.Equal(t, 429, rec.Code, rec.Body.String())
	require.Empty(t, logs.String(), "given back, both times")
	require.EqualValues(t, 2, lim.RuleStats()[0].GivenBack)
	require.EqualValues(t, 1, lim.Stats().PendingKeys, "bob's")
}

// TestDenialLeftCountedIsA429: a request that a rule admitted and counted,
// and another then denied, is a 429 even when the admission cannot be
// given back (here the refund's call fails: failNth), and the middleware
// logs it.
func TestDenialLeftCountedIsA429(t *testing.T) {
	clk := newClock(t0)
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	fail := &failNth{}
	rdb.AddHook(fail)
	lim, err := ratelimit.New(ratelimit.Config{Now: clk.Now, Timeout: time.Second, Redis: rdb,
		Rules: []ratelimit.Rule{
			// A shadow rule is decided alone, before the script of the others.
			{Name: "trial", Limit: 100, Window: time.Minute, Mode: ratelimit.Strict, Shadow: true},
			{Name: "a", Limit: 100, Window: time.Minute, Mode: ratelimit.Strict},
			{Name: "b", Limit: 1, Window: time.Minute, Mode: ratelimit.Strict},
		}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	var logs bytes.Buffer
	m := newMiddleware(t, lim, clk, httplimit.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /x", http.HandlerFunc(ok), "trial", "a", "b"))
	require.Equal(t, 200, do(mux, "GET", "/x", "alice").Code)
	require.Empty(t, logs.String())

	fail.arm(3) // trial's decision, the script that b denies, then trial's refund: it fails
	rec := do(mux, "GET", "/x", "alice")
	require.Equal(t, 429, rec.Code, rec.Body.String())
	require.NotEmpty(t, rec.Header().Get("Retry-After"))
	require.EqualValues(t, 1, fail.failed.Load(), "the refund's call, and only it")
	require.Contains(t, logs.String(), "denied request left counted")
	require.Contains(t, logs.String(), "rule=b")
	require.Contains(t, logs.String(), `\"trial\"`)
}

// failNth is a go-redis hook that fails the nth command sent after arm,
// as a broken connection would (not a reply), and only it.
type failNth struct {
	nth, seen atomic.Int64
	failed    atomic.Int64
}

func (f *failNth) arm(n int64) { f.seen.Store(0); f.nth.Store(n) }

// fault returns the injected error for the next command, or nil.
func (f *failNth) fault() error {
	n := f.nth.Load()
	if n == 0 || f.seen.Add(1) != n {
		return nil
	}
	f.failed.Add(1)
	return errors.New("injected: connection reset")
}

func (f *failNth) DialHook(next redis.DialHook) redis.DialHook { return next }

func (f *failNth) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if err := f.fault(); err != nil {
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}

func (f *failNth) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if err := f.fault(); err != nil {
			for _, c := range cmds {
				c.SetErr(err)
			}
			return err
		}
		return next(ctx, cmds)
	}
}

// TestRenamedToNonSFName: a Reload that renames a route's rule to a name
// that cannot be a Structured Field string (Route would refuse it) keeps
// the rule in both fields, its other bytes percent-encoded, rather than
// dropping the RateLimit field of the most restrictive rule.
func TestRenamedToNonSFName(t *testing.T) {
	clk := newClock(t0)
	burst := ratelimit.Rule{Name: "burst", ID: "b", Limit: 2, Window: 10 * time.Second, Algorithm: ratelimit.FixedWindow}
	perMin := orders(50)
	lim := newLimiter(t, ratelimit.Local, clk, perMin, burst)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /x", http.HandlerFunc(ok), "orders", "burst"))
	require.Equal(t, `"burst";r=1;t=2`, do(mux, "GET", "/x", "alice").Header().Get("RateLimit"))
	renamed := burst
	renamed.Name = "burst\u00e9"
	renamed.Mode, perMin.Mode = ratelimit.Local, ratelimit.Local
	require.NoError(t, lim.Reload([]ratelimit.Rule{perMin, renamed}))
	rec := do(mux, "GET", "/x", "alice")
	require.Equal(t, 200, rec.Code)
	require.Equal(t, `"orders";q=50;w=60, "burst%C3%A9";q=2;w=10`, rec.Header().Get("RateLimit-Policy"))
	require.Equal(t, `"burst%C3%A9";r=0;t=2`, rec.Header().Get("RateLimit"))
}
