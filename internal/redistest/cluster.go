package redistest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterAddrs returns the seed addresses of the test Redis Cluster, from
// REDIS_CLUSTER_ADDRS (host:port,host:port,...), or nil when it is unset.
// `make cluster-up` (scripts/redis-cluster.sh) starts one and prints them.
func ClusterAddrs() []string {
	var addrs []string
	for _, a := range strings.Split(os.Getenv("REDIS_CLUSTER_ADDRS"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// clusterReadyTimeout bounds how long ClusterClient waits for the cluster
// to answer as one.
const clusterReadyTimeout = 10 * time.Second

// ClusterClient returns a client of the test Redis Cluster (every seed of
// REDIS_CLUSTER_ADDRS), with opts applied to its options, closed when the
// test ends. It waits (at most 10 s) until every master answers and reports
// cluster_state:ok. Without REDIS_CLUSTER_ADDRS the test skips with one
// line, or fails when CI is set (`make test-cluster` starts a cluster and
// sets it; `make test` leaves the cluster suite to it); with it set and the
// cluster not answering, the test fails.
func ClusterClient(tb testing.TB, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	tb.Helper()
	addrs := ClusterAddrs()
	if len(addrs) == 0 {
		if os.Getenv("CI") != "" {
			tb.Fatal("no REDIS_CLUSTER_ADDRS: CI needs a Redis Cluster for this test (make test-cluster starts one)")
		}
		tb.Skip("skipped: no REDIS_CLUSTER_ADDRS (make test-cluster starts a Redis Cluster and sets it)")
	}
	o := &redis.ClusterOptions{Addrs: addrs}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClusterClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(clusterReadyTimeout)
	for {
		err := clusterOK(c)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			tb.Fatalf("Redis Cluster at %s not ready after %v: %v", strings.Join(addrs, ","), clusterReadyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterOK checks that every master of c answers CLUSTER INFO with
// cluster_state:ok.
func clusterOK(c *redis.ClusterClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// ForEachMaster reloads the topology first (CLUSTER SLOTS).
	return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		info, err := m.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("%s: %w", m.Options().Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("%s: cluster_state is not ok", m.Options().Addr)
		}
		return nil
	})
}

// ClusterPrefix is Prefix for a cluster: a key prefix unique to the test,
// whose keys are deleted from every master when the test ends. Call it
// after ClusterClient, so that the cleanup runs before the client closes.
func ClusterPrefix(tb testing.TB, c *redis.ClusterClient) string {
	tb.Helper()
	p := fmt.Sprintf("rltest%x", rand.Uint64())
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := DeleteKeys(ctx, c, p+":*"); err != nil {
			tb.Logf("deleting the keys of prefix %s: %v", p, err)
		}
	})
	return p
}

// ScanKeys returns the keys matching pattern: on a cluster client those of
// every master, on any other client those SCAN finds.
func ScanKeys(ctx context.Context, c redis.UniversalClient, pattern string) ([]string, error) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return scan(ctx, c, pattern)
	}
	var mu sync.Mutex
	var all []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		keys, err := scan(ctx, m, pattern)
		mu.Lock()
		all = append(all, keys...)
		mu.Unlock()
		return err
	})
	return all, err
}

// DeleteKeys unlinks the keys matching pattern (of every master on a
// cluster client), one key a call so that no call mixes slots.
func DeleteKeys(ctx context.Context, c redis.UniversalClient, pattern string) error {
	del := func(ctx context.Context, n redis.Cmdable) error {
		keys, err := scan(ctx, n, pattern)
		for _, k := range keys {
			if e := n.Unlink(ctx, k).Err(); e != nil && err == nil {
				err = e
			}
		}
		return err
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return del(ctx, m) })
	}
	return del(ctx, c)
}

// scan returns the keys of one node that match pattern.
func scan(ctx context.Context, c redis.Cmdable, pattern string) ([]string, error) {
	var keys []string
	iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}
