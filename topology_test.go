package ratelimit

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestNewRejectsASingleNodeClientOfACluster: a single-node client of a
// cluster node that serves part of the slots would see MOVED for most keys;
// New says so and what to do. A node that serves every slot (a one-node
// cluster) is fine.
func TestNewRejectsASingleNodeClientOfACluster(t *testing.T) {
	c := redistest.Server(t, "--cluster-enabled", "yes")
	ctx := context.Background()
	require.NoError(t, c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 8191).Err())
	cfg := Config{Redis: c, Rules: []Rule{{Name: "r", Limit: 10, Window: time.Second}}}
	l, err := New(cfg)
	require.Error(t, err)
	require.Nil(t, l)
	require.True(t, errors.Is(err, ErrInvalidArgument), "%v", err)
	require.Contains(t, err.Error(), "serves 8192 of the 16384 slots")
	require.Contains(t, err.Error(), "NewClusterClient")

	require.NoError(t, c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 8192, 16383).Err())
	require.Eventually(t, func() bool {
		info, err := c.ClusterInfo(ctx).Result()
		return err == nil && strings.Contains(info, "cluster_state:ok")
	}, 10*time.Second, 20*time.Millisecond)
	l, err = New(cfg)
	require.NoError(t, err, "a node that serves every slot")
	require.NoError(t, l.Close())
}

// TestNewChecksTopologyOnlyWhenRedisAnswers: with Redis down at New the
// Limiter starts degraded as before; the check is New's, when it can ask.
func TestNewChecksTopologyOnlyWhenRedisAnswers(t *testing.T) {
	p := redistest.StartProc(t, "--cluster-enabled", "yes")
	c := p.Client(t)
	p.Kill()
	l, err := New(Config{Redis: c, Rules: []Rule{{Name: "r", Limit: 10, Window: time.Second}}, Timeout: 200 * time.Millisecond})
	require.NoError(t, err)
	require.Equal(t, Degraded, l.Health().State)
	require.ErrorIs(t, l.Close(), ErrUnavailable, "Close cannot reach Redis either")
}
