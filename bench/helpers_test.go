package bench

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

const (
	// nUsers is how many distinct users the benchmarks go round over, so
	// that per-key contention is not what is measured.
	nUsers = 10_000
	// hugeLimit per benchWindow never denies: 2^28 × 3.6e6 ms ≈ 9.7e14,
	// under the library's bound Limit × Window(ms) ≤ 2^50 ≈ 1.13e15.
	hugeLimit   = 1 << 28
	benchWindow = time.Hour
	// benchConc is the goroutine count of the parallel benchmarks.
	benchConc = 64
	// scriptPath is the library's sliding-window script, read at run time
	// (tests run in the package directory) after its shared prelude, as the
	// library builds it, so the raw EVALSHA benchmark always runs the same
	// Lua as the library.
	scriptPath  = "../global/scripts/sliding_window.lua"
	preludePath = "../global/scripts/prelude.lua"
)

// users are the user names u0 … u9999, built once so the loops allocate
// nothing of their own.
var users = func() []string {
	u := make([]string, nUsers)
	for i := range u {
		u[i] = "u" + strconv.Itoa(i)
	}
	return u
}()

// redisAddr is the Redis the benchmarks and tests use.
func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// newClient returns a default go-redis client (default PoolSize) of the
// bench Redis, with opts applied, a round-trip counter hooked in, closed
// at cleanup. Without a Redis it skips, or fails when CI is set.
func newClient(tb testing.TB, opts ...func(*redis.Options)) (*redis.Client, *rtCounter) {
	tb.Helper()
	o := &redis.Options{Addr: redisAddr()}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("CI") != "" {
			tb.Fatalf("no Redis at %s (%v): CI needs one (make redis starts it)", redisAddr(), err)
		}
		tb.Skipf("skipped: no Redis at %s (%v); set REDIS_ADDR or run `make redis`", redisAddr(), err)
	}
	rt := &rtCounter{}
	c.AddHook(rt)
	tb.Cleanup(func() { _ = c.Close() })
	return c, rt
}

// newPrefix returns a key prefix unique to this run and deletes every key
// under it (ours, the raw script's and redis_rate's "rate:" keys) at
// cleanup. Register it after newClient so it runs before the client closes.
func newPrefix(tb testing.TB, c *redis.Client) string {
	tb.Helper()
	p := fmt.Sprintf("rlbench%x", rand.Uint64())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, pattern := range []string{p + ":*", "rate:" + p + ":*"} {
			iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
			var batch []string
			for iter.Next(ctx) {
				batch = append(batch, iter.Val())
				if len(batch) == 500 {
					c.Unlink(ctx, batch...)
					batch = batch[:0]
				}
			}
			if len(batch) > 0 {
				c.Unlink(ctx, batch...)
			}
			if err := iter.Err(); err != nil {
				tb.Logf("cleanup of %s: %v", pattern, err)
			}
		}
	})
	return p
}

// op makes one decision (or one round trip) for users[u], at now where the
// implementation takes a timestamp.
type op func(ctx context.Context, u int, now time.Time) (allowed bool, err error)

// newStrict returns this library's strict Allow under a SlidingWindow rule
// of limit per window.
func newStrict(tb testing.TB, rdb *redis.Client, prefix string, limit int64, window time.Duration, pc ratelimit.PipelineConfig) op {
	tb.Helper()
	const rule = "bench"
	l, err := ratelimit.New(ratelimit.Config{
		Redis:     rdb,
		KeyPrefix: prefix,
		Rules:     []ratelimit.Rule{{Name: rule, Limit: limit, Window: window, Algorithm: ratelimit.SlidingWindow, Mode: ratelimit.Strict}},
		Pipeline:  pc,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = l.Close() }) // registered after newPrefix: runs before key deletion
	return func(ctx context.Context, u int, now time.Time) (bool, error) {
		d, err := l.Allow(ctx, rule, users[u], now)
		return d.Allowed, err
	}
}

// newRedisRate returns redis_rate's Allow (GCRA on the server's clock) at
// limit per window with burst limit: redis_rate.PerHour(limit) for an hour.
func newRedisRate(tb testing.TB, rdb *redis.Client, prefix string, limit int, window time.Duration) op {
	tb.Helper()
	rl := redis_rate.NewLimiter(rdb)
	lim := redis_rate.Limit{Rate: limit, Burst: limit, Period: window}
	keys := make([]string, nUsers) // redis_rate adds its "rate:" prefix
	for i := range keys {
		keys[i] = prefix + ":" + users[i]
	}
	return func(ctx context.Context, u int, _ time.Time) (bool, error) {
		res, err := rl.Allow(ctx, keys[u], lim)
		if err != nil {
			return false, err
		}
		return res.Allowed > 0, nil
	}
}

// newEvalsha returns one raw EVALSHA of the library's sliding-window script
// per call: no coalescing, no validation, keys built in advance. Like the
// library and redis_rate it falls back to EVAL on NOSCRIPT (Script.Run), so
// a SCRIPT FLUSH by another client of a shared Redis does not fail it.
func newEvalsha(tb testing.TB, rdb *redis.Client, prefix string, limit int64, window time.Duration) op {
	tb.Helper()
	prelude, err := os.ReadFile(preludePath)
	if err != nil {
		tb.Fatalf("reading the library's script prelude: %v", err)
	}
	src, err := os.ReadFile(scriptPath)
	if err != nil {
		tb.Fatalf("reading the library's script: %v", err)
	}
	// The file defines the algorithm's function; the library's script ends
	// with the line that calls it (global/scripts.go, strictMain).
	sc := redis.NewScript(string(prelude) + string(src) + "\nreturn strict_main(sliding_window)\n")
	if err := sc.Load(context.Background(), rdb).Err(); err != nil {
		tb.Fatal(err)
	}
	keys := make([][]string, nUsers)
	for i := range keys {
		keys[i] = []string{prefix + ":ev:{" + users[i] + "}:bench"}
	}
	w := window.Milliseconds()
	return func(ctx context.Context, u int, now time.Time) (bool, error) {
		v, err := sc.Run(ctx, rdb, keys[u], now.UnixMilli(), w, limit, 1, "0").Int64Slice()
		if err != nil {
			return false, err
		}
		if len(v) != 4 {
			return false, fmt.Errorf("script returned %d values, want 4", len(v))
		}
		return v[0] == 1, nil
	}
}

// newPing returns one PING round trip per call; it is always "allowed".
func newPing(rdb *redis.Client) op {
	return func(ctx context.Context, _ int, _ time.Time) (bool, error) {
		return true, rdb.Ping(ctx).Err()
	}
}

// errDenied is what a benchmark op reports when the huge limit denied.
var errDenied = errors.New("denied under a limit meant never to deny")

// rtCounter is a go-redis hook that counts round trips (one per command
// outside a pipeline, one per pipeline) and commands, and histograms
// pipeline sizes by powers of two.
type rtCounter struct {
	rts, cmds atomic.Int64
	maxBatch  atomic.Int64
	hist      [10]atomic.Int64 // [0]: 1, [1]: 2, [2]: 3–4, [3]: 5–8, … [9]: ≥257
}

func (r *rtCounter) reset() {
	r.rts.Store(0)
	r.cmds.Store(0)
	r.maxBatch.Store(0)
	for i := range r.hist {
		r.hist[i].Store(0)
	}
}

func (r *rtCounter) record(n int) {
	r.rts.Add(1)
	r.cmds.Add(int64(n))
	b := bits.Len(uint(n - 1))
	r.hist[min(b, len(r.hist)-1)].Add(1)
	for {
		m := r.maxBatch.Load()
		if int64(n) <= m || r.maxBatch.CompareAndSwap(m, int64(n)) {
			return
		}
	}
}

// histogram describes the round trips by batch size.
func (r *rtCounter) histogram() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "round trips %d, commands %d, max batch %d; by batch size:", r.rts.Load(), r.cmds.Load(), r.maxBatch.Load())
	for i := range r.hist {
		n := r.hist[i].Load()
		if n == 0 {
			continue
		}
		lo, hi := 1, 1
		if i > 0 {
			lo, hi = 1<<(i-1)+1, 1<<i
		}
		if i == len(r.hist)-1 {
			fmt.Fprintf(&sb, " ≥%d:%d", lo, n)
		} else if lo == hi {
			fmt.Fprintf(&sb, " %d:%d", lo, n)
		} else {
			fmt.Fprintf(&sb, " %d-%d:%d", lo, hi, n)
		}
	}
	return sb.String()
}

func (r *rtCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *rtCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.record(1)
		return next(ctx, cmd)
	}
}

func (r *rtCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.record(len(cmds))
		return next(ctx, cmds)
	}
}
