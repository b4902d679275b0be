// Command httpmiddleware is a small API gateway that rate-limits each user
// per endpoint with a net/http middleware.
//
// The user is the X-User-ID header; the rule is the request's method and
// path. Responses carry X-RateLimit-Limit and X-RateLimit-Remaining, and a
// 429 carries Retry-After. Run several copies on different -addr values
// against one Redis and they share the strict limits.
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

	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
	defer rdb.Close()
	lim, err := ratelimit.New(ratelimit.Config{
		Redis: rdb,
		Rules: []ratelimit.Rule{
			{Name: "GET /v1/orders", Limit: 10, Window: time.Second},
			{Name: "POST /v1/orders", Limit: 5, Window: time.Second, Algorithm: ratelimit.TokenBucket},
			{Name: "GET /v1/catalog", Limit: 100, Window: time.Minute, Mode: ratelimit.Local},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer lim.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("/v1/orders", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s orders for %s\n", r.Method, r.Header.Get("X-User-ID"))
	})
	mux.HandleFunc("GET /v1/catalog", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "catalog")
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *addr, Handler: rateLimit(lim, mux), ReadHeaderTimeout: 5 * time.Second}
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

// rateLimit admits each request under the rule named "METHOD /path".
// Requests without a rule pass; requests without X-User-ID get 401.
func rateLimit(lim *ratelimit.Limiter, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-User-ID")
		if user == "" {
			http.Error(w, "missing X-User-ID", http.StatusUnauthorized)
			return
		}
		rule, err := lim.Rule(r.Method + " " + r.URL.Path)
		if err != nil { // ErrUnknownRule
			next.ServeHTTP(w, r) // no limit on this endpoint
			return
		}
		d, err := rule.Allow(r.Context(), user, time.Now())
		switch {
		case errors.Is(err, ratelimit.ErrInvalidKey):
			http.Error(w, "bad X-User-ID", http.StatusBadRequest)
			return
		case err != nil:
			// Redis is down or slow: this gateway fails closed. Failing
			// open (next.ServeHTTP) is the other defensible choice.
			log.Printf("rate limiter: %v", err)
			http.Error(w, "rate limiter unavailable", http.StatusServiceUnavailable)
			return
		}
		h := w.Header()
		h.Set("X-RateLimit-Limit", strconv.FormatInt(rule.Limit(), 10))
		h.Set("X-RateLimit-Remaining", strconv.FormatInt(d.Remaining, 10))
		if !d.Allowed {
			h.Set("Retry-After", strconv.Itoa(d.RetryAfterSeconds()))
			http.Error(w, "too many requests", http.StatusTooManyRequests)
			return
		}
		next.ServeHTTP(w, r)
	})
}
