package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Check is one rule of a request checked against several (AllowAll): the
// rule's name and the request's cost under it.
type Check struct {
	Rule string
	N    int64
}

// MultiDecision is AllowAll's answer: the most restrictive of the rules'
// decisions, and the rule it came from.
type MultiDecision struct {
	Decision
	// Rule is the rule that decided: the one that denied, or, when every
	// rule admitted, the one with the fewest requests remaining (the first
	// of those that tie).
	Rule string
}

// AllowAll decides a request that several rules limit (a per-second and a
// per-day limit, an endpoint's and the tenant's), all or nothing: it is
// admitted only if every rule admits it, and a request that one rule
// denies consumes nothing under the others.
//
// The rules are checked in the order given, each as AllowN would; when one
// denies, the admissions already made under the rules before it are
// refunded (Refund) before AllowAll returns. So it is not atomic across
// rules: a concurrent request of the same user may meet an earlier rule's
// count raised for the length of that rollback and be denied by it; no
// request is ever admitted beyond a limit. Put the rule most likely to deny
// first: a request it denies costs one decision. A request admitted by all
// costs one decision per rule (no fewer calls than separate decisions; one
// Redis script over the user's keys is not built yet).
//
// Bad input (no checks, an unknown rule, a bad n or key) is an error before
// anything is counted. An error of a rule's decision (its failure policy
// being FailError, say) refunds the rules before it and is returned. If a
// refund fails (Redis went away meanwhile, or the admission was a failure
// policy's, which Refund cannot reach), AllowAll still returns the denial,
// with an error wrapping ErrUnavailable that names the rules left counted:
// the request is denied either way.
func (l *Limiter) AllowAll(ctx context.Context, user string, now time.Time, checks ...Check) (MultiDecision, error) {
	if len(checks) == 0 {
		return MultiDecision{}, fmt.Errorf("%w: AllowAll with no rule", ErrInvalidArgument)
	}
	if l.closed.Load() {
		return MultiDecision{}, ErrClosed
	}
	rules := make([]*rule, len(checks))
	var ms, earliest int64
	var class userClass // the user's class, looked up once
	for i, c := range checks {
		r, ok := l.rules[c.Rule]
		if !ok {
			return MultiDecision{}, fmt.Errorf("%w: %q", ErrUnknownRule, c.Rule)
		}
		r, err := l.ruleFor(ctx, r, user, &class)
		if err != nil {
			return MultiDecision{}, err
		}
		if c.N < 1 {
			return MultiDecision{}, fmt.Errorf("%w: AllowAll of n = %d under rule %q, want at least 1", ErrInvalidArgument, c.N, c.Rule)
		}
		if ms, earliest, err = l.check(r, user, now, c.N); err != nil {
			return MultiDecision{}, fmt.Errorf("rule %q: %w", c.Rule, err)
		}
		rules[i] = r
	}
	var out MultiDecision
	for i, c := range checks {
		d, err := l.decideChecked(ctx, rules[i], user, ms, earliest, c.N) // checked above, once
		if err != nil {
			return MultiDecision{}, errors.Join(err, l.rollback(ctx, user, now, checks[:i]))
		}
		if !d.Allowed {
			return MultiDecision{Decision: d, Rule: c.Rule}, l.rollback(ctx, user, now, checks[:i])
		}
		if i == 0 || d.Remaining < out.Remaining {
			out = MultiDecision{Decision: d, Rule: c.Rule}
		}
	}
	return out, nil
}

// rollback refunds the admissions of checks, the rules AllowAll admitted
// before one denied. It returns nil, or an error wrapping ErrUnavailable
// that names the rules whose refund failed.
func (l *Limiter) rollback(ctx context.Context, user string, now time.Time, checks []Check) error {
	var failed []string
	var errs []error
	ctx = context.WithoutCancel(ctx) // a caller gone must not leave counts behind; Timeout bounds each call
	for _, c := range checks {
		if err := l.Refund(ctx, c.Rule, user, now, c.N); err != nil {
			failed = append(failed, c.Rule)
			errs = append(errs, err)
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%w: AllowAll denied, but rules %q keep the request counted: %w", ErrUnavailable, failed, errors.Join(errs...))
}
