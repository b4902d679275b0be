package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// TestRoutesAreLimited: every route is limited by its own rule, whatever
// the method the pattern serves (HEAD under a GET pattern) and whatever its
// path values; over the limit comes a 429 with Retry-After.
func TestRoutesAreLimited(t *testing.T) {
	mr := miniredis.RunT(t) // the handler's logic; the library's own tests prove it on a real Redis
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	lim, err := ratelimit.New(ratelimit.Config{Redis: rdb, Rules: rules})
	require.NoError(t, err)
	defer lim.Close()
	h, err := newHandler(lim)
	require.NoError(t, err)

	do := func(method, path, user string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		if user != "" {
			req.Header.Set("X-User-ID", user)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, tc := range []struct {
		method, path string
		limit        int
	}{
		{"HEAD", "/v1/orders", 10},  // the GET pattern serves HEAD: same rule
		{"GET", "/v1/orders/1", 20}, // a path value: one rule for every id
		{"GET", "/v1/orders/2", 0},  // ... so /2 shares /1's budget
		{"POST", "/v1/orders", 5},
	} {
		allowed := 0
		for range 25 {
			rec := do(tc.method, tc.path, "alice")
			switch rec.Code {
			case http.StatusOK:
				allowed++
			case http.StatusTooManyRequests:
				require.NotEmpty(t, rec.Header().Get("Retry-After"), "%s %s: 429 without Retry-After", tc.method, tc.path)
			default:
				t.Fatalf("%s %s: status %d", tc.method, tc.path, rec.Code)
			}
		}
		require.Equal(t, tc.limit, allowed, "%s %s: admitted", tc.method, tc.path)
	}
	require.Equal(t, http.StatusUnauthorized, do("GET", "/v1/catalog", "").Code)
	require.Equal(t, http.StatusMethodNotAllowed, do("DELETE", "/v1/orders", "alice").Code)
}
