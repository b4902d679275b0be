package httplimit_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// A route limited to 2 requests a minute per user. The rule is Local, so
// the example needs no Redis; a Strict or Hybrid rule shares its limit
// across gateways through Config.Redis. The clock is fixed for the output.
func Example() {
	now := func() time.Time { return time.UnixMilli(1_700_000_088_000) } // 48 s into a minute
	rules := []ratelimit.Rule{
		{Name: "orders", Limit: 2, Window: time.Minute, Algorithm: ratelimit.FixedWindow, Mode: ratelimit.Local},
	}
	lim, err := ratelimit.New(ratelimit.Config{Rules: rules, Now: now})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	m, err := httplimit.New(lim, httplimit.Options{Now: now})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	err = m.Handle(mux, "GET /v1/orders/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "order %s\n", r.PathValue("id"))
	}), "orders")
	if err != nil {
		panic(err)
	}

	for _, id := range []string{"1", "2", "3"} {
		req := httptest.NewRequest("GET", "/v1/orders/"+id, nil)
		req.Header.Set("X-User-ID", "alice")
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		fmt.Println(rec.Code, rec.Header().Get("RateLimit-Policy"), rec.Header().Get("RateLimit"))
		if ra := rec.Header().Get("Retry-After"); ra != "" {
			fmt.Println("Retry-After:", ra)
		}
		fmt.Print(rec.Body.String())
	}
	// Output:
	// 200 "orders";q=2;w=60 "orders";r=1;t=12
	// order 1
	// 200 "orders";q=2;w=60 "orders";r=0;t=12
	// order 2
	// 429 "orders";q=2;w=60 "orders";r=0;t=12
	// Retry-After: 12
	// {"type":"https://iana.org/assignments/http-problem-types#quota-exceeded","title":"Request cannot be satisfied as assigned quota has been exceeded","status":429,"detail":"quota of policy \"orders\" (2 per 1m0s) exceeded; retry in 12 s","violated-policies":["orders"]}
}

// Options.NewKeysPerSecond: at most 2 identities never seen before per
// client /24 and second; the third new one waits, a known one passes.
func ExampleOptions_newKeysPerSecond() {
	now := func() time.Time { return time.UnixMilli(1_700_000_088_000) }
	rules := []ratelimit.Rule{{Name: "orders", Limit: 100, Window: time.Minute, Mode: ratelimit.Local}}
	lim, err := ratelimit.New(ratelimit.Config{Rules: rules, Now: now})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	m, err := httplimit.New(lim, httplimit.Options{Now: now, NewKeysPerSecond: 2})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	if err := m.Handle(mux, "GET /orders", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), "orders"); err != nil {
		panic(err)
	}
	for _, user := range []string{"alice", "bob", "mallory-1", "alice"} {
		req := httptest.NewRequest("GET", "/orders", nil)
		req.RemoteAddr = "198.51.100.7:4000"
		req.Header.Set("X-User-ID", user)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		fmt.Println(user, rec.Code, "Retry-After:", rec.Header().Get("Retry-After") != "")
	}
	// Output:
	// alice 200 Retry-After: false
	// bob 200 Retry-After: false
	// mallory-1 429 Retry-After: true
	// alice 200 Retry-After: false
}
