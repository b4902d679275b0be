//go:build measure

package ratelimit

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestMemoryMeasure measures what Redis holds per idle user-rule, and
// prints it (t.Logf); it asserts only what cannot be flaky (no operation
// key, a bounded number of op fields per key, every key gone after two
// windows and a margin). Built only with the measure tag:
//
//	go test -tags measure -count=1 -run TestMemoryMeasure -v . 2>&1 | grep -v '^redis: '
//
// MEASURE_USERS sets the number of users (default 100 000).
//
// Setup: a redis-server of the test's own (nothing else in it), one
// Limiter with a sliding window rule of 100 per minute, in strict mode and
// then in hybrid mode (ManualSync), each on an empty server. Every user
// makes one request (8 goroutines); hybrid then runs two sync passes,
// which return the leases. INFO used_memory is read before (after FLUSHALL)
// and after; the keys are counted by kind with SCAN, and the op fields
// ('~…') of the hybrid keys with HKEYS.
//
// Then a request-then-idle loop of 1 000 users, two Limiters: 20 rounds of
// one request per user on each instance, then two passes each; and a run
// of 10 000 users under a 2 s window, hybrid and strict, after which the
// test waits for Redis to hold nothing but the instance registry again.
func TestMemoryMeasure(t *testing.T) {
	users := 100_000
	if s := os.Getenv("MEASURE_USERS"); s != "" {
		var err error
		if users, err = strconv.Atoi(s); err != nil {
			t.Fatalf("MEASURE_USERS: %v", err)
		}
	}
	proc := redistest.StartProc(t)
	c := proc.Client(t)
	ctx := context.Background()

	for _, mode := range []Mode{Strict, Hybrid} {
		must(t, c.FlushAll(ctx).Err())
		time.Sleep(100 * time.Millisecond) // lazy frees settle
		before := usedMemory(t, c)
		rule := Rule{Name: "sw", Limit: 100, Window: time.Minute, Mode: mode}
		l, err := New(Config{Redis: c, Rules: []Rule{rule}, KeyPrefix: "m", ManualSync: true, MaxLocalKeys: int64(2 * users)})
		must(t, err)
		start := time.Now()
		requestAll(t, l, rule.Name, users, 0)
		if mode == Hybrid {
			must(t, l.Sync(ctx))
			must(t, l.Sync(ctx))
		}
		took := time.Since(start)
		after := usedMemory(t, c)
		k := countKeys(t, c, "m:*")
		fields := opFields(t, c, k.base)
		t.Logf("%-6s %d users: used_memory %d -> %d: %.1f B per user-rule; keys: %s; op fields per key: %s (%v)",
			mode.String(), users, before, after, float64(after-before)/float64(users), k, fields, took.Round(time.Millisecond))
		t.Logf("%-6s MEMORY USAGE of a key: %s", mode.String(), sampleUsage(t, c, k.base))
		must(t, l.Close())
	}

	// Request then idle, two instances.
	must(t, c.FlushAll(ctx).Err())
	rule := Rule{Name: "idle", Limit: 100, Window: time.Minute, Mode: Hybrid}
	var lims []*Limiter
	for range 2 {
		l, err := New(Config{Redis: c, Rules: []Rule{rule}, KeyPrefix: "i", ManualSync: true})
		must(t, err)
		lims = append(lims, l)
	}
	const idleUsers, rounds = 1000, 20
	for round := range rounds {
		for _, l := range lims {
			requestAll(t, l, rule.Name, idleUsers, round)
		}
		for range 2 {
			for _, l := range lims {
				must(t, l.Sync(ctx))
			}
		}
	}
	k := countKeys(t, c, "i:*")
	fields := opFields(t, c, k.base)
	t.Logf("idle loop: %d users × %d rounds × 2 instances: keys: %s; op fields per key: %s", idleUsers, rounds, k, fields)
	for _, l := range lims {
		must(t, l.Close())
	}

	// Memory goes back to the baseline within two windows.
	must(t, c.FlushAll(ctx).Err())
	time.Sleep(100 * time.Millisecond)
	before := usedMemory(t, c)
	const w, shortUsers = 2 * time.Second, 10_000
	rules := []Rule{{Name: "h", Limit: 100, Window: w, Mode: Hybrid}, {Name: "s", Limit: 100, Window: w, Mode: Strict}}
	l, err := New(Config{Redis: c, Rules: rules, KeyPrefix: "e", ManualSync: true, MaxLocalKeys: 2 * shortUsers})
	must(t, err)
	for _, r := range rules {
		requestAll(t, l, r.Name, shortUsers, 0)
	}
	must(t, l.Sync(ctx))
	must(t, l.Close()) // the last traffic: Close's pass gives the leases back
	stopped := time.Now()
	peak := usedMemory(t, c)
	var n int64
	var at time.Duration
	for {
		n = c.DBSize(ctx).Val()
		at = time.Since(stopped)
		if n <= 1 || at > 2*w+3*time.Second { // the instance registry may stay (its TTL is 3 sync intervals)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	end := usedMemory(t, c)
	t.Logf("2 s window, %d users × 2 rules: used_memory %d before, %d after the traffic, %d at %v after it stopped (%d keys left, %+d B from before)",
		shortUsers, before, peak, end, at.Round(10*time.Millisecond), n, end-before)
	if n > 1 {
		t.Errorf("%d keys left %v after the traffic stopped, want at most the registry", n, at)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// requestAll sends one request for each of n users, from 8 goroutines.
func requestAll(t *testing.T, l *Limiter, rule string, n, round int) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for u := g; u < n; u += 8 {
				if _, err := l.Allow(context.Background(), rule, "user"+strconv.Itoa(u), time.Now()); err != nil {
					t.Errorf("round %d: %v", round, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func usedMemory(t *testing.T, c *redis.Client) int64 {
	t.Helper()
	info, err := c.Info(context.Background(), "memory").Result()
	must(t, err)
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			must(t, err)
			return n
		}
	}
	t.Fatal("no used_memory in INFO memory")
	return 0
}

// keyCounts counts keys by kind.
type keyCounts struct {
	base           []string
	op, log, other int
}

func (k keyCounts) String() string {
	return fmt.Sprintf("%d base, %d op (\":op:\"), %d other", len(k.base), k.op, k.other+k.log)
}

func countKeys(t *testing.T, c *redis.Client, pattern string) keyCounts {
	t.Helper()
	var k keyCounts
	iter := c.Scan(context.Background(), 0, pattern, 10_000).Iterator()
	for iter.Next(context.Background()) {
		switch key := iter.Val(); {
		case strings.Contains(key, ":op:"):
			k.op++
		case strings.HasSuffix(key, ":m"):
			k.log++
		case strings.Contains(key, "}:"):
			k.base = append(k.base, key)
		default:
			k.other++
		}
	}
	must(t, iter.Err())
	return k
}

// opFields returns the histogram of op fields per key.
func opFields(t *testing.T, c *redis.Client, keys []string) string {
	t.Helper()
	hist := map[int]int{}
	most := 0
	for i := 0; i < len(keys); i += 1000 {
		pipe := c.Pipeline()
		var cmds []*redis.StringSliceCmd
		for _, k := range keys[i:min(i+1000, len(keys))] {
			cmds = append(cmds, pipe.HKeys(context.Background(), k))
		}
		_, err := pipe.Exec(context.Background())
		must(t, err)
		for _, cmd := range cmds {
			n := 0
			for _, f := range cmd.Val() {
				if strings.HasPrefix(f, "~") {
					n++
				}
			}
			hist[n]++
			most = max(most, n)
		}
	}
	var parts []string
	for n := 0; n <= most; n++ {
		if hist[n] > 0 {
			parts = append(parts, fmt.Sprintf("%d keys with %d", hist[n], n))
		}
	}
	return strings.Join(parts, ", ")
}

// sampleUsage returns MEMORY USAGE of the first key and one of its fields.
func sampleUsage(t *testing.T, c *redis.Client, keys []string) string {
	t.Helper()
	if len(keys) == 0 {
		return "no key"
	}
	ctx := context.Background()
	n, err := c.MemoryUsage(ctx, keys[0]).Result()
	must(t, err)
	h, err := c.HGetAll(ctx, keys[0]).Result()
	must(t, err)
	enc, _ := c.ObjectEncoding(ctx, keys[0]).Result()
	return fmt.Sprintf("%s = %d B (%s, %d B of key name), %v", keys[0], n, enc, len(keys[0]), h)
}
