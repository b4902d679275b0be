package bench

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// BenchmarkAllowAll weighs a request limited by three Strict rules (a
// sliding window, a token bucket and a fixed window, none of which denies)
// decided three ways: impl=allowall, one AllowAll (the rules in one script
// call); impl=allow3, three Allow calls one after the other (what a caller
// without AllowAll does); impl=allow1, one Allow of one rule (the cost of a
// single decision, the baseline). Serially and from benchConc goroutines,
// round nUsers users, on a redis-server of the benchmark's own, so that
// INFO commandstats counts its commands only.
//
//	benchstat -col /impl multi.txt
//
// Custom metrics: redis-µs/op, the Redis CPU time of the commands per
// request (INFO commandstats), and cmds/op, the commands per request; ops/rt
// as in BenchmarkAllow.
func BenchmarkAllowAll(b *testing.B) {
	proc := redistest.StartProc(b)
	rules := []ratelimit.Rule{
		{Name: "a", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Strict},
		{Name: "b", Limit: hugeLimit / 2, Window: benchWindow, Algorithm: ratelimit.TokenBucket},
		{Name: "c", Limit: hugeLimit, Window: benchWindow, Algorithm: ratelimit.FixedWindow, Mode: ratelimit.Strict},
	}
	checks := []ratelimit.Check{{Rule: "a", N: 1}, {Rule: "b", N: 1}, {Rule: "c", N: 1}}
	impls := []impl{
		{"allowall", func(l *ratelimit.Limiter) op {
			return func(ctx context.Context, u int, now time.Time) (bool, error) {
				d, err := l.AllowAll(ctx, users[u], now, checks...)
				return d.Allowed, err
			}
		}},
		{"allow3", func(l *ratelimit.Limiter) op {
			return func(ctx context.Context, u int, now time.Time) (bool, error) {
				for _, c := range checks {
					if d, err := l.Allow(ctx, c.Rule, users[u], now); err != nil || !d.Allowed {
						return false, err
					}
				}
				return true, nil
			}
		}},
		{"allow1", func(l *ratelimit.Limiter) op {
			return func(ctx context.Context, u int, now time.Time) (bool, error) {
				d, err := l.Allow(ctx, "a", users[u], now)
				return d.Allowed, err
			}
		}},
	}
	benchImpls(b, proc, rules, impls)
}

// BenchmarkAllowAllSparse weighs a request limited by a Strict rule and two
// Hybrid ones (a sliding and a fixed window, none of which denies) of a
// user never seen before (each request a new user: the sparse users that
// dominate when users are many, whose Hybrid keys have no lease), decided
// two ways: impl=allowall, one AllowAll (the Hybrid keys' first sightings
// in the Strict rule's script call); impl=allow3, three Allow calls one
// after the other (three script calls). Metrics as BenchmarkAllowAll's.
//
//	benchstat -col /impl multi_sparse.txt
func BenchmarkAllowAllSparse(b *testing.B) {
	proc := redistest.StartProc(b)
	rules := []ratelimit.Rule{
		{Name: "s", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Strict},
		{Name: "h", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Hybrid},
		{Name: "f", Limit: hugeLimit, Window: benchWindow, Algorithm: ratelimit.FixedWindow, Mode: ratelimit.Hybrid},
	}
	checks := []ratelimit.Check{{Rule: "s", N: 1}, {Rule: "h", N: 1}, {Rule: "f", N: 1}}
	var fresh atomic.Int64 // each request a user never seen
	impls := []impl{
		{"allowall", func(l *ratelimit.Limiter) op {
			return func(ctx context.Context, _ int, now time.Time) (bool, error) {
				d, err := l.AllowAll(ctx, "sparse-"+strconv.FormatInt(fresh.Add(1), 10), now, checks...)
				return d.Allowed, err
			}
		}},
		{"allow3", func(l *ratelimit.Limiter) op {
			return func(ctx context.Context, _ int, now time.Time) (bool, error) {
				user := "sparse-" + strconv.FormatInt(fresh.Add(1), 10)
				for _, c := range checks {
					if d, err := l.Allow(ctx, c.Rule, user, now); err != nil || !d.Allowed {
						return false, err
					}
				}
				return true, nil
			}
		}},
	}
	benchImpls(b, proc, rules, impls)
}

// impl is one way of deciding a benchmark's request, for benchImpls.
type impl struct {
	name string
	make func(l *ratelimit.Limiter) op
}

// benchImpls runs each of impls serially and from benchConc goroutines, on
// a Limiter of rules over proc, and reports Redis's CPU time and commands
// per request (INFO commandstats) beside runSerial's and runParallel's
// metrics.
func benchImpls(b *testing.B, proc *redistest.Proc, rules []ratelimit.Rule, impls []impl) {
	for _, conc := range []string{"serial", fmt.Sprint(benchConc)} {
		for _, im := range impls {
			b.Run("conc="+conc+"/impl="+im.name, func(b *testing.B) {
				rdb, rt := newClient(b, func(o *redis.Options) { o.Addr = proc.Addr(); o.ContextTimeoutEnabled = true })
				l, err := ratelimit.New(ratelimit.Config{Redis: rdb, KeyPrefix: newPrefix(b, rdb), Rules: rules})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = l.Close() })
				var calls0, usec0 int64
				atStart := func() { calls0, usec0 = commandStats(b, rdb) }
				if conc == "serial" {
					runSerial(b, im.make(l), rt, atStart)
				} else {
					runParallel(b, im.make(l), rt, atStart)
				}
				calls, usec := commandStats(b, rdb)
				b.ReportMetric(float64(usec-usec0)/float64(b.N), "redis-µs/op")
				b.ReportMetric(float64(calls-calls0-1)/float64(b.N), "cmds/op") // less the INFO of the first commandStats
			})
		}
	}
}
