package ratelimit

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// This file keeps the counters behind RuleStats, SyncStats and Breakers:
// what a metrics exporter (the prom package) reads at scrape time, without
// the root package knowing of any metrics library.
//
// Cost on the decision path: none for a hybrid decision made in process
// (it is counted in its key's State, and fold adds the counts to its
// rule's here as the sync pass takes the key); one atomic add on a
// per-rule counter for a decision that asked Redis or fell back to a
// policy, paths that pay a round trip or an outage anyway; a few per key
// sent at a sync pass.

// RuleStats counts one rule's decisions and, for a Hybrid rule, its leases
// and reconciliations, since New. Counters never go down.
type RuleStats struct {
	// Name, ID, Mode, Limit and Shadow are the rule's, as of the newest
	// Reload. A rule keeps its counters across a Reload that keeps its ID
	// (see Limiter.Reload); a removed rule is no longer listed.
	Name   string
	ID     string
	Mode   Mode
	Limit  int64
	Shadow bool

	// LocalAllowed and LocalDenied are decisions made in process: every
	// decision of a Local rule, and a Hybrid rule's decisions from its
	// lease or its known counts. A Hybrid rule's are added by the sync pass
	// that takes the key, so they lag by at most one SyncInterval (Sync and
	// Close bring them up to date).
	LocalAllowed, LocalDenied int64
	// RedisAllowed and RedisDenied are decisions Redis answered: every
	// Strict decision, and a Hybrid rule's decisions without lease.
	RedisAllowed, RedisDenied int64
	// FallbackAllowed and FallbackDenied are decisions the rule's
	// OnFailure policy made because Redis could not answer (FailError's
	// errors are not decisions: they are in Stats.RedisErrors).
	FallbackAllowed, FallbackDenied int64

	// LeaseGranted are the tokens Redis leased to this instance (Hybrid),
	// LeaseReturned the unspent tokens it gave back, in calls Redis
	// answered. Every token admitted from a lease was granted, so
	// LeaseGranted ≥ LeaseReturned + the rule's in-process admissions;
	// the difference is tokens whose window ended unspent, and returns of
	// calls that came back stale (they stay counted in Redis, unspent).
	LeaseGranted, LeaseReturned int64
	// Reconciliations are the lease answers of sync passes for the rule's
	// keys. Overshoots are those in which the key's global weighted count,
	// as Redis reported it (admissions and leases of every instance, the
	// previous window weighted as the sliding window weighs it), exceeded
	// Limit; OvershootTokens sums the excess, rounded up to whole tokens;
	// MaxOvershoot is the largest excess seen since New (never reset).
	// Leases alone never exceed the limit: an overshoot comes from
	// admissions credited after an outage (FailLocal, FailOpen), from
	// instances configured with different limits for one rule, or from
	// Redis losing a key.
	Reconciliations, Overshoots, OvershootTokens, MaxOvershoot int64

	// ShadowAllowed and ShadowDenied are the would-be decisions of the
	// rule while it was a shadow rule (Rule.Shadow), counted as they are
	// made (an atomic add each): requests it admitted, and requests it
	// would have denied but let through. The decisions above count them
	// too, as the rule really decided them (a would-be denial among the
	// denials), peeks excepted; a request of an n that can never pass is
	// one ShadowDenied.
	ShadowAllowed, ShadowDenied int64

	// The decisions of the rule's classes (Rule.Classes) are the rule's:
	// those of a class with a Limit are in the counters above, and
	// UnlimitedAllowed and DenyDenied count the decisions of its Unlimited
	// and Deny classes, which count nothing else. Peeks are not counted.
	UnlimitedAllowed, DenyDenied int64

	// GivenBack are admissions of the rule given back: by Refund (those it
	// gave back, not those it failed to), and by AllowAll when another of
	// the request's rules denied or failed. The decision counters above
	// still count them as allowed: a decision is counted as it was made.
	GivenBack int64
}

// ruleCounters are a rule's counters for RuleStats.
type ruleCounters struct {
	inProcAllowed, inProcDenied     atomic.Int64 // Hybrid: folded at the sync pass
	redisAllowed, redisDenied       atomic.Int64
	fallbackAllowed, fallbackDenied atomic.Int64
	granted, returned               atomic.Int64
	reconciled, overshoots, overSum atomic.Int64
	overMax                         atomic.Int64
	shadowAllowed, shadowDenied     atomic.Int64
	unlimited, denied               atomic.Int64 // its Unlimited and Deny classes' decisions (overrides.go)
	givenBack                       atomic.Int64
}

// shadowed counts a shadow rule's would-be decision.
func (c *ruleCounters) shadowed(allowed bool) {
	if allowed {
		c.shadowAllowed.Add(1)
	} else {
		c.shadowDenied.Add(1)
	}
}

// redis counts a decision Redis answered.
func (c *ruleCounters) redis(allowed bool) {
	if allowed {
		c.redisAllowed.Add(1)
	} else {
		c.redisDenied.Add(1)
	}
}

// fallback counts a decision of the failure policy.
func (c *ruleCounters) fallback(allowed bool) {
	if allowed {
		c.fallbackAllowed.Add(1)
	} else {
		c.fallbackDenied.Add(1)
	}
}

// fold adds a key's in-process decisions, as the sync pass takes it.
func (c *ruleCounters) fold(allowed, denied int64) {
	if allowed > 0 {
		c.inProcAllowed.Add(allowed)
	}
	if denied > 0 {
		c.inProcDenied.Add(denied)
	}
}

// lease counts what an answered lease call granted and took back.
func (c *ruleCounters) lease(req global.LeaseRequest, res global.LeaseResult) {
	if res.Granted > 0 {
		c.granted.Add(res.Granted)
	}
	if n := req.Returns[0].N + req.Returns[1].N; n > 0 {
		c.returned.Add(n)
	}
}

// overshoot returns how far the key's weighted count in res exceeds the
// rule's limit, in whole tokens rounded up; 0 if it does not.
func (r *rule) overshoot(res global.LeaseResult) int64 {
	w := r.window
	elapsed := res.Now % w // res.Now > 0
	// In float: a count far above the limit (a misconfigured instance)
	// must not overflow the scaled integers.
	over := float64(r.prevWeight(res.Prev))*float64(w-elapsed)/float64(w) + float64(res.Cur) - float64(r.Limit)
	if over <= 0 {
		return 0
	}
	return int64(math.Ceil(over - 1e-9))
}

// reconcile counts a sync pass's lease answer for a key of r (err: the
// call failed; nothing is learnt), and the key in the pass's batch.
func (h *hybrid) reconcile(r *rule, res global.LeaseResult, err error) {
	h.l.passes.keys.Add(1)
	if err != nil || res.Stale {
		return
	}
	c := &r.stats
	c.reconciled.Add(1)
	ex := r.overshoot(res)
	if ex <= 0 {
		return
	}
	c.overshoots.Add(1)
	c.overSum.Add(ex)
	for {
		m := c.overMax.Load()
		if ex <= m || c.overMax.CompareAndSwap(m, ex) {
			return
		}
	}
}

// RuleStats returns the counters of every rule in force, in the order of
// Config.Rules (or of the newest Reload's rules). It reads a few atomic
// counters per rule and visits no key.
func (l *Limiter) RuleStats() []RuleStats {
	set := l.rules.Load()
	out := make([]RuleStats, 0, len(set.list))
	for _, r := range set.list {
		c := &r.stats
		st := RuleStats{
			Name: r.Name, ID: r.ID, Mode: r.Mode, Limit: r.Limit, Shadow: r.Shadow,
			ShadowAllowed: c.shadowAllowed.Load(), ShadowDenied: c.shadowDenied.Load(),
			LocalAllowed: c.inProcAllowed.Load(), LocalDenied: c.inProcDenied.Load(),
			RedisAllowed: c.redisAllowed.Load(), RedisDenied: c.redisDenied.Load(),
			FallbackAllowed: c.fallbackAllowed.Load(), FallbackDenied: c.fallbackDenied.Load(),
			LeaseGranted: c.granted.Load(), LeaseReturned: c.returned.Load(),
			Reconciliations: c.reconciled.Load(), Overshoots: c.overshoots.Load(),
			OvershootTokens: c.overSum.Load(), MaxOvershoot: c.overMax.Load(),
			GivenBack: c.givenBack.Load(),
		}
		if r.table != nil {
			st.LocalAllowed, st.LocalDenied = r.table.Counts()
		}
		addClassStats(&st, r)
		out = append(out, st)
	}
	return out
}

// Histogram is a distribution of observations in fixed buckets, as
// SyncStats reports it.
type Histogram struct {
	// UpperBounds are the buckets' inclusive upper bounds, ascending; a
	// last bucket, +Inf, is implied.
	UpperBounds []float64
	// Counts[i] is the number of observations ≤ UpperBounds[i]
	// (cumulative, as Prometheus counts buckets).
	Counts []uint64
	// Count is the number of observations (the +Inf bucket), Sum their
	// sum.
	Count uint64
	Sum   float64
}

// The buckets of SyncStats's histograms.
var (
	passSecondsBounds = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	passKeysBounds    = []float64{0, 1, 10, 100, 1000, 10000, 100000, 1000000}
)

// histogram counts observations in fixed buckets with plain atomics.
type histogram struct {
	bounds []float64
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    atomic.Int64    // in units of scale
	scale  float64         // sum's unit, in the histogram's unit
}

func newHistogram(bounds []float64, scale float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1), scale: scale}
}

// observe adds one observation v, in units of scale.
func (h *histogram) observe(v int64) {
	f := float64(v) * h.scale
	i := 0
	for i < len(h.bounds) && f > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(v)
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{UpperBounds: slices.Clone(h.bounds), Counts: make([]uint64, len(h.bounds))}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		if i < len(h.bounds) {
			out.Counts[i] = cum
		}
	}
	out.Count = cum
	out.Sum = float64(h.sum.Load()) * h.scale
	return out
}

// passStats are the sync passes' histograms.
type passStats struct {
	mu       sync.Mutex   // one pass at a time, so that keys counts one pass
	keys     atomic.Int64 // keys sent in the pass under way
	duration *histogram   // ns
	batch    *histogram   // keys
}

// SyncStats describes the sync passes since New.
type SyncStats struct {
	// Duration is the passes' wall-clock durations, in seconds: the
	// heartbeat, the credits of fallback admissions and every key's lease
	// call, failed passes included.
	Duration Histogram
	// Keys is the number of hybrid keys each pass sent to Redis.
	Keys Histogram
}

// SyncStats returns the sync passes' histograms. Without Redis (only Local
// rules) no pass runs and both are empty.
func (l *Limiter) SyncStats() SyncStats {
	return SyncStats{Duration: l.passes.duration.snapshot(), Keys: l.passes.batch.snapshot()}
}

func newPassStats() *passStats {
	return &passStats{duration: newHistogram(passSecondsBounds, 1e-9), batch: newHistogram(passKeysBounds, 1)}
}

// pass runs one sync pass and records its duration and keys.
func (l *Limiter) pass(ctx context.Context) error {
	p := l.passes
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys.Store(0)
	start := time.Now()
	err := l.syncer.Pass(ctx)
	p.duration.observe(int64(time.Since(start)))
	p.batch.observe(p.keys.Load())
	return err
}

// syncLoop runs l.pass every SyncInterval (it stands for the Reconciler's
// own loop, so that every pass is timed).
type syncLoop struct {
	stop, done chan struct{}
}

// startLoop starts the sync loop; errors go to onError.
func (l *Limiter) startLoop(onError func(error)) {
	l.loop = syncLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.loop.done)
		t := time.NewTicker(l.cfg.SyncInterval)
		defer t.Stop()
		for {
			select {
			case <-l.loop.stop:
				return
			case <-t.C:
				if err := l.pass(context.Background()); err != nil {
					onError(err)
				}
			}
		}
	}()
}

// stopLoop stops the loop and waits for its pass under way. It is a no-op
// without loop, and is called once (by Close).
func (l *Limiter) stopLoop() {
	if l.loop.stop == nil {
		return
	}
	close(l.loop.stop)
	<-l.loop.done
}

// BreakerStatus is the state of one circuit breaker in front of Redis.
type BreakerStatus struct {
	// Node is the master's address on a cluster; empty for a single node
	// (or, on a cluster, the breaker of keys whose master is not known).
	Node string
	// State is "closed", "open" or "half-open".
	State string
}

// Breakers returns the status of every circuit breaker: one for a single
// node, one per master seen on a cluster; none when no rule needs Redis.
func (l *Limiter) Breakers() []BreakerStatus {
	if l.store == nil {
		return nil
	}
	all := l.store.Breakers()
	out := make([]BreakerStatus, len(all))
	for i, b := range all {
		out[i] = BreakerStatus{Node: b.Node, State: b.State.String()}
	}
	return out
}
