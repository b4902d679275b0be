package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// Benchmark names are BenchmarkX/conc=…/impl=… so that
//
//	benchstat -col /impl bench.txt
//
// prints the implementations side by side, with ratios, per concurrency.

// BenchmarkAllow compares, per decision, this library's strict Allow with
// redis_rate, with one raw EVALSHA of the library's script and with one
// PING, serially and from benchConc goroutines. Every Redis implementation
// goes round nUsers users on a default go-redis client.
//
// Custom metrics: ops/rt is decisions per Redis round trip (the strict
// coalescer's mean batch size); the serial runs also report p50-ns/op and
// p99-ns/op, the per-call latency percentiles. On a VM, serial latencies
// also depend on whether idle vCPUs halt between round trips; RESULTS.md
// explains how the published numbers deal with it.
func BenchmarkAllow(b *testing.B) {
	impls := []struct {
		name string
		make func(b *testing.B, rdb *redis.Client, prefix string) op
	}{
		{"strict", func(b *testing.B, rdb *redis.Client, p string) op {
			return newStrict(b, rdb, p, hugeLimit, benchWindow, ratelimit.PipelineConfig{})
		}},
		// strict_ctx: the same on a client with ContextTimeoutEnabled, whose
		// lone calls the Limiter sends on the caller's goroutine (with a
		// default client it hands each to a goroutine, so that its Timeout
		// holds whatever the network does).
		{"strict_ctx", func(b *testing.B, rdb *redis.Client, p string) op {
			return newStrict(b, rdb, p, hugeLimit, benchWindow, ratelimit.PipelineConfig{})
		}},
		{"redis_rate", func(b *testing.B, rdb *redis.Client, p string) op {
			return newRedisRate(b, rdb, p, hugeLimit, benchWindow)
		}},
		{"evalsha", func(b *testing.B, rdb *redis.Client, p string) op {
			return newEvalsha(b, rdb, p, hugeLimit, benchWindow)
		}},
		{"ping", func(_ *testing.B, rdb *redis.Client, _ string) op { return newPing(rdb) }},
	}
	for _, conc := range []string{"serial", fmt.Sprint(benchConc)} {
		for _, im := range impls {
			b.Run("conc="+conc+"/impl="+im.name, func(b *testing.B) {
				var opts []func(*redis.Options)
				if im.name == "strict_ctx" {
					opts = append(opts, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
				}
				rdb, rt := newClient(b, opts...)
				do := im.make(b, rdb, newPrefix(b, rdb))
				if conc == "serial" {
					runSerial(b, do, rt)
				} else {
					runParallel(b, do, rt)
				}
			})
		}
	}
}

// BenchmarkStrictBatchDelay measures whether making a pipeline that is not
// full wait (PipelineConfig.BatchDelay) for more calls pays, at benchConc
// goroutines.
func BenchmarkStrictBatchDelay(b *testing.B) {
	for _, d := range []time.Duration{0, 20 * time.Microsecond, 50 * time.Microsecond} {
		b.Run(fmt.Sprintf("delay=%v/conc=%d", d, benchConc), func(b *testing.B) {
			rdb, rt := newClient(b)
			do := newStrict(b, rdb, newPrefix(b, rdb), hugeLimit, benchWindow, ratelimit.PipelineConfig{BatchDelay: d})
			runParallel(b, do, rt)
		})
	}
}

// BenchmarkLocalDecision is the in-process baseline: the Local mode's Allow
// on one key against golang.org/x/time/rate's Limiter.Allow on one limiter,
// serially and from GOMAXPROCS goroutines. Both read time.Now per call (x/time/rate
// does it inside Allow). No Redis is needed.
func BenchmarkLocalDecision(b *testing.B) {
	type allowFn func() bool
	impls := []struct {
		name string
		make func(b *testing.B) allowFn
	}{
		{"local", func(b *testing.B) allowFn {
			const rule = "local"
			l, err := ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{{
				Name: rule, Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Local,
			}}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = l.Close() })
			ctx := context.Background()
			return func() bool {
				d, err := l.Allow(ctx, rule, "user", time.Now())
				return err == nil && d.Allowed
			}
		}},
		{"x_time_rate", func(*testing.B) allowFn { return newXTimeRate().Allow }},
	}
	for _, conc := range []string{"serial", "gomaxprocs"} {
		for _, im := range impls {
			b.Run("conc="+conc+"/impl="+im.name, func(b *testing.B) {
				runLocal(b, conc, im.make(b))
			})
		}
	}
}

// warm makes one decision for each of the first min(b.N, nUsers) users,
// from benchConc goroutines, so that the timed loop finds its keys in
// Redis and its connections dialed.
func warm(b *testing.B, do op) {
	b.Helper()
	n := min(b.N, nUsers)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchConc)
	for range benchConc {
		wg.Go(func() {
			ctx := context.Background()
			for {
				u := int(next.Add(1) - 1)
				if u >= n {
					return
				}
				if _, err := do(ctx, u, time.Now()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatalf("warm-up: %v", err)
	}
}

// runSerial times b.N calls of do, one at a time, round the users, and
// reports the p50 and p99 of the per-call latency. Each atStart runs after
// the warm-up, before the timed loop.
func runSerial(b *testing.B, do op, rt *rtCounter, atStart ...func()) {
	warm(b, do)
	for _, f := range atStart {
		f()
	}
	ctx := context.Background()
	lat := make([]time.Duration, b.N) // bounded by b.N, allocated untimed
	rt.reset()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now() // also the request's timestamp
		ok, err := do(ctx, i%nUsers, t0)
		lat[i] = time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			b.Fatal(errDenied)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 50)), "p50-ns/op")
	b.ReportMetric(float64(percentile(lat, 99)), "p99-ns/op")
	reportRT(b, rt)
}

// runParallel times b.N calls of do from benchConc goroutines (rounded up
// to a multiple of GOMAXPROCS), round the users. Each goroutine stamps its
// calls with its start time plus a microsecond per call. Each atStart runs
// after the warm-up, before the timed loop.
func runParallel(b *testing.B, do op, rt *rtCounter, atStart ...func()) {
	warm(b, do)
	for _, f := range atStart {
		f()
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchConc + procs - 1) / procs)
	var next atomic.Int64
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		failed.Add(1)
		errOnce.Do(func() { firstErr = err })
	}
	rt.reset()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		base := time.Now()
		broken := false
		for i := 0; pb.Next(); i++ {
			if broken {
				continue // RunParallel wants every body to run pb.Next to false
			}
			u := int((next.Add(1) - 1) % nUsers)
			ok, err := do(ctx, u, base.Add(time.Duration(i)*time.Microsecond))
			if err == nil && !ok {
				err = errDenied
			}
			if err != nil {
				fail(err)
				broken = true
			}
		}
	})
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d goroutines failed; first: %v", n, firstErr)
	}
	reportRT(b, rt)
}

// reportRT reports decisions per Redis round trip and, with
// DRL_BENCH_HIST=1, logs the round trips by batch size.
func reportRT(b *testing.B, rt *rtCounter) {
	if n := rt.rts.Load(); n > 0 {
		b.ReportMetric(float64(b.N)/float64(n), "ops/rt")
	}
	if os.Getenv("DRL_BENCH_HIST") == "1" {
		b.Logf("N=%d: %s", b.N, rt.histogram())
	}
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100 // ceil(n·p/100), 1-based
	return sorted[max(i, 1)-1]
}

// BenchmarkFallbackDecision: a strict decision while Redis is down and the
// circuit breaker open (it never probes here), under each failure policy,
// against golang.org/x/time/rate's Allow: what a decision costs when the
// policy decides without waiting on Redis. FailLocal and FailOpen also
// record the admission to credit it to Redis later.
func BenchmarkFallbackDecision(b *testing.B) {
	type allowFn func() bool
	dead := func(b *testing.B) *redis.Client {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close() // nothing listens there now: connection refused
		rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
		b.Cleanup(func() { _ = rdb.Close() })
		return rdb
	}
	policy := func(p ratelimit.FailurePolicy) func(b *testing.B) allowFn {
		return func(b *testing.B) allowFn {
			l, err := ratelimit.New(ratelimit.Config{
				Redis:   dead(b),
				Rules:   []ratelimit.Rule{{Name: "r", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Strict, OnFailure: p}},
				Breaker: ratelimit.BreakerConfig{Backoff: time.Hour, MaxBackoff: time.Hour},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = l.Close() })
			rl, err := l.Rule("r")
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			return func() bool {
				_, err := rl.Allow(ctx, "user", time.Now())
				return err == nil // FailClosed denies: a decision all the same
			}
		}
	}
	impls := []struct {
		name string
		make func(b *testing.B) allowFn
	}{
		{"fail_local", policy(ratelimit.FailLocal)},
		{"fail_open", policy(ratelimit.FailOpen)},
		{"fail_closed", policy(ratelimit.FailClosed)},
		{"x_time_rate", func(*testing.B) allowFn { return newXTimeRate().Allow }},
	}
	for _, conc := range []string{"serial", "gomaxprocs"} {
		for _, im := range impls {
			b.Run("conc="+conc+"/impl="+im.name, func(b *testing.B) {
				runLocal(b, conc, im.make(b))
			})
		}
	}
}

// newXTimeRate returns the baseline local limiter: golang.org/x/time/rate
// at the bench rule's rate, with its limit as burst.
func newXTimeRate() *rate.Limiter {
	return rate.NewLimiter(rate.Limit(float64(hugeLimit)/benchWindow.Seconds()), hugeLimit)
}
