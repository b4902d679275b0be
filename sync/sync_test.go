package sync_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
	"github.com/drl-go/distributed-rate-limiter/local"
	syncer "github.com/drl-go/distributed-rate-limiter/sync"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testStore(t *testing.T) (*global.Store, string) {
	t.Helper()
	c := redistest.Client(t)
	p := redistest.Prefix(t, c)
	s := global.NewStore(c, global.Options{})
	t.Cleanup(s.Close)
	return s, p
}

// planner sends a 1-token lease request for every state and records what
// came back.
type planner struct {
	mu      sync.Mutex
	granted map[string]int64
	errs    int
	plans   atomic.Int64
}

func (p *planner) Plan(s *local.State, now, instances int64) (global.LeaseRequest, bool, bool) {
	p.plans.Add(1)
	return global.LeaseRequest{Key: s.Key, Now: now, Window: 60_000, Limit: 10, Want: 1}, true, false
}

func (p *planner) Apply(s *local.State, req global.LeaseRequest, res global.LeaseResult, err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.errs++
		return true
	}
	p.granted[s.Key] += res.Granted
	return false
}

func newReconciler(t *testing.T, store *global.Store, prefix string, pl *planner, reg *local.Registry, maxBatch int) *syncer.Reconciler {
	cache, err := local.NewCache(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return syncer.New(syncer.Config{
		Store: store, Registry: reg, Cache: cache, Planner: pl,
		Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }, Interval: time.Millisecond,
		InstancesKey: prefix + ":instances", ID: "a", MaxBatch: maxBatch,
	})
}

// TestPassSendsEveryRegisteredKey: one pass visits every registered state,
// in batches, applies each answer, and counts the instance.
func TestPassSendsEveryRegisteredKey(t *testing.T) {
	store, prefix := testStore(t)
	pl := &planner{granted: map[string]int64{}}
	var reg local.Registry
	for i := range 25 {
		reg.Add(local.NewState(global.Key(prefix, "r", fmt.Sprint(i)), 0))
	}
	r := newReconciler(t, store, prefix, pl, &reg, 10)
	if err := r.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(pl.granted) != 25 || pl.errs != 0 {
		t.Fatalf("applied %d keys with %d errors, want 25 and 0", len(pl.granted), pl.errs)
	}
	for k, g := range pl.granted {
		if g != 1 {
			t.Errorf("key %s granted %d, want 1", k, g)
		}
	}
	if reg.Len() != 0 {
		t.Fatalf("registry holds %d states after Apply released them all", reg.Len())
	}
	if got := r.Instances(); got != 1 {
		t.Fatalf("Instances() = %d, want 1", got)
	}
}

// TestLoopStartsAndStops: Start runs passes on its own goroutine; Stop
// waits for it (goleak checks) and is idempotent; Stop without Start is a
// no-op.
func TestLoopStartsAndStops(t *testing.T) {
	store, prefix := testStore(t)
	pl := &planner{granted: map[string]int64{}}
	var reg local.Registry
	r := newReconciler(t, store, prefix, pl, &reg, 0)
	r.Stop() // not started: no-op
	var passErr atomic.Value
	r.Start(func(err error) { passErr.Store(err) })
	deadline := time.Now().Add(5 * time.Second)
	for pl.plans.Load() < 3 && time.Now().Before(deadline) {
		reg.Add(local.NewState(global.Key(prefix, "r", "u"), 0))
		time.Sleep(time.Millisecond)
	}
	r.Stop()
	r.Stop()
	if pl.plans.Load() < 3 {
		t.Fatalf("the loop planned %d requests in 5 s", pl.plans.Load())
	}
	if err, _ := passErr.Load().(error); err != nil {
		t.Fatal(err)
	}
}

// TestPassReportsFailures: with the store closed, every key fails, stays
// registered, and the pass returns an error.
func TestPassReportsFailures(t *testing.T) {
	store, prefix := testStore(t)
	pl := &planner{granted: map[string]int64{}}
	var reg local.Registry
	r := newReconciler(t, store, prefix, pl, &reg, 0)
	reg.Add(local.NewState(global.Key(prefix, "r", "x"), 0))
	reg.Add(local.NewState(global.Key(prefix, "r", "y"), 0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := r.Pass(ctx)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Pass with a cancelled context = %v, want context.Canceled", err)
	}
	if pl.errs != 2 || reg.Len() != 2 {
		t.Fatalf("errors applied %d, registered %d; want 2 and 2", pl.errs, reg.Len())
	}
}

// slowPlanner is planner whose Plan takes at least delay, so that each
// pipeline of a pass takes at least that much per key.
type slowPlanner struct {
	planner
	delay time.Duration
}

func (p *slowPlanner) Plan(s *local.State, now, instances int64) (global.LeaseRequest, bool, bool) {
	time.Sleep(p.delay)
	return p.planner.Plan(s, now, instances)
}

func slowReconciler(t *testing.T, pl syncer.Planner, duty float64, keys, maxBatch int) (*syncer.Reconciler, *global.Store) {
	store, prefix := testStore(t)
	var reg local.Registry
	for i := range keys {
		reg.Add(local.NewState(global.Key(prefix, "r", fmt.Sprint(i)), 0))
	}
	cache, err := local.NewCache(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return syncer.New(syncer.Config{
		Store: store, Registry: &reg, Cache: cache, Planner: pl,
		Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }, Interval: time.Millisecond,
		InstancesKey: prefix + ":instances", ID: "a", MaxBatch: maxBatch, Duty: duty,
	}), store
}

// TestPassPausesBetweenPipelines: with Duty 0.5, a pass of three
// pipelines waits after the first two as long as each took, and not after
// the last: at least 3·busy + 2·busy in all.
func TestPassPausesBetweenPipelines(t *testing.T) {
	const delay = 10 * time.Millisecond // per key; 2 keys a pipeline
	pl := &slowPlanner{planner: planner{granted: map[string]int64{}}, delay: delay}
	r, _ := slowReconciler(t, pl, 0.5, 6, 2)
	start := time.Now()
	if err := r.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took, least := time.Since(start), 5*2*delay; took < least {
		t.Fatalf("pass took %v, want at least %v (pipelines of %v, a pause after the first two)", took, least, 2*delay)
	}
	if n := len(pl.granted); n != 6 {
		t.Fatalf("%d keys granted, want 6", n)
	}
}

// TestHurryEndsPauses: Hurry, called while a pass waits, ends the pass's
// waits at once: a Duty of 0.001 would otherwise wait about 999 times each
// pipeline's time (seconds).
func TestHurryEndsPauses(t *testing.T) {
	pl := &slowPlanner{planner: planner{granted: map[string]int64{}}, delay: 5 * time.Millisecond}
	r, _ := slowReconciler(t, pl, 0.001, 4, 1)
	hurry := time.AfterFunc(100*time.Millisecond, r.Hurry) // during the first pause
	defer hurry.Stop()
	start := time.Now()
	if err := r.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("pass took %v after Hurry, want well under the ~5 s of its first pause", took)
	}
	if n := len(pl.granted); n != 4 {
		t.Fatalf("%d keys granted, want 4", n)
	}
	r.Hurry() // idempotent
}
