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
// With -rules FILE the rules and routes come from a YAML rules file
// (package rulesfile; rules.yaml is the built-in set written as one), and
// SIGHUP reloads it while requests flow: rules that keep their id keep
// their counts, and the routes are rebuilt from the file. A file with a
// mistake is reported ("reload: ...") and the running rules stay.
//
// Once it listens it prints "listening on http://ADDR" (with -addr
// 127.0.0.1:0 the port is chosen by the system); after each SIGHUP,
// "reloaded FILE" or "reload: ERROR".
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
	"github.com/drl-go/distributed-rate-limiter/rulesfile"
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
var routes = []rulesfile.Route{
	{Pattern: "GET /v1/orders/{id}", Rules: []string{"orders-read"}},
	{Pattern: "POST /v1/orders", Rules: []string{"orders-write", "default"}},
	{Pattern: "/", Rules: []string{"default"}},
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
	rulesPath := fs.String("rules", "", "YAML rules file (package rulesfile), reloaded on SIGHUP; empty: the built-in rules")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rules, routes := rules, routes
	if *rulesPath != "" {
		f, err := rulesfile.Load(*rulesPath)
		if err != nil {
			return err
		}
		rules, routes = f.Rules(), f.Routes()
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
	proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(up)
		pr.SetXForwarded()
	}}
	opts := httplimit.Options{TrustedProxies: proxies, ForwardedHeader: *forwarded}
	h, err := handler(lim, routes, opts, proxy)
	if err != nil {
		return err
	}
	// A Middleware's routes are fixed once it serves: a reload builds a
	// new one and swaps it in.
	var current atomic.Pointer[http.Handler]
	current.Store(&h)
	hup := make(chan os.Signal, 1)
	if *rulesPath != "" {
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
	}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*current.Load()).ServeHTTP(w, r) }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	fmt.Fprintf(stdout, "listening on http://%s (upstream %s, Redis %s)\n", ln.Addr(), up, *redisAddr)

	for serving := true; serving; {
		select {
		case err := <-done:
			return err
		case <-hup:
			if err := reload(*rulesPath, lim, opts, proxy, &current); err != nil {
				fmt.Fprintf(stdout, "reload: %v\n", err)
			} else {
				fmt.Fprintf(stdout, "reloaded %s\n", *rulesPath)
			}
		case <-ctx.Done():
			serving = false
		}
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

// handler returns the gateway's handler: routes proxied, limited by a
// Middleware of lim's rules in force.
func handler(lim *ratelimit.Limiter, routes []rulesfile.Route, opts httplimit.Options, proxy http.Handler) (http.Handler, error) {
	m, err := httplimit.New(lim, opts)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	for _, rt := range routes {
		mux.Handle(rt.Pattern, proxy)
		if err := m.Route(rt.Pattern, rt.Rules...); err != nil {
			return nil, err
		}
	}
	return m.Wrap(mux), nil
}

// reload applies the rules file at path to lim and swaps in a handler of
// its routes. A bad file changes nothing.
func reload(path string, lim *ratelimit.Limiter, opts httplimit.Options, proxy http.Handler, current *atomic.Pointer[http.Handler]) error {
	f, err := rulesfile.Load(path)
	if err != nil {
		return err
	}
	if err := f.Apply(lim); err != nil {
		return err
	}
	h, err := handler(lim, f.Routes(), opts, proxy)
	if err != nil {
		return fmt.Errorf("%s: rules applied, routes kept: %w", path, err)
	}
	current.Store(&h)
	return nil
}
