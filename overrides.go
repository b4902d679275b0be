package ratelimit

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/drl-go/distributed-rate-limiter/local"
)

// This file is the overrides: a rule's limit replaced for the users of a
// class (Rule.Classes), the class coming from Config.Classes or
// Config.ClassOf.
//
// buildRules builds one variant *rule per (rule, class) with each rule
// version, so Reload rebuilds them. A class with a Limit is the rule with
// that Limit (and Burst), under the rule's ID, so it uses the rule's Redis
// key (r.key), Local table and fallback table, and a core of its own,
// identified by (rule ID, class) across Reload: its own hybrid index, whose
// States lease with the class's limit, and its own RuleStats counters,
// summed into the rule's. Unlimited and Deny classes are variants on the
// rule's core that decide answers at once. A decision looks the user's
// class up (ruleFor) in the set it started with and goes on with the
// variant: the rest of the decision path does not know of classes.

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

// addClasses builds rl's variants, one per class of rl.Classes, in a
// stable order (hybrid indexes come from nextHybrid, as a rule's do). A
// class with a Limit keeps the core its (ID, class) had, if any (rl's core
// holds them), else gets a fresh one, added to b.fresh.
func (b *built) addClasses(rl *rule, nextHybrid *int) error {
	rl.classes = make(map[string]*rule, len(rl.Classes))
	for _, class := range slices.Sorted(maps.Keys(rl.Classes)) {
		v, err := b.variant(rl, class, rl.Classes[class], nextHybrid)
		if err != nil {
			return fmt.Errorf("class %q: %w", class, err)
		}
		rl.classes[class] = v
	}
	return nil
}

// variant returns rl's variant for class, overridden by o, which
// Rule.validate accepted.
func (b *built) variant(rl *rule, class string, o Override, nextHybrid *int) (*rule, error) {
	v := &rule{Rule: rl.Rule, ruleCore: rl.ruleCore, base: rl.ruleCore, window: rl.window, algo: rl.algo, maxN: rl.maxN}
	v.Classes = nil
	switch {
	case o.Unlimited:
		v.override, v.maxN = overrideUnlimited, math.MaxInt64
		return v, nil
	case o.Deny:
		v.override = overrideDeny
		return v, nil
	}
	v.Limit, v.Burst = o.Limit, o.Burst
	v.maxN = v.Limit
	if v.Burst > 0 {
		v.maxN = v.Burst
	}
	c := rl.classCores[class] // a former set's (read under reloadMu), if any
	if c == nil {
		c = &ruleCore{id: rl.id, algorithm: rl.algorithm, mode: rl.mode, window: rl.window,
			table: rl.table, fallback: rl.fallback, class: class, parent: rl.ruleCore}
		if c.mode == Hybrid {
			if *nextHybrid >= local.MaxRules {
				return nil, fmt.Errorf("more than %d hybrid rules and classes since New", local.MaxRules)
			}
			c.hybridIndex = *nextHybrid
			*nextHybrid++
		}
		b.fresh = append(b.fresh, c)
	}
	v.ruleCore = c
	return v, nil
}

// addClass records c, a fresh core of one of p's classes. It requires
// reloadMu (or New).
func (p *ruleCore) addClass(c *ruleCore) {
	if p.classCores == nil {
		p.classCores = make(map[string]*ruleCore)
	}
	p.classCores[c.class] = c
	var all []*ruleCore
	if cur := p.classList.Load(); cur != nil {
		all = slices.Clone(*cur)
	}
	all = append(all, c)
	p.classList.Store(&all)
}

// versions returns r and the variants of its classes with a core of their
// own (those with a Limit), for install.
func (r *rule) versions() []*rule {
	out := []*rule{r}
	for _, class := range slices.Sorted(maps.Keys(r.classes)) {
		if v := r.classes[class]; v.ruleCore != r.ruleCore {
			out = append(out, v)
		}
	}
	return out
}

// checkClasses validates Config.Classes against the classes of set's
// rules: every user key a valid key, every class defined under some rule.
// New and Reload call it (a Reload that drops a class Config.Classes names
// is refused: its users would silently fall back to the rule itself).
func checkClasses(cfg *Config, set *ruleSet) error {
	defined := make(map[string]bool)
	for _, r := range set.list {
		for class := range r.classes {
			defined[class] = true
		}
	}
	for _, user := range slices.Sorted(maps.Keys(cfg.Classes)) { // the same error each time
		class := cfg.Classes[user]
		switch {
		case user == "" || len(user) > cfg.MaxKeyBytes:
			return fmt.Errorf("%w: Config.Classes: user key %q is empty or longer than MaxKeyBytes", ErrInvalidArgument, user)
		case !defined[class]:
			return fmt.Errorf("%w: Config.Classes: user %q: class %q is not defined under any rule's Classes", ErrInvalidArgument, user, class)
		}
	}
	return nil
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

// quota is user's limit under r, the class's variant (LimitFor): its Limit,
// 0 for a Deny class, math.MaxInt64 for an Unlimited one.
func (r *rule) quota() int64 {
	switch r.override {
	case overrideUnlimited:
		return math.MaxInt64
	case overrideDeny:
		return 0
	}
	return r.Limit
}

// overridden is the decision of an Unlimited or Deny variant for n (0: a
// peek, not counted in RuleStats).
func (r *rule) overridden(n int64) Decision {
	if r.override == overrideUnlimited {
		if n > 0 {
			r.stats.unlimited.Add(1) // the rule's core: kept across Reload
		}
		return Decision{Allowed: true, Remaining: math.MaxInt64}
	}
	if n > 0 {
		r.stats.denied.Add(1)
	}
	return Decision{RetryAfter: time.Duration(r.window) * time.Millisecond}
}

// dropClasses drops what this instance holds of user's key under r's
// hybrid classes, every one r's core ever had (Reset: the key is the
// rule's, whatever the class).
func (l *Limiter) dropClasses(r *rule, user string) {
	if list := r.classList.Load(); list != nil {
		for _, c := range *list {
			l.hybrid.drop(c.cur.Load(), user)
		}
	}
}

// addClassStats adds the decisions of r's classes to st, r's RuleStats:
// those of every class core the rule ever had (counters never go down).
func addClassStats(st *RuleStats, r *rule) {
	st.UnlimitedAllowed += r.stats.unlimited.Load()
	st.DenyDenied += r.stats.denied.Load()
	list := r.classList.Load()
	if list == nil {
		return
	}
	for _, v := range *list {
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
		st.ShadowAllowed += c.shadowAllowed.Load()
		st.ShadowDenied += c.shadowDenied.Load()
		st.GivenBack += c.givenBack.Load()
		if v.table == nil { // a Local rule's table counts its classes' decisions too
			st.LocalAllowed += c.inProcAllowed.Load()
			st.LocalDenied += c.inProcDenied.Load()
		}
	}
}
