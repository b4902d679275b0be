package global

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// keysOnTwoMasters returns two keys of prefix whose slots two different
// masters serve, and those masters.
func keysOnTwoMasters(t *testing.T, c *redis.ClusterClient, prefix string) (k1, k2 string, m1, m2 *redis.Client) {
	t.Helper()
	ctx := context.Background()
	k1 = Key(prefix, "r", "u0")
	m1, err := c.MasterForKey(ctx, k1)
	require.NoError(t, err)
	for i := 1; i < 1000; i++ {
		k2 = Key(prefix, "r", fmt.Sprint("u", i))
		if m2, err = c.MasterForKey(ctx, k2); err == nil && m2.Options().Addr != m1.Options().Addr {
			return k1, k2, m1, m2
		}
	}
	t.Fatal("no two keys on two masters")
	return
}

// TestClusterBreakerPerMaster: on a cluster each master has its breaker.
// With one master's open, its keys are refused at once, by Take, Lease,
// LeaseBatch and Refuses, while the keys of another master still go to
// Redis; Breaker reports the open one and names its master.
func TestClusterBreakerPerMaster(t *testing.T) {
	c := redistest.ClusterClient(t)
	prefix := redistest.ClusterPrefix(t, c)
	s := NewStore(c, Options{})
	defer s.Close()
	require.True(t, s.Cluster())
	k1, k2, m1, _ := keysOnTwoMasters(t, c, prefix)
	ctx := context.Background()
	req := func(k string) Request {
		return Request{Algorithm: FixedWindow, Key: k, Now: 1_700_000_000_000, Window: 60_000, Limit: 10, N: 1}
	}
	_, err := s.Take(ctx, req(k1))
	require.NoError(t, err)
	_, err = s.Take(ctx, req(k2))
	require.NoError(t, err)
	require.Equal(t, Closed, s.Breaker().State)

	s.breakers.forKey(k1).trip(errors.New("test: master down"))

	_, err = s.Take(ctx, req(k1))
	require.ErrorIs(t, err, ErrBreakerOpen)
	r, err := s.Take(ctx, req(k2))
	require.NoError(t, err)
	require.True(t, r.Allowed)
	require.Equal(t, int64(8), r.Remaining, "k2's second admission")
	require.True(t, s.Refuses(k1))
	require.False(t, s.Refuses(k2))
	require.Positive(t, s.RetryAfter(k1))
	require.Zero(t, s.RetryAfter(k2))

	lease := func(k string) LeaseRequest {
		return LeaseRequest{Key: k, Now: 1_700_000_000_000, Window: 60_000, Limit: 10, N: 1}
	}
	res, errs := s.LeaseBatch(ctx, []LeaseRequest{lease(k1), lease(k2)})
	require.ErrorIs(t, errs[0], ErrBreakerOpen)
	require.NoError(t, errs[1])
	require.True(t, res[1].Allowed)

	st := s.Breaker()
	require.Equal(t, Open, st.State)
	require.Equal(t, m1.Options().Addr, st.Node)
	open := 0
	for _, b := range s.Breakers() {
		if b.State != Closed {
			open++
			require.Equal(t, m1.Options().Addr, b.Node)
		}
	}
	require.Equal(t, 1, open, "%+v", s.Breakers())
}

// migrating marks key's slot MIGRATING on its master (towards another
// master) and deletes one of key's two keys: Redis then answers a call of
// both keys with TRYAGAIN, as while a resharding has moved one of them. It
// returns a func that makes the slot stable again.
func migrating(t *testing.T, c *redis.ClusterClient, key, other string) (stable func()) {
	t.Helper()
	ctx := context.Background()
	src, err := c.MasterForKey(ctx, key)
	require.NoError(t, err)
	dst, err := c.MasterForKey(ctx, other)
	require.NoError(t, err)
	dstID, err := dst.Do(ctx, "CLUSTER", "MYID").Text()
	require.NoError(t, err)
	slot, err := c.ClusterKeySlot(ctx, key).Result()
	require.NoError(t, err)
	require.NoError(t, src.Del(ctx, key+":m").Err())
	require.NoError(t, src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", dstID).Err())
	var done bool
	stable = func() {
		if !done {
			done = true
			require.NoError(t, src.Do(ctx, "CLUSTER", "SETSLOT", slot, "STABLE").Err())
		}
	}
	t.Cleanup(stable)
	return stable
}

// TestClusterTryAgainIsRetried: a call of two keys that meets its slot in
// migration (TRYAGAIN) is sent again until the Store's Timeout: it succeeds
// once the slot is stable, and the breaker does not count TRYAGAIN as a
// failure (the node answered). A slot that stays in migration ends the call
// with ErrUnavailable, naming TRYAGAIN, and the breaker stays closed.
func TestClusterTryAgainIsRetried(t *testing.T) {
	c := redistest.ClusterClient(t)
	prefix := redistest.ClusterPrefix(t, c)
	k1, k2, _, _ := keysOnTwoMasters(t, c, prefix)
	ctx := context.Background()
	s := NewStore(c, Options{Timeout: 2 * time.Second, Breaker: BreakerOptions{Failures: 1}})
	defer s.Close()
	req := Request{Algorithm: SlidingLog, Key: k1, Now: 1_700_000_000_000, Window: 60_000, Limit: 10, N: 1}
	_, err := s.Take(ctx, req)
	require.NoError(t, err)

	stable := migrating(t, c, k1, k2)
	go func() {
		time.Sleep(300 * time.Millisecond)
		stable()
	}()
	r, err := s.Take(ctx, req)
	require.NoError(t, err, "the call should be retried until the slot is stable")
	require.True(t, r.Allowed)
	require.Equal(t, Closed, s.Breaker().State)

	short := NewStore(c, Options{Timeout: 1500 * time.Millisecond, Breaker: BreakerOptions{Failures: 1}})
	defer short.Close()
	_, err = short.Take(ctx, req)
	require.NoError(t, err)
	migrating(t, c, k1, k2)
	_, err = short.Take(ctx, req)
	require.ErrorIs(t, err, ErrUnavailable)
	require.True(t, strings.Contains(err.Error(), "TRYAGAIN"), "%v", err)
	require.Equal(t, Closed, short.Breaker().State, "TRYAGAIN must not open the breaker")
	require.Zero(t, short.Counters().BreakerOpened)
}

// TestClusterLeaseBatchBySlot: on a real cluster, Slot agrees with CLUSTER
// KEYSLOT, and a sync pass's batch of 20 000 users' keys goes out in calls
// of one slot each, many users a call: every key answered, none refused
// with CROSSSLOT, and fewer script calls than users.
func TestClusterLeaseBatchBySlot(t *testing.T) {
	c := redistest.ClusterClient(t)
	prefix := redistest.ClusterPrefix(t, c)
	ctx := context.Background()
	for i := range 200 {
		k := Key(prefix, "r", fmt.Sprint("user-", i))
		want, err := c.ClusterKeySlot(ctx, k).Result()
		require.NoError(t, err)
		require.Equal(t, int(want), Slot(k), k)
	}
	// One pipeline of ~12 700 calls: under -race on a loaded machine it
	// took more than the default Timeout.
	s := NewStore(c, Options{LeaseKeysPerCall: 32, Timeout: 20 * time.Second, SyncTimeout: 20 * time.Second})
	defer s.Close()
	const users = 20_000 // over 16 384 slots: about 11 500 of them
	now := int64(1_700_000_000_000)
	rs := make([]LeaseRequest, users)
	for i := range rs {
		rs[i] = LeaseRequest{Key: Key(prefix, "r", fmt.Sprint("user-", i)), Now: now, Window: 60_000, Limit: 10, Want: 3, Attempts: 2}
	}
	groups := s.groupLeases(rs, true)
	require.Less(t, len(groups), users*7/10, "users share calls by slot")
	res, errs := s.LeaseBatch(ctx, rs)
	for i := range rs {
		require.NoError(t, errs[i], rs[i].Key)
		require.Equal(t, int64(3), res[i].Granted, rs[i].Key)
		require.Equal(t, int64(2), res[i].CurAttempts, rs[i].Key)
	}
	t.Logf("%d users' keys in %d script calls", users, len(groups))
}
