// Command gateway is a small API gateway: a reverse proxy in front of one
// upstream that rate-limits each caller per route with httplimit.
//
// The caller is the X-User-ID header, else the client address (an IPv6
// client by its /64; X-Forwarded-For is believed from -trusted proxies
// only). Responses carry the RateLimit and RateLimit-Policy fields; a
// denied request gets 429 with Retry-After and a problem+json body, and
// never reaches the upstream. Run several copies against one Redis (-redis)
// and they share the limits; without -redis the gateway embeds a miniredis
// of its own.
//
//	go run ./examples/gateway -upstream http://127.0.0.1:9000
//	curl -i -H 'X-User-ID: alice' http://127.0.0.1:8080/v1/orders/42
//
// Once it listens it prints "listening on http://ADDR" (with -addr
// 127.0.0.1:0 the port is chosen by the system).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// rules are the gateway's limits.
var rules = []ratelimit.Rule{
	// Exact across gateways: one Redis call per request.
	{Name: "orders-read", Limit: 20, Window: time.Minute, Algorithm: ratelimit.SlidingLog, Mode: ratelimit.Strict},
	{Name: "orders-write", Limit: 5, Window: time.Second, Algorithm: ratelimit.TokenBucket, Mode: ratelimit.Strict},
	// Decided in process from leases, far from the limit.
	{Name: "default", Limit: 1000, Window: time.Minute},
}

// routes bind the rules to route patterns; every pattern is proxied.
var routes = []struct {
	pattern string
	rules   []string
}{
	{"GET /v1/orders/{id}", []string{"orders-read"}},
	{"POST /v1/orders", []string{"orders-write", "default"}},
	{"/", []string{"default"}},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx ends, then shuts down.
func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "address to listen on")
	upstream := fs.String("upstream", "", "URL of the upstream to proxy to (required)")
	redisAddr := fs.String("redis", "", "Redis address; empty: an embedded miniredis")
	prefix := fs.String("prefix", "rl", "prefix of the Redis keys")
	trusted := fs.String("trusted", "", "comma-separated prefixes of trusted proxies, e.g. 10.0.0.0/8")
	timeout := fs.Duration("timeout", 0, "longest a decision waits on Redis before the rule's failure policy decides; 0: the library's default (1s)")
	forwarded := fs.String("forwarded", "X-Forwarded-For", "the header trusted proxies set: X-Forwarded-For or Forwarded")
	if err := fs.Parse(args); err != nil {
		return err
	}
	up, err := url.Parse(*upstream)
	if err != nil || up.Scheme == "" || up.Host == "" {
		return fmt.Errorf("-upstream %q: want an absolute URL", *upstream)
	}
	var proxies []netip.Prefix
	for s := range strings.SplitSeq(*trusted, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("-trusted: %w", err)
		}
		proxies = append(proxies, p)
	}

	if *redisAddr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		*redisAddr = mr.Addr()
	}
	rdb := redis.NewClient(&redis.Options{Addr: *redisAddr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	lim, err := ratelimit.New(ratelimit.Config{
		Redis:     rdb,
		Rules:     rules,
		KeyPrefix: *prefix,
		Timeout:   *timeout,
	})
	if err != nil {
		return err
	}
	defer lim.Close()
	m, err := httplimit.New(lim, rules, httplimit.Options{TrustedProxies: proxies, ForwardedHeader: *forwarded})
	if err != nil {
		return err
	}

	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(up)
		pr.SetXForwarded()
	}}
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.pattern, proxy)
		if err := m.Route(rt.pattern, rt.rules...); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: m.Wrap(mux), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "listening on http://%s (upstream %s, Redis %s)\n", ln.Addr(), up, *redisAddr)

	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
