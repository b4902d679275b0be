package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// sparseUsers is how many users BenchmarkSparseUsers goes round: with two
// rules, 200k keys, so that at the default SyncInterval (100 ms) no key
// sees more than a request or two per interval.
const sparseUsers = 100_000

// sparseNames are the users u0 … u99999 of BenchmarkSparseUsers.
var sparseNames = func() []string {
	u := make([]string, sparseUsers)
	for i := range u {
		u[i] = "u" + strconv.Itoa(i)
	}
	return u
}()

// BenchmarkSparseUsers: decisions for many users with about one request
// each per sync interval (100k users × 2 rules, round robin, from
// benchConc goroutines, on the real clock with the Limiter's own sync
// loop), in strict and in hybrid mode, on one node and, when
// REDIS_CLUSTER_ADDRS is set, on a Redis Cluster. Hybrid must cost no more
// than strict here: ns/op side by side, and cmds/decision, the Redis
// commands (INFO commandstats, all commands, every master) per decision,
// sync passes included.
func BenchmarkSparseUsers(b *testing.B) {
	for _, topo := range []string{"node", "cluster"} {
		for _, mode := range []ratelimit.Mode{ratelimit.Strict, ratelimit.Hybrid} {
			b.Run("topo="+topo+"/mode="+mode.String(), func(b *testing.B) {
				rdb := sparseClient(b, topo)
				benchSparse(b, rdb, mode)
			})
		}
	}
}

// sparseClient returns a client of the bench Redis (topo "node") or of the
// Redis Cluster of REDIS_CLUSTER_ADDRS ("cluster"; skipped when unset).
func sparseClient(b *testing.B, topo string) redis.UniversalClient {
	b.Helper()
	if topo == "node" {
		c, _ := newClient(b)
		return c
	}
	addrs := os.Getenv("REDIS_CLUSTER_ADDRS")
	if addrs == "" {
		if os.Getenv("CI") != "" {
			b.Fatal("no REDIS_CLUSTER_ADDRS: CI needs a Redis Cluster for this benchmark (make cluster-up starts one)")
		}
		b.Skip("skipped: no REDIS_CLUSTER_ADDRS (make cluster-up starts a Redis Cluster)")
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ",")})
	b.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		b.Fatalf("cluster %s: %v", addrs, err)
	}
	return c
}

func benchSparse(b *testing.B, rdb redis.UniversalClient, mode ratelimit.Mode) {
	// A 10 s window: the keys expire 20 s after the run.
	const window = 10 * time.Second
	prefix := fmt.Sprintf("rlsparse%x", time.Now().UnixNano())
	rules := []ratelimit.Rule{
		{Name: "a", Limit: 1 << 30, Window: window, Mode: mode},
		{Name: "b", Limit: 1 << 30, Window: window, Mode: mode},
	}
	l, err := ratelimit.New(ratelimit.Config{Redis: rdb, KeyPrefix: prefix, Rules: rules})
	if err != nil {
		b.Fatal(err)
	}
	rls := make([]*ratelimit.RuleLimiter, len(rules))
	for i, r := range rules {
		if rls[i], err = l.Rule(r.Name); err != nil {
			b.Fatal(err)
		}
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchConc + procs - 1) / procs)
	var next, failed atomic.Int64
	cmds0, usec0 := commandStats(b, rdb)
	cpu0 := processCPU(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			i := next.Add(1) - 1
			rl := rls[(i/sparseUsers)%int64(len(rls))]
			d, err := rl.Allow(ctx, sparseNames[i%sparseUsers], time.Now())
			if err != nil || !d.Allowed {
				failed.Add(1)
			}
		}
	})
	b.StopTimer()
	// Close runs the last pass (hybrid leases given back): its commands
	// count too.
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d decisions failed or were denied", n, b.N)
	}
	cpu := processCPU(b)
	cmds, usec := commandStats(b, rdb)
	b.ReportMetric(float64(cmds-cmds0)/float64(b.N), "cmds/decision")
	b.ReportMetric(float64(usec-usec0)/float64(b.N), "redis-µs/decision")
	b.ReportMetric(float64(cpu-cpu0)/float64(time.Microsecond)/float64(b.N), "client-cpu-µs/decision")
}

// processCPU returns the CPU time (user and system) this process has used:
// on a machine whose cores Redis shares, the client's own cost of a
// decision counts against the throughput too.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// commandStats returns the commands Redis ran and the µs they took, summed
// over every command but INFO and over every master of a cluster.
func commandStats(b *testing.B, rdb redis.UniversalClient) (calls, usec int64) {
	b.Helper()
	ctx := context.Background()
	add := func(c *redis.Client) error {
		info, err := c.Info(ctx, "commandstats").Result()
		if err != nil {
			return err
		}
		n, u := parseCommandStats(info, func(name string) bool { return name != "cmdstat_info" })
		calls += n
		usec += u
		return nil
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = forEachMasterSerial(ctx, c, add)
	case *redis.Client:
		err = add(c)
	default:
		b.Fatalf("commandStats: %T", rdb)
	}
	if err != nil {
		b.Fatal(err)
	}
	return calls, usec
}

// forEachMasterSerial calls f for each master of c, one at a time.
func forEachMasterSerial(ctx context.Context, c *redis.ClusterClient, f func(*redis.Client) error) error {
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, s := range slots {
		if len(s.Nodes) == 0 || seen[s.Nodes[0].Addr] {
			continue
		}
		seen[s.Nodes[0].Addr] = true
		m := redis.NewClient(&redis.Options{Addr: s.Nodes[0].Addr})
		err := f(m)
		_ = m.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// parseCommandStats sums the calls and µs of INFO commandstats's lines
// whose command name (cmdstat_…) count says to count.
func parseCommandStats(info string, count func(name string) bool) (calls, usec int64) {
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || !count(name) {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				calls += n
			case "usec":
				usec += n
			}
		}
	}
	return calls, usec
}
