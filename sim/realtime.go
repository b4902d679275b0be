package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// RealtimeConfig is a scenario on the wall clock: each instance runs its own
// background sync loop, and one sender per instance offers its share of the
// load, round robin, with time.Now timestamps.
type RealtimeConfig struct {
	NewClient    func() redis.UniversalClient
	KeyPrefix    string
	Instances    int
	SyncInterval time.Duration
	Limit        int64
	Window       time.Duration
	Mode         ratelimit.Mode // default Hybrid
	// Load is the offered requests per window, as a multiple of Limit.
	Load float64
	// Windows is how many whole windows to measure; the run lasts one
	// window more (the partial windows at both ends are not measured).
	Windows int
}

// RealtimeReport is a real-time scenario's outcome, per aligned window.
type RealtimeReport struct {
	Config  RealtimeConfig
	Windows []Window // whole windows only; Reference and Overshoot unused
	Stats   ratelimit.Stats
}

// Ratios returns the worst (largest) and mean admitted/Limit over the
// windows, and the smallest.
func (r RealtimeReport) Ratios() (worst, mean, least float64) {
	least = 1e18
	for _, w := range r.Windows {
		f := float64(w.Admitted) / float64(r.Config.Limit)
		worst = max(worst, f)
		least = min(least, f)
		mean += f
	}
	if len(r.Windows) > 0 {
		mean /= float64(len(r.Windows))
	}
	return worst, mean, least
}

// RunRealtime runs a scenario in real time. It takes Windows+1 windows of
// wall-clock time.
func RunRealtime(ctx context.Context, cfg RealtimeConfig) (RealtimeReport, error) {
	if cfg.Instances < 1 || cfg.Windows < 1 || cfg.Limit < 1 || cfg.Window <= 0 || cfg.Load <= 0 || cfg.NewClient == nil {
		return RealtimeReport{}, errors.New("sim: Instances, Windows, Limit, Window, Load and NewClient are required")
	}
	if cfg.Mode == 0 {
		cfg.Mode = ratelimit.Hybrid
	}
	rule := ratelimit.Rule{Name: "rt", Limit: cfg.Limit, Window: cfg.Window, Mode: cfg.Mode}
	insts := make([]*ratelimit.Limiter, cfg.Instances)
	for i := range insts {
		rdb := cfg.NewClient()
		defer rdb.Close()
		l, err := ratelimit.New(ratelimit.Config{
			Redis: rdb, Rules: []ratelimit.Rule{rule}, KeyPrefix: cfg.KeyPrefix,
			SyncInterval: cfg.SyncInterval, InstanceID: fmt.Sprintf("rt-%d", i), MaxLocalKeys: 1024,
		})
		if err != nil {
			return RealtimeReport{}, err
		}
		defer l.Close()
		insts[i] = l
	}

	w := cfg.Window.Milliseconds()
	start := time.Now()
	firstWin := start.UnixMilli()/w + 1 // the first whole window
	end := time.UnixMilli((firstWin + int64(cfg.Windows)) * w)
	offered := make([]atomic.Int64, cfg.Windows)
	admitted := make([]atomic.Int64, cfg.Windows)
	// Each sender sends every instances-th request of a schedule of
	// Load·Limit per window: request k is due at start + k/rate.
	rate := cfg.Load * float64(cfg.Limit) / float64(cfg.Window)
	var wg sync.WaitGroup
	errc := make(chan error, cfg.Instances)
	for i, l := range insts {
		wg.Go(func() {
			for k := int64(i); ; k += int64(cfg.Instances) {
				due := start.Add(time.Duration(float64(k) / rate))
				if !due.Before(end) {
					return
				}
				if d := time.Until(due); d > 200*time.Microsecond {
					time.Sleep(d)
				}
				now := time.Now()
				dec, err := l.Allow(ctx, rule.Name, "hot", now)
				if err != nil {
					errc <- err
					return
				}
				win := now.UnixMilli()/w - firstWin
				if win < 0 || win >= int64(cfg.Windows) {
					continue
				}
				offered[win].Add(1)
				if dec.Allowed {
					admitted[win].Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return RealtimeReport{}, err
	}
	rep := RealtimeReport{Config: cfg, Windows: make([]Window, cfg.Windows)}
	for i := range rep.Windows {
		rep.Windows[i] = Window{Index: i, Offered: offered[i].Load(), Admitted: admitted[i].Load()}
	}
	rep.Stats = sumStats(insts)
	return rep, nil
}
