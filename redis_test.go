package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// redisAddr is the Redis the integration tests use.
func redisAddr() string {
	if a := os.Getenv("REDIS_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:6379"
}

// testRedis returns a client of the test Redis, closed with the test. With
// no Redis it skips the test, or fails it when CI is set.
func testRedis(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redisAddr()})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("CI") != "" {
			t.Fatalf("no Redis at %s (%v): CI needs one (make redis starts it)", redisAddr(), err)
		}
		t.Skipf("skipped: no Redis at %s (%v); set REDIS_ADDR or run `make redis`", redisAddr(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testPrefix returns a key prefix of the test's own, and deletes its keys
// when the test ends.
func testPrefix(t testing.TB, c *redis.Client) string {
	t.Helper()
	p := fmt.Sprintf("rltest%x", rand.Uint64())
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, p+":*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
	})
	return p
}

// fixedClock is a Config.Now that always returns t.
func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }
