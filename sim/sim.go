// Package sim runs deterministic multi-instance simulations of the limiter:
// K Limiter instances on one Redis, one hot user, explicit timestamps,
// every instance's sync pass run at virtual sync ticks, no sleeps. The same
// traffic runs through a central reference (a Local-mode Limiter: the same
// algorithm, computed exactly in one process), and the admissions of the
// instances are replayed through a second reference, which must accept
// every one of them: a request it refuses is one the instances admitted
// beyond the limit.
package sim

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// Traffic is how requests spread over time and instances.
type Traffic int

// The traffic shapes.
const (
	Uniform    Traffic = iota // random times, random instance
	RoundRobin                // evenly spaced, instances in turn (a load balancer)
	Skewed                    // random times, 90 % to instance 0, the rest spread
	Bursty                    // 80 % in one burst of a tenth of the window, random instances
)

// String returns the traffic's name.
func (t Traffic) String() string {
	switch t {
	case Uniform:
		return "uniform"
	case RoundRobin:
		return "round-robin"
	case Skewed:
		return "skewed-90/10"
	case Bursty:
		return "bursty"
	}
	return fmt.Sprintf("Traffic(%d)", int(t))
}

// Config is one simulation.
type Config struct {
	// NewClient returns a Redis client for one instance; each instance
	// gets its own. The simulation closes them.
	NewClient func() redis.UniversalClient
	// KeyPrefix isolates the simulation's keys.
	KeyPrefix string

	Instances    int
	SyncInterval time.Duration
	Limit        int64
	Window       time.Duration
	Algorithm    ratelimit.Algorithm // SlidingWindow or FixedWindow
	Mode         ratelimit.Mode      // Hybrid (default) or Strict
	Traffic      Traffic
	// Load is the offered requests per window, as a multiple of Limit.
	Load float64
	// Windows is how many windows to simulate.
	Windows int
	Seed    uint64
}

// Window is what one aligned window saw.
type Window struct {
	Index     int   // 0-based
	Offered   int64 // requests sent
	Admitted  int64 // admitted by the instances together
	Reference int64 // admitted by the central reference
	Overshoot int64 // admissions the replay refused: beyond the limit
}

// Report is a simulation's outcome.
type Report struct {
	Config  Config
	Windows []Window
	// Decisions is the number of requests decided; Stats sums the
	// instances' counters (Stats.HybridRedis: decisions that asked Redis), the
	// local ones as of each instance's last sync pass.
	Decisions int64
	Stats     ratelimit.Stats
	// SyncPasses is the number of sync passes run, over all instances.
	SyncPasses int64
}

// MaxOvershoot returns the largest overshoot of any window.
func (r Report) MaxOvershoot() int64 {
	var m int64
	for _, w := range r.Windows {
		m = max(m, w.Overshoot)
	}
	return m
}

// event is one request.
type event struct {
	at       int64 // ms
	instance int
}

// base is the simulations' start: an instant aligned to any window of
// whole seconds.
var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Run runs one simulation.
func Run(ctx context.Context, cfg Config) (Report, error) {
	if cfg.Instances < 1 || cfg.Windows < 1 || cfg.Limit < 1 || cfg.Window <= 0 || cfg.SyncInterval <= 0 || cfg.NewClient == nil {
		return Report{}, errors.New("sim: Instances, Windows, Limit, Window, SyncInterval and NewClient are required")
	}
	if cfg.Mode == 0 {
		cfg.Mode = ratelimit.Hybrid
	}
	now := base // the virtual clock
	clock := func() time.Time { return now }
	rule := ratelimit.Rule{Name: "sim", Limit: cfg.Limit, Window: cfg.Window, Algorithm: cfg.Algorithm, Mode: cfg.Mode}
	const user = "hot"

	var closers []func() error
	defer func() {
		for _, c := range slices.Backward(closers) {
			_ = c()
		}
	}()
	insts := make([]*ratelimit.Limiter, cfg.Instances)
	for i := range insts {
		rdb := cfg.NewClient()
		closers = append(closers, rdb.Close)
		l, err := ratelimit.New(ratelimit.Config{
			Redis: rdb, Rules: []ratelimit.Rule{rule}, KeyPrefix: cfg.KeyPrefix,
			SyncInterval: cfg.SyncInterval, ManualSync: true, Now: clock,
			InstanceID: fmt.Sprintf("sim-%d", i), MaxLocalKeys: 1024,
		})
		if err != nil {
			return Report{}, err
		}
		closers = append(closers, l.Close)
		insts[i] = l
	}
	localRule := rule
	localRule.Mode = ratelimit.Local
	newRef := func() (*ratelimit.Limiter, error) {
		return ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{localRule}, Now: clock})
	}
	ref, err := newRef()
	if err != nil {
		return Report{}, err
	}
	closers = append(closers, ref.Close)
	replay, err := newRef()
	if err != nil {
		return Report{}, err
	}
	closers = append(closers, replay.Close)

	events := generate(cfg)
	w := cfg.Window.Milliseconds()
	sync := cfg.SyncInterval.Milliseconds()
	start := base.UnixMilli()
	rep := Report{Config: cfg, Windows: make([]Window, cfg.Windows)}
	for i := range rep.Windows {
		rep.Windows[i].Index = i
	}
	nextSync := start + sync
	for _, ev := range events {
		for nextSync <= ev.at { // sync ticks due before this request
			now = time.UnixMilli(nextSync)
			for _, l := range insts {
				if err := l.Sync(ctx); err != nil {
					return rep, err
				}
				rep.SyncPasses++
			}
			nextSync += sync
		}
		now = time.UnixMilli(ev.at)
		win := &rep.Windows[(ev.at-start)/w]
		win.Offered++
		d, err := insts[ev.instance].Allow(ctx, rule.Name, user, now)
		if err != nil {
			return rep, err
		}
		rep.Decisions++
		if err := checkDecision(d, cfg.Limit, cfg.Window); err != nil {
			return rep, fmt.Errorf("sim: request %d at +%d ms on instance %d: %w", rep.Decisions, ev.at-start, ev.instance, err)
		}
		if d.Allowed {
			win.Admitted++
			rd, err := replay.Allow(ctx, rule.Name, user, now)
			if err != nil {
				return rep, err
			}
			if !rd.Allowed {
				win.Overshoot++
			}
		}
		rd, err := ref.Allow(ctx, rule.Name, user, now)
		if err != nil {
			return rep, err
		}
		if rd.Allowed {
			win.Reference++
		}
	}
	rep.Stats = sumStats(insts)
	return rep, nil
}

// checkDecision checks what every decision must satisfy: Remaining within
// [0, limit], no wait when allowed, and when denied a wait of more than 0
// and at most two windows.
func checkDecision(d ratelimit.Decision, limit int64, w time.Duration) error {
	switch {
	case d.Remaining < 0 || d.Remaining > limit:
		return fmt.Errorf("remaining %d outside [0, %d]", d.Remaining, limit)
	case d.Allowed && d.RetryAfter != 0:
		return fmt.Errorf("allowed with RetryAfter %v", d.RetryAfter)
	case !d.Allowed && (d.RetryAfter <= 0 || d.RetryAfter > 2*w):
		return fmt.Errorf("denied with RetryAfter %v", d.RetryAfter)
	}
	return nil
}

// sumStats adds up the instances' decision counters.
func sumStats(insts []*ratelimit.Limiter) ratelimit.Stats {
	var sum ratelimit.Stats
	for _, l := range insts {
		st := l.Stats()
		sum.HybridInProcessAllowed += st.HybridInProcessAllowed
		sum.HybridInProcessDenied += st.HybridInProcessDenied
		sum.HybridRedis += st.HybridRedis
		sum.HybridRedisAllowed += st.HybridRedisAllowed
		sum.HybridRedisDenied += st.HybridRedisDenied
		sum.StrictAllowed += st.StrictAllowed
		sum.StrictDenied += st.StrictDenied
		sum.RedisErrors += st.RedisErrors
		sum.SyncPasses += st.SyncPasses
		sum.SyncFailures += st.SyncFailures
		sum.ActiveKeys += st.ActiveKeys
	}
	return sum
}

// generate returns the simulation's requests in time order.
func generate(cfg Config) []event {
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Traffic)))
	w := cfg.Window.Milliseconds()
	start := base.UnixMilli()
	perWindow := int64(cfg.Load * float64(cfg.Limit))
	var evs []event
	for k := range int64(cfg.Windows) {
		ws := start + k*w
		burstAt := ws + rng.Int64N(w-w/10)
		for i := range perWindow {
			var ev event
			switch cfg.Traffic {
			case RoundRobin:
				ev = event{at: ws + i*w/perWindow, instance: int((k*perWindow + i) % int64(cfg.Instances))}
			case Skewed:
				ev = event{at: ws + rng.Int64N(w), instance: 0}
				if cfg.Instances > 1 && rng.IntN(10) == 0 {
					ev.instance = 1 + rng.IntN(cfg.Instances-1)
				}
			case Bursty:
				ev = event{at: ws + rng.Int64N(w), instance: rng.IntN(cfg.Instances)}
				if rng.IntN(10) < 8 {
					ev.at = burstAt + rng.Int64N(max(w/10, 1))
				}
			default:
				ev = event{at: ws + rng.Int64N(w), instance: rng.IntN(cfg.Instances)}
			}
			evs = append(evs, ev)
		}
	}
	slices.SortStableFunc(evs, func(a, b event) int { return cmp.Compare(a.at, b.at) })
	return evs
}
