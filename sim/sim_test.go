package sim

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clients returns a client factory for the test Redis, skipping (or, under
// CI, failing) when none answers.
func clients(t *testing.T) func() redis.UniversalClient {
	t.Helper()
	redistest.Client(t)
	return func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: redistest.Addr()}) }
}

func prefix() string { return fmt.Sprintf("simtest%x", rand.Uint64()) }

// TestSweep runs the hybrid mode over instances × sync intervals × traffic
// × limits and requires, in every window, no admission beyond the limit
// (the bound of docs/design.md: zero overshoot) and at most Limit
// admissions in any aligned window.
func TestSweep(t *testing.T) {
	newClient := clients(t)
	instances := []int{1, 2, 3, 8, 16}
	syncs := []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, time.Second}
	traffics := []Traffic{Uniform, RoundRobin, Skewed, Bursty}
	limits := []int64{10, 100, 1000, 10000}
	if raceEnabled {
		t.Log("race detector on: reduced grid (the full one runs without -race)")
		instances, syncs, limits = []int{3, 16}, []time.Duration{100 * time.Millisecond}, []int64{10, 1000}
	}
	for _, k := range instances {
		for _, s := range syncs {
			for _, tr := range traffics {
				for _, lim := range limits {
					name := fmt.Sprintf("k=%d/sync=%v/%v/limit=%d", k, s, tr, lim)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						load := 3.0
						if lim >= 10000 {
							load = 1.5
						}
						rep, err := Run(context.Background(), Config{
							NewClient: newClient, KeyPrefix: prefix(),
							Instances: k, SyncInterval: s, Limit: lim, Window: time.Second,
							Traffic: tr, Load: load, Windows: 2, Seed: 1,
						})
						if err != nil {
							t.Fatal(err)
						}
						for _, w := range rep.Windows {
							if w.Overshoot > 0 || w.Admitted > lim {
								t.Errorf("window %d: admitted %d (reference %d), %d beyond the limit %d", w.Index, w.Admitted, w.Reference, w.Overshoot, lim)
							}
						}
						t.Logf("%+v stats=%+v passes=%d", rep.Windows, rep.Stats, rep.SyncPasses)
					})
				}
			}
		}
	}
}

// TestHeadline is the headline scenario on the real Redis and the wall
// clock: 3 instances, each with its own client and sync loop (100 ms), one
// hot user offering 10× the limit round robin, limits 1 000/s and 100/s.
// No whole window may admit more than the limit, and a saturating sender
// must get at least 0.98× the limit in every whole window.
func TestHeadline(t *testing.T) {
	newClient := clients(t)
	windows := 3
	if os.Getenv("HEADLINE_WINDOWS") != "" {
		fmt.Sscan(os.Getenv("HEADLINE_WINDOWS"), &windows)
	}
	for _, lim := range []int64{1000, 100} {
		t.Run(fmt.Sprintf("limit=%d", lim), func(t *testing.T) {
			rep, err := RunRealtime(context.Background(), RealtimeConfig{
				NewClient: newClient, KeyPrefix: prefix(), Instances: 3, SyncInterval: 100 * time.Millisecond,
				Limit: lim, Window: time.Second, Load: 10, Windows: windows,
			})
			if err != nil {
				t.Fatal(err)
			}
			worst, mean, least := rep.Ratios()
			t.Logf("limit %d/s: worst window %.3f×, mean %.3f×, least %.3f×; windows %+v; stats %+v", lim, worst, mean, least, rep.Windows, rep.Stats)
			for _, w := range rep.Windows {
				if w.Admitted > lim {
					t.Errorf("window %d admitted %d > limit %d", w.Index, w.Admitted, lim)
				}
				if w.Offered < lim*5 {
					t.Errorf("window %d offered only %d: the sender fell behind", w.Index, w.Offered)
				}
			}
			if least < 0.98 {
				t.Errorf("a saturating sender got %.3f× the limit in its worst window, want ≥ 0.98×", least)
			}
		})
	}
}
