package ratelimit

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// This file is the overrides: a rule's limit replaced for the users of a
// class (Rule.Classes), the class coming from Config.Classes or
// Config.ClassOf.
//
// New builds one variant *rule per (rule, class): a class with a Limit is
// the rule with that Limit (and Burst), under the rule's name, so it uses
// the rule's Redis key, Local table and fallback table, and its own hybrid
// index, whose states lease with the class's limit. Unlimited and Deny
// classes are variants that decideChecked answers at once. A decision
// looks the user's class up (ruleFor) and goes on with the variant: the
// rest of the decision path does not know of classes.

// Override replaces a rule's limit for the users of one class. Set exactly
// one of: Limit (with Burst, for a TokenBucket rule), Unlimited or Deny.
type Override struct {
	// Limit replaces the rule's Limit, with the rule's Window and
	// Algorithm, on the rule's counters: a user's admissions under the rule
	// and under the class count alike. The bounds of Rule.Limit apply.
	Limit int64
	// Burst replaces a TokenBucket rule's Burst; default (0) the class's
	// Limit. At most 2·Limit; set on another algorithm, it is an error.
	Burst int64
	// Unlimited admits every request of the class's users, without
	// counting it or asking Redis: Decision{Allowed: true, Remaining:
	// math.MaxInt64}.
	Unlimited bool
	// Deny denies every request of the class's users, without counting it
	// or asking Redis: Allowed false, Remaining 0, RetryAfter the rule's
	// Window (a wait is no promise: the class decides, not a count),
	// ResetAfter 0.
	Deny bool
}

// overrideKind is how a variant decides: by the rule's algorithm (zero),
// or always the same way.
type overrideKind uint8

const (
	overrideUnlimited overrideKind = iota + 1
	overrideDeny
)

// overrideCounts are an Unlimited or Deny variant's decisions, for
// RuleStats.
type overrideCounts struct {
	unlimited, denied atomic.Int64
}

// buildVariants validates Rule.Classes and Config.Classes and builds every
// rule's variants. It runs in New, after the rules, before the hybrid
// cache is sized (a hybrid variant takes an index of its own).
func (l *Limiter) buildVariants() error {
	defined := make(map[string]bool)
	for _, cr := range l.cfg.Rules {
		if len(cr.Classes) == 0 {
			continue
		}
		r := l.rules[cr.Name]
		r.classes = make(map[string]*rule, len(cr.Classes))
		for _, class := range slices.Sorted(maps.Keys(cr.Classes)) { // hybrid indexes in a stable order
			v, err := l.variant(r, class, cr.Classes[class])
			if err != nil {
				return fmt.Errorf("%w: rule %q: class %q: %w", ErrInvalidArgument, r.Name, class, err)
			}
			r.classes[class] = v
			defined[class] = true
		}
	}
	for user, class := range l.cfg.Classes {
		switch {
		case user == "" || len(user) > l.cfg.MaxKeyBytes:
			return fmt.Errorf("%w: Config.Classes: user key %q is empty or longer than MaxKeyBytes", ErrInvalidArgument, user)
		case !defined[class]:
			return fmt.Errorf("%w: Config.Classes: user %q: class %q is not defined under any rule's Classes", ErrInvalidArgument, user, class)
		}
	}
	l.cfg.Classes = maps.Clone(l.cfg.Classes) // never alias the caller's map
	return nil
}

// variant returns r's variant for class, overridden by o.
func (l *Limiter) variant(r *rule, class string, o Override) (*rule, error) {
	set := 0
	for _, b := range []bool{o.Limit != 0, o.Unlimited, o.Deny} {
		if b {
			set++
		}
	}
	switch {
	case class == "":
		return nil, fmt.Errorf("empty class name")
	case set != 1:
		return nil, fmt.Errorf("set exactly one of fields Limit, Unlimited and Deny")
	case o.Burst != 0 && o.Limit == 0:
		return nil, fmt.Errorf("field Burst %d is set without a Limit", o.Burst)
	}
	v := &rule{Rule: r.Rule, window: r.window, algo: r.algo, table: r.table, fallback: r.fallback, maxN: r.maxN}
	v.Classes = nil
	switch {
	case o.Unlimited:
		v.override, v.maxN, v.counts = overrideUnlimited, math.MaxInt64, &overrideCounts{}
		return v, nil
	case o.Deny:
		v.override, v.counts = overrideDeny, &overrideCounts{}
		return v, nil
	}
	v.Limit, v.Burst = o.Limit, o.Burst
	if err := v.Rule.validate(); err != nil { // the bounds of a rule's Limit and Burst
		return nil, err
	}
	v.maxN = v.Limit
	if v.Burst > 0 {
		v.maxN = v.Burst
	}
	if v.Mode == Hybrid {
		v.hybridIndex = len(l.hybrid.rules)
		l.hybrid.rules = append(l.hybrid.rules, v)
	}
	return v, nil
}

// userClass is a user's class, looked up once per call (AllowAll decides
// several rules for one user).
type userClass struct {
	class string
	done  bool
}

// ruleFor returns the rule that decides for user under r: r's variant for
// the user's class, or r itself. It looks the class up, in Config.Classes
// then with Config.ClassOf, only for a rule with classes, and once per c.
func (l *Limiter) ruleFor(ctx context.Context, r *rule, user string, c *userClass) (*rule, error) {
	if r.classes == nil {
		return r, nil
	}
	if !c.done {
		if err := l.checkKey(user); err != nil { // ClassOf never sees a bad key
			return nil, err
		}
		class, ok := l.cfg.Classes[user]
		if !ok && l.cfg.ClassOf != nil {
			var err error
			if class, err = l.cfg.ClassOf(ctx, user); err != nil {
				return nil, fmt.Errorf("ratelimit: rule %q: Config.ClassOf: %w", r.Name, err)
			}
		}
		c.class, c.done = class, true
	}
	if v, ok := r.classes[c.class]; ok {
		return v, nil
	}
	return r, nil
}

// overridden is the decision of an Unlimited or Deny variant for n (0: a
// peek, not counted in RuleStats).
func (r *rule) overridden(n int64) Decision {
	if r.override == overrideUnlimited {
		if n > 0 {
			r.counts.unlimited.Add(1)
		}
		return Decision{Allowed: true, Remaining: math.MaxInt64}
	}
	if n > 0 {
		r.counts.denied.Add(1)
	}
	return Decision{RetryAfter: time.Duration(r.window) * time.Millisecond}
}

// dropClasses drops what this instance holds of user's key under r's
// hybrid variants (Reset: the key is the rule's, whatever the class).
func (l *Limiter) dropClasses(r *rule, user string) {
	for _, v := range r.classes {
		if v.override == 0 {
			l.hybrid.drop(v, user)
		}
	}
}

// addClassStats adds the decisions of r's variants to st, r's RuleStats.
func addClassStats(st *RuleStats, r *rule) {
	for _, v := range r.classes {
		if v.counts != nil {
			st.UnlimitedAllowed += v.counts.unlimited.Load()
			st.DenyDenied += v.counts.denied.Load()
			continue
		}
		c := &v.stats
		st.RedisAllowed += c.redisAllowed.Load()
		st.RedisDenied += c.redisDenied.Load()
		st.FallbackAllowed += c.fallbackAllowed.Load()
		st.FallbackDenied += c.fallbackDenied.Load()
		st.LeaseGranted += c.granted.Load()
		st.LeaseReturned += c.returned.Load()
		st.Reconciliations += c.reconciled.Load()
		st.Overshoots += c.overshoots.Load()
		st.OvershootTokens += c.overSum.Load()
		st.MaxOvershoot = max(st.MaxOvershoot, c.overMax.Load())
		if v.table == nil { // a Local rule's table counts its variants' decisions too
			st.LocalAllowed += c.inProcAllowed.Load()
			st.LocalDenied += c.inProcDenied.Load()
		}
	}
}
