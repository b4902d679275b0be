package ratelimit

import (
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
)

// This file is the rule set: how Config.Rules become the rules a Limiter
// decides with, and how Reload swaps them while requests flow.

// ruleSet is the rules in force: immutable once published, so that the
// decision path reads it with one atomic load and no lock.
type ruleSet struct {
	byName map[string]*rule // Rule.Name: what Allow is given
	byID   map[string]*rule // Rule.ID
	list   []*rule          // in the order given
}

// ruleCore is what a rule keeps across Reload while its ID, Algorithm, Mode
// and Window stay the same: its local state (the Local table, FailLocal's
// table, its hybrid index and so its keys' States) and its RuleStats
// counters. Each version of the rule (a *rule, one per rule set) points to
// it.
type ruleCore struct {
	id        string
	algorithm Algorithm
	mode      Mode
	window    int64 // ms

	table    *local.Table[localState] // Local mode only
	fallback *local.Table[localState] // FailLocal's decisions (Hybrid and Strict)

	hybridIndex int // Hybrid mode only: index in hybrid.cores, never reused

	stats ruleCounters // RuleStats's (rulestats.go)

	cur     atomic.Pointer[rule] // the rule's version in the newest set
	removed atomic.Bool          // not in the newest set

	// A class of the rule with a Limit (Rule.Classes) has a core of its
	// own, identified by (id, class): class and parent (the rule's core)
	// are set; it shares the parent's id (so its Redis key) and tables.
	class  string
	parent *ruleCore
	// A rule's core holds its classes' cores, every one ever made (live or
	// removed): classCores under reloadMu (buildRules, install), classList
	// for RuleStats.
	classCores map[string]*ruleCore
	classList  atomic.Pointer[[]*ruleCore]
}

// key returns the Redis key of user's counters under the rule: named by
// the rule's ID, so that renaming a rule keeps them.
func (c *ruleCore) key(prefix, user string) string { return global.Key(prefix, c.id, user) }

// sameCounting reports whether r counts as c does: a rule that changed its
// algorithm, mode or window would misread c's counters (in Redis and in
// process).
func (c *ruleCore) sameCounting(r Rule) bool {
	return c.algorithm == r.Algorithm && c.mode == r.Mode && c.window == r.Window.Milliseconds()
}

// built is what buildRules returns: the new set, and the cores it made
// (the rules' and their classes').
type built struct {
	set   *ruleSet
	fresh []*ruleCore
}

// buildRules validates rules, fills in their defaults and builds their
// set. A rule whose ID is in known (every core the Limiter made, live or
// removed) keeps that core; its algorithm, mode and window must then be the
// core's, or the rule needs a new ID. Other rules get a fresh core, hybrid
// ones numbered from nextHybrid on. A rule's classes (Rule.Classes) are
// built with it (overrides.go), a class with a Limit keeping its core by
// (ID, class) the same way. buildRules changes nothing it is given:
// the caller publishes the set (Limiter.install) only if it succeeds.
func buildRules(rules []Rule, known map[string]*ruleCore, nextHybrid int) (built, error) {
	if len(rules) == 0 {
		return built{}, fmt.Errorf("%w: no rules", ErrInvalidArgument)
	}
	b := built{set: &ruleSet{
		byName: make(map[string]*rule, len(rules)),
		byID:   make(map[string]*rule, len(rules)),
		list:   make([]*rule, 0, len(rules)),
	}}
	for i, r := range rules {
		if r.ID == "" {
			r.ID = r.Name
		}
		if e := r.validate(); e != nil { // its classes' overrides too
			e.Index = i
			return built{}, e
		}
		if _, dup := b.set.byName[r.Name]; dup {
			return built{}, fmt.Errorf("%w: rule %d: duplicate name %q", ErrInvalidArgument, i, r.Name)
		}
		if _, dup := b.set.byID[r.ID]; dup {
			return built{}, fmt.Errorf("%w: rule %d (%q): duplicate ID %q", ErrInvalidArgument, i, r.Name, r.ID)
		}
		if r.Mode == 0 {
			r.Mode = Strict
			if r.Algorithm.supportsHybrid() {
				r.Mode = Hybrid
			}
		}
		if r.OnFailure == 0 {
			r.OnFailure = FailLocal
		}
		c := known[r.ID]
		switch {
		case c != nil && !c.sameCounting(r):
			return built{}, fmt.Errorf("%w: rule %d (%q): ID %q counted with %v, mode %v, window %v; "+
				"its counters would be misread as %v, mode %v, window %v: give the rule a new ID",
				ErrInvalidArgument, i, r.Name, r.ID, c.algorithm, c.mode, time.Duration(c.window)*time.Millisecond, r.Algorithm, r.Mode, r.Window)
		case c == nil:
			c = newRuleCore(r)
			if r.Mode == Hybrid {
				if nextHybrid >= local.MaxRules {
					return built{}, fmt.Errorf("%w: rule %d (%q): more than %d hybrid rules since New", ErrInvalidArgument, i, r.Name, local.MaxRules)
				}
				c.hybridIndex = nextHybrid
				nextHybrid++
			}
			b.fresh = append(b.fresh, c)
		}
		r.Classes = maps.Clone(r.Classes) // never alias the caller's map
		rl := &rule{Rule: r, ruleCore: c, base: c, window: c.window, algo: global.Algorithm(r.Algorithm), maxN: r.Limit}
		if r.Burst > 0 {
			rl.maxN = r.Burst
		}
		if len(r.Classes) > 0 {
			if err := b.addClasses(rl, &nextHybrid); err != nil {
				return built{}, fmt.Errorf("%w: rule %d (%q): %w", ErrInvalidArgument, i, r.Name, err)
			}
		}
		b.set.byName[r.Name] = rl
		b.set.byID[r.ID] = rl
		b.set.list = append(b.set.list, rl)
	}
	return b, nil
}

// newRuleCore returns the core of a rule seen for the first time.
func newRuleCore(r Rule) *ruleCore {
	c := &ruleCore{id: r.ID, algorithm: r.Algorithm, mode: r.Mode, window: r.Window.Milliseconds()}
	switch r.Mode {
	case Local:
		c.table = local.NewTable[localState](2 * c.window)
	default:
		c.fallback = newFallbackTable(c.window)
	}
	return c
}

// needs reports whether the set has a rule of mode m.
func (s *ruleSet) needs(m Mode) bool {
	for _, r := range s.list {
		if r.Mode == m {
			return true
		}
	}
	return false
}

// first returns the first rule of the set whose mode is one of modes, and
// its index, or -1.
func (s *ruleSet) first(modes ...Mode) (int, *rule) {
	for i, r := range s.list {
		if slices.Contains(modes, r.Mode) {
			return i, r
		}
	}
	return -1, nil
}

// Reload replaces the Limiter's rules with rules, while requests flow. It
// validates the whole set first: a bad set returns an error wrapping
// ErrInvalidArgument that names the rule (its index and name) and the
// field, and changes nothing. Then it swaps the set atomically: a decision
// uses either the old set or the new one, never a mix, and every decision
// that starts after Reload returns uses the new one.
//
// Rules are matched by ID (default: Name). A rule whose ID was in force
// before keeps everything it counted: its users' counters in Redis (named
// by the ID), its local state (a Local rule's table, FailLocal's table, a
// Hybrid rule's keys and leases) and its RuleStats counters; its Name,
// Limit, Burst, OnFailure and Shadow may change, and rule the decisions
// made after Reload returns. Its Algorithm, Mode and Window may not: the
// counters would be misread, so such a change is refused (the error says
// so); give the rule a new ID instead, which starts it afresh. An ID the
// Limiter has used before keeps this check even after a Reload removed it,
// and a removed ID that comes back gets its counters back.
//
// A removed rule's name is unknown at once (ErrUnknownRule, also for its
// RuleLimiters); a Hybrid rule's leases go back to Redis at the next sync
// pass, and admissions its failure policy made without Redis are still
// credited to it. A rule's classes (Rule.Classes) are rebuilt with it: a
// class with a Limit keeps its local state by (ID, class) and counts on
// the rule's counters whatever its Limit; Config.Classes must still name
// only classes the new rules define. Reload cannot add the first Hybrid
// rule to a Limiter that New built without one, nor a rule that needs
// Redis to one built without any (New builds the hybrid cache and the
// store only when a rule needs them): such a set is refused too. Reloads
// are serialised.
func (l *Limiter) Reload(rules []Rule) error {
	if l.closed.Load() {
		return ErrClosed
	}
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	b, err := buildRules(rules, l.cores, l.nextHybrid())
	if err != nil {
		return err
	}
	if err := checkClasses(&l.cfg, b.set); err != nil {
		return err
	}
	if i, r := b.set.first(Hybrid); r != nil && l.hybrid == nil {
		return fmt.Errorf("%w: rule %d (%q): field Mode hybrid, but the Limiter was built without hybrid rules", ErrInvalidArgument, i, r.Name)
	}
	if i, r := b.set.first(Hybrid, Strict); r != nil && l.store == nil {
		return fmt.Errorf("%w: rule %d (%q): field Mode %v needs Redis, but the Limiter was built without rules that do", ErrInvalidArgument, i, r.Name, r.Mode)
	}
	l.install(b)
	return nil
}

// nextHybrid returns the index the next new Hybrid rule gets. It requires
// reloadMu (or New).
func (l *Limiter) nextHybrid() int {
	if l.hybrid == nil {
		return 0
	}
	return len(*l.hybrid.cores.Load())
}

// install publishes a set that buildRules built: its new cores first (so
// that a sync pass finds the rule of every key a decision creates), then
// every rule's version, then the set, then the removal of the rules it
// dropped. It requires reloadMu (or New).
func (l *Limiter) install(b built) {
	old := l.rules.Load()
	var hybrids, locals []*ruleCore
	for _, c := range b.fresh {
		if c.parent != nil {
			c.parent.addClass(c)
			if c.mode == Hybrid {
				hybrids = append(hybrids, c)
			}
			continue // a class's Local table is the rule's: not a Local core of its own
		}
		l.cores[c.id] = c
		switch c.mode {
		case Hybrid:
			hybrids = append(hybrids, c)
		case Local:
			locals = append(locals, c)
		}
	}
	if h := l.hybrid; h != nil && len(hybrids) > 0 {
		all := append(slices.Clone(*h.cores.Load()), hybrids...) // indexes from len on: see buildRules
		h.cores.Store(&all)
	}
	if len(locals) > 0 {
		all := append(slices.Clone(*l.localCores.Load()), locals...)
		l.localCores.Store(&all)
	}
	live := make(map[*ruleCore]bool, len(b.set.list))
	for _, r := range b.set.list {
		for _, v := range r.versions() {
			v.cur.Store(v)
			v.removed.Store(false)
			live[v.ruleCore] = true
		}
	}
	l.rules.Store(b.set)
	if old == nil {
		return
	}
	for _, r := range old.list {
		for _, v := range r.versions() {
			if !live[v.ruleCore] { // a removed rule, or a removed class (or one now Unlimited or Deny)
				v.removed.Store(true)
			}
		}
	}
}
