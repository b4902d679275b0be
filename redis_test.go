package ratelimit

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The integration tests' Redis: see internal/redistest.
var (
	redisAddr  = redistest.Addr
	testRedis  = redistest.Client
	testPrefix = redistest.Prefix
)

// fixedClock is a Config.Now that always returns t.
func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }
