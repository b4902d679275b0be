package global

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrNeedsClusterClient is CheckTopology's answer for a single-node client
// of a Redis Cluster node that does not serve every slot: most keys would
// answer MOVED.
var ErrNeedsClusterClient = errors.New("global: a single-node client of a Redis Cluster")

// numSlots is the number of hash slots of a Redis Cluster.
const numSlots = 16384

// CheckTopology checks that the Store's client can reach every key: a
// cluster client, or a single-node client of a server that is not a
// cluster node or is the only node, serving every slot. (A single seed
// address given to redis.NewUniversalClient builds a single-node client.)
// An error of Redis itself is returned as such (ErrUnavailable when it does
// not answer).
func (s *Store) CheckTopology(ctx context.Context) error {
	if _, ok := s.rdb.(*redis.ClusterClient); ok {
		return nil
	}
	info, err := s.rdb.Info(ctx, "cluster").Result()
	if unavailable(err) {
		return classify(err)
	}
	if err != nil {
		return nil // a store that has no cluster section (an embedded one) is no cluster node
	}
	if !strings.Contains(info, "cluster_enabled:1") {
		return nil
	}
	nodes, err := s.rdb.ClusterNodes(ctx).Result()
	if err != nil {
		return classify(err)
	}
	served, addr := mySlots(nodes)
	if served == numSlots {
		return nil
	}
	return fmt.Errorf("%w: the server at %s serves %d of the %d slots; give Config.Redis a redis.NewClusterClient "+
		"with the cluster's addresses (redis.NewUniversalClient builds a single-node client from one address)",
		ErrNeedsClusterClient, addr, served, numSlots)
}

// mySlots counts the slots that the node answering CLUSTER NODES serves,
// and returns its address as it announces it.
func mySlots(nodes string) (served int, addr string) {
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || !strings.Contains(f[2], "myself") {
			continue
		}
		addr, _, _ = strings.Cut(f[1], "@")
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") { // a slot being migrated or imported
				continue
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if !isRange {
				b, err2 = a, err1
			}
			if err1 == nil && err2 == nil && b >= a {
				served += b - a + 1
			}
		}
	}
	return served, addr
}
