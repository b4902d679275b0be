package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// Check is one rule of a request checked against several (AllowAll): the
// rule, by name or by ID, and the request's cost under it.
type Check struct {
	// Rule is the rule's Name. Leave it empty to name the rule by ID.
	Rule string
	// ID is the rule's ID (Rule.ID), used when Rule is empty: a caller
	// that binds rules once (a middleware's routes) names them by ID, which
	// a Reload that renames a rule keeps.
	ID string
	// N is the request's cost under the rule, at least 1.
	N int64
}

// MultiDecision is AllowAll's answer: the most restrictive of the rules'
// decisions, and the rule it came from.
type MultiDecision struct {
	Decision
	// Rule is the rule that decided: the one that denied, or, when every
	// rule admitted, the one with the fewest requests remaining (the first
	// of those that tie), an enforced rule before a shadow one. It is the
	// rule's Name, even for a Check that named it by ID.
	Rule string
	// Quotas holds each check's policy for the user, in the order of the
	// checks: what a RateLimit-Policy field reports. It is set whenever
	// AllowAll decides, admitted or denied.
	Quotas []Quota
}

// Quota is a rule's policy for one user, as AllowAll applied it.
type Quota struct {
	// Rule and ID are the rule's Name and ID as of the decision (the
	// newest Name, after a Reload renamed the rule).
	Rule, ID string
	// Limit is the user's quota, as RuleLimiter.LimitFor reports it: the
	// rule's Limit, or that of the user's class where a class overrides the
	// rule; 0 for a Deny class, math.MaxInt64 for an Unlimited one.
	Limit int64
	// Window is the rule's Window.
	Window time.Duration
	// Shadow reports a shadow rule (Rule.Shadow), which never denies.
	Shadow bool
}

// AllowAll decides a request that several rules limit (a per-second and a
// per-day limit, an endpoint's and the tenant's), all or nothing: it is
// admitted only if every rule admits it, and a request that one rule
// denies consumes nothing under the others.
//
// The rules that need Redis for this request are decided together, in one
// Redis script over the user's keys (one hash tag, so one slot on a
// cluster): every Strict rule, and every Hybrid rule whose key this
// process cannot decide from its lease (a sparse user's, a key's first
// sighting). The script checks every one of them and counts all or none,
// atomically, at the cost of one strict decision plus a few microseconds
// of Redis time per rule. A Hybrid rule decided from its lease reserves
// its tokens in process first; so do the rules decided one by one, as
// AllowN would (Local rules, shadow rules, Unlimited and Deny classes, a
// rule named twice or asked for more than it can ever admit, and a Hybrid
// key that has tokens to give back, whose call goes alone). When a later
// rule denies, those admissions are refunded (Refund) before AllowAll
// returns. That part is not atomic across rules: a concurrent request of
// the same user may meet a count raised for the length of the rollback and
// be denied by it; no request is ever admitted beyond a limit.
//
// Bad input (no checks, an unknown rule, a bad n or key) is an error before
// anything is counted. An error of a rule's decision (its failure policy
// being FailError, say) refunds the rules admitted before it and is
// returned. When Redis cannot answer the script's call, each of its rules
// is decided by its failure policy, in order (the Strict rules, then the
// Hybrid ones). When a later rule denies, the admissions of FailOpen and
// FailLocal are given back too, while their credit still waits for the
// sync pass (FailLocal's local count with it). If a refund fails (Redis
// went away meanwhile, and the call may have run), or a failure policy's
// admission cannot be given back (its credit already went to Redis),
// AllowAll still returns the denial, with an error wrapping ErrUnavailable
// that names the rules left counted: the request is denied either way.
//
// RuleStats count a decision of the script under the rules it decided: every rule when all admitted, the denying rule alone when one
// denied (the others neither admitted nor denied the request).
func (l *Limiter) AllowAll(ctx context.Context, user string, now time.Time, checks ...Check) (MultiDecision, error) {
	if len(checks) == 0 {
		return MultiDecision{}, fmt.Errorf("%w: AllowAll with no rule", ErrInvalidArgument)
	}
	if l.closed.Load() {
		return MultiDecision{}, ErrClosed
	}
	if len(checks) == 1 {
		return l.allowOne(ctx, user, now, checks[0])
	}
	rules := make([]*rule, 0, len(checks))
	set := l.rules.Load() // one set for every check, even while a Reload swaps it
	var ms, earliest int64
	var class userClass // the user's class, looked up once
	quotas := make([]Quota, len(checks))
	for i, c := range checks {
		r, m, e, err := l.checkOne(ctx, set, c, user, now, &class)
		if err != nil {
			return MultiDecision{}, err
		}
		ms, earliest = m, e // the same for every rule (the request's)
		rules = append(rules, r)
		quotas[i] = r.quotaOf()
	}
	a := allowAll{l: l, user: user, now: now, ms: ms, earliest: earliest, checks: checks, rules: rules, quotas: quotas}
	strict, hybrid, alone := a.split()
	for _, i := range alone {
		d, counted, err := l.decideChecked(ctx, rules[i], user, ms, earliest, checks[i].N) // checked above, once
		if err != nil {
			return MultiDecision{}, errors.Join(err, a.rollback(ctx))
		}
		if !d.Allowed { // never a shadow rule's
			return a.denied(i, d), a.rollback(ctx)
		}
		a.admitted(i, d)
		if counted { // not a shadow rule's would-be denial
			a.refundable = append(a.refundable, i)
		}
	}
	for _, i := range hybrid {
		res, s, done := l.hybrid.inProcess(rules[i], user, ms, checks[i].N)
		if !done {
			a.remote = append(a.remote, remote{i: i, s: s})
			continue
		}
		if d := res.decision(); !d.Allowed {
			return a.denied(i, d), a.rollback(ctx)
		} else {
			a.admitted(i, d)
		}
		a.refundable = append(a.refundable, i)
	}
	if len(strict)+len(a.remote) > 0 {
		d, err := a.takeAll(ctx, strict)
		switch {
		case d.Rule == "": // no decision: an error
			return MultiDecision{}, errors.Join(err, a.rollback(ctx))
		case !d.Allowed:
			return d, errors.Join(err, a.rollback(ctx))
		}
	}
	return a.out, nil
}

// allowOne is AllowAll of one check: the rule's plain decision, nothing
// to roll back.
func (l *Limiter) allowOne(ctx context.Context, user string, now time.Time, c Check) (MultiDecision, error) {
	r, ms, earliest, err := l.checkOne(ctx, l.rules.Load(), c, user, now, &userClass{})
	if err != nil {
		return MultiDecision{}, err
	}
	d, _, err := l.decideChecked(ctx, r, user, ms, earliest, c.N)
	if err != nil {
		return MultiDecision{}, err
	}
	return MultiDecision{Decision: d, Rule: r.Name, Quotas: []Quota{r.quotaOf()}}, nil
}

// checkOne returns the rule of c in set for user (its class's), after
// checking c's n and the arguments, and check's answers ms and earliest.
func (l *Limiter) checkOne(ctx context.Context, set *ruleSet, c Check, user string, now time.Time, class *userClass) (r *rule, ms, earliest int64, err error) {
	if r, err = set.lookup(c); err != nil {
		return nil, 0, 0, err
	}
	if r, err = l.ruleFor(ctx, r, user, class); err != nil {
		return nil, 0, 0, err
	}
	if c.N < 1 {
		return nil, 0, 0, fmt.Errorf("%w: AllowAll of n = %d under rule %q, want at least 1", ErrInvalidArgument, c.N, r.Name)
	}
	if ms, earliest, err = l.check(r, user, now, c.N); err != nil {
		return nil, 0, 0, fmt.Errorf("rule %q: %w", r.Name, err)
	}
	return r, ms, earliest, nil
}

// quotaOf is the rule's Quota, as MultiDecision reports it.
func (r *rule) quotaOf() Quota {
	return Quota{Rule: r.Name, ID: r.ID, Limit: r.quota(), Window: r.Window, Shadow: r.Shadow}
}

// allowAll is one AllowAll call under way: its checked arguments, and the
// admissions made so far.
type allowAll struct {
	l            *Limiter
	user         string
	now          time.Time
	ms, earliest int64
	checks       []Check
	rules        []*rule
	quotas       []Quota       // MultiDecision.Quotas
	out          MultiDecision // the most restrictive admission so far
	anyAdmitted  bool
	outShadow    bool     // out is a shadow rule's
	refundable   []int    // the checks whose admission a refund can undo
	kept         []kept   // the checks whose admission a failure policy made (unfallback may undo it)
	remote       []remote // the Hybrid checks that Redis decides
}

// kept is check i's admission by a failure policy: res.dropped as fallback
// returned it.
type kept struct {
	i       int
	dropped bool
}

// remote is a Hybrid check of AllowAll that Redis decides: its key's
// state's exchange (prepare), or for a key's first sighting (s nil) the
// admit-only request that admitOnce would make.
type remote struct {
	i    int
	s    *local.State
	x    exchange // built when s is not nil
	req  global.LeaseRequest
	sent bool // x is built (prepared), to be finished, failed or unsent
}

// split returns the indexes of the checks whose rules may go in the one
// script (those that count, named once, for an n they can admit): the
// Strict ones and the Hybrid ones (which go there only when their lease
// cannot decide); and those decided one by one, first. The rules are the
// user's classes' (ruleFor), so the script uses the class's limit.
func (a *allowAll) split() (strict, hybrid, alone []int) {
	for i, r := range a.rules {
		joint := r.override == 0 && !r.Shadow && a.checks[i].N <= r.maxN && namedOnce(a.rules, r)
		switch {
		case joint && r.Mode == Strict:
			strict = append(strict, i)
		case joint && r.Mode == Hybrid:
			hybrid = append(hybrid, i)
		default:
			alone = append(alone, i)
		}
	}
	if len(strict) == 1 && len(hybrid) == 0 { // one rule: a plain strict decision
		alone, strict = append(alone, strict[0]), nil
	}
	return strict, hybrid, alone
}

// namedOnce reports whether r is in rules once (a request names a few
// rules: a scan, not a map to allocate).
func namedOnce(rules []*rule, r *rule) bool {
	n := 0
	for _, x := range rules {
		if x == r {
			n++
		}
	}
	return n == 1
}

// admitted records check i's admission d, the most restrictive so far or
// not: an enforced rule's before a shadow rule's, then the fewest
// remaining.
func (a *allowAll) admitted(i int, d Decision) {
	shadow := a.rules[i].Shadow
	if !a.anyAdmitted || a.outShadow && !shadow || a.outShadow == shadow && d.Remaining < a.out.Remaining {
		a.out = MultiDecision{Decision: d, Rule: a.rules[i].Name, Quotas: a.quotas}
		a.outShadow = shadow
	}
	a.anyAdmitted = true
}

// denied is AllowAll's answer when check i's rule denied with d.
func (a *allowAll) denied(i int, d Decision) MultiDecision {
	return MultiDecision{Decision: d, Rule: a.rules[i].Name, Quotas: a.quotas}
}

// lookup returns the rule that c names, by Name, or by ID when its Rule is
// empty.
func (s *ruleSet) lookup(c Check) (*rule, error) {
	if c.Rule == "" && c.ID == "" {
		return nil, fmt.Errorf("%w: a Check names no rule (set Rule or ID)", ErrInvalidArgument)
	}
	if c.Rule == "" {
		if r, ok := s.byID[c.ID]; ok {
			return r, nil
		}
		return nil, fmt.Errorf("%w: ID %q", ErrUnknownRule, c.ID)
	}
	if c.ID != "" {
		return nil, fmt.Errorf("%w: a Check names rule %q and ID %q: set one", ErrInvalidArgument, c.Rule, c.ID)
	}
	if r, ok := s.byName[c.Rule]; ok {
		return r, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownRule, c.Rule)
}

// takeAll decides in one call of the multi script the checks of strict,
// Strict rules of the user, and a.remote, Hybrid ones. It returns the
// denial and the rule that made it, or when all admitted the most
// restrictive admission so far (a.out), or an error and no decision (Rule
// "").
func (a *allowAll) takeAll(ctx context.Context, strict []int) (MultiDecision, error) {
	l, h := a.l, a.l.hybrid
	if len(a.remote) > 0 {
		// As acquire: Close's last pass must not run while a grant is out.
		h.gate.RLock()
		defer h.gate.RUnlock()
		if h.closed {
			return MultiDecision{}, ErrClosed
		}
	}
	req := global.MultiRequest{Now: a.ms, ServerTime: l.cfg.ServerTime, Rules: make([]global.Request, len(strict))}
	var cause error
	for j, i := range strict {
		r := a.rules[i]
		key := r.key(l.cfg.KeyPrefix, a.user)
		if c := l.refusal(r, a.user, key); c != nil {
			cause = c
		}
		req.Rules[j] = global.Request{Algorithm: r.algo, Key: key, Window: r.window, Limit: r.Limit, N: a.checks[i].N, Burst: r.Burst}
	}
	var leases []int // indexes in a.remote of the exchanges in req.Leases
	for k := range a.remote {
		e := &a.remote[k]
		r, n := a.rules[e.i], a.checks[e.i].N
		if e.s == nil { // a first sighting, as admitOnce
			key := r.key(l.cfg.KeyPrefix, a.user)
			if c := l.refusal(r, a.user, key); c != nil {
				cause = c
			}
			e.req = global.LeaseRequest{Key: key, Now: a.ms, Window: r.window, Limit: r.Limit, N: n, Fixed: r.Algorithm == FixedWindow}
			leases, req.Leases = append(leases, k), append(req.Leases, e.req)
			continue
		}
		x, err := h.prepare(e.s, r, a.user, a.ms, n)
		if err != nil || cause != nil || x.req.Op.Stream != "" {
			// Decided alone, now: its key is refused (its failure policy
			// decides; prepare changed nothing), the script will not be
			// sent (a key before it is refused), or the key gives tokens
			// back (its call is named).
			var res result
			if err == nil {
				res, err = h.send(ctx, x, r, a.ms, n)
			}
			if d, ok, err := a.alone(e.i, res, err); !ok {
				a.unsend()
				return d, err
			}
			continue
		}
		e.x, e.sent = x, true
		leases, req.Leases = append(leases, k), append(req.Leases, x.req)
	}
	if cause == nil {
		h0 := len(req.Leases)
		var res global.MultiResult
		var err error
		if h0 == 0 && len(req.Rules) == 0 {
			return a.out, nil // every Hybrid key went alone
		}
		res, err = l.store.TakeAll(ctx, req)
		if h0 > 0 {
			h.remote.Add(int64(h0))
		}
		switch {
		case err == nil:
			d := a.decided(strict, leases, res)
			if !d.Allowed {
				return d, a.keptError(nil) // of the keys decided alone before
			}
			return d, nil
		case errors.Is(err, global.ErrClosed):
			a.fail(err)
			return MultiDecision{}, a.keptError(ErrClosed)
		case !redisFailed(err):
			a.fail(err)
			l.redisErrors.Add(1)
			return MultiDecision{}, a.keptError(fmt.Errorf("ratelimit: rules %q: %w", a.names(strict, leases), err))
		}
		a.fail(err)
		cause = err
	} else {
		a.unsend()
	}
	// Redis cannot answer: each rule's failure policy decides, in order.
	for _, i := range a.scripted(strict, leases) {
		r := a.rules[i]
		res, err := l.fallback(r, a.user, a.ms, a.earliest, a.checks[i].N, cause)
		if err != nil {
			return MultiDecision{}, a.keptError(err)
		}
		d := res.decision()
		if !d.Allowed {
			return a.denied(i, d), a.keptError(nil)
		}
		a.admitted(i, d)
		a.kept = append(a.kept, kept{i, res.dropped})
	}
	return a.out, nil
}

// alone records the answer of check i's exchange sent alone (res, or err).
// ok is false when AllowAll's answer is decided: a denial, or an error
// (Rule "").
func (a *allowAll) alone(i int, res result, err error) (d MultiDecision, ok bool, _ error) {
	if err != nil {
		if !redisFailed(err) {
			if !errors.Is(err, ErrClosed) {
				a.l.redisErrors.Add(1)
			}
			return MultiDecision{}, false, err
		}
		if res, err = a.l.fallback(a.rules[i], a.user, a.ms, a.earliest, a.checks[i].N, err); err != nil {
			return MultiDecision{}, false, a.keptError(err)
		}
		if !res.allowed {
			return a.denied(i, res.decision()), false, a.keptError(nil)
		}
		a.kept = append(a.kept, kept{i, res.dropped})
		a.admitted(i, res.decision())
		return MultiDecision{}, true, nil
	}
	if !res.allowed {
		return a.denied(i, res.decision()), false, nil
	}
	a.admitted(i, res.decision())
	a.refundable = append(a.refundable, i)
	return MultiDecision{}, true, nil
}

// unsend folds back the exchanges prepared for the script, which Redis
// did not apply (the call was not made, or its script denied).
func (a *allowAll) unsend() { a.fail(errUnsent) }

// fail folds err, the script call's failure, into the exchanges prepared
// for it.
func (a *allowAll) fail(err error) {
	for k := range a.remote {
		if e := &a.remote[k]; e.sent {
			_ = a.l.hybrid.failed(e.x, a.rules[e.i], a.checks[e.i].N, err)
			e.sent = false
		}
	}
}

// scripted returns the indexes of the checks of the script: strict, then
// the Hybrid ones of leases (indexes in a.remote).
func (a *allowAll) scripted(strict, leases []int) []int {
	out := append([]int(nil), strict...)
	for _, k := range leases {
		out = append(out, a.remote[k].i)
	}
	return out
}

// decided records the multi script's answer res to the checks of strict
// and of leases (indexes in a.remote), and returns the denial or the most
// restrictive admission.
func (a *allowAll) decided(strict, leases []int, res global.MultiResult) MultiDecision {
	l, h := a.l, a.l.hybrid
	switch {
	case res.Denied >= 0:
		a.unsend()
		i := strict[res.Denied]
		g := res.Results[res.Denied]
		a.rules[i].stats.redis(false)
		l.strictDenied.Add(1)
		return a.denied(i, result{retryAfter: g.RetryAfter, resetAfter: g.ResetAfter, remaining: g.Remaining}.decision())
	case res.LeaseDenied >= 0:
		a.unsend()
		e := a.remote[leases[res.LeaseDenied]]
		g := res.LeaseResults[res.LeaseDenied]
		// Nothing was written: the counts answer the denial, and no state
		// adopts them (their version is the key's as it was).
		return a.denied(e.i, h.answer(a.rules[e.i], g, g.Cur, a.ms, a.checks[e.i].N).decision())
	}
	for j, i := range strict {
		g := res.Results[j]
		a.rules[i].stats.redis(true)
		l.strictAllowed.Add(1)
		a.admitted(i, result{allowed: true, remaining: g.Remaining, resetAfter: g.ResetAfter}.decision())
		a.refundable = append(a.refundable, i)
	}
	for j, k := range leases {
		e := &a.remote[k]
		r, n, g := a.rules[e.i], a.checks[e.i].N, res.LeaseResults[j]
		var out result
		if e.sent {
			out, e.sent = h.finish(e.x, r, a.ms, n, g), false
		} else { // a first sighting: nothing kept, as admitOnce
			out = h.answer(r, g, g.Cur, a.ms, n)
		}
		a.admitted(e.i, out.decision())
		a.refundable = append(a.refundable, e.i)
	}
	return a.out
}

// keptError undoes the admissions that failure policies made (unfallback)
// after a rule denied or failed, and joins err with an error naming the
// rules whose admission it could not undo, if any.
func (a *allowAll) keptError(err error) error {
	var left []string
	for _, k := range a.kept {
		if !a.l.unfallback(a.rules[k.i], a.user, a.ms, a.checks[k.i].N, k.dropped) {
			left = append(left, a.rules[k.i].Name)
		}
	}
	a.kept = nil
	if len(left) == 0 {
		return err
	}
	return errors.Join(err, fmt.Errorf("%w: AllowAll denied, but rules %q keep the request counted (their failure policy's admission cannot be given back: its credit went to Redis)", ErrUnavailable, left))
}

// names returns the rule names of the checks of the script (scripted).
func (a *allowAll) names(strict, leases []int) []string {
	idx := a.scripted(strict, leases)
	out := make([]string, len(idx))
	for j, i := range idx {
		out[j] = a.rules[i].Name
	}
	return out
}

// rollback refunds the refundable admissions made so far (under the rules
// of the set AllowAll began with), after a rule denied or failed. It returns nil, or an error wrapping ErrUnavailable
// that names the rules whose refund failed.
func (a *allowAll) rollback(ctx context.Context) error {
	var failed []string
	var errs []error
	ctx = context.WithoutCancel(ctx) // a caller gone must not leave counts behind; Timeout bounds each call
	for _, i := range a.refundable {
		if err := a.l.refund(ctx, a.rules[i], a.user, a.now, a.checks[i].N); err != nil {
			failed = append(failed, a.rules[i].Name)
			errs = append(errs, err)
		}
	}
	a.refundable = nil
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: AllowAll denied, but rules %q keep the request counted: %w", ErrUnavailable, failed, errors.Join(errs...))
}
