package ratelimit

// The cluster suite: the behaviours of behaviour_test.go, which the
// single-node tests also run, on a Redis Cluster of 3 masters with a replica
// each, plus the cluster's own checks (keys spread over the masters, every
// key of one user in one slot). It runs when REDIS_CLUSTER_ADDRS names the
// cluster's seeds: `make test-cluster` starts one
// (scripts/redis-cluster.sh), runs these tests and stops it. Without it they
// skip, or fail when CI is set; `make test` leaves them to `make test-cluster`.

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// testCluster is the test Redis Cluster as a backend: a cluster client, a
// prefix whose keys are deleted from every master when the test ends, and
// a new cluster client for each Limiter that asks for one.
func testCluster(t *testing.T) backend {
	t.Helper()
	c := redistest.ClusterClient(t)
	return backend{c: c, prefix: redistest.ClusterPrefix(t, c), client: func(t *testing.T) redis.UniversalClient {
		return redistest.ClusterClient(t)
	}}
}

// clusterUsers returns n user names. Their hash tags fall on every master
// of a 3-master cluster with the default slot split (TestClusterKeysSpread
// checks it for 60).
func clusterUsers(n int) []string {
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprint("user-", i)
	}
	return users
}

// clusterLoad is the cluster suite's concurrency: 4 Limiters with a client
// each, 8 goroutines each, 4 rounds over 24 users: 128 attempts per user
// against a limit of 100.
var clusterLoad = concurrency{instances: 4, goroutines: 8, attempts: 4, limit: 100, users: clusterUsers(24)}

// TestClusterStrictExactCounts: on the cluster, strict Limiters deciding at
// once admit each user exactly what one exact limiter would, for every
// algorithm.
func TestClusterStrictExactCounts(t *testing.T) {
	behaveStrictExactUnderConcurrency(t, testCluster(t), clusterLoad)
}

// TestClusterAllowAllAtomic: on the cluster, AllowAll's strict rules of a
// user (one slot) are decided together, all or nothing.
func TestClusterAllowAllAtomic(t *testing.T) {
	behaveAllowAllAtomic(t, testCluster(t), clusterLoad)
}

// TestClusterHybridWithinLimit: on the cluster, hybrid Limiters admit each
// user at most its limit, and Redis counts exactly the admissions once the
// leases are back.
func TestClusterHybridWithinLimit(t *testing.T) {
	behaveHybridWithinLimit(t, testCluster(t), clusterLoad)
}

// TestClusterKeysExpire: on the cluster, state keys carry a TTL of at most
// two windows and are gone two windows after their last use.
func TestClusterKeysExpire(t *testing.T) {
	behaveKeysExpire(t, testCluster(t), 200*time.Millisecond, clusterUsers(6))
}

// TestClusterRejectsBadInput: bad arguments are errors on a cluster too.
func TestClusterRejectsBadInput(t *testing.T) {
	behaveRejectsBadInput(t, testCluster(t))
}

// TestClusterNoScriptFallback: after SCRIPT FLUSH on every node, calls to
// users on every master (pipelined per node) run the scripts through EVAL.
func TestClusterNoScriptFallback(t *testing.T) {
	behaveNoScriptFallback(t, testCluster(t), clusterUsers(12))
}

// TestClusterKeysSpread: the keys of 60 users, under every strict algorithm
// and a hybrid rule, spread over all three masters (each master holds at
// least a sixth of them), and every key of one user (the sliding log's
// second key too) is in that user's slot, as CLUSTER KEYSLOT computes it.
func TestClusterKeysSpread(t *testing.T) {
	b := testCluster(t)
	cc := b.c.(*redis.ClusterClient)
	ctx := context.Background()
	users := clusterUsers(60)
	var rules []Rule
	for _, a := range allAlgorithms {
		rules = append(rules, Rule{Name: "spread-" + a.String(), Limit: 10, Window: time.Minute, Algorithm: a, Mode: Strict, OnFailure: FailError})
	}
	rules = append(rules, Rule{Name: "spread-hybrid", Limit: 10, Window: time.Minute, Mode: Hybrid, OnFailure: FailError})
	l, err := New(Config{Redis: cc, Rules: rules, KeyPrefix: b.prefix, Now: fixedClock(base), Timeout: behaveTimeout})
	require.NoError(t, err)
	for _, u := range users {
		for _, r := range rules {
			d, err := l.AllowN(ctx, r.Name, u, base, 2)
			require.NoError(t, err)
			require.True(t, d.Allowed)
		}
	}
	require.NoError(t, l.Close()) // the hybrid leases go back

	// The keys each master holds, found by SCAN on the master itself.
	var mu sync.Mutex
	perMaster := map[string][]string{}
	var masters []string
	err = cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		var keys []string
		iter := m.Scan(ctx, 0, b.prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		mu.Lock()
		defer mu.Unlock()
		perMaster[m.Options().Addr] = keys
		masters = append(masters, m.Options().Addr)
		return iter.Err()
	})
	require.NoError(t, err)
	sort.Strings(masters)
	require.Len(t, masters, 3, "masters of the test cluster")

	total := 0
	found := map[string]bool{}
	slotOf := map[string]int64{} // user → the slot of its first key seen
	for _, addr := range masters {
		for _, k := range perMaster[addr] {
			total++
			found[k] = true
			// The client's slot map agrees that this master holds k.
			owner, err := cc.MasterForKey(ctx, k)
			require.NoError(t, err)
			require.Equal(t, addr, owner.Options().Addr, "key %s", k)
			slot, err := cc.ClusterKeySlot(ctx, k).Result()
			require.NoError(t, err)
			u := userOf(t, b.prefix, k)
			if u == "" {
				continue // a key of no user
			}
			if s, seen := slotOf[u]; seen {
				require.Equal(t, s, slot, "key %s: another slot than the other keys of user %q", k, u)
			} else {
				slotOf[u] = slot
			}
		}
	}
	// Per user: one key per strict algorithm, one more for the sliding log,
	// one for the hybrid rule.
	require.Len(t, slotOf, len(users), "users with keys")
	for _, u := range users {
		for _, r := range rules {
			k := global.Key(b.prefix, r.Name, u)
			require.True(t, found[k], "key %s not found on the master of its slot", k)
		}
	}
	require.GreaterOrEqual(t, total, 6*len(users))
	var figures []string
	for _, addr := range masters {
		n := len(perMaster[addr])
		figures = append(figures, fmt.Sprintf("%s: %d", addr, n))
		require.GreaterOrEqual(t, n, total/6, "master %s holds too few of the %d keys", addr, total)
	}
	t.Logf("%d keys of %d users; keys per master: %s", total, len(users), strings.Join(figures, ", "))
}

// userOf returns the user of key prefix:{user}:... (or "" for a key of no
// user, such as the hybrid registry prefix:instances).
func userOf(t *testing.T, prefix, key string) string {
	t.Helper()
	rest, ok := strings.CutPrefix(key, prefix+":{")
	if !ok {
		return ""
	}
	u, _, ok := strings.Cut(rest, "}")
	require.True(t, ok, "key %s has no closing brace", key)
	return u
}

// TestClusterAllowAllMixed: on the cluster, a user's Strict rule and the
// Redis-bound parts of its Hybrid rules go in one script (one slot), all
// or nothing.
func TestClusterAllowAllMixed(t *testing.T) {
	behaveAllowAllMixed(t, testCluster(t), clusterLoad)
}
