package httplimit_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// TestNewKeysPerSecond: 1000 identities never seen from one /24 within one
// second: 10 pass, 990 get 429 with Retry-After and the new-keys problem,
// and are not counted by the Limiter; another /24 keeps its budget; an
// identity seen before passes from the flooded /24; a denied identity was
// not counted by the Limiter.
func TestNewKeysPerSecond(t *testing.T) {
	clk := newClock(t0)
	rule := orders(2)
	lim := newLimiter(t, ratelimit.Local, clk, rule)
	m := newMiddleware(t, lim, clk, httplimit.Options{NewKeysPerSecond: 10})
	mux := http.NewServeMux()
	require.NoError(t, m.Handle(mux, "GET /orders", http.HandlerFunc(ok), "orders"))
	from := func(addr, user string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/orders", nil)
		req.RemoteAddr = addr + ":1234"
		req.Header.Set("X-User-ID", user)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		return rec
	}
	require.Equal(t, http.StatusOK, from("10.0.0.1", "known").Code)
	clk.set(t0.Add(time.Second)) // a new second, a fresh budget
	passed, denied := 0, 0
	for i := range 1000 {
		rec := from(fmt.Sprintf("10.0.0.%d", i%250+1), fmt.Sprint("fake-", i))
		switch rec.Code {
		case http.StatusOK:
			passed++
		case http.StatusTooManyRequests:
			denied++
			require.Equal(t, "1", rec.Header().Get("Retry-After"))
			require.Equal(t, "application/problem+json", rec.Header().Get("Content-Type"))
			var p httplimit.Problem
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &p))
			require.Equal(t, []string{httplimit.NewKeysPolicy}, p.ViolatedPolicies)
		default:
			t.Fatalf("status %d", rec.Code)
		}
	}
	require.Equal(t, 10, passed)
	require.Equal(t, 990, denied)
	require.Equal(t, http.StatusOK, from("10.0.0.7", "known").Code, "a known identity passes from the flooded /24")
	require.Equal(t, http.StatusOK, from("10.0.1.1", "other-net").Code, "another /24 has its budget")
	clk.set(t0.Add(2 * time.Second))
	for range 2 {
		require.Equal(t, http.StatusOK, from("10.0.0.1", "fake-999").Code, "a denied id was never counted by the Limiter (2 a minute)")
	}
}
