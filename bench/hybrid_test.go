package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/internal/knob"
)

// BenchmarkHybridDecision: a hybrid decision on one resident key far from
// its limit against golang.org/x/time/rate's Allow on one limiter (a purely
// local limiter), serially and from GOMAXPROCS goroutines. Both read
// time.Now once per decision (x/time/rate inside Allow). The hybrid
// Limiter runs its real sync loop (100 ms) against the bench Redis, with
// the front table (front=on, as the library always runs) and without
// (front=off: every decision looks its key up in ristretto), so that
// `benchstat -col /front` tells what the front table buys.
func BenchmarkHybridDecision(b *testing.B) {
	for _, conc := range []string{"serial", "gomaxprocs"} {
		for _, impl := range []string{"hybrid", "hybrid_rule"} {
			for _, front := range []bool{true, false} {
				b.Run("conc="+conc+"/impl="+impl+"/"+frontName(front), func(b *testing.B) {
					benchHybridDecision(b, conc, impl, front)
				})
			}
		}
		b.Run("conc="+conc+"/impl=x_time_rate", func(b *testing.B) {
			runLocal(b, conc, newXTimeRate().Allow)
		})
	}
}

// frontName names the front=on and front=off variants of a benchmark.
func frontName(front bool) string {
	if front {
		return "front=on"
	}
	return "front=off"
}

// withFront returns cfg, without the front table unless front.
func withFront(cfg ratelimit.Config, front bool) ratelimit.Config {
	if !front {
		knob.WithoutFront(&cfg)
	}
	return cfg
}

// benchHybridDecision is one case of BenchmarkHybridDecision.
func benchHybridDecision(b *testing.B, conc, impl string, front bool) {
	rdb, rt := newClient(b)
	const rule = "hot"
	l, err := ratelimit.New(withFront(ratelimit.Config{
		Redis: rdb, KeyPrefix: newPrefix(b, rdb), MaxLocalKeys: 1024,
		Rules: []ratelimit.Rule{{Name: rule, Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Hybrid}},
	}, front))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = l.Close() })
	ctx := context.Background()
	// hybrid looks the rule up by name, as Limiter.Allow does;
	// hybrid_rule decides through the rule's RuleLimiter.
	allow := func() bool {
		d, err := l.Allow(ctx, rule, "user", time.Now())
		return err == nil && d.Allowed
	}
	if impl == "hybrid_rule" {
		rl, err := l.Rule(rule)
		if err != nil {
			b.Fatal(err)
		}
		allow = func() bool {
			d, err := rl.Allow(ctx, "user", time.Now())
			return err == nil && d.Allowed
		}
	}
	warmHybrid(b, l, allow)
	rt.reset()
	runLocal(b, conc, allow)
	// Every Redis command: decisions that went to Redis, sync passes'
	// lease requests and heartbeats.
	b.ReportMetric(float64(rt.cmds.Load())/float64(b.N)*1000, "redis-cmds/1000-decisions")
}

// warmHybrid makes decisions for 300 ms, through three sync passes, so the
// key holds a lease sized to the demand.
func warmHybrid(b *testing.B, l *ratelimit.Limiter, allow func() bool) {
	b.Helper()
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		for range 1000 {
			if !allow() {
				b.Fatal(errDenied)
			}
		}
	}
}

// runLocal times allow, serially or from GOMAXPROCS goroutines.
func runLocal(b *testing.B, conc string, allow func() bool) {
	b.ReportAllocs()
	b.ResetTimer()
	if conc == "serial" {
		for b.Loop() {
			if !allow() {
				b.Fatal(errDenied)
			}
		}
		return
	}
	var denied atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !allow() {
				denied.Add(1)
			}
		}
	})
	if denied.Load() > 0 {
		b.Fatal(errDenied)
	}
}

// residentKeys is how many users BenchmarkResidentKeys keeps in memory,
// each with a lease of 2·residentLease decisions.
const (
	residentKeys  = 1 << 20
	residentLease = 1 << 12
)

// residentPrefix is this process's key prefix for the resident keys (of
// the limiter with the front table; residentPrefix+"nofront" of the one
// without); the package's TestMain deletes their keys when the benchmarks
// end.
var residentPrefix = fmt.Sprintf("rlbenchresident%x", rand.Uint64())

var (
	residentUsersOnce sync.Once
	residentUsers     []string
	residentClock     atomic.Int64 // ms; the limiters' clock
	// resident[0] has the front table, resident[1] not.
	resident [2]struct {
		once   sync.Once
		client *redis.Client
		lim    *ratelimit.Limiter
		err    error
	}
)

// residentLimiter returns a hybrid Limiter holding residentKeys users, each
// with a lease for residentLease decisions, with the front table or
// without, built once per process (it takes seconds) with sync passes run
// by hand.
func residentLimiter(b *testing.B, front bool) *ratelimit.Limiter {
	residentUsersOnce.Do(func() {
		residentUsers = make([]string, residentKeys)
		for i := range residentUsers {
			residentUsers[i] = "r" + strconv.Itoa(i)
		}
		residentClock.Store(time.Now().UnixMilli())
	})
	r := &resident[0]
	prefix := residentPrefix
	if !front {
		r, prefix = &resident[1], residentPrefix+"nofront"
	}
	r.once.Do(func() {
		newClient(b) // skips or fails without Redis
		// A client of its own: the limiter outlives the benchmark that
		// builds it, and lives as long as the process.
		r.client = redis.NewClient(&redis.Options{Addr: redisAddr()})
		r.lim, r.err = ratelimit.New(withFront(ratelimit.Config{
			Redis: r.client, KeyPrefix: prefix, MaxLocalKeys: 2 * residentKeys, ManualSync: true,
			Now:   func() time.Time { return time.UnixMilli(residentClock.Load()) },
			Rules: []ratelimit.Rule{{Name: "r", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Hybrid}},
		}, front))
		if r.err != nil {
			return
		}
		ctx := context.Background()
		now := time.UnixMilli(residentClock.Load())
		// Two AllowN of residentLease per user: the first is the key's
		// first sighting, decided in Redis without a State (admit.lua); the
		// second makes its State and leases as much again (a lease covers
		// twice the demand seen); the sync pass then tops each lease up to
		// twice the interval's demand: more decisions per key than any run
		// of the benchmark makes.
		// Then, after that pass grew the front table to the keys resident,
		// promoteEvery single decisions each promote every key into it (as
		// a key's local decisions do after a growth), and one more AllowN
		// of residentLease keeps the demand that the second pass sizes the
		// leases on.
		everyUser := func(times int, n int64) error {
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			for g := range 256 {
				wg.Go(func() {
					for i := g; i < residentKeys; i += 256 {
						for range times {
							if _, err := r.lim.AllowN(ctx, "r", residentUsers[i], now, n); err != nil {
								failed.CompareAndSwap(nil, &err)
								return
							}
						}
					}
				})
			}
			wg.Wait()
			if err := failed.Load(); err != nil {
				return *err
			}
			return r.lim.Sync(ctx)
		}
		if r.err = everyUser(2, residentLease); r.err == nil {
			if r.err = everyUser(4, 1); r.err == nil { // the root package's promoteEvery
				r.err = everyUser(1, residentLease)
			}
		}
	})
	if r.err != nil {
		b.Fatal(r.err)
	}
	return r.lim
}

// BenchmarkResidentKeys: decisions over 1M resident keys from b.RunParallel
// goroutines, each walking the keys in its own random order, against the
// floor of any cache-backed local limiter: one ristretto Get plus one atomic
// add over the same keys. impl=hybrid decides by the rule's name
// (Limiter.Allow), impl=hybrid_rule through its RuleLimiter; each with the
// front table (front=on) and without (front=off: a ristretto Get per
// decision, the lease spent in the key's State), so that `benchstat -col
// /front` tells what the front table buys. (The two variants build a
// limiter of 1M keys each, the first time they run in the process.)
func BenchmarkResidentKeys(b *testing.B) {
	for _, byRule := range []bool{false, true} {
		name := "impl=hybrid"
		if byRule {
			name = "impl=hybrid_rule"
		}
		for _, front := range []bool{true, false} {
			b.Run(name+"/"+frontName(front), func(b *testing.B) {
				benchResident(b, byRule, front)
			})
		}
	}
	b.Run("impl=ristretto_get_atomic_add", func(b *testing.B) {
		floorOnce.Do(func() { floorC, floorErr = newFloorCache(b, func() *atomic.Int64 { return new(atomic.Int64) }) })
		runFloor(b, floorC, floorErr)
	})
	// The same floor with values as large as a local.State: a control, to
	// tell how much of the gap is the per-key state's size (cache and TLB
	// reach over 1 Mi keys) rather than the work done.
	b.Run("impl=ristretto_get_atomic_add_256B", func(b *testing.B) {
		wideOnce.Do(func() { wideC, wideErr = newFloorCache(b, func() *wideCounter { return new(wideCounter) }) })
		runFloor(b, wideC, wideErr)
	})
}

// benchResident is one hybrid case of BenchmarkResidentKeys.
func benchResident(b *testing.B, byRule, front bool) {
	l := residentLimiter(b, front)
	rl, err := l.Rule("r")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	now := time.UnixMilli(residentClock.Load())
	before := l.Stats()
	decide := func(i int) bool {
		d, err := l.Allow(ctx, "r", residentUsers[i], now)
		return err == nil && d.Allowed
	}
	if byRule {
		decide = func(i int) bool {
			d, err := rl.Allow(ctx, residentUsers[i], now)
			return err == nil && d.Allowed
		}
	}
	runResident(b, decide)
	if calls := l.Stats().HybridRedis - before.HybridRedis; calls > 0 {
		b.Fatalf("%d decisions went to Redis: the resident keys' leases ran out", calls)
	}
}

// wideCounter is a counter as large as a local.State.
type wideCounter struct {
	atomic.Int64
	_ [256 - 8]byte
}

var (
	floorOnce sync.Once
	floorC    *ristretto.Cache[string, *atomic.Int64]
	floorErr  error
	wideOnce  sync.Once
	wideC     *ristretto.Cache[string, *wideCounter]
	wideErr   error
)

// newFloorCache returns a ristretto cache holding a new value for each
// resident user.
func newFloorCache[V any](b *testing.B, newV func() V) (*ristretto.Cache[string, V], error) {
	residentLimiter(b, true) // for residentUsers
	c, err := ristretto.NewCache(&ristretto.Config[string, V]{
		NumCounters: 20 * residentKeys, MaxCost: 2 * residentKeys, BufferItems: 64, IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, err
	}
	for _, u := range residentUsers {
		for !c.Set(u, newV(), 1) {
		}
	}
	c.Wait()
	return c, nil
}

// runFloor times one Get and one atomic add per decision.
func runFloor[V interface{ Add(int64) int64 }](b *testing.B, c *ristretto.Cache[string, V], err error) {
	if err != nil {
		b.Fatal(err)
	}
	runResident(b, func(i int) bool {
		v, ok := c.Get(residentUsers[i])
		if ok {
			v.Add(1)
		}
		return ok
	})
}

// runResident runs f over the resident keys in a random order per
// goroutine. It collects garbage first: building the keys leaves plenty,
// and a collection marking the whole heap during the timed loop would
// slow whichever side of the comparison ran first after the build.
func runResident(b *testing.B, f func(i int) bool) {
	b.ReportAllocs()
	runtime.GC()
	b.ResetTimer()
	var misses atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		i := rng.IntN(residentKeys)
		step := 2*rng.IntN(residentKeys/2) + 1 // odd: visits every key
		for pb.Next() {
			if !f(i) {
				misses.Add(1)
			}
			i = (i + step) & (residentKeys - 1)
		}
	})
	b.ReportMetric(float64(misses.Load())/float64(b.N), "misses/op")
}
