package httplimit_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// t0 is 48 s into a one-minute window (windows are aligned on the epoch):
// a FixedWindow rule of a minute resets 12 s after it.
var t0 = time.UnixMilli(1_700_000_040_000 + 48_000)

// clock is a settable clock for the Limiter and the middleware; the
// Limiter's goroutines read it too.
type clock struct{ ms atomic.Int64 }

func newClock(t time.Time) *clock {
	c := &clock{}
	c.set(t)
	return c
}

func (c *clock) set(t time.Time) { c.ms.Store(t.UnixMilli()) }
func (c *clock) Now() time.Time  { return time.UnixMilli(c.ms.Load()) }

// modes are the modes the header tests run under: Local, and Strict on a
// miniredis.
var modes = []ratelimit.Mode{ratelimit.Local, ratelimit.Strict}

// newLimiter returns a Limiter of rules, all in mode, on clk.
func newLimiter(t *testing.T, mode ratelimit.Mode, clk *clock, rules ...ratelimit.Rule) *ratelimit.Limiter {
	t.Helper()
	// A long Timeout: on a loaded machine a slow miniredis call must not be
	// decided by the FailLocal fallback, whose counts are its own.
	cfg := ratelimit.Config{Now: clk.Now, Timeout: 10 * time.Second}
	for i := range rules {
		rules[i].Mode = mode
	}
	cfg.Rules = rules
	if mode != ratelimit.Local {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		cfg.Redis = rdb
	}
	lim, err := ratelimit.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	return lim
}

func orders(limit int64) ratelimit.Rule {
	return ratelimit.Rule{Name: "orders", Limit: limit, Window: time.Minute, Algorithm: ratelimit.FixedWindow}
}

// newMiddleware returns a middleware on lim and its rules, clocked by clk.
func newMiddleware(t *testing.T, lim *ratelimit.Limiter, clk *clock, opts httplimit.Options) *httplimit.Middleware {
	t.Helper()
	opts.Now = clk.Now
	m, err := httplimit.New(lim, opts)
	require.NoError(t, err)
	return m
}

func ok(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }

// do serves one request by user on h.
func do(h http.Handler, method, path, user string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if user != "" {
		req.Header.Set("X-User-ID", user)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestHeaderValues walks a fixed timeline and checks each response's
// fields exactly against the decisions of a FixedWindow rule (3 a minute),
// in Local mode and in Strict mode on miniredis.
func TestHeaderValues(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			clk := newClock(t0)
			rule := orders(3)
			lim := newLimiter(t, mode, clk, rule)
			m := newMiddleware(t, lim, clk, httplimit.Options{})
			mux := http.NewServeMux()
			require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders"))

			steps := []struct {
				at         time.Duration // after t0
				status     int
				rateLimit  string
				retryAfter string
			}{
				{0, 200, `"orders";r=2;t=12`, ""},
				{500 * time.Millisecond, 200, `"orders";r=1;t=12`, ""}, // 11.5 s rounds up
				{time.Second, 200, `"orders";r=0;t=11`, ""},
				{time.Second, 429, `"orders";r=0;t=11`, "11"},
				{1500 * time.Millisecond, 429, `"orders";r=0;t=11`, "11"},             // 10.5 s rounds up
				{11*time.Second + 999*time.Millisecond, 429, `"orders";r=0;t=1`, "1"}, // 1 ms: never 0
				{12 * time.Second, 200, `"orders";r=2;t=60`, ""},                      // the next window
			}
			for i, s := range steps {
				clk.set(t0.Add(s.at))
				rec := do(mux, "GET", "/v1/orders", "alice")
				require.Equal(t, s.status, rec.Code, "step %d", i)
				require.Equal(t, `"orders";q=3;w=60`, rec.Header().Get("RateLimit-Policy"), "step %d", i)
				require.Equal(t, s.rateLimit, rec.Header().Get("RateLimit"), "step %d", i)
				require.Equal(t, s.retryAfter, rec.Header().Get("Retry-After"), "step %d", i)
			}
		})
	}
}

// TestDeniedProblem: a 429's body is the draft's quota-exceeded problem.
func TestDeniedProblem(t *testing.T) {
	clk := newClock(t0)
	rule := orders(1)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "POST /v1/orders", http.HandlerFunc(ok), "orders"))
	require.Equal(t, 200, do(mux, "POST", "/v1/orders", "bob").Code)
	rec := do(mux, "POST", "/v1/orders", "bob")
	require.Equal(t, http.StatusTooManyRequests, rec.Code)
	require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
	require.Equal(t, "12", rec.Header().Get("Retry-After"))
	var p httplimit.Problem
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
	require.Equal(t, httplimit.Problem{
		Type:             "https://iana.org/assignments/http-problem-types#quota-exceeded",
		Title:            "Request cannot be satisfied as assigned quota has been exceeded",
		Status:           429,
		Detail:           `quota of policy "orders" (1 per 1m0s) exceeded; retry in 12 s`,
		ViolatedPolicies: []string{"orders"},
	}, p)
	require.Equal(t, strconv.Itoa(rec.Body.Len()), rec.Header().Get("Content-Length"))
}

// TestEveryMethodCounts: in front of a mux, GET, HEAD, OPTIONS and a
// method the route does not list all count against the route's rule; the
// fourth request is a 429, not the mux's 405. Behind Handle, HEAD counts.
func TestEveryMethodCounts(t *testing.T) {
	t.Run("Wrap", func(t *testing.T) {
		clk := newClock(t0)
		rule := orders(3)
		lim := newLimiter(t, ratelimit.Local, clk, rule)
		m := newMiddleware(t, lim, clk, httplimit.Options{})
		mux := http.NewServeMux()
		mux.HandleFunc("GET /v1/orders", ok)
		require.NoError(t, m.Route("GET /v1/orders", "orders"))
		h := m.Wrap(mux)
		for i, method := range []string{"GET", "HEAD", "OPTIONS"} {
			rec := do(h, method, "/v1/orders", "carol")
			want := 200
			if method == "OPTIONS" {
				want = http.StatusMethodNotAllowed // the mux's answer, after the count
			}
			require.Equal(t, want, rec.Code, method)
			require.Equal(t, `"orders";r=`+strconv.Itoa(2-i)+`;t=12`, rec.Header().Get("RateLimit"), method)
		}
		require.Equal(t, http.StatusTooManyRequests, do(h, "DELETE", "/v1/orders", "carol").Code)
		require.Equal(t, http.StatusTooManyRequests, do(h, "GET", "/v1/orders", "carol").Code)
		require.Equal(t, http.StatusNotFound, do(h, "GET", "/v1/other", "carol").Code) // no rule: unlimited
	})
	t.Run("Handle", func(t *testing.T) {
		clk := newClock(t0)
		rule := orders(2)
		lim := newLimiter(t, ratelimit.Local, clk, rule)
		m := newMiddleware(t, lim, clk, httplimit.Options{})
		mux := http.NewServeMux()
		require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders"))
		require.Equal(t, 200, do(mux, "HEAD", "/v1/orders", "dave").Code)
		require.Equal(t, 200, do(mux, "GET", "/v1/orders", "dave").Code)
		require.Equal(t, http.StatusTooManyRequests, do(mux, "HEAD", "/v1/orders", "dave").Code)
	})
	t.Run("HandleBehindWrapCountsOnce", func(t *testing.T) {
		clk := newClock(t0)
		rule := orders(2)
		lim := newLimiter(t, ratelimit.Local, clk, rule)
		m := newMiddleware(t, lim, clk, httplimit.Options{})
		mux := http.NewServeMux()
		require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders"))
		h := m.Wrap(mux)
		require.Equal(t, `"orders";r=1;t=12`, do(h, "GET", "/v1/orders", "erin").Header().Get("RateLimit"))
		require.Equal(t, `"orders";r=0;t=12`, do(h, "GET", "/v1/orders", "erin").Header().Get("RateLimit"))
	})
}

// TestPathParametersShareARule: every id under /v1/orders/{id} draws on
// one limit, per user.
func TestPathParametersShareARule(t *testing.T) {
	clk := newClock(t0)
	rule := orders(3)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /v1/orders/{id}", http.HandlerFunc(ok), "orders"))
	for id := 1; id <= 3; id++ {
		require.Equal(t, 200, do(mux, "GET", "/v1/orders/"+strconv.Itoa(id), "frank").Code)
	}
	require.Equal(t, 429, do(mux, "GET", "/v1/orders/4", "frank").Code)
	require.Equal(t, 200, do(mux, "GET", "/v1/orders/4", "grace").Code) // another user
}

// TestSeveralRules: a route's rules are all listed in RateLimit-Policy; the
// most restrictive decision is reported, and a denial names its policy.
func TestSeveralRules(t *testing.T) {
	clk := newClock(t0)
	burst := ratelimit.Rule{Name: "burst", Limit: 2, Window: 10 * time.Second, Algorithm: ratelimit.FixedWindow}
	perMin := orders(5)
	lim := newLimiter(t, ratelimit.Local, clk, perMin, burst)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders", "burst"))

	// t0 is 8 s into a 10 s window.
	rec := do(mux, "GET", "/v1/orders", "heidi")
	require.Equal(t, `"orders";q=5;w=60, "burst";q=2;w=10`, rec.Header().Get("RateLimit-Policy"))
	require.Equal(t, `"burst";r=1;t=2`, rec.Header().Get("RateLimit"))
	require.Equal(t, `"burst";r=0;t=2`, do(mux, "GET", "/v1/orders", "heidi").Header().Get("RateLimit"))
	rec = do(mux, "GET", "/v1/orders", "heidi")
	require.Equal(t, 429, rec.Code)
	require.Equal(t, `"burst";r=0;t=2`, rec.Header().Get("RateLimit"))
	require.Equal(t, "2", rec.Header().Get("Retry-After"))
	var p httplimit.Problem
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
	require.Equal(t, []string{"burst"}, p.ViolatedPolicies)

	// The denied request was refunded under "orders" (all or nothing): it
	// has counted 2 of 5.
	p2, err := lim.Peek(context.Background(), "orders", "user:heidi", clk.Now())
	require.NoError(t, err)
	require.Equal(t, int64(3), p2.Remaining)
	clk.set(t0.Add(2 * time.Second)) // the next burst window
	require.Equal(t, `"burst";r=1;t=10`, do(mux, "GET", "/v1/orders", "heidi").Header().Get("RateLimit"))
	p2, err = lim.Peek(context.Background(), "orders", "user:heidi", clk.Now())
	require.NoError(t, err)
	require.Equal(t, int64(2), p2.Remaining)
}

// TestPolicyNameQuoted: a rule name is a Structured Field string, with '"'
// and '\' escaped; a name that cannot be one is refused.
func TestPolicyNameQuoted(t *testing.T) {
	clk := newClock(t0)
	odd := ratelimit.Rule{Name: `GET "a\b"`, Limit: 1, Window: 1500 * time.Millisecond}
	bad := ratelimit.Rule{Name: "caf\u00e9", Limit: 1, Window: time.Second}
	lim := newLimiter(t, ratelimit.Local, clk, odd, bad)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /a", http.HandlerFunc(ok), odd.Name))
	// A window of 1.5 s is advertised as 2 s: w has no fractions.
	require.Equal(t, `"GET \"a\\b\"";q=1;w=2`, do(mux, "GET", "/a", "ivan").Header().Get("RateLimit-Policy"))
	require.Error(t, m.Route("GET /b", bad.Name))
	require.ErrorIs(t, m.Route("GET /c", "nope"), ratelimit.ErrUnknownRule)
	require.Error(t, m.Route("GET /d"))
}

// TestErrors: a key the Limiter rejects is a 400, a failing Limiter a 503
// with Retry-After: 1, both problem+json; OnError replaces them.
func TestErrors(t *testing.T) {
	clk := newClock(t0)
	rule := orders(3)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /v1/orders", http.HandlerFunc(ok), "orders"))

	problem := func(rec *httptest.ResponseRecorder) httplimit.Problem {
		t.Helper()
		require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
		var p httplimit.Problem
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
		return p
	}
	rec := do(mux, "GET", "/v1/orders", strings.Repeat("x", 600)) // more than MaxKeyBytes
	require.Equal(t, http.StatusBadRequest, rec.Code)
	require.Equal(t, 400, problem(rec).Status)

	require.NoError(t, lim.Close())
	rec = do(mux, "GET", "/v1/orders", "judy")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "1", rec.Header().Get("Retry-After"))
	require.Equal(t, httplimit.Problem{Type: "about:blank", Title: "Service Unavailable", Status: 503,
		Detail: "the rate limiter cannot decide the request"}, problem(rec))

	var got error
	m2 := newMiddleware(t, lim, clk, httplimit.Options{OnError: func(w http.ResponseWriter, r *http.Request, err error) {
		got = err
		w.WriteHeader(http.StatusTeapot)
	}})
	mux2 := http.NewServeMux()
	require.NoError(t, m2.Handle(mux2, "GET /v1/orders", http.HandlerFunc(ok), "orders"))
	require.Equal(t, http.StatusTeapot, do(mux2, "GET", "/v1/orders", "judy").Code)
	require.ErrorIs(t, got, ratelimit.ErrClosed)
}

// TestPatternFunc: another router's pattern, known once it has routed.
func TestPatternFunc(t *testing.T) {
	clk := newClock(t0)
	rule := orders(1)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{PatternFunc: func(r *http.Request) string {
		return r.Context().Value(patternKey{}).(string) // as chi's RouteContext would
	}})
	require.NoError(t, m.Route("/v1/orders/{id}", "orders"))
	h := m.Wrap(http.HandlerFunc(ok))
	serve := func(path string) int {
		req := httptest.NewRequest("PATCH", path, nil)
		req = req.WithContext(context.WithValue(req.Context(), patternKey{}, "/v1/orders/{id}"))
		req.Header.Set("X-User-ID", "ken")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	require.Equal(t, 200, serve("/v1/orders/1"))
	require.Equal(t, 429, serve("/v1/orders/2"))
}

type patternKey struct{}

// TestClientKey: the default key of a request without identity header.
func TestClientKey(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, c := range []struct {
		name, remote string
		header       http.Header
		want         string
	}{
		{"ipv4 as is", "203.0.113.7:5555", nil, "ip:203.0.113.7"},
		{"ipv6 masked to /64", "[2001:db8:1:2:3:4:5:6]:443", nil, "ip:2001:db8:1:2::/64"},
		{"ipv6 same /64 same key", "[2001:db8:1:2:ffff::1]:443", nil, "ip:2001:db8:1:2::/64"},
		{"ipv6 zone dropped", "[fe80::1%eth0]:443", nil, "ip:fe80::/64"},
		{"ipv4-mapped ipv6 is ipv4", "[::ffff:203.0.113.7]:1", nil, "ip:203.0.113.7"},
		{"spoofed XFF from untrusted peer ignored", "203.0.113.7:1",
			http.Header{"X-Forwarded-For": {"198.51.100.1"}}, "ip:203.0.113.7"},
		{"spoofed Forwarded from untrusted peer ignored", "203.0.113.7:1",
			http.Header{"Forwarded": {"for=198.51.100.1"}}, "ip:203.0.113.7"},
		{"XFF from trusted peer", "10.1.1.1:1",
			http.Header{"X-Forwarded-For": {"198.51.100.1"}}, "ip:198.51.100.1"},
		{"right-most untrusted XFF entry", "10.1.1.1:1",
			http.Header{"X-Forwarded-For": {"6.6.6.6, 198.51.100.1", "10.2.2.2"}}, "ip:198.51.100.1"},
		{"all trusted: left-most", "10.1.1.1:1",
			http.Header{"X-Forwarded-For": {"10.3.3.3, 10.2.2.2"}}, "ip:10.3.3.3"},
		{"Forwarded ignored by default", "10.1.1.1:1",
			http.Header{"Forwarded": {"for=6.6.6.6"}, "X-Forwarded-For": {"7.7.7.7"}}, "ip:7.7.7.7"},
		{"Forwarded when named, ipv6 masked", "[fd00::1]:1",
			http.Header{"Forwarded": {`for=6.6.6.6, for="[2001:db8::1]:4711";proto=https`}, "X-Forwarded-For": {"7.7.7.7"}},
			"ip:2001:db8::/64"},
		{"trusted peer without headers", "10.1.1.1:1", nil, "ip:10.1.1.1"},
		{"obfuscated identifier", "10.1.1.1:1", http.Header{"Forwarded": {"for=_hidden"}}, "fwd:_hidden"},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/", nil)
			req.RemoteAddr = c.remote
			for k, v := range c.header {
				req.Header[k] = v
			}
			fwd := "X-Forwarded-For"
			if strings.HasPrefix(c.name, "Forwarded when") || strings.HasPrefix(c.name, "obfuscated") {
				fwd = "Forwarded"
			}
			got, err := httplimit.ClientKey(req, trusted, fwd)
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.RemoteAddr = "pipe"
	_, err := httplimit.ClientKey(req, trusted, "X-Forwarded-For")
	require.ErrorIs(t, err, ratelimit.ErrInvalidKey)
}

// TestDefaultKey: the identity header wins; without it the client address
// is the key, so two users behind one address share it.
func TestDefaultKey(t *testing.T) {
	clk := newClock(t0)
	rule := orders(1)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{IdentityHeader: "X-Caller"})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /x", http.HandlerFunc(ok), "orders"))
	serve := func(caller, remote string) int {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = remote
		if caller != "" {
			req.Header.Set("X-Caller", caller)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec.Code
	}
	require.Equal(t, 200, serve("", "[2001:db8::1]:1"))
	require.Equal(t, 429, serve("", "[2001:db8::2]:1")) // same /64
	require.Equal(t, 200, serve("leo", "[2001:db8::2]:1"))
	require.Equal(t, 429, serve("leo", "192.0.2.1:1"))
}

// TestWrapProbesOtherMethods: a method the mux answers 405 to is charged
// to the route that serves the path under another method.
func TestWrapProbesOtherMethods(t *testing.T) {
	clk := newClock(t0)
	rule := orders(2)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/orders/{id}", ok)
	require.NoError(t, m.Route("POST /v1/orders/{id}", "orders"))
	h := m.Wrap(mux)
	rec := do(h, "GET", "/v1/orders/1", "mallory")
	require.Equal(t, http.StatusMethodNotAllowed, rec.Code)
	require.Equal(t, "POST", rec.Header().Get("Allow"))
	require.Equal(t, `"orders";r=1;t=12`, rec.Header().Get("RateLimit"))
	require.Equal(t, 200, do(h, "POST", "/v1/orders/2", "mallory").Code)
	require.Equal(t, 429, do(h, "PUT", "/v1/orders/3", "mallory").Code)
	require.Equal(t, 429, do(h, "POST", "/v1/orders/4", "mallory").Code)
}

// FuzzClientKey: any peer and forwarding headers give a key of the client
// address or a "fwd:" entry, or ErrNoKey; an untrusted peer's headers never
// change its key.
func FuzzClientKey(f *testing.F) {
	f.Add("10.1.1.1:1", "198.51.100.1, 10.2.2.2", `for="[2001:db8::1]:1"`)
	f.Add("[2001:db8::1]:1", "::1", "for=unknown")
	f.Add("pipe", "", "")
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, remote, xff, fwd string) {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = remote
		req.Header.Set("X-Forwarded-For", xff)
		req.Header.Set("Forwarded", fwd)
		bare := httptest.NewRequest("GET", "/", nil)
		bare.RemoteAddr = remote
		for _, header := range []string{"X-Forwarded-For", "Forwarded"} {
			key, err := httplimit.ClientKey(req, trusted, header)
			if err != nil {
				require.ErrorIs(t, err, ratelimit.ErrInvalidKey)
				continue
			}
			require.True(t, strings.HasPrefix(key, "ip:") || strings.HasPrefix(key, "fwd:"), key)
			if peer, err := httplimit.ClientKey(bare, trusted, header); err == nil && !strings.HasPrefix(peer, "ip:10.") {
				require.Equal(t, peer, key, "an untrusted peer's headers changed its key")
			}
		}
	})
}

// BenchmarkMiddleware: the cost of a Local rule's decision through the
// middleware, headers included.
func BenchmarkMiddleware(b *testing.B) {
	rule := ratelimit.Rule{Name: "orders", Limit: 1 << 30, Window: time.Minute, Mode: ratelimit.Local}
	lim, err := ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{rule}})
	require.NoError(b, err)
	defer lim.Close()
	m, err := httplimit.New(lim, httplimit.Options{})
	require.NoError(b, err)
	mux := http.NewServeMux()
	require.NoError(b, m.Handle(mux, "GET /v1/orders/{id}", http.HandlerFunc(ok), "orders"))
	req := httptest.NewRequest("GET", "/v1/orders/1", nil)
	req.Header.Set("X-User-ID", "bench")
	b.ReportAllocs()
	for b.Loop() {
		mux.ServeHTTP(httptest.NewRecorder(), req)
	}
}
