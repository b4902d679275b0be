package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// This file is the gateway surface beyond Allow: peeking at a decision,
// resetting a user's usage, refunding admissions that were not served.

// Peek returns the Decision that Allow would return for user under the
// named rule at now, without counting anything: Allowed reports whether
// one more request would be admitted now, Remaining how many would,
// RetryAfter (when not allowed) the wait for one, ResetAfter the wait until
// the usage fully resets. It is AllowN with n = 0.
//
// Local rules read the key's state in process. Strict rules run their
// script read-only: the key in Redis is neither written nor refreshed.
// Hybrid rules answer from the key's lease or known counts when those
// decide, as Allow would, else they ask Redis read-only; a peek is not
// counted among the key's demand or attempts. A peek is only a snapshot:
// other requests may change the answer before the next Allow. When Redis
// cannot answer, the rule's FailurePolicy answers as it would for a
// request, without counting it (FailError: an error wrapping
// ErrUnavailable). Peeks, and denials of an n that can never pass, are not
// counted in Stats or RuleStats.
func (l *Limiter) Peek(ctx context.Context, ruleName, user string, now time.Time) (Decision, error) {
	return l.AllowN(ctx, ruleName, user, now, 0)
}

// Peek returns the decision Allow would return now, counting nothing, as
// Limiter.Peek does.
func (rl *RuleLimiter) Peek(ctx context.Context, user string, now time.Time) (Decision, error) {
	return rl.AllowN(ctx, user, now, 0)
}

// peek answers a request of n, 0 (a peek) or one that can never pass
// (n > r.maxN), without counting it. ms is checked.
func (l *Limiter) peek(ctx context.Context, r *rule, user string, ms, n int64) (Decision, error) {
	var res result
	var err error
	switch r.Mode {
	case Local:
		res = peekTable(r.table, r, user, ms, r.Limit, r.maxN)
	case Hybrid:
		res, err = l.hybrid.peek(ctx, r, user, ms)
	default:
		res, err = l.peekRedis(ctx, r, user, ms)
	}
	if err != nil {
		switch {
		case !redisFailed(err):
			return Decision{}, err
		case r.OnFailure == FailError:
			return Decision{}, fmt.Errorf("%w: rule %q: %w", ErrUnavailable, r.Name, err)
		}
		res = l.peekFallback(r, user, ms)
	}
	if n > 0 { // can never pass
		res.allowed, res.retryAfter = false, r.window
	}
	return res.decision(), nil
}

// peekTable peeks at user's state in t (nil: the key is unknown there: a
// fresh key).
func peekTable(t *local.Table[localState], r *rule, user string, ms, limit, burst int64) result {
	var res result
	if t == nil || !t.Visit(user, ms, func(s *localState) { res = s.peek(r.Algorithm, ms, r.window, limit, burst) }) {
		var s localState
		res = s.peek(r.Algorithm, ms, r.window, limit, burst)
	}
	return res
}

// peekRedis runs r's strict script read-only.
func (l *Limiter) peekRedis(ctx context.Context, r *rule, user string, ms int64) (result, error) {
	key := r.key(l.cfg.KeyPrefix, user)
	if err := l.refusal(r, user, key); err != nil {
		return result{}, err
	}
	g, err := l.store.Take(ctx, global.Request{
		Algorithm: r.algo, Key: key, Now: ms, Window: r.window, Limit: r.Limit, N: 1,
		ServerTime: l.cfg.ServerTime && r.Mode == Strict, Mode: global.Peek, Burst: r.Burst,
	})
	if err != nil {
		if errors.Is(err, global.ErrClosed) {
			return result{}, ErrClosed
		}
		return result{}, fmt.Errorf("ratelimit: rule %q: %w", r.Name, err)
	}
	return result{allowed: g.Allowed, remaining: g.Remaining, retryAfter: g.RetryAfter, resetAfter: g.ResetAfter}, nil
}

// peekFallback is what the rule's failure policy would decide for one
// request, counting nothing.
func (l *Limiter) peekFallback(r *rule, user string, ms int64) result {
	switch r.OnFailure {
	case FailOpen:
		return result{allowed: true, remaining: r.Limit}
	case FailClosed:
		wait := max(l.store.RetryAfter(r.key(l.cfg.KeyPrefix, user)), time.Second).Milliseconds()
		return result{retryAfter: wait, resetAfter: wait}
	}
	limit, burst := r.share(l.instances())
	return peekTable(r.fallback, r, user, ms, limit, burst)
}

// share returns this instance's share of the rule's limit and burst (a
// token bucket's; else the limit) among instances, each at least 1: what
// FailLocal admits while Redis cannot answer.
func (r *rule) share(instances int64) (limit, burst int64) {
	instances = max(instances, 1)
	return max(r.Limit/instances, 1), max(r.maxN/instances, 1)
}

// clone returns a copy of s that shares no memory with it.
func (s *localState) clone() localState {
	c := *s
	c.log.times = slices.Clone(s.log.times)
	return c
}

// peek answers a request of one at now without changing s: the decision
// and wait of taking one, the remaining and reset of taking none.
func (s *localState) peek(a Algorithm, now, w, limit, burst int64) result {
	c := s.clone()
	none := c.take(a, now, w, limit, burst, 0)
	c = s.clone()
	one := c.take(a, now, w, limit, burst, 1)
	return result{allowed: one.allowed, retryAfter: one.retryAfter, remaining: none.remaining, resetAfter: none.resetAfter}
}

// refund gives back n admissions counted at now (ms), as the strict
// scripts do: a window's count only while its window counts (the current
// or, for the sliding window, the previous one); a token bucket's level,
// down to empty; a sliding log's n newest entries still in the window.
func (s *localState) refund(a Algorithm, now, w, limit, n int64) {
	idx := now / w
	switch a {
	case SlidingWindow:
		switch s.sw.index {
		case idx:
			s.sw.cur = max(s.sw.cur-n, 0)
		case idx + 1:
			s.sw.prev = max(s.sw.prev-n, 0)
		}
	case FixedWindow:
		if s.fw.index == idx {
			s.fw.count = max(s.fw.count-n, 0)
		}
	case TokenBucket:
		now = max(now, s.tb.last)
		s.tb = tokenBucket{level: max(s.tb.levelAt(now, limit, w)-n*w, 0), last: now}
	case SlidingLog:
		now = max(now, s.log.last)
		t := s.log.times
		for n > 0 && len(t) > 0 && t[len(t)-1] > now-w {
			t = t[:len(t)-1]
			n--
		}
		s.log.times = t
	}
}

// Reset deletes user's usage under the named rule, so that the user has the
// rule's full Limit again: the key's counters in Redis (every key its
// algorithm uses) and this instance's state for it. A hybrid key's lease
// held here is dropped, not returned (Redis forgets it anyway); other
// instances' leases for the key stay theirs until their next sync, and
// they may spend them, so for up to a SyncInterval the user may get more
// than Limit across the fleet. A request or sync pass already under way
// when Reset runs may land after it and count again. Admissions that
// FailLocal or FailOpen made while Redis was down and that wait to be
// credited to it are still credited. When Redis cannot answer, Reset
// returns an error wrapping ErrUnavailable (this instance's state is
// dropped all the same).
func (l *Limiter) Reset(ctx context.Context, ruleName, user string) error {
	r, ok := l.rules.Load().byName[ruleName]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownRule, ruleName)
	}
	return l.reset(ctx, r, user)
}

// Reset deletes user's usage under the rule, as Limiter.Reset does.
func (rl *RuleLimiter) Reset(ctx context.Context, user string) error {
	r, err := rl.rule()
	if err != nil {
		return err
	}
	return rl.l.reset(ctx, r, user)
}

func (l *Limiter) reset(ctx context.Context, r *rule, user string) error {
	if l.closed.Load() {
		return ErrClosed
	}
	if err := l.checkKey(user); err != nil {
		return err
	}
	if r.Mode == Local {
		r.table.Delete(user)
		return nil
	}
	r.fallback.Delete(user)
	if r.Mode == Hybrid {
		l.hybrid.drop(r, user)
		l.dropClasses(r, user)
	}
	if err := l.store.Delete(ctx, r.key(l.cfg.KeyPrefix, user)); err != nil {
		if errors.Is(err, global.ErrUnavailable) {
			return fmt.Errorf("%w: reset rule %q: %w", ErrUnavailable, r.Name, err)
		}
		return fmt.Errorf("ratelimit: reset rule %q: %w", r.Name, err)
	}
	return nil
}

// checkKey validates a user key.
func (l *Limiter) checkKey(user string) error {
	switch {
	case user == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(user) > l.cfg.MaxKeyBytes:
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidKey, len(user), l.cfg.MaxKeyBytes)
	}
	return nil
}

// drop forgets what this instance holds of user's key: its counts, its
// lease (not returned) and what it owes back.
func (h *hybrid) drop(r *rule, user string) {
	s := h.cache.Find(user, r.hybridIndex)
	if s == nil {
		return
	}
	s.Lock()
	s.Lease, s.Return, s.Attempts = 0, 0, 0
	s.Prev, s.Cur, s.Version = 0, 0, 0 // nothing to restore the key from (see know)
	s.MinePrev, s.MineCur, s.AllPrev, s.AllCur = 0, 0, 0, 0
	s.Unlock()
}

// Refund gives back n admissions of user under the named rule that were
// counted but not served (the upstream failed, say); now is the timestamp
// the admissions were decided at. It is best effort and never gives back
// more than was counted:
//
//   - SlidingWindow and FixedWindow take n off the count of now's window,
//     never below 0, and only while that window counts: the current one
//     (and, for the sliding window, the previous one, which still weighs).
//   - TokenBucket moves the theoretical arrival time back by n emission
//     intervals (Window/Limit each), never before the key's newest time.
//   - SlidingLog removes up to n of the newest entries still in the
//     window.
//
// Hybrid rules put n back in this instance's lease when it holds the key's
// state for now's window (Redis still counts them, as leased tokens; they
// go back to Redis with the lease); otherwise the tokens go back to Redis
// (for the previous window, at the next sync pass). n is between 1 and the
// rule's Limit (Burst). With Config.ServerTime, strict rules refund in the
// window of the Redis server's clock, as they counted. When Redis cannot
// answer and the call certainly did not run (the circuit breaker refused
// it: global.NotApplied), Refund gives back n admissions that a failure
// policy (FailOpen, FailLocal) made during the outage in now's window and
// that still wait for the sync pass to credit them: the same count, once
// they are. Otherwise it returns an error wrapping ErrUnavailable and gives
// nothing back. Refunds are counted in RuleStats.GivenBack, not in Stats.
func (l *Limiter) Refund(ctx context.Context, ruleName, user string, now time.Time, n int64) error {
	r, ok := l.rules.Load().byName[ruleName]
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownRule, ruleName)
	}
	return l.refund(ctx, r, user, now, n)
}

// Refund gives back n admissions of user, as Limiter.Refund does.
func (rl *RuleLimiter) Refund(ctx context.Context, user string, now time.Time, n int64) error {
	r, err := rl.rule()
	if err != nil {
		return err
	}
	return rl.l.refund(ctx, r, user, now, n)
}

func (l *Limiter) refund(ctx context.Context, r *rule, user string, now time.Time, n int64) error {
	if l.closed.Load() {
		return ErrClosed
	}
	r, err := l.ruleFor(ctx, r, user, &userClass{})
	if err != nil || r.override != 0 {
		return err // Unlimited and Deny classes count nothing: nothing to give back
	}
	if n < 1 || n > r.maxN {
		return fmt.Errorf("%w: refund of n = %d, want 1 to %d", ErrInvalidArgument, n, r.maxN)
	}
	ms, _, err := l.check(r, user, now, 1)
	if err != nil {
		return err
	}
	switch r.Mode {
	case Local:
		if r.table.Visit(user, ms, func(s *localState) { s.refund(r.Algorithm, ms, r.window, r.Limit, n) }) {
			r.stats.givenBack.Add(n) // else nothing was counted: nothing to give back
		}
		return nil
	case Hybrid:
		err = l.hybrid.refund(ctx, r, user, ms, n)
	default:
		_, err = l.store.Take(ctx, global.Request{
			Algorithm: r.algo, Key: r.key(l.cfg.KeyPrefix, user), Now: ms, Window: r.window,
			Limit: r.Limit, N: n, ServerTime: l.cfg.ServerTime, Mode: global.Refund, Burst: r.Burst,
		})
	}
	switch {
	case err == nil:
		r.stats.givenBack.Add(n)
		return nil
	case errors.Is(err, global.ErrClosed), errors.Is(err, ErrClosed):
		return ErrClosed
	case errors.Is(err, global.ErrUnavailable):
		// The call did not run: give back admissions of the outage not yet
		// credited to Redis instead (the same count, once they are).
		if global.NotApplied(err) && l.unfallback(r, user, ms, n, false) {
			return nil
		}
		return fmt.Errorf("%w: refund rule %q: %w", ErrUnavailable, r.Name, err)
	}
	return fmt.Errorf("ratelimit: refund rule %q: %w", r.Name, err)
}

// peek is the hybrid peek: from the key's state when it decides (a lease
// to spend, or known counts that deny), as decideLocal would; else from
// the key's counts in Redis, read-only, less what the state gives back
// with its next call, as that call (acquire) would decide.
func (h *hybrid) peek(ctx context.Context, r *rule, user string, ms int64) (result, error) {
	w := r.window
	var owed [2]global.Return
	last := ms
	if s := h.cache.Find(user, r.hybridIndex); s != nil {
		s.Lock()
		now := max(ms, s.Last)
		if now/w == s.Window && (s.Lease > 0 || s.Version > 0) {
			elapsed := now - s.Window*w
			prev, cur := r.prevWeight(s.Prev), max(s.Cur-s.Lease, 0)
			res := result{allowed: s.Lease >= 1}
			if res.allowed || !h.admits(r, prev, cur, elapsed, 1) {
				if !res.allowed {
					res.retryAfter = h.retryAfter(r, prev, cur, elapsed, 1)
				}
				res.remaining = slidingRemaining(prev, cur, elapsed, w, r.Limit)
				res.resetAfter = h.resetAfter(r, prev, s.Cur, elapsed)
				s.Unlock()
				return res.shift(now - ms), nil
			}
		}
		owed = [2]global.Return{{Window: s.ReturnWindow, N: s.Return}, {Window: s.Window, N: s.Lease}}
		last = now
		s.Unlock()
	}
	key := r.key(h.l.cfg.KeyPrefix, user)
	if err := h.l.refusal(r, user, key); err != nil {
		return result{}, err
	}
	k, err := h.l.store.Counts(ctx, key)
	if err != nil {
		return result{}, fmt.Errorf("ratelimit: rule %q: %w", r.Name, err)
	}
	now := max(last, k.Last)
	idx := now / w
	var prev, cur int64
	switch {
	case !k.Found:
	case k.Window == idx:
		prev, cur = k.Prev, k.Cur
	case k.Window == idx-1:
		prev = k.Cur
	}
	for _, ret := range owed {
		switch ret.Window {
		case idx:
			cur = max(cur-ret.N, 0)
		case idx - 1:
			prev = max(prev-ret.N, 0)
		}
	}
	elapsed := now - idx*w
	prev = r.prevWeight(prev)
	res := result{allowed: h.admits(r, prev, cur, elapsed, 1)}
	if !res.allowed {
		res.retryAfter = h.retryAfter(r, prev, cur, elapsed, 1)
	}
	res.remaining = slidingRemaining(prev, cur, elapsed, w, r.Limit)
	res.resetAfter = h.resetAfter(r, prev, cur, elapsed)
	return res.shift(now - ms), nil
}

// refund is the hybrid refund: into the lease of the key's state when it
// is in ms's window; owed back to Redis by it when ms is of its previous
// window; else straight to Redis, as a named return.
func (h *hybrid) refund(ctx context.Context, r *rule, user string, ms, n int64) error {
	w := r.window
	idx := ms / w
	if s := h.cache.Find(user, r.hybridIndex); s != nil {
		s.Lock()
		switch idx {
		case s.Window:
			s.Lease += n
			s.Cur = max(s.Cur, s.Lease)
			s.Unlock()
			h.registry.Add(s) // a lease the sync pass renews or returns
			return nil
		case s.Window - 1:
			h.owe(s, global.Return{Window: idx, N: n})
			s.Unlock()
			h.registry.Add(s)
			return nil
		}
		s.Unlock()
	}
	h.gate.RLock()
	defer h.gate.RUnlock()
	if h.closed {
		return ErrClosed
	}
	return h.returnNamed(ctx, h.refundRequest(r, user, ms, n))
}

// returnNamed sends req, a named return of a key without state here. A
// state made for the key since (by a decision) can have sent two newer
// named calls that got to Redis first; Redis, which keeps a key's last two
// ops of a stream, then answers req stale, and a stale op may have been
// applied or not (a first copy of it may have run, its answer lost, before
// the re-sent copy was judged): so it is not sent again under a new name,
// which could apply it twice, and Refund says it is uncertain. The State's
// rule of one named call at a time (State.Naming) cannot cover a return
// made without a state.
func (h *hybrid) returnNamed(ctx context.Context, req global.LeaseRequest) error {
	res, err := h.l.store.Lease(ctx, req)
	if err == nil && res.Stale {
		return fmt.Errorf("%w: newer calls of this instance for the key got to Redis first", errStaleReturn)
	}
	return err
}

// errStaleReturn is a Refund's return that Redis answered stale: it may
// have been applied or not.
var errStaleReturn = errors.New("the return was answered stale, and may not have been applied")

// refundRequest is the call that gives n tokens of ms's window back to
// Redis for a key without state here: a named return, so that a copy
// re-sent by the client applies once.
func (h *hybrid) refundRequest(r *rule, user string, ms, n int64) global.LeaseRequest {
	req := global.LeaseRequest{Key: r.key(h.l.cfg.KeyPrefix, user), Now: ms, Window: r.window,
		Limit: r.Limit, Fixed: r.Algorithm == FixedWindow}
	req.Returns[0] = global.Return{Window: ms / r.window, N: n}
	h.nameReturns(&req)
	return req
}
