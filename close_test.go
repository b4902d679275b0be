package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestCloseRacesDecisions: Close while hybrid decisions run, half of them
// for new users (a cache miss, a ristretto Set): every decision succeeds
// or returns ErrClosed, and none panics (ristretto's Close closes channels
// that a concurrent Get or Set would send on). Without the front table,
// every Get goes to ristretto; two rounds show it.
func TestCloseRacesDecisions(t *testing.T) {
	forEachFront(t, testCloseRacesDecisions)
}

func testCloseRacesDecisions(t *testing.T, front bool) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	rule := Rule{Name: "closerace", Limit: 1 << 28, Window: time.Hour}
	var seq atomic.Int64
	rounds := 5
	if !front {
		rounds = 2
	}
	for round := range rounds {
		l, err := New(Config{Redis: c, Rules: []Rule{rule}, KeyPrefix: prefix, SyncInterval: time.Millisecond, MaxLocalKeys: 64,
			Timeout: 5 * time.Second, noFront: !front}) // a loaded machine (-race) is no outage here
		require.NoError(t, err)
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for g := range 16 {
			wg.Go(func() {
				for i := 0; i < 100_000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					user := fmt.Sprint("hot", g%4)
					if i%2 == 0 {
						user = fmt.Sprint("new-", seq.Add(1))
					}
					if _, err := l.Allow(context.Background(), rule.Name, user, time.Now()); err != nil && !errors.Is(err, ErrClosed) {
						t.Errorf("round %d: %v", round, err)
						return
					}
				}
			})
		}
		time.Sleep(time.Duration(2+round%5) * time.Millisecond)
		require.NoError(t, l.Close())
		close(stop)
		wg.Wait()
	}
}

// TestCloseWaitsForStrictCalls: Close returns only after the strict call
// under way (300 ms of latency in front of Redis) has returned to its
// caller, with Redis's answer.
func TestCloseWaitsForStrictCalls(t *testing.T) {
	proc := redistest.StartProc(t)
	proxy := redistest.StartProxy(t, proc.Addr())
	rule := Rule{Name: "cw", Limit: 10, Window: time.Second, Mode: Strict}
	l, err := New(Config{Redis: faultClient(t, proxy.Addr()), Rules: []Rule{rule}, KeyPrefix: "cw", ManualSync: true,
		OnHealthChange: func(h Health) { t.Errorf("health %v: the call must not fail", h.State) }})
	require.NoError(t, err)
	proxy.Latency(300 * time.Millisecond)
	var (
		wg       sync.WaitGroup
		d        Decision
		callErr  error
		callDone time.Time
	)
	wg.Go(func() {
		d, callErr = l.Allow(context.Background(), rule.Name, "u", time.Now())
		callDone = time.Now()
	})
	time.Sleep(50 * time.Millisecond) // the call is on the wire
	require.NoError(t, l.Close())
	closed := time.Now()
	wg.Wait()
	require.NoError(t, callErr)
	require.True(t, d.Allowed)
	require.True(t, callDone.Before(closed), "Close returned %v before the call did", callDone.Sub(closed))
}
