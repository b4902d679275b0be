package ratelimit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// This file is what the Limiter does when Redis cannot answer: the rules'
// failure policies, the pending admissions that Redis is told of when it
// returns, and the health the Limiter reports.

// ErrUnavailable is wrapped by the errors of decisions that needed Redis
// and could not reach it, under the FailError policy (the others decide
// without it). Callers branch on it with errors.Is.
var ErrUnavailable = errors.New("ratelimit: redis unavailable")

// FailurePolicy is what a rule decides when Redis cannot: it is down, it
// does not answer within Config.Timeout, or the circuit breaker holds calls
// back. The zero value means the default, FailLocal.
type FailurePolicy uint8

const (
	// FailLocal keeps enforcing in this process, with the rule's own
	// algorithm, at Limit ÷ the number of live instances last seen (at
	// least 1), so that the fleet as a whole stays near the limit. A
	// hybrid key spends what its lease still holds first. The default.
	FailLocal FailurePolicy = iota + 1
	// FailOpen allows every request.
	FailOpen
	// FailClosed denies every request, with a RetryAfter of the breaker's
	// remaining backoff (at least 1 s).
	FailClosed
	// FailError returns an error wrapping ErrUnavailable, for callers that
	// decide themselves.
	FailError
	numPolicies
)

// String returns the policy's name.
func (p FailurePolicy) String() string {
	switch p {
	case 0:
		return "default"
	case FailLocal:
		return "fail_local"
	case FailOpen:
		return "fail_open"
	case FailClosed:
		return "fail_closed"
	case FailError:
		return "fail_error"
	}
	return fmt.Sprintf("FailurePolicy(%d)", uint8(p))
}

// BreakerConfig tunes the circuit breaker in front of Redis. After Failures
// failed or timed-out calls in a row it opens: calls go straight to the
// rules' failure policies, without waiting on Redis, for a backoff; then one
// probe goes through (half-open), and its success closes the breaker, its
// failure reopens it for twice the backoff, up to MaxBackoff. Sync passes
// back off with it. The zero value of each field means its default.
type BreakerConfig struct {
	// Failures in a row that open the breaker. Default 5.
	Failures int
	// Backoff is the first open period. Default 100 ms.
	Backoff time.Duration
	// MaxBackoff caps the open period. Default 5 s.
	MaxBackoff time.Duration
	// Jitter spreads each open period by up to this fraction either way,
	// so that instances do not probe together. Default 0.2; negative: none.
	Jitter float64
	// ProbeTimeout is how long a probe may go unanswered before it counts
	// as failed. Default 1 s.
	ProbeTimeout time.Duration
}

// HealthState is what a Limiter believes about Redis.
type HealthState uint8

const (
	// Healthy: Redis answers; nothing is owed to it.
	Healthy HealthState = iota
	// Degraded: Redis does not answer; decisions follow the rules' failure
	// policies.
	Degraded
	// Recovering: a probe is under way, or Redis answers again and the
	// admissions made without it are still being credited.
	Recovering
)

// String returns the state's name.
func (s HealthState) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Recovering:
		return "recovering"
	}
	return fmt.Sprintf("HealthState(%d)", uint8(s))
}

// Health is what a Limiter believes about Redis now.
type Health struct {
	State HealthState
	// Since is when the Limiter entered State.
	Since time.Time
	// Reason is, unless Healthy, the failure that degraded the Limiter.
	Reason error
	// Pending counts the keys with admissions made without Redis and not
	// yet credited to it.
	Pending int64
}

// Health returns what the Limiter believes about Redis now. A Limiter
// without Redis rules is always Healthy.
func (l *Limiter) Health() Health {
	if l.store == nil {
		return Health{State: Healthy, Since: l.health.started}
	}
	l.health.mu.Lock()
	defer l.health.mu.Unlock()
	h := l.health.cur
	h.Pending = l.pending.len()
	return h
}

// healthTracker turns the breaker's transitions and the pending
// admissions into the Limiter's Health, tells Config.OnHealthChange and
// logs the changes.
type healthTracker struct {
	l       *Limiter
	started time.Time

	mu         sync.Mutex
	cur        Health
	breakers   map[string]global.BreakerState // by node: one entry for a single node
	lastReport time.Time                      // of the outage summary
	downSince  time.Time                      // when the outage was first logged
	logged     HealthState
	reported   Stats // as of the last summary, which logs what changed since

	hookMu sync.Mutex  // serialises OnHealthChange
	told   HealthState // the state OnHealthChange heard last; under hookMu
}

// onBreaker is the Store's OnBreakerChange. On a cluster each master has
// its breaker: the Limiter is Degraded while any is open.
func (t *healthTracker) onBreaker(st global.BreakerStatus) {
	t.mu.Lock()
	if st.State == global.Closed {
		delete(t.breakers, st.Node)
	} else {
		if t.breakers == nil {
			t.breakers = make(map[string]global.BreakerState)
		}
		t.breakers[st.Node] = st.State
	}
	t.mu.Unlock()
	t.update(st.Reason, st.Since)
}

// breaker returns the state of the least healthy breaker. It requires t.mu.
func (t *healthTracker) breaker() global.BreakerState {
	worst := global.Closed
	for _, s := range t.breakers {
		if s == global.Open {
			return s
		}
		worst = s
	}
	return worst
}

// update recomputes the Health from the breaker and the pending
// admissions, and reports a change.
func (t *healthTracker) update(reason error, at time.Time) {
	t.mu.Lock()
	next := Healthy
	switch b := t.breaker(); {
	case b == global.Open:
		next = Degraded
	case b == global.HalfOpen, t.l.pending.len() > 0 && t.cur.State != Healthy:
		next = Recovering
	}
	if next == t.cur.State {
		t.mu.Unlock()
		return
	}
	if next == Healthy {
		reason = nil
	} else if reason == nil {
		reason = t.cur.Reason
	}
	t.cur = Health{State: next, Since: at, Reason: reason}
	// Log the outage's start and end; the probes in between go to Debug,
	// and the summary per LogInterval says what the outage costs.
	log := t.l.cfg.Logger
	switch {
	case next == Degraded && t.logged == Healthy:
		t.logged = Degraded
		t.lastReport, t.downSince = at, at
		t.reported = t.l.Stats()
		log.Warn("ratelimit: redis unavailable, decisions follow the failure policies", "err", reason)
	case next == Healthy:
		t.logged = Healthy
		log.Info("ratelimit: redis available again", "down_for", at.Sub(t.downSince))
	default:
		log.Debug("ratelimit: health", "state", next.String(), "err", reason)
	}
	t.mu.Unlock()
	t.tell()
}

// tell gives OnHealthChange the Health as it is now, if its state is not
// the one it was last told: callers serialise here, and each tells the
// latest state, so the hook never ends on a stale one and never hears the
// same state twice in a row.
func (t *healthTracker) tell() {
	f := t.l.cfg.OnHealthChange
	if f == nil {
		return
	}
	t.hookMu.Lock()
	defer t.hookMu.Unlock()
	t.mu.Lock()
	h := t.cur
	t.mu.Unlock()
	if h.State == t.told {
		return
	}
	t.told = h.State
	h.Pending = t.l.pending.len()
	f(h)
}

// summary logs, at most once per LogInterval while Redis is unavailable,
// what the policies decided meanwhile.
func (t *healthTracker) summary(now time.Time) {
	t.mu.Lock()
	if t.cur.State == Healthy || now.Sub(t.lastReport) < t.l.cfg.LogInterval {
		t.mu.Unlock()
		return
	}
	since := now.Sub(t.lastReport)
	t.lastReport = now
	down := now.Sub(t.downSince)
	st, was := t.l.Stats(), t.reported
	t.reported = st
	t.mu.Unlock()
	t.l.cfg.Logger.Warn("ratelimit: redis still unavailable", "down_for", down, "last", since,
		"fallback_local_allowed", st.FallbackLocalAllowed-was.FallbackLocalAllowed,
		"fallback_local_denied", st.FallbackLocalDenied-was.FallbackLocalDenied,
		"fallback_open", st.FallbackOpen-was.FallbackOpen, "fallback_closed", st.FallbackClosed-was.FallbackClosed,
		"redis_errors", st.RedisErrors-was.RedisErrors,
		"pending_keys", st.PendingKeys, "pending_dropped", st.PendingDropped-was.PendingDropped)
}

// fallbackCounts counts the decisions the failure policies made.
type fallbackCounts struct {
	localAllowed, localDenied, open, closed atomic.Int64
}

// fallback decides a request that Redis could not: cause says why.
// earliest is as check returns it.
func (l *Limiter) fallback(r *rule, user string, ms, earliest, n int64, cause error) (result, error) {
	switch r.OnFailure {
	case FailError:
		l.redisErrors.Add(1)
		return result{}, fmt.Errorf("%w: rule %q: %w", ErrUnavailable, r.Name, cause)
	case FailOpen:
		l.fallbacks.open.Add(1)
		r.stats.fallback(true)
		return result{allowed: true, remaining: r.Limit - n, dropped: !l.pending.add(r, user, ms, n)}, nil
	case FailClosed:
		l.fallbacks.closed.Add(1)
		r.stats.fallback(false)
		wait := max(l.store.RetryAfter(r.key(l.cfg.KeyPrefix, user)), time.Second).Milliseconds()
		return result{retryAfter: wait, resetAfter: wait}, nil
	}
	limit, burst := r.share(l.instances())
	var res result
	if n > burst {
		// More than this instance's share: it can never pass here.
		res = result{retryAfter: r.window, resetAfter: r.window}
	} else {
		r.fallback.Do(user, ms, earliest-2*r.window, func(s *localState) bool {
			res = s.take(r.Algorithm, ms, r.window, limit, burst, n)
			return res.allowed
		})
	}
	r.stats.fallback(res.allowed)
	if res.allowed {
		l.fallbacks.localAllowed.Add(1)
		res.dropped = !l.pending.add(r, user, ms, n)
	} else {
		l.fallbacks.localDenied.Add(1)
	}
	return res, nil
}

// unfallback gives back n admissions of user under r at ms that a failure
// policy made while Redis could not answer (FailOpen, FailLocal), and
// reports whether it could: they must still wait for the sync pass, unsent
// (pending.sub), unless dropped says that pending could not hold them
// (MaxPendingKeys: Redis never hears of them). A FailLocal rule's local
// count falls by n too. It is how AllowAll rolls such an admission back,
// and how Refund gives back admissions while Redis is away.
func (l *Limiter) unfallback(r *rule, user string, ms, n int64, dropped bool) bool {
	if !dropped {
		if !l.pending.sub(r, user, ms, n) {
			return false
		}
		if l.pending.len() == 0 { // the last key pending: Recovering may end now, not at the next pass
			l.health.update(nil, l.cfg.Now())
		}
	}
	r.stats.givenBack.Add(n)
	if r.OnFailure == FailLocal {
		limit, _ := r.share(l.instances())
		r.fallback.Visit(user, ms, func(s *localState) { s.refund(r.Algorithm, ms, r.window, limit, n) })
	}
	return true
}

// instances returns the number of live instances FailLocal divides limits
// by: the number last seen, at least Config.MinInstances.
func (l *Limiter) instances() int64 {
	n := int64(1)
	if l.syncer != nil {
		n = l.syncer.Instances()
	}
	return max(n, l.cfg.MinInstances)
}

// redisFailed sorts an error of a call to Redis: a failure the rule's
// policy decides (ok), or an error to return.
func redisFailed(err error) (policy bool) {
	return errors.Is(err, global.ErrUnavailable)
}

// pending holds the admissions decided without Redis (by FailLocal and
// FailOpen) until a sync pass credits them to Redis, per key and window,
// so that once Redis answers again its counts include what the fleet
// admitted in the windows still live. A key stays pending (has) from its
// first such admission until Redis has applied every credit of it, those
// in flight included. It holds at most max keys; the admissions of further
// keys are counted in dropped and lost to Redis.
type pending struct {
	max int
	ops *global.Ops // names the credits: one stream, sent in its order

	mu    sync.Mutex
	m     map[pendingKey]*pendingDelta // admissions not yet sent
	retry []pendingRetry               // credits whose call failed, to send again as they were
	keys  map[pendingKey]int           // every key's deltas, wherever they are (m, retry, in flight)

	size                      atomic.Int64 // len(keys)
	dropped, flushed, expired atomic.Int64 // admissions
}

type pendingKey struct {
	core *ruleCore // the base rule's identity across Reload, shared by its classes (rule.base)
	user string
}

// pendingDelta is one key's admissions in its newest window (idx, cur)
// and the one before (prev); last is the newest admission's time (ms). op
// names its credit once one was sent: a credit whose answer was lost may
// have been applied, so it goes again under the same name (and changes
// nothing if it was). by is the core of the rule that made the newest
// admission (the base rule's, or a class's: Rule.Classes), whose newest
// version the credit is sent with.
type pendingDelta struct {
	idx, cur, prev, last int64
	op                   global.Op
	by                   *ruleCore
}

// pendingRetry is a delta on its way to Redis, or back.
type pendingRetry struct {
	k pendingKey
	d *pendingDelta
}

func newPending(max int) *pending {
	return &pending{max: max, ops: global.NewOps(), m: make(map[pendingKey]*pendingDelta), keys: make(map[pendingKey]int)}
}

// add records n admissions of user under r at ms, and reports whether it
// could: not for a new key once max keys are pending (the admissions are
// counted in dropped).
func (p *pending) add(r *rule, user string, ms, n int64) bool {
	k := pendingKey{r.base, user}
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.m[k]
	if ok && !d.op.IsZero() {
		// d's credit went out once and goes again under its name, which
		// Redis ignores if the first one was applied: newer admissions need
		// a credit of their own.
		p.retry = append(p.retry, pendingRetry{k, d})
		delete(p.m, k)
		ok = false
	}
	if !ok {
		if p.keys[k] == 0 && len(p.keys) >= p.max {
			p.dropped.Add(n)
			return false
		}
		d = &pendingDelta{idx: ms / r.window}
		p.m[k] = d
		p.keys[k]++
		p.size.Store(int64(len(p.keys)))
	}
	d.by = r.ruleCore
	p.expired.Add(d.addAt(ms/r.window, n, ms))
	return true
}

// sub takes back n admissions of user under r at ms that wait in an
// unsent delta, and reports whether it could: a delta whose credit went
// out once goes again as it was (Redis may have applied it), so what it
// carries cannot change; nor can admissions of a window it no longer
// holds.
func (p *pending) sub(r *rule, user string, ms, n int64) bool {
	k := pendingKey{r.base, user}
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.m[k]
	if !ok || !d.op.IsZero() {
		return false
	}
	switch idx := ms / r.window; {
	case idx == d.idx && d.cur >= n:
		d.cur -= n
	case idx == d.idx-1 && d.prev >= n:
		d.prev -= n
	default:
		return false
	}
	if d.cur == 0 && d.prev == 0 { // nothing left to credit: the key is not pending for it
		delete(p.m, k)
		if p.keys[k]--; p.keys[k] <= 0 {
			delete(p.keys, k)
		}
		p.size.Store(int64(len(p.keys)))
	}
	return true
}

// addAt adds n admissions of window idx, the newest at last, and returns
// how many of the delta's admissions fell out of its two windows.
func (d *pendingDelta) addAt(idx, n, last int64) (lost int64) {
	switch {
	case idx == d.idx:
		d.cur += n
	case idx == d.idx+1:
		lost = d.prev
		d.idx, d.prev, d.cur = idx, d.cur, n
	case idx > d.idx+1:
		lost = d.prev + d.cur
		d.idx, d.prev, d.cur = idx, 0, n
	case idx == d.idx-1:
		d.prev += n
	default:
		lost = n
	}
	d.last = max(d.last, last)
	return lost
}

// len returns the keys pending.
func (p *pending) len() int64 { return p.size.Load() }

// has reports whether user has admissions under r not yet applied by
// Redis, sent or not. It costs an atomic load when nothing is pending.
func (p *pending) has(r *rule, user string) bool {
	if p.size.Load() == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[pendingKey{r.base, user}] > 0
}

// refusal returns why Redis must not decide user's key under r (key), so
// that its failure policy does, without a call: the breaker of its node is
// open, or the key has admissions made without Redis not yet credited to it
// (Redis would judge it on counts that miss them). Else nil.
func (l *Limiter) refusal(r *rule, user, key string) error {
	switch {
	case l.store.Refuses(key):
		return global.ErrBreakerOpen
	case l.pending.has(r, user):
		return errPending
	}
	return nil
}

// errPending sends to the failure policy a key whose admissions made
// without Redis are not yet credited to it: Redis would judge it on counts
// that miss them, until the next sync pass credits them.
var errPending = fmt.Errorf("%w: admissions made without redis are not yet credited", global.ErrUnavailable)

// take returns the deltas to send: the credits to send again first, then
// the others. Their keys stay pending until done or restore.
func (p *pending) take() []pendingRetry {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.retry
	p.retry = nil
	for k, d := range p.m {
		out = append(out, pendingRetry{k, d})
	}
	if len(p.m) > 0 {
		p.m = make(map[pendingKey]*pendingDelta)
	}
	return out
}

// done settles a delta that take returned: Redis applied it, or its window
// is over.
func (p *pending) done(k pendingKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys[k]--; p.keys[k] <= 0 {
		delete(p.keys, k)
	}
	p.size.Store(int64(len(p.keys)))
}

// restore puts back a delta that take returned and whose credit failed,
// to be sent again as it was (under its name).
func (p *pending) restore(k pendingKey, d *pendingDelta) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.m[k]; !ok {
		p.m[k] = d
	} else {
		p.retry = append(p.retry, pendingRetry{k, d}) // new admissions since: a credit of their own
	}
}

// dropAll empties the pending admissions (Close, when Redis could not take
// them) and returns how many were dropped.
func (p *pending) dropAll() int64 {
	var n int64
	for _, e := range p.take() {
		n += e.d.cur + e.d.prev
		p.done(e.k)
	}
	p.dropped.Add(n)
	return n
}

// creditBatch caps the credits of one pipeline.
const creditBatch = 1000

// flush credits the pending admissions to Redis (a sync pass's OnPass).
// Those of windows that are over by now are dropped, counted.
func (l *Limiter) flush(ctx context.Context, now int64) error {
	all := l.pending.take()
	if len(all) == 0 {
		return nil
	}
	batch := make([]pendingRetry, 0, min(len(all), creditBatch))
	credits := make([]global.Credit, 0, cap(batch))
	var errs []error
	send := func() {
		applied, cerrs := l.store.CreditBatch(ctx, credits)
		for i, e := range batch {
			n := e.d.cur + e.d.prev
			switch {
			case cerrs[i] != nil && len(errs) == 0:
				errs = append(errs, cerrs[i])
			}
			switch {
			case cerrs[i] != nil && errors.Is(cerrs[i], global.ErrUnavailable):
				l.pending.restore(e.k, e.d)
				continue
			case cerrs[i] != nil:
				// Redis answered with an error (a foreign value under the
				// key): sending it again would fail again.
				l.pending.dropped.Add(n)
			case applied[i]:
				l.pending.flushed.Add(n)
			default:
				l.pending.expired.Add(n)
			}
			l.pending.done(e.k)
		}
		batch, credits = batch[:0], credits[:0]
	}
	live := all[:0]
	for _, e := range all {
		r, d := e.d.by.cur.Load(), e.d
		oldest := now/r.window - 1 // the oldest window that still counts
		if d.idx < oldest || d.idx == oldest && r.Algorithm == FixedWindow {
			l.pending.expired.Add(d.cur + d.prev)
			l.pending.done(e.k)
			continue
		}
		if d.op.IsZero() {
			if d.idx-1 < oldest || r.Algorithm == FixedWindow {
				l.pending.expired.Add(d.prev)
				d.prev = 0
			}
			d.op = l.pending.ops.Next()
		}
		live = append(live, e)
	}
	// A key's credits go in the order of their ops (take may return a
	// key's older credit after a newer one when both came back): Redis
	// applies a stale credit, perhaps a second time (see Credit.Op).
	slices.SortFunc(live, func(a, b pendingRetry) int { return cmp.Compare(a.d.op.Seq, b.d.op.Seq) })
	for _, e := range live {
		r, d := e.d.by.cur.Load(), e.d // a removed rule's (or class's) too: its admissions still count
		batch = append(batch, e)
		credits = append(credits, global.Credit{
			Algorithm: r.algo,
			Key:       r.key(l.cfg.KeyPrefix, e.k.user),
			Window:    r.window,
			Limit:     r.Limit,
			Idx:       d.idx,
			Cur:       d.cur,
			Prev:      d.prev,
			Last:      d.last,
			Hybrid:    r.Mode == Hybrid,
			Known:     l.known(r, e.k.user),
			Op:        d.op,
		})
		if len(credits) == creditBatch {
			send()
		}
	}
	if len(credits) > 0 {
		send()
	}
	l.health.update(nil, l.cfg.Now())
	if len(errs) > 0 {
		return fmt.Errorf("crediting admissions made without redis: %w", errs[0])
	}
	return nil
}

// known returns what this instance knows of a hybrid key's counts in
// Redis, or nothing for other rules and keys it does not hold.
func (l *Limiter) known(r *rule, user string) global.Known {
	if r.Mode != Hybrid {
		return global.Known{}
	}
	h := l.hybrid
	s := h.cache.State(h.cache.Get(user, r.hybridIndex))
	if s == nil {
		return global.Known{}
	}
	var req global.LeaseRequest
	s.Lock()
	know(s, &req)
	s.Unlock()
	return req.Known
}

// newFallbackTable returns the table of a rule's FailLocal decisions.
func newFallbackTable(window int64) *local.Table[localState] {
	return local.NewTable[localState](2 * window)
}
