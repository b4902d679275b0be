package ratelimit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// RuleStats tells where each rule's decisions were made. A hybrid key
// without lease asks Redis (its first request in a while without local
// state, the next one with a State that learns the key's counts); once the
// key is at its limit, the Limiter denies in process from the counts Redis
// reported. In-process counts join at the next sync pass.
func ExampleLimiter_RuleStats() {
	mr := miniredis.NewMiniRedis()
	if err := mr.Start(); err != nil {
		panic(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	lim, err := ratelimit.New(ratelimit.Config{
		Redis: rdb, ManualSync: true, Now: func() time.Time { return t0 },
		Rules: []ratelimit.Rule{{Name: "search", Limit: 1, Window: time.Minute, Algorithm: ratelimit.FixedWindow}},
	})
	if err != nil {
		panic(err)
	}
	defer lim.Close()
	ctx := context.Background()
	for range 3 {
		if _, err := lim.Allow(ctx, "search", "alice", t0); err != nil {
			panic(err)
		}
	}
	if err := lim.Sync(ctx); err != nil {
		panic(err)
	}
	for _, r := range lim.RuleStats() {
		fmt.Printf("%s (%v): in process %d allowed, %d denied; Redis %d allowed, %d denied\n",
			r.Name, r.Mode, r.LocalAllowed, r.LocalDenied, r.RedisAllowed, r.RedisDenied)
	}
	// Output:
	// search (hybrid): in process 0 allowed, 1 denied; Redis 1 allowed, 1 denied
}
