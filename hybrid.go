package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// This file is the hybrid mode: decisions from leased budgets held in this
// process, with Redis consulted only when a key's lease runs out (and for
// every decision near its limit, where leases shrink to nothing), and a
// reconciler that reports, renews and returns leases every SyncInterval.
//
// The invariant that makes it exact: Redis counts a leased token when it is
// leased, not when it is spent. Every token spent locally was admitted by
// the sliding-window check in Redis when it was leased, in the same window
// and no later than it is spent (older timestamps are judged at the lease's
// time), and the estimate only falls within a window; so the estimate of
// what was really admitted never exceeds the limit, on any instance.

// hybrid is the hybrid mode's state: shared by the decision path (Allow)
// and the reconciler (Plan, Apply).
type hybrid struct {
	l         *Limiter
	cores     atomic.Pointer[[]*ruleCore] // by hybridIndex, appended to by Reload, never reused
	cache     *local.Cache
	registry  local.Registry
	instances func() int64
	closing   atomic.Bool // the last pass gives every lease back
	ops       *global.Ops // names the calls that give tokens back

	// gate: decisions that call Redis hold it shared; Close takes it
	// exclusively and sets closed, so no grant lands after the last pass.
	gate   sync.RWMutex
	closed bool

	// Decision counters, for Stats. Local decisions are counted in their
	// State, under its lock (Spend's by the next Lock), and folded in here
	// by the sync pass (fold): a shared counter written by every decision
	// cost ~50 ns a decision over 1 Mi keys on 2 cores (bench/RESULTS.md),
	// its cache line moving between cores.
	localAllowed, localDenied   atomic.Int64
	remote                      atomic.Int64 // decisions that asked Redis, failed ones included
	remoteAllowed, remoteDenied atomic.Int64 // their answers
}

// prevWeight returns the previous window's count as the algorithm weighs
// it: fully for the sliding window, not at all for the fixed window.
func (r *rule) prevWeight(prev int64) int64 {
	if r.Algorithm == FixedWindow {
		return 0
	}
	return prev
}

// decide is the hybrid decision. A request for one token spends it from the
// key's lease without a lock (local.Ref.Spend): from the front table, that
// touches one cache line. Others, and those the lease cannot serve, take
// the key's lock for a few arithmetic operations (decideLocal). Neither
// allocates. A key without lease goes to Redis (acquire).
//
// A successful Spend needs no bookkeeping here: a lease is open only while
// the Registry holds its state (or a sync pass does, which keeps it, or a
// decision about to add it), and the pass tells the cache of the key's
// uses.
func (h *hybrid) decide(ctx context.Context, r *rule, user string, ms, n int64) (result, error) {
	res, s, done := h.inProcess(r, user, ms, n)
	switch {
	case done:
		return res, nil
	case s == nil:
		return h.admitOnce(ctx, r, user, ms, n)
	}
	return h.acquire(ctx, s, r, user, ms, n)
}

// inProcess decides from what this process holds of the key when it can
// (done: res is the decision). Otherwise Redis must decide: s is the key's
// state, for acquire, or nil for a key's first sighting, for admitOnce.
func (h *hybrid) inProcess(r *rule, user string, ms, n int64) (res result, s *local.State, done bool) {
	ref := h.cache.Get(user, r.hybridIndex)
	if n == 1 { // Spend refuses a key Get did not find
		if prev, cur, lease, elapsed, ok := ref.Spend(ms, r.window); ok {
			if lease%promoteEvery == 0 && !ref.InFront() {
				h.cache.Promote(h.cache.State(ref))
			}
			return h.spent(r, prev, cur, lease, elapsed), nil, true
		}
	}
	s = h.cache.State(ref)
	if s == nil && h.cache.FirstSight(ref, ms, h.l.cfg.SyncInterval.Milliseconds()) {
		return result{}, nil, false
	}
	if s == nil {
		// Not found: a new key (decideLocal sends it to Redis), or one so
		// recent that ristretto has not applied its Set yet, or one let go
		// of that serves until the next Forget: GetOrCreate finds those in
		// its side map, with whatever lease they hold.
		created := false
		s = h.cache.GetOrCreate(user, r.hybridIndex, func() string {
			created = true
			return r.key(h.l.cfg.KeyPrefix, user)
		})
		if created {
			s.Lock()
			s.Seen++ // the request of its first sighting (admitOnce) is part of its demand
			s.Unlock()
		}
	}
	res, promote, ok := h.decideLocal(s, r, ms, n)
	if !ok {
		return result{}, s, false
	}
	h.registry.Add(s)
	if promote {
		h.cache.Promote(s)
	}
	return res, nil, true
}

// Keys decided locally often enough live in the front table: one local
// decision in promoteEvery of a key found in ristretto promotes it.
const promoteEvery = 4

// spent is the result of a request admitted by Spend: prev and cur are
// the window's counts as last known, lease the lease before the request
// took its token, elapsed the time into the window.
func (h *hybrid) spent(r *rule, prev, cur, lease, elapsed int64) result {
	prev = r.prevWeight(prev)
	// The counts with this request admitted: every instance's admissions
	// and leases as last known, less this instance's lease as it was, plus
	// this request (as decideLocal counts them).
	next := max(cur-lease, 0) + 1
	return result{
		allowed:    true,
		remaining:  slidingRemaining(prev, next, elapsed, r.window, r.Limit),
		resetAfter: h.resetAfter(r, prev, cur, elapsed),
	}
}

// decideLocal decides from the lease, or denies when the key's known counts
// already deny. ok is false when Redis must decide; promote tells the
// caller to promote the key to the front table.
func (h *hybrid) decideLocal(s *local.State, r *rule, ms, n int64) (res result, promote, ok bool) {
	w := r.window
	s.Lock()
	now := max(ms, s.Last)
	s.Last = now // keeps Last ≥ the start of Window: see local.State
	elapsed := now - s.Window*w
	if elapsed >= w {
		idx := now / w
		s.Roll(idx)
		elapsed = now - idx*w
	}
	// What counts against this request: every instance's admissions and
	// leases as last known, less this instance's unspent lease.
	prev, cur := r.prevWeight(s.Prev), max(s.Cur-s.Lease, 0)
	switch {
	case s.Lease >= n:
		s.Lease -= n
		s.Attempts += n
		s.Seen += n
		s.LocalAllowed++
		cur += n
		res = result{allowed: true}
	case !h.admits(r, prev, cur, elapsed, n):
		// Known counts are lower bounds within a window (but for leases
		// that others may give back), so this denial is one Redis would
		// make too.
		s.Attempts += n
		s.Seen += n
		s.LocalDenied++
		res = result{retryAfter: h.retryAfter(r, prev, cur, elapsed, n)}
	default:
		s.Unlock()
		return result{}, false, false
	}
	res.remaining = slidingRemaining(prev, cur, elapsed, w, r.Limit)
	res.resetAfter = h.resetAfter(r, prev, s.Cur, elapsed)
	promote = !s.InFront() && (s.LocalAllowed+s.LocalDenied)%promoteEvery == 0
	s.Unlock()
	return res.shift(now - ms), promote, true
}

func (h *hybrid) admits(r *rule, prev, cur, elapsed, n int64) bool {
	return slidingAdmits(prev, cur, elapsed, r.window, r.Limit, n)
}

func (h *hybrid) retryAfter(r *rule, prev, cur, elapsed, n int64) int64 {
	if r.Algorithm == FixedWindow {
		return r.window - elapsed
	}
	return slidingRetryAfter(prev, cur, elapsed, r.window, r.Limit, n)
}

func (h *hybrid) resetAfter(r *rule, prev, cur, elapsed int64) int64 {
	if r.Algorithm == FixedWindow {
		if cur > 0 {
			return r.window - elapsed
		}
		return 0
	}
	return slidingResetAfter(prev, cur, elapsed, r.window)
}

// acquire asks Redis to admit n and, unless another acquire for the key is
// under way, to lease what the key's demand calls for. A lease too small
// for n goes back in the same call: Redis counts it, so keeping it would
// count those tokens twice against n.
func (h *hybrid) acquire(ctx context.Context, s *local.State, r *rule, user string, ms, n int64) (result, error) {
	// The gate keeps Close's last pass from running while this call is out:
	// a grant that arrived after it would never be returned.
	h.gate.RLock()
	defer h.gate.RUnlock()
	if h.closed {
		return result{}, ErrClosed
	}
	x, err := h.prepare(s, r, user, ms, n)
	if err != nil {
		return result{}, err
	}
	return h.send(ctx, x, r, ms, n)
}

// exchange is an acquire's call for a key's state, built by prepare, sent
// by send (or within AllowAll's script), and folded back into the state by
// finish, failed or unsent. The gate is held shared from prepare on.
type exchange struct {
	s     *local.State
	req   global.LeaseRequest
	lead  bool // this call sizes the key's lease (State.Acquiring)
	named bool // this call names an op (State.Naming)
}

// prepare builds s's call to admit n at ms: the lease its demand calls for
// (unless another call for the key is out), what it gives back and
// reports. It changes nothing of s when it refuses (the breaker is open, or
// the key's failure-policy admissions are not credited yet). It requires
// the gate, held shared.
func (h *hybrid) prepare(s *local.State, r *rule, user string, ms, n int64) (exchange, error) {
	if err := h.l.refusal(r, user, s.Key); err != nil { // straight to the policy, nothing to undo
		return exchange{}, err
	}
	w := r.window
	s.Lock()
	now := max(ms, s.Last)
	s.Last = now
	s.Roll(now / w)
	s.Seen += n
	req := global.LeaseRequest{Key: s.Key, Now: now, Window: w, Limit: r.Limit, N: n, Fixed: r.Algorithm == FixedWindow}
	if s.Lease > 0 && !s.Naming() { // else the lease stays: counted twice against n, never lost
		req.Returns[1] = global.Return{Window: s.Window, N: s.Lease}
		s.Cur = max(s.Cur-s.Lease, 0)
		s.Lease = 0
	}
	lead := !s.Acquiring
	if lead {
		s.Acquiring = true
		// Size the lease on the demand seen so far, this request included:
		// a new key's leases grow geometrically (2, 4, 8, ...) with its
		// demand, so what a key leaves unspent stays below what it used.
		v := h.view(s, r, now)
		v.demand = max(s.Demand, s.Seen)
		if !s.Orphaned() { // an orphan's lease would only wait to be returned
			req.Want = max(v.topUp()-n, 0) // n is part of the demand, served now
		}
		h.takeReturns(s, &req)
	}
	h.nameReturns(&req)
	named := !req.Op.IsZero()
	if named {
		s.SetNaming(true)
	}
	know(s, &req)
	s.Unlock()
	return exchange{s: s, req: req, lead: lead, named: named}, nil
}

// send sends x alone and folds the answer into its state.
func (h *hybrid) send(ctx context.Context, x exchange, r *rule, ms, n int64) (result, error) {
	h.remote.Add(1)
	res, err := h.l.store.Lease(ctx, x.req)
	if err == nil && res.Stale {
		// A newer call of this instance for the key got there first (a
		// sync pass's): this one changed nothing. Its returns stay
		// counted, unspent (an earlier copy may have applied them); the
		// rest goes again, unnamed, so that n is decided.
		x.req.Returns, x.req.Op = [2]global.Return{}, global.Op{}
		res, err = h.l.store.Lease(ctx, x.req)
	}
	if err != nil {
		return result{}, h.failed(x, r, n, err)
	}
	return h.finish(x, r, ms, n, res), nil
}

// finish folds Redis's answer res to x into its state, and returns the
// decision of n at ms.
func (h *hybrid) finish(x exchange, r *rule, ms, n int64, res global.LeaseResult) result {
	s, w := x.s, r.window
	s.Lock()
	if x.lead {
		s.Acquiring = false
	}
	if x.named {
		s.SetNaming(false)
	}
	h.apply(s, r, x.req, res)
	cur := res.Cur - res.Granted
	if res.Now/w == s.Window {
		s.MineCur += n // Redis counted n among the key's attempts
		cur = max(s.Cur-s.Lease, 0)
	}
	out := h.answer(r, res, cur, ms, n)
	s.Unlock()
	h.registry.Add(s)
	return out
}

// failed undoes x's accounting after its call failed with err (the request
// of n is reported with the key's next call), and returns the error to
// report.
func (h *hybrid) failed(x exchange, r *rule, n int64, err error) error {
	s := x.s
	s.Lock()
	if x.lead {
		s.Acquiring = false
	}
	if x.named {
		s.SetNaming(false)
	}
	h.unreport(s, x.req, err)
	s.Attempts += n // report it next time
	s.Unlock()
	h.registry.Add(s)
	if errors.Is(err, global.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("ratelimit: rule %q: %w", r.Name, err)
}

// errUnsent is failed's reason for an exchange that Redis did not apply:
// AllowAll's script denied under another rule and wrote nothing.
var errUnsent = errors.New("ratelimit: exchange not applied")

// answer is the result of a decision that Redis made (res), for a request
// of n at ms; cur is the window's count as the caller sees it, all
// instances' leases but its own included.
func (h *hybrid) answer(r *rule, res global.LeaseResult, cur, ms, n int64) result {
	w := r.window
	elapsed := res.Now - res.Now/w*w
	prev := r.prevWeight(res.Prev)
	out := result{allowed: res.Allowed}
	r.stats.redis(res.Allowed)
	if res.Allowed {
		h.remoteAllowed.Add(1)
	} else {
		h.remoteDenied.Add(1)
		// Redis denied on its counts: judge the wait on them too, never on
		// a local view that would admit (a wait of 0 would be a lie).
		out.retryAfter = max(h.retryAfter(r, prev, cur, elapsed, n),
			h.retryAfter(r, prev, res.Cur-res.Granted, elapsed, n), 1)
	}
	out.remaining = slidingRemaining(prev, cur, elapsed, w, r.Limit)
	out.resetAfter = h.resetAfter(r, prev, res.Cur, elapsed)
	return out.shift(res.Now - ms)
}

// admitOnce decides in Redis, without a State, the request of a key not
// seen lately (Cache.FirstSight): one call of the admit script, which
// leases nothing and counts the request among the key's attempts, so that
// nothing of the key is left for a sync pass, and a key seen once costs no
// local memory. Its next request, if it comes soon, gets a State.
func (h *hybrid) admitOnce(ctx context.Context, r *rule, user string, ms, n int64) (result, error) {
	key := r.key(h.l.cfg.KeyPrefix, user)
	if err := h.l.refusal(r, user, key); err != nil { // straight to the policy
		return result{}, err
	}
	h.remote.Add(1)
	res, err := h.l.store.Lease(ctx, global.LeaseRequest{Key: key, Now: ms, Window: r.window, Limit: r.Limit, N: n,
		Fixed: r.Algorithm == FixedWindow})
	switch {
	case errors.Is(err, global.ErrClosed):
		return result{}, ErrClosed
	case err != nil:
		return result{}, fmt.Errorf("ratelimit: rule %q: %w", r.Name, err)
	}
	return h.answer(r, res, res.Cur, ms, n), nil
}

// view returns what s knows for sizing a lease at now. It requires the lock.
func (h *hybrid) view(s *local.State, r *rule, now int64) leaseView {
	w := r.window
	elapsed := now - s.Window*w
	fit := (r.Limit*w - slidingScaled(r.prevWeight(s.Prev), s.Cur, elapsed, w)) / w
	weigh := func(prev, cur int64) int64 { return mulDiv(prev, w-elapsed, w) + cur }
	return leaseView{
		fit:       max(fit, 0),
		held:      s.Lease,
		demand:    s.Seen,
		mine:      weigh(s.MinePrev, s.MineCur+s.Attempts),
		total:     weigh(s.AllPrev, s.AllCur+s.Attempts),
		instances: h.instances(),
	}
}

// takeReturns moves what s owes back to Redis, and its unreported
// attempts, into req. It requires the lock.
func (h *hybrid) takeReturns(s *local.State, req *global.LeaseRequest) {
	if s.Return > 0 && !s.Naming() { // else owed until a later call
		req.Returns[0] = global.Return{Window: s.ReturnWindow, N: s.Return}
		s.Return = 0
	}
	req.Attempts = s.Attempts
	s.MineCur += s.Attempts
	s.Attempts = 0
}

// nameReturns names req if it gives tokens back: go-redis re-sends a call
// whose answer timed out, and a return applied twice would count fewer
// tokens than were admitted. Every request that may carry returns passes
// here last, so that the ops of a key leave in the order of their numbers.
func (h *hybrid) nameReturns(req *global.LeaseRequest) {
	if req.Returns[0].N > 0 || req.Returns[1].N > 0 {
		req.Op = h.ops.Next()
	}
}

// know tells req what s knows of the key's counts, as Redis counts them
// before req's returns: should Redis have lost the key, it starts again from
// there (see global.Known). It requires the lock.
func know(s *local.State, req *global.LeaseRequest) {
	k := global.Known{Window: s.Window, Prev: s.Prev, Cur: s.Cur}
	for _, ret := range req.Returns {
		switch ret.Window {
		case s.Window:
			k.Cur += ret.N
		case s.Window - 1:
			k.Prev += ret.N
		}
	}
	if k.Prev > 0 || k.Cur > 0 {
		k.Version = max(s.Version, 1)
		req.Known = k
	}
}

// unreport undoes takeReturns's accounting of attempts for a request that
// failed with err, so that they are reported with the next one. Returned
// tokens are restored only if the request was never sent (the breaker held
// it back): otherwise Redis may have taken them, and spending them twice
// would exceed the limit; left out, they only go unused (errUnsent: Redis
// applied nothing either). It requires the lock.
func (h *hybrid) unreport(s *local.State, req global.LeaseRequest, err error) {
	s.MineCur -= req.Attempts
	s.Attempts += req.Attempts
	if !errors.Is(err, global.ErrBreakerOpen) && err != errUnsent {
		return
	}
	if ret := req.Returns[1]; ret.N > 0 && ret.Window == s.Window {
		s.Lease += ret.N // the lease is still counted in Redis, and still this window's
		s.Cur += ret.N
	} else if ret.N > 0 {
		h.owe(s, ret)
	}
	if ret := req.Returns[0]; ret.N > 0 {
		h.owe(s, ret)
	}
}

// errStale is unreport's reason for a stale answer: the call was sent.
var errStale = errors.New("ratelimit: stale lease call")

// owe adds ret to what s must give back at its next call, unless s already
// owes a newer window's tokens (only one window's debt is kept; an older
// window no longer counts). It requires the lock.
func (h *hybrid) owe(s *local.State, ret global.Return) {
	switch {
	case s.Return == 0 || s.ReturnWindow < ret.Window:
		s.ReturnWindow, s.Return = ret.Window, ret.N
	case s.ReturnWindow == ret.Window:
		s.Return += ret.N
	}
}

// apply folds Redis's answer to req into s. It requires the lock.
func (h *hybrid) apply(s *local.State, r *rule, req global.LeaseRequest, res global.LeaseResult) {
	r.stats.lease(req, res)
	idx := res.Now / r.window
	if idx < s.Window {
		// The key moved on while the request was out: the grant belongs to
		// a window that is over, or about to be; give it back.
		if res.Granted > 0 && idx == s.Window-1 {
			if s.Return > 0 && s.ReturnWindow == idx {
				s.Return += res.Granted
			} else if s.Return == 0 || s.ReturnWindow < idx {
				s.ReturnWindow, s.Return = idx, res.Granted // an older window no longer counts
			}
		}
		return
	}
	s.Roll(idx)
	// Answers can arrive out of order (a sync pass and a decision's call
	// for the same key): counts come from the newest; grants all count.
	// A key only admit.lua wrote has no version (0): its answers are
	// taken until a versioned one comes (an older one taken late only
	// makes the counts lower, which costs a Redis call, never a token).
	if res.Version > s.Version || res.Restored || res.Version == 0 && s.Version == 0 {
		s.Version = res.Version
		s.Prev, s.Cur = res.Prev, res.Cur
		s.AllPrev, s.AllCur = res.PrevAttempts, res.CurAttempts
	}
	s.Lease += res.Granted
	s.Last = max(s.Last, res.Now)
}

// Plan implements syncer.Planner: report the key's attempts, return what
// it owes and what exceeds its demand, and top its lease up.
func (h *hybrid) Plan(s *local.State, now, instances int64) (global.LeaseRequest, bool, bool) {
	c := h.core(s.Rule)
	r := c.cur.Load()
	w := r.window
	s.Lock()
	touches := s.Touches
	s.Touches = 0
	defer func() {
		s.Unlock()
		for range touches {
			h.cache.Touch(s)
		}
	}()
	now = max(now, s.Last)
	s.Last = now // requests stamped before this pass are judged at it, as Redis will
	s.Roll(now / w)
	v := h.view(s, r, now)
	v.instances = instances
	s.Demand, s.Seen = s.Seen, 0
	req := global.LeaseRequest{Key: s.Key, Now: now, Window: w, Limit: r.Limit, Fixed: r.Algorithm == FixedWindow}
	ex := v.excess()
	done := h.closing.Load() || s.Orphaned() || c.removed.Load() // a removed rule's leases go back
	if done {
		ex = s.Lease // nothing will spend it
	}
	if ex > 0 && !s.Naming() { // else for a later pass
		s.Lease -= ex
		s.Cur = max(s.Cur-ex, 0) // no longer counted once Redis has it back
		req.Returns[1] = global.Return{Window: s.Window, N: ex}
		v.held -= ex
	}
	if !s.Acquiring && !done {
		req.Want = v.topUp()
	}
	h.takeReturns(s, &req)
	h.nameReturns(&req)
	if !req.Op.IsZero() {
		s.SetNaming(true) // until Apply
	}
	know(s, &req)
	send := req.Want > 0 || req.Attempts > 0 || req.Returns[0].N > 0 || req.Returns[1].N > 0
	return req, send, send || s.Lease > 0
}

// fold moves s's local decision counts into the totals. The Registry
// calls it as the sync pass takes s, under s's lock: a count is in the
// state until a pass takes it, then in the totals, so the totals never go
// down, and Stats reads them without visiting any key. It also counts the
// uses that Plan reports to the cache.
func (h *hybrid) fold(s *local.State) {
	s.Lock()
	h.localAllowed.Add(s.LocalAllowed)
	h.localDenied.Add(s.LocalDenied)
	h.core(s.Rule).stats.fold(s.LocalAllowed, s.LocalDenied)
	if uses := s.LocalAllowed + s.LocalDenied; uses > 0 {
		s.Touches = uint8(1 + min(uses/touchEvery, maxTouches-1))
	}
	s.LocalAllowed, s.LocalDenied = 0, 0
	s.Unlock()
}

// The sync pass tells the cache's admission policy of a key's local
// decisions over the last interval (fold counts them, Plan reports them,
// outside the Registry's lock): once, and once more per touchEvery, up to
// maxTouches, so that it ranks the keys in use, and the busiest highest,
// above new ones. Decisions from the front table never reach ristretto
// themselves.
const (
	touchEvery = 1024
	maxTouches = 8
)

// Apply implements syncer.Planner.
func (h *hybrid) Apply(s *local.State, req global.LeaseRequest, res global.LeaseResult, err error) bool {
	r := h.core(s.Rule).cur.Load()
	h.reconcile(r, res, err)
	s.Lock()
	defer s.Unlock()
	if !req.Op.IsZero() {
		s.SetNaming(false)
	}
	if err != nil {
		h.unreport(s, req, err)
		return true
	}
	if res.Stale {
		// A newer call of this instance for the key got there first (a
		// decision's): this one changed nothing. Its attempts go with the
		// next call; its returns stay counted, unspent (an earlier copy may
		// have applied them).
		h.unreport(s, req, errStale)
		return true
	}
	h.apply(s, r, req, res)
	return s.Lease > 0 || s.Attempts > 0 || s.Return > 0 || s.Demand > 0
}

// core returns the core of hybrid index i: that of a rule in force or
// removed, never nil for an index a State carries (cores are published
// before the rule set that uses them, and never dropped).
func (h *hybrid) core(i uint16) *ruleCore { return (*h.cores.Load())[i] }
