package bench

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// TestMain runs the package, then deletes the keys of the limiters that
// BenchmarkResidentKeys builds once per process (1M keys each, which would
// otherwise live two windows), and closes them.
func TestMain(m *testing.M) {
	code := m.Run()
	// Closing the floor caches stops ristretto's goroutines, which goleak
	// would report.
	if floorC != nil {
		floorC.Close()
	}
	if wideC != nil {
		wideC.Close()
	}
	for i := range resident {
		r := &resident[i]
		if r.lim == nil {
			continue
		}
		_ = r.lim.Close()
		prefix := residentPrefix
		if i == 1 {
			prefix += "nofront"
		}
		c := redis.NewClient(&redis.Options{Addr: redisAddr()})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		iter := c.Scan(ctx, 0, prefix+":*", 5000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			if batch = append(batch, iter.Val()); len(batch) == 5000 {
				c.Unlink(ctx, batch...)
				batch = batch[:0]
			}
		}
		if len(batch) > 0 {
			c.Unlink(ctx, batch...)
		}
		cancel()
		_ = c.Close()
		_ = r.client.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
