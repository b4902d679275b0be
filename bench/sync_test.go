package bench

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// syncKeys is how many active hybrid keys each BenchmarkSyncPass pass
// reconciles.
const syncKeys = 4096

// syncDemand is each key's tokens between two BenchmarkSyncPass passes:
// the hybrid mode's minLeaseDemand (budget.go), the least demand for which
// a key holds a lease. Below it a key is a sparse user's, decided by
// admit.lua one call a request, and a pass has nothing to send for it.
const syncDemand = 4

// BenchmarkSyncPass: one hybrid sync pass over syncKeys active keys (each
// with requests to report and a lease to top up), the keys sent one per
// script call or up to 32 per call (Config.Pipeline.LeaseKeysPerCall).
// ns/op is a whole pass; redis-µs/key is the CPU time Redis reports for the
// pass's script calls (INFO commandstats, read around each pass only), per
// key: what bounds how many active keys one Redis can reconcile per second. It runs on a
// redis-server of its own, so that other clients' scripts are not counted.
func BenchmarkSyncPass(b *testing.B) {
	proc := redistest.StartProc(b)
	for _, per := range []int{1, 32} {
		b.Run("keys_per_call="+strconv.Itoa(per), func(b *testing.B) {
			rdb, _ := newClient(b, func(o *redis.Options) { o.Addr = proc.Addr() })
			var clock atomic.Int64
			clock.Store(time.Now().UnixMilli())
			l, err := ratelimit.New(ratelimit.Config{
				Redis: rdb, KeyPrefix: newPrefix(b, rdb), ManualSync: true, MaxLocalKeys: 4 * syncKeys,
				Now:      func() time.Time { return time.UnixMilli(clock.Load()) },
				Pipeline: ratelimit.PipelineConfig{LeaseKeysPerCall: per},
				Rules:    []ratelimit.Rule{{Name: "s", Limit: hugeLimit, Window: benchWindow, Mode: ratelimit.Hybrid}},
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = l.Close() })
			ctx := context.Background()
			rl, err := l.Rule("s")
			if err != nil {
				b.Fatal(err)
			}
			demand := func() {
				now := time.UnixMilli(clock.Add(100))
				for _, u := range users[:syncKeys] {
					if d, err := rl.AllowN(ctx, u, now, syncDemand); err != nil || !d.Allowed {
						b.Fatal("denied or failed:", err)
					}
				}
			}
			for range 3 { // leases sized to the demand
				demand()
				if err := l.Sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
			var calls, usec int64
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				demand()
				calls0, usec0 := evalshaStats(b, rdb)
				b.StartTimer()
				if err := l.Sync(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				c, u := evalshaStats(b, rdb)
				calls, usec = calls+c-calls0, usec+u-usec0
				b.StartTimer()
			}
			b.StopTimer()
			keys := float64(b.N) * syncKeys
			b.ReportMetric(float64(usec)/keys, "redis-µs/key")
			b.ReportMetric(float64(calls)/keys, "calls/key")
		})
	}
}

// evalshaStats returns Redis's count of EVALSHA calls and the µs they took.
func evalshaStats(b *testing.B, rdb *redis.Client) (calls, usec int64) {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	return parseCommandStats(info, func(name string) bool { return name == "cmdstat_evalsha" })
}
