package rulesfile

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// TestBoundsMatchTheLimiter: at the edges of every bound the file repeats
// (rule.go), Parse accepts a rule exactly when ratelimit.New does, so that
// the copies cannot drift apart unseen.
func TestBoundsMatchTheLimiter(t *testing.T) {
	const (
		sw, log, fw, tb = ratelimit.SlidingWindow, ratelimit.SlidingLog, ratelimit.FixedWindow, ratelimit.TokenBucket
		years100        = 100 * 365 * 24 * time.Hour
	)
	for _, r := range []ratelimit.Rule{
		{Limit: 1, Window: time.Millisecond},
		{Limit: 0, Window: time.Millisecond},
		{Limit: -1, Window: time.Millisecond},
		{Limit: 1, Window: 999 * time.Microsecond},
		{Limit: 1, Window: 1001 * time.Microsecond},
		{Limit: 1, Window: years100},
		{Limit: 1, Window: years100 + time.Millisecond},
		{Limit: 1 << 50 / 1000, Window: time.Second},
		{Limit: 1<<50/1000 + 1, Window: time.Second},
		{Limit: 1000, Window: time.Second, Algorithm: log},
		{Limit: 1001, Window: time.Second, Algorithm: log},
		{Limit: 1001, Window: time.Second, Algorithm: fw},
		{Limit: 2, Window: time.Second, Algorithm: tb, Burst: 4},
		{Limit: 2, Window: time.Second, Algorithm: tb, Burst: 5},
		{Limit: 2, Window: time.Second, Algorithm: tb, Burst: -1},
		{Limit: 2, Window: time.Second, Algorithm: fw, Burst: 1},
		{Limit: 2, Window: time.Second, Algorithm: sw, Burst: 2},
	} {
		r.Name, r.ID, r.Mode = "r", "r", ratelimit.Local
		src := fmt.Sprintf("rules:\n  - {name: r, mode: local, limit: %d, window: %v, algorithm: %v, burst: %d}\n",
			r.Limit, r.Window, r.Algorithm, r.Burst)
		f, perr := Parse("r.yaml", []byte(src))
		if perr == nil && !reflect.DeepEqual(f.Rules()[0], r) {
			t.Fatalf("%s: decoded %+v, want %+v", src, f.Rules()[0], r)
		}
		lim, nerr := ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{r}})
		if nerr == nil {
			_ = lim.Close()
		}
		if (perr == nil) != (nerr == nil) {
			t.Errorf("%+v: Parse: %v; New: %v", r, perr, nerr)
		}
	}
}
