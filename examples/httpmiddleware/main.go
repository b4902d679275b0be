// Command httpmiddleware is a small API gateway that rate-limits each user
// per endpoint with a net/http middleware.
//
// The user is the X-User-ID header. Each route is registered with its rule,
// resolved once at startup (a *RuleLimiter), so a request costs no rule
// lookup and every request the route matches is limited, whatever its method
// (a GET pattern also serves HEAD). Responses carry X-RateLimit-Limit and
// X-RateLimit-Remaining, and a 429 carries Retry-After. Run several copies on
// different -addr values against one Redis and they share the limits.
//
//	go run ./examples/httpmiddleware -redis 127.0.0.1:6379
//	curl -i -H 'X-User-ID: alice' http://127.0.0.1:8080/v1/orders
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	flag.Parse()

	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	lim, err := ratelimit.New(ratelimit.Config{Redis: rdb, Rules: rules})
	if err != nil {
		log.Fatal(err)
	}
	defer lim.Close()
	handler, err := newHandler(lim)
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *addr, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("listening on http://%s (Redis %s)", *addr, *redisAddr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Print(err)
	}
}

// rules are the gateway's limits, one per route; a rule's name is the
// route's pattern.
var rules = []ratelimit.Rule{
	{Name: "GET /v1/orders", Limit: 10, Window: time.Second},
	{Name: "POST /v1/orders", Limit: 5, Window: time.Second, Algorithm: ratelimit.TokenBucket},
	{Name: "GET /v1/orders/{id}", Limit: 20, Window: time.Second},
	{Name: "GET /v1/catalog", Limit: 100, Window: time.Minute, Mode: ratelimit.Local},
}

// newHandler registers every route with its rule, resolved here, once.
func newHandler(lim *ratelimit.Limiter) (http.Handler, error) {
	handlers := map[string]http.HandlerFunc{
		"GET /v1/orders": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "orders of %s\n", r.Header.Get("X-User-ID"))
		},
		"POST /v1/orders": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "order placed for %s\n", r.Header.Get("X-User-ID"))
		},
		"GET /v1/orders/{id}": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "order %s\n", r.PathValue("id"))
		},
		"GET /v1/catalog": func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "catalog")
		},
	}
	mux := http.NewServeMux()
	for pattern, h := range handlers {
		rule, err := lim.Rule(pattern)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", pattern, err) // every route has a rule
		}
		mux.Handle(pattern, limited(rule, h))
	}
	return mux, nil
}

// limited admits each request under rule before next serves it. Requests
// without X-User-ID get 401.
func limited(rule *ratelimit.RuleLimiter, next http.Handler) http.Handler {
	limit := strconv.FormatInt(rule.Limit(), 10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-User-ID")
		if user == "" {
			http.Error(w, "missing X-User-ID", http.StatusUnauthorized)
			return
		}
		d, err := rule.Allow(r.Context(), user, time.Now())
		switch {
		case errors.Is(err, ratelimit.ErrInvalidKey):
			http.Error(w, "bad X-User-ID", http.StatusBadRequest)
			return
		case err != nil:
			// The rule's failure policy (FailLocal by default) decides
			// while Redis is down; an error left here is the Limiter
			// closing, a canceled request or a FailError rule.
			log.Printf("rate limiter: %v", err)
			w.Header().Set("Retry-After", "1")
			http.Error(w, "rate limiter unavailable", http.StatusServiceUnavailable)
			return
		}
		h := w.Header()
		h.Set("X-RateLimit-Limit", limit)
		h.Set("X-RateLimit-Remaining", strconv.FormatInt(d.Remaining, 10))
		if !d.Allowed {
			h.Set("Retry-After", strconv.Itoa(d.RetryAfterSeconds()))
			http.Error(w, "too many requests", http.StatusTooManyRequests)
			return
		}
		next.ServeHTTP(w, r)
	})
}
