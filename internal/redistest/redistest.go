// Package redistest gives the project's tests a client of the test Redis
// and a key prefix of their own.
//
// The Redis is at REDIS_ADDR (default 127.0.0.1:6379). Without one a test
// skips with one line saying why, or fails when CI is set.
package redistest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Addr returns the address of the test Redis.
func Addr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// Client returns a client of the test Redis, closed when the test ends.
func Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: Addr()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("CI") != "" {
			tb.Fatalf("no Redis at %s (%v): CI needs one (make redis starts it)", Addr(), err)
		}
		tb.Skipf("skipped: no Redis at %s (%v); set REDIS_ADDR or run `make redis`", Addr(), err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix unique to the test and deletes the keys under
// it when the test ends. Call it after Client, so that the cleanup runs
// before the client closes.
func Prefix(tb testing.TB, c *redis.Client) string {
	tb.Helper()
	p := fmt.Sprintf("rltest%x", rand.Uint64())
	tb.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, p+":*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Unlink(ctx, iter.Val())
		}
	})
	return p
}
