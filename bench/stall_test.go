package bench

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// stallKeys is how many active hybrid keys each BenchmarkPassStall pass
// reconciles.
const stallKeys = 100_000

// Paced load of BenchmarkPassStall: stallHybridG goroutines make local
// hybrid decisions, stallStrictG strict ones, each pausing its pace between
// two decisions, so that the load is the same whatever the pass does.
const (
	stallHybridG, stallStrictG       = 2, 2
	stallHybridPace, stallStrictPace = 100 * time.Microsecond, 500 * time.Microsecond
)

// BenchmarkPassStall: how a sync pass over stallKeys active hybrid keys
// delays the decisions made while it runs. One Limiter holds a hybrid rule
// (the stallKeys keys, each with a lease) and a strict rule on the same
// Redis. Each round gives every key demand to report, then runs the paced
// load of local hybrid decisions and strict decisions during a pass
// (phase=pass), or, after the pass, for as long as a pass took
// (phase=idle).
// It reports the decisions' latency percentiles (µs, over every round) by
// kind and the pass's duration (pass-ms).
func BenchmarkPassStall(b *testing.B) {
	rdb, _ := newClient(b)
	prefix := newPrefix(b, rdb)
	l, err := ratelimit.New(ratelimit.Config{
		Redis: rdb, KeyPrefix: prefix, ManualSync: true, MaxLocalKeys: 4 * stallKeys,
		Rules: []ratelimit.Rule{
			{Name: "h", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Hybrid},
			{Name: "s", Limit: hugeLimit, Window: benchWindow, Algorithm: ratelimit.SlidingWindow, Mode: ratelimit.Strict},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close() })
	hyb, err := l.Rule("h")
	if err != nil {
		b.Fatal(err)
	}
	strict, err := l.Rule("s")
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, stallKeys)
	for i := range keys {
		keys[i] = "p" + strconv.Itoa(i)
	}
	ctx := context.Background()
	demand := func(b *testing.B) {
		// 8 per key a round: leases of about twice that leave room for the
		// load's decisions, which then stay local. In two requests of 4,
		// back to back: a key's first request gets no State (the
		// doorkeeper), and the rounds come further apart than two sync
		// intervals, so one request a round would never make one.
		var wg sync.WaitGroup
		var failed atomic.Int64
		for g := range 64 {
			wg.Go(func() {
				for i := g; i < stallKeys; i += 64 {
					for range 2 {
						if d, err := hyb.AllowN(ctx, keys[i], time.Now(), 4); err != nil || !d.Allowed {
							failed.Add(1)
						}
					}
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d demand decisions denied or failed", n)
		}
	}
	var passTime time.Duration
	for range 3 { // leases sized to the demand
		demand(b)
		start := time.Now()
		if err := l.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		passTime = time.Since(start)
	}
	if st := l.Stats(); st.ActiveKeys < stallKeys {
		b.Fatalf("%d active keys, want %d", st.ActiveKeys, stallKeys)
	}
	for _, phase := range []string{"idle", "pass"} {
		b.Run("phase="+phase, func(b *testing.B) {
			var hybLat, strictLat []time.Duration
			var passes time.Duration
			rounds := 0
			for b.Loop() {
				b.StopTimer()
				demand(b)
				if phase == "idle" { // the pass renews the leases, before the load
					if err := l.Sync(ctx); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				load := startStallLoad(ctx, hyb, strict, keys)
				if phase == "pass" {
					start := time.Now()
					if err := l.Sync(ctx); err != nil {
						b.Fatal(err)
					}
					passes += time.Since(start)
				} else {
					time.Sleep(passTime)
				}
				h, s, err := load.stop()
				if err != nil {
					b.Fatal(err)
				}
				hybLat, strictLat = append(hybLat, h...), append(strictLat, s...)
				rounds++
			}
			b.StopTimer()
			reportLatency(b, "hyb", hybLat)
			reportLatency(b, "str", strictLat)
			if phase == "pass" {
				b.ReportMetric(float64(passes.Milliseconds())/float64(rounds), "pass-ms")
			}
		})
	}
}

// stallLoad is BenchmarkPassStall's paced load under way.
type stallLoad struct {
	stopc      chan struct{}
	wg         sync.WaitGroup
	hyb, str   [][]time.Duration // per goroutine
	firstError atomic.Pointer[error]
}

// startStallLoad starts the paced load: local hybrid decisions and strict
// decisions on random keys, each timed.
func startStallLoad(ctx context.Context, hyb, strict *ratelimit.RuleLimiter, keys []string) *stallLoad {
	ld := &stallLoad{stopc: make(chan struct{}),
		hyb: make([][]time.Duration, stallHybridG), str: make([][]time.Duration, stallStrictG)}
	run := func(rl *ratelimit.RuleLimiter, pace time.Duration, out *[]time.Duration) {
		for {
			select {
			case <-ld.stopc:
				return
			default:
			}
			u := keys[rand.IntN(len(keys))]
			start := time.Now()
			d, err := rl.Allow(ctx, u, start)
			*out = append(*out, time.Since(start))
			if err == nil && !d.Allowed {
				err = errDenied
			}
			if err != nil {
				ld.firstError.CompareAndSwap(nil, &err)
				return
			}
			time.Sleep(pace)
		}
	}
	for g := range stallHybridG {
		ld.wg.Go(func() { run(hyb, stallHybridPace, &ld.hyb[g]) })
	}
	for g := range stallStrictG {
		ld.wg.Go(func() { run(strict, stallStrictPace, &ld.str[g]) })
	}
	return ld
}

// stop ends the load and returns the latencies of its decisions by kind,
// or its first error.
func (ld *stallLoad) stop() (hyb, str []time.Duration, err error) {
	close(ld.stopc)
	ld.wg.Wait()
	if e := ld.firstError.Load(); e != nil {
		return nil, nil, *e
	}
	return slices.Concat(ld.hyb...), slices.Concat(ld.str...), nil
}

// reportLatency reports the p50, p99 and maximum of lat in µs, and how
// many decisions were timed, under names that begin with kind.
func reportLatency(b *testing.B, kind string, lat []time.Duration) {
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(percentile(lat, 50)), kind+"-p50-µs")
	b.ReportMetric(us(percentile(lat, 99)), kind+"-p99-µs")
	if len(lat) > 0 {
		b.ReportMetric(us(lat[len(lat)-1]), kind+"-max-µs")
	}
	b.ReportMetric(float64(len(lat)), kind+"-n")
}
