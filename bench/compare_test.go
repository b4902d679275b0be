package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// TestComparatorsAgreeOnLimit checks that the implementations the
// benchmarks compare count alike: under 10 per minute, a fresh user's 30
// requests at one instant see exactly 10 admitted by our strict
// SlidingWindow, by the raw EVALSHA of its script and by redis_rate, made
// one after another and all at once. It runs the benchmarks' own
// constructors, so it also checks their wiring.
func TestComparatorsAgreeOnLimit(t *testing.T) {
	const limit, requests = 10, 30
	rdb, _ := newClient(t)
	prefix := newPrefix(t, rdb)
	impls := []struct {
		name string
		do   op
	}{
		{"strict", newStrict(t, rdb, prefix, limit, time.Minute, ratelimit.PipelineConfig{})},
		{"evalsha", newEvalsha(t, rdb, prefix, limit, time.Minute)},
		{"redis_rate", newRedisRate(t, rdb, prefix, limit, time.Minute)},
	}
	ctx := context.Background()
	now := time.Now()
	for _, im := range impls {
		t.Run(im.name+"/serial", func(t *testing.T) {
			admitted := 0
			for range requests {
				ok, err := im.do(ctx, 0, now) // users[0]
				if err != nil {
					t.Fatal(err)
				}
				if ok {
					admitted++
				}
			}
			if admitted != limit {
				t.Errorf("%s admitted %d of %d, want %d", im.name, admitted, requests, limit)
			}
		})
		t.Run(im.name+"/concurrent", func(t *testing.T) {
			var admitted, failed atomic.Int64
			var wg sync.WaitGroup
			for range requests {
				wg.Go(func() {
					ok, err := im.do(ctx, 1, now) // users[1], fresh too
					switch {
					case err != nil:
						failed.Add(1)
						t.Error(err)
					case ok:
						admitted.Add(1)
					}
				})
			}
			wg.Wait()
			if failed.Load() == 0 && admitted.Load() != limit {
				t.Errorf("%s admitted %d of %d concurrent requests, want %d", im.name, admitted.Load(), requests, limit)
			}
		})
	}
}
