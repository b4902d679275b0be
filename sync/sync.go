// Package sync is the hybrid mode's reconciler: a loop that, every
// interval, reports each active key's requests to Redis, gives back unspent
// leases, reserves new ones and learns the keys' global counts, in
// pipelines of up to MaxBatch keys, sent one after another, with a pause
// after each so that a pass over many keys leaves Redis and the CPU to the
// decisions for part of the time (Duty).
//
// The package is named sync after its job; importers alias it
// (`syncer "github.com/drl-go/distributed-rate-limiter/sync"`) so that it
// never shadows the standard library's sync.
package sync

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// Planner decides, per key, what a pass sends and what it does with the
// answer. The ratelimit package implements it with its lease sizing.
type Planner interface {
	// Plan returns the request for s at now (ms), and whether to send one.
	// keep reports whether s stays registered when nothing is sent.
	Plan(s *local.State, now, instances int64) (req global.LeaseRequest, send, keep bool)
	// Apply takes the answer (or the error) to a request that Plan made,
	// and reports whether s stays registered.
	Apply(s *local.State, req global.LeaseRequest, res global.LeaseResult, err error) (keep bool)
}

// Config configures a Reconciler. Every field is required, but that
// Registry, Cache and Planner are nil together when there are no hybrid
// keys (the passes then only beat the heart and call OnPass).
type Config struct {
	Store    *global.Store
	Registry *local.Registry
	Cache    *local.Cache // Forget is called once per pass
	Planner  Planner
	Now      func() time.Time
	Interval time.Duration
	// InstancesKey is the Redis key of the instance registry, ID this
	// instance's member in it.
	InstancesKey, ID string
	// MaxBatch caps the requests in one pipeline. Default 256: at the
	// lease script's ~10 µs of Redis CPU a key, about 2.5 ms of work that a
	// strict call may find queued ahead of it.
	MaxBatch int
	// Duty is the share of a pass's time that its pipelines may take: after
	// each pipeline but the last, the pass waits for as long again as the
	// pipeline took (its planning included) times (1-Duty)/Duty, so that
	// decisions find Redis and the CPU free for 1-Duty of the time however
	// many keys a pass has. Default 0.5; 1 never waits. Hurry ends the
	// waits.
	Duty float64
	// OnTake, if not nil, is called on each state as a pass takes it from
	// the Registry, before the pass plans it (outside the Registry's lock).
	OnTake func(*local.State)
	// OnPass, if not nil, runs in every pass whose heartbeat Redis
	// answered, before the keys' requests, with the pass's clock (ms); its
	// error joins the pass's.
	OnPass func(ctx context.Context, now int64) error
}

// Reconciler runs sync passes, on demand (Pass) or every Interval (Start).
// It is safe for concurrent use; passes never overlap.
type Reconciler struct {
	cfg       Config
	passMu    sync.Mutex // one pass at a time
	instances atomic.Int64
	lastNow   atomic.Int64 // ms: the clock at the start of the last pass
	passesOK  atomic.Int64
	failures  atomic.Int64 // passes that returned an error

	hurry     chan struct{} // closed by Hurry: passes no longer wait between pipelines
	hurryOnce sync.Once

	stop chan struct{}
	done chan struct{}
}

// New returns a Reconciler; it does nothing until Pass or Start.
func New(cfg Config) *Reconciler {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.Duty <= 0 || cfg.Duty > 1 {
		cfg.Duty = 0.5
	}
	r := &Reconciler{cfg: cfg, hurry: make(chan struct{})}
	r.instances.Store(1)
	r.lastNow.Store(cfg.Now().UnixMilli())
	return r
}

// Hurry makes the pass under way and every later one send their pipelines
// without waiting between them (Duty): for a last pass, that must end
// soon. It is idempotent.
func (r *Reconciler) Hurry() { r.hurryOnce.Do(func() { close(r.hurry) }) }

// Passes returns how many passes ran, and how many of them returned an
// error.
func (r *Reconciler) Passes() (total, failed int64) {
	failed = r.failures.Load()
	return r.passesOK.Load() + failed, failed
}

// LastNow returns the clock's reading (ms) at the start of the last pass, or
// at New before the first: a clock no more than one Interval stale while
// the loop runs, which costs an atomic load instead of a clock read.
func (r *Reconciler) LastNow() int64 { return r.lastNow.Load() }

// Instances returns the number of live instances seen at the last pass
// (1 before the first).
func (r *Reconciler) Instances() int64 { return r.instances.Load() }

// Pass runs one reconciliation now: a heartbeat, then one request per
// registered key that needs one, in pipelines of MaxBatch. Keys whose
// request fails stay registered, their requests to be reported again by the
// next pass. It returns the errors met, joined.
func (r *Reconciler) Pass(ctx context.Context) error {
	r.passMu.Lock()
	defer r.passMu.Unlock()
	err := r.pass(ctx)
	if err != nil {
		r.failures.Add(1)
	} else {
		r.passesOK.Add(1)
	}
	return err
}

func (r *Reconciler) pass(ctx context.Context) error {
	now := r.cfg.Now().UnixMilli()
	r.lastNow.Store(now)
	var errs []error

	ttl := 3 * r.cfg.Interval.Milliseconds()
	if n, err := r.cfg.Store.Heartbeat(ctx, r.cfg.InstancesKey, r.cfg.ID, now, max(ttl, 1)); err != nil {
		if errors.Is(err, global.ErrUnavailable) && !r.cfg.Store.Cluster() {
			// Redis is down, or the breaker holds calls back: the keys keep
			// their leases and their unreported requests for a later pass.
			return err
		}
		// On a cluster only the registry's master may be down: the pass
		// goes on with the count of instances last seen, and the keys of
		// masters whose breaker is open fail at once (ErrBreakerOpen).
		errs = append(errs, err)
	} else {
		r.instances.Store(max(n, 1))
	}
	if r.cfg.OnPass != nil {
		if err := r.cfg.OnPass(ctx, now); err != nil {
			errs = append(errs, err)
		}
	}
	if r.cfg.Registry != nil {
		errs = append(errs, r.keys(ctx, now)...)
	}
	return errors.Join(errs...)
}

// keys runs the pass's part for the registered hybrid keys.
func (r *Reconciler) keys(ctx context.Context, now int64) []error {
	var errs []error
	r.cfg.Cache.Forget()

	states := r.cfg.Registry.Take(r.cfg.OnTake)
	instances := r.instances.Load()
	var (
		batch  []*local.State
		reqs   []global.LeaseRequest
		failed int
		start  = time.Now() // of the pipeline being planned
	)
	flush := func() {
		res, rerrs := r.cfg.Store.LeaseBatch(ctx, reqs)
		for i, s := range batch {
			if rerrs[i] != nil {
				failed++
				if failed == 1 {
					errs = append(errs, rerrs[i])
				}
			}
			if r.cfg.Planner.Apply(s, reqs[i], res[i], rerrs[i]) {
				r.cfg.Registry.Add(s)
			}
		}
		batch, reqs = batch[:0], reqs[:0]
	}
	for i, s := range states {
		req, send, keep := r.cfg.Planner.Plan(s, now, instances)
		if !send {
			if keep {
				r.cfg.Registry.Add(s)
			}
			continue
		}
		batch = append(batch, s)
		reqs = append(reqs, req)
		if len(reqs) == r.cfg.MaxBatch {
			flush()
			if i < len(states)-1 {
				r.pause(ctx, time.Since(start))
			}
			start = time.Now()
		}
	}
	if len(reqs) > 0 {
		flush()
	}
	if failed > 1 {
		errs = append(errs, fmt.Errorf("sync: %d of %d key requests failed", failed, len(states)))
	}
	return errs
}

// pause waits after a pipeline that took busy, so that the pass's
// pipelines take Duty of its time, until ctx ends or Hurry.
func (r *Reconciler) pause(ctx context.Context, busy time.Duration) {
	if r.cfg.Duty >= 1 {
		return
	}
	t := time.NewTimer(time.Duration(float64(busy) * (1 - r.cfg.Duty) / r.cfg.Duty))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-r.hurry:
	}
}

// Start runs Pass every Interval on a goroutine of its own until Stop.
// Errors go to onError, which may be nil. Start must be called at most once.
func (r *Reconciler) Start(onError func(error)) {
	r.stop = make(chan struct{})
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		t := time.NewTicker(r.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				if err := r.Pass(context.Background()); err != nil && onError != nil {
					onError(err)
				}
			}
		}
	}()
}

// Stop stops the loop started by Start and waits for it to end; it runs no
// pass itself. It is a no-op if Start was not called, and idempotent.
func (r *Reconciler) Stop() {
	if r.stop == nil {
		return
	}
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	<-r.done
}
