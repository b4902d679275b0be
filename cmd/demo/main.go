// Command demo shows the rate limiter at work: several gateway instances,
// each with its own Limiter and its own Redis client, share one Redis and
// receive round-robin traffic from a few users, one of whom sends five
// times its limits. The flagship rule runs in hybrid mode (decisions made
// locally from token leases reserved in Redis), next to a strict and a
// local rule.
//
// Time is virtual: every request carries an explicit timestamp and the
// Limiters' clock (Config.Now) follows it; the hybrid sync passes run at
// virtual ticks (Config.ManualSync, Limiter.Sync on every instance every
// -sync of virtual time). So the demo never sleeps, takes a fraction of a
// second, and prints the same table for the same flags.
//
//	go run ./cmd/demo                     # embedded Redis (miniredis), no setup
//	go run ./cmd/demo -redis 127.0.0.1:6379 -seconds 10 -instances 5 -rps 80 -sync 50ms
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// options are the demo's flags.
type options struct {
	Redis     string // address of a Redis; "" starts an embedded miniredis
	Seconds   int    // virtual seconds simulated
	Instances int    // gateway instances, one Limiter and one client each
	RPS       int    // the hot user's requests per second on GET /v1/orders
	// Sync is the hybrid mode's sync interval, in virtual time: every Sync
	// each instance runs one sync pass (Limiter.Sync).
	Sync time.Duration
}

func defaultOptions() options {
	return options{Seconds: 5, Instances: 3, RPS: 500, Sync: 100 * time.Millisecond}
}

// rules are the gateway's limits, one per endpoint.
var rules = []ratelimit.Rule{
	{Name: "GET /v1/orders", Limit: 100, Window: time.Second, Algorithm: ratelimit.SlidingWindow, Mode: ratelimit.Hybrid},
	{Name: "POST /v1/orders", Limit: 5, Window: time.Second, Algorithm: ratelimit.TokenBucket, Mode: ratelimit.Strict},
	{Name: "GET /v1/catalog", Limit: 20, Window: time.Second, Algorithm: ratelimit.SlidingWindow, Mode: ratelimit.Local},
}

// user is a client of the gateway. load is its request rate on every
// endpoint as a multiple of that endpoint's limit; a negative load marks the
// hot user, whose rate comes from options.RPS.
type user struct {
	id   string
	load float64
}

var users = []user{
	{id: "alice", load: -1}, // hot
	{id: "bob", load: 0.5},
	{id: "carol", load: 0.3},
}

// start is the first virtual instant: 2023-11-14T22:13:20Z.
var start = time.UnixMilli(1_700_000_000_000).UTC()

// seed makes the traffic, and so the output, the same on every run.
const seed = 20231114

// event is one request and the answer it got.
type event struct {
	at       int64 // virtual ms since start
	user     int   // index in users
	rule     int   // index in rules
	instance int
	decision ratelimit.Decision
	remote   bool // a hybrid decision that asked Redis (its instance's Stats().HybridRedis grew)
	exact    bool // what one exact limiter, fed every request of the rule, decided (hybrid rules only)
}

// simulation is what simulate did, in the order the requests were served.
type simulation struct {
	opts   options
	store  string // where the shared state lived
	load   []float64
	events []event
	stats  ratelimit.Stats // the instances' hybrid counters, summed (Instances: as the last instance saw it)
	passes int             // sync passes run, over all instances
}

func main() {
	opts := defaultOptions()
	flag.StringVar(&opts.Redis, "redis", "", "address of a Redis to use (host:port); empty starts an embedded miniredis")
	flag.IntVar(&opts.Seconds, "seconds", opts.Seconds, "virtual seconds to simulate")
	flag.IntVar(&opts.Instances, "instances", opts.Instances, "gateway instances sharing the store")
	flag.IntVar(&opts.RPS, "rps", opts.RPS, "hot user's requests per second on GET /v1/orders (limit 100/s); its other endpoints get the same multiple of their limit")
	flag.DurationVar(&opts.Sync, "sync", opts.Sync, "hybrid sync interval, in virtual time: every instance runs a sync pass this often")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run simulates the traffic described by opts and writes the report to w.
func run(ctx context.Context, opts options, w io.Writer) error {
	sim, err := simulate(ctx, opts)
	if err != nil {
		return err
	}
	return sim.report(w)
}

func (o options) validate() error {
	switch {
	case o.Seconds < 1 || o.Seconds > 3600:
		return fmt.Errorf("-seconds %d: want 1 to 3600", o.Seconds)
	case o.Instances < 1 || o.Instances > 100:
		return fmt.Errorf("-instances %d: want 1 to 100", o.Instances)
	case o.RPS < 1 || o.RPS > 10_000:
		return fmt.Errorf("-rps %d: want 1 to 10000", o.RPS)
	case o.Sync < time.Millisecond || o.Sync > time.Minute || o.Sync%time.Millisecond != 0:
		return fmt.Errorf("-sync %v: want whole milliseconds from 1ms to 1m", o.Sync)
	}
	return nil
}

// simulate runs the traffic through opts.Instances Limiters that share one
// store, one request at a time in virtual-time order.
func simulate(ctx context.Context, opts options) (*simulation, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	sim := &simulation{opts: opts}

	addr := opts.Redis
	// Keys of an earlier run on a real Redis would change the answers (they
	// live for two windows of real time); a fresh prefix keeps runs apart.
	prefix := fmt.Sprintf("drl-demo-%x", time.Now().UnixNano())
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("starting embedded Redis: %w", err)
		}
		defer mr.Close()
		addr = mr.Addr()
		sim.store = "embedded miniredis"
		prefix = "drl-demo"
	} else {
		sim.store = "Redis at " + addr
	}

	// The virtual clock: Allow decides with each request's own timestamp;
	// Config.Now only bounds how far that timestamp may stray (MaxSkew).
	var clock atomic.Int64
	clock.Store(start.UnixMilli())
	now := func() time.Time { return time.UnixMilli(clock.Load()) }

	// ManualSync: no background sync loop (it would tick in real time); the
	// passes run below, at virtual ticks.
	limiters := make([]*ratelimit.Limiter, opts.Instances)
	for i := range limiters {
		rdb := redis.NewClient(&redis.Options{Addr: addr, DisableIdentity: true})
		defer rdb.Close()
		lim, err := ratelimit.New(ratelimit.Config{
			Redis: rdb, Rules: rules, Now: now, KeyPrefix: prefix,
			SyncInterval: opts.Sync, ManualSync: true, InstanceID: fmt.Sprintf("gateway-%d", i),
			MaxLocalKeys: 1024, // three users; the default (1<<20) sizes ristretto for a real gateway
		})
		if err != nil {
			return nil, fmt.Errorf("instance %d: %w", i, err)
		}
		defer lim.Close()
		limiters[i] = lim
	}

	// The exact reference for the hybrid rules: one Local-mode Limiter, i.e.
	// the same algorithm computed exactly in one process, fed every request
	// of those rules. It shows what the leases held unspent cost.
	var refRules []ratelimit.Rule
	for _, r := range rules {
		if r.Mode == ratelimit.Hybrid {
			r.Mode = ratelimit.Local
			refRules = append(refRules, r)
		}
	}
	var ref *ratelimit.Limiter
	if len(refRules) > 0 {
		var err error
		if ref, err = ratelimit.New(ratelimit.Config{Rules: refRules, Now: now}); err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
		defer ref.Close()
	}

	sim.load = make([]float64, len(users))
	for u, usr := range users {
		sim.load[u] = usr.load
		if usr.load < 0 {
			sim.load[u] = float64(opts.RPS) / float64(rules[0].Limit)
		}
	}
	reqs := traffic(opts.Seconds, sim.load)
	sim.events = make([]event, 0, len(reqs))
	tick := opts.Sync.Milliseconds()
	nextSync := tick // virtual ms since start
	for i, r := range reqs {
		// Every sync tick due at or before this request: one pass on every
		// instance, at the tick's time.
		for ; nextSync <= r.at; nextSync += tick {
			clock.Store(start.UnixMilli() + nextSync)
			for j, lim := range limiters {
				if err := lim.Sync(ctx); err != nil {
					return nil, fmt.Errorf("sync at %d ms, instance %d: %w", nextSync, j, err)
				}
				sim.passes++
			}
		}

		inst := i % opts.Instances // round robin, as a load balancer would
		rl := rules[r.rule]
		t := start.Add(time.Duration(r.at) * time.Millisecond)
		clock.Store(t.UnixMilli())
		before := limiters[inst].Stats().HybridRedis
		d, err := limiters[inst].Allow(ctx, rl.Name, users[r.user].id, t)
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		r.instance, r.decision = inst, d
		if rl.Mode == ratelimit.Hybrid {
			r.remote = limiters[inst].Stats().HybridRedis > before
			rd, err := ref.Allow(ctx, rl.Name, users[r.user].id, t)
			if err != nil {
				return nil, fmt.Errorf("request %d, reference: %w", i, err)
			}
			r.exact = rd.Allowed
		}
		sim.events = append(sim.events, r)
	}
	for j, lim := range limiters {
		// A last pass (not one of the ticks' passes counted above) adds
		// the instance's local decisions since the last tick to Stats, as
		// Close would.
		if err := lim.Sync(ctx); err != nil {
			return nil, fmt.Errorf("final sync, instance %d: %w", j, err)
		}
		st := lim.Stats()
		sim.stats.HybridInProcessAllowed += st.HybridInProcessAllowed
		sim.stats.HybridInProcessDenied += st.HybridInProcessDenied
		sim.stats.HybridRedis += st.HybridRedis
		sim.stats.Instances = st.Instances
	}
	return sim, nil
}

// traffic returns every request of the simulation, ordered by time: in each
// second, each user sends round(load·limit) requests to each endpoint at
// random (seeded) milliseconds.
func traffic(seconds int, load []float64) []event {
	rng := rand.New(rand.NewPCG(seed, seed))
	var reqs []event
	for s := range seconds {
		for u := range users {
			for r, rl := range rules {
				n := int(math.Round(load[u] * float64(rl.Limit)))
				for range n {
					at := int64(s)*1000 + rng.Int64N(1000)
					reqs = append(reqs, event{at: at, user: u, rule: r})
				}
			}
		}
	}
	slices.SortStableFunc(reqs, func(a, b event) int { return int(a.at - b.at) })
	return reqs
}

// cell is the tally of one user on one rule in one virtual second.
type cell struct {
	offered, admitted  int
	remote             int // hybrid decisions that asked Redis
	exact              int // admitted by the exact reference (hybrid rules)
	minRetry, maxRetry int // Retry-After seconds of the denials
}

func (c *cell) add(e event) {
	d := e.decision
	c.offered++
	if e.remote {
		c.remote++
	}
	if e.exact {
		c.exact++
	}
	if d.Allowed {
		c.admitted++
		return
	}
	ra := d.RetryAfterSeconds()
	if c.offered-c.admitted == 1 {
		c.minRetry, c.maxRetry = ra, ra
	}
	c.minRetry, c.maxRetry = min(c.minRetry, ra), max(c.maxRetry, ra)
}

func (c cell) retry() string {
	switch {
	case c.offered == c.admitted:
		return "-"
	case c.minRetry == c.maxRetry:
		return fmt.Sprintf("%ds", c.minRetry)
	}
	return fmt.Sprintf("%d-%ds", c.minRetry, c.maxRetry)
}

// tally returns the cells indexed by second, user and rule.
func (sim *simulation) tally() [][][]cell {
	t := make([][][]cell, sim.opts.Seconds)
	for s := range t {
		t[s] = make([][]cell, len(users))
		for u := range t[s] {
			t[s][u] = make([]cell, len(rules))
		}
	}
	for _, e := range sim.events {
		t[e.at/1000][e.user][e.rule].add(e)
	}
	return t
}

// report writes the per-second table and the summary lines.
func (sim *simulation) report(w io.Writer) error {
	var b strings.Builder
	o := sim.opts
	fmt.Fprintf(&b, "%d gateway instances, one Limiter and one Redis client each, sharing %s; %d virtual seconds from %s\n",
		o.Instances, sim.store, o.Seconds, start.Format(time.RFC3339))
	var hybrid []string // names of the hybrid rules
	for _, r := range rules {
		scope := "shared by all instances"
		switch r.Mode {
		case ratelimit.Local:
			scope = "per instance"
		case ratelimit.Hybrid:
			scope = fmt.Sprintf("shared; local decisions from leases, synced every %v", o.Sync)
			hybrid = append(hybrid, r.Name)
		}
		fmt.Fprintf(&b, "rule %-16s %3d per %v  %-14v %-6v (%s)\n", r.Name, r.Limit, r.Window, r.Algorithm, r.Mode, scope)
	}
	b.WriteString("users (requests per second on each endpoint, as a multiple of its limit):")
	for u, usr := range users {
		sep, hot := ",", ""
		if u == 0 {
			sep = ""
		}
		if usr.load < 0 {
			hot = " (hot)"
		}
		fmt.Fprintf(&b, "%s %s %.1fx%s", sep, usr.id, sim.load[u], hot)
	}
	b.WriteString("\n")

	// Per second and user, one column group per rule: offered, admitted,
	// denied, the range of Retry-After seconds given to the denied, and for
	// a hybrid rule the decisions that asked Redis.
	b.WriteString("offer/adm/deny: requests offered, admitted, denied; retry: the Retry-After (seconds) the denied got\n" +
		"redis: hybrid decisions that asked Redis (the others were made locally, from a lease or the known counts)\n\n")
	width := func(r ratelimit.Rule) int {
		if r.Mode == ratelimit.Hybrid {
			return 28
		}
		return 22
	}
	head := "           "
	for _, r := range rules {
		head += fmt.Sprintf("  %-*s", width(r), r.Name)
	}
	b.WriteString(strings.TrimRight(head, " "))
	b.WriteString("\nsec  user  ")
	for _, r := range rules {
		fmt.Fprintf(&b, "  %5s %4s %4s %6s", "offer", "adm", "deny", "retry")
		if r.Mode == ratelimit.Hybrid {
			fmt.Fprintf(&b, " %5s", "redis")
		}
	}
	b.WriteByte('\n')
	tal := sim.tally()
	for s := range tal {
		for u := range tal[s] {
			fmt.Fprintf(&b, "%3d  %-6s", s, users[u].id)
			for r, c := range tal[s][u] {
				fmt.Fprintf(&b, "  %5d %4d %4d %6s", c.offered, c.admitted, c.offered-c.admitted, c.retry())
				if rules[r].Mode == ratelimit.Hybrid {
					fmt.Fprintf(&b, " %5d", c.remote)
				}
			}
			b.WriteByte('\n')
		}
	}

	var total, admitted int
	hot := make([]cell, len(rules))
	for _, e := range sim.events {
		total++
		if e.decision.Allowed {
			admitted++
		}
		if users[e.user].load < 0 {
			hot[e.rule].add(e)
		}
	}
	fmt.Fprintf(&b, "\nsummary: %d requests, %d admitted, %d denied; the hot user got", total, admitted, total-admitted)
	for r, c := range hot {
		sep := ","
		if r == 0 {
			sep = ""
		}
		fmt.Fprintf(&b, "%s %d of %d on %s", sep, c.admitted, c.offered, rules[r].Name)
	}
	b.WriteString("\n")
	if len(hybrid) > 0 {
		st := sim.stats
		fmt.Fprintf(&b, "hybrid (%s), Stats summed over the instances: %d decisions, %d allowed and %d denied locally, %d asked Redis; "+
			"%d sync passes (%d ticks × %d instances)\n",
			strings.Join(hybrid, ", "), st.HybridInProcessAllowed+st.HybridInProcessDenied+st.HybridRedis, st.HybridInProcessAllowed, st.HybridInProcessDenied, st.HybridRedis,
			sim.passes, sim.passes/o.Instances, o.Instances)
		b.WriteString("one exact limiter (same algorithm, in one process) fed the same requests would have given the hot user")
		sep := ""
		for r, c := range hot {
			if rules[r].Mode == ratelimit.Hybrid {
				fmt.Fprintf(&b, "%s %d of %d on %s", sep, c.exact, c.offered, rules[r].Name)
				sep = ","
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
