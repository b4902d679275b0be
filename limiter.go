// Package ratelimit limits how many requests each user makes, across many
// gateway instances that share one Redis (single node, sentinel or cluster).
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/local"
	syncer "github.com/drl-go/distributed-rate-limiter/sync"
)

// Errors that callers branch on with errors.Is. Returned errors wrap them
// with the detail.
var (
	// ErrUnknownRule: the rule name passed to Allow is not configured.
	ErrUnknownRule = errors.New("ratelimit: unknown rule")
	// ErrInvalidKey: the user key is empty or longer than Config.MaxKeyBytes.
	ErrInvalidKey = errors.New("ratelimit: invalid key")
	// ErrInvalidArgument: a bad count, timestamp or configuration.
	ErrInvalidArgument = errors.New("ratelimit: invalid argument")
	// ErrClosed: the Limiter was closed.
	ErrClosed = errors.New("ratelimit: limiter closed")
)

// Algorithm is how a rule counts. The zero value is SlidingWindow.
type Algorithm uint8

const (
	// SlidingWindow weighs the previous fixed window's count by how much of
	// it still overlaps the sliding window: estimate = prev·(1 − elapsed/W)
	// + cur. Two counters per key; it assumes the previous window's
	// requests were evenly spread, so it can admit somewhat more or less
	// than an exact log would.
	SlidingWindow Algorithm = iota
	// SlidingLog keeps every admitted timestamp: exactly Limit in any
	// window of length Window, at O(Limit) memory per key. Limit is at
	// most 1000, and AllowN's n at most 100.
	SlidingLog
	// FixedWindow counts per aligned window [k·W, (k+1)·W): cheap, but up
	// to 2·Limit can pass around a window boundary.
	FixedWindow
	// TokenBucket is GCRA: a bucket of Rule.Burst tokens (default Limit)
	// refilled at Limit per Window. It allows bursts of Burst and then a
	// steady Limit/Window; it is not "Limit per any window": up to Burst +
	// Limit can pass within one window (a full bucket, then its refill).
	TokenBucket
	numAlgorithms
)

// String returns the algorithm's name.
func (a Algorithm) String() string { return global.Algorithm(a).String() }

// Mode is where a rule's decisions are made.
type Mode uint8

// The zero Mode means the default: Hybrid for the algorithms it supports
// (SlidingWindow, FixedWindow), Strict for the others.
const (
	// Hybrid decides in this process from token leases reserved in Redis
	// ahead of demand, and reconciles every SyncInterval: decisions far
	// from the limit take well under a microsecond and no I/O; near the
	// limit leases shrink to nothing and decisions go to Redis one by one.
	// Redis counts leased tokens when they are leased, so the instances
	// together never admit more than the limit; the price is that tokens
	// leased by one instance and not yet spent are unavailable to the
	// others until its next sync. SlidingWindow and FixedWindow only.
	Hybrid Mode = iota + 1
	// Strict decides every request with one atomic Lua call on Redis:
	// exact across instances, at one (coalesced) round trip per decision.
	Strict
	// Local decides in this process only, with the same algorithms: no
	// coordination across instances, no I/O.
	Local
	numModes
)

// String returns the mode's name.
func (m Mode) String() string {
	switch m {
	case 0:
		return "default"
	case Hybrid:
		return "hybrid"
	case Strict:
		return "strict"
	case Local:
		return "local"
	}
	return fmt.Sprintf("Mode(%d)", uint8(m))
}

// supportsHybrid reports whether the algorithm can run in Hybrid mode: its
// state must be counts per window, so that a token leased early in a window
// costs no more than one spent later.
func (a Algorithm) supportsHybrid() bool { return a == SlidingWindow || a == FixedWindow }

// Bounds on the arguments, so that every value the algorithms form stays
// exact in Lua's doubles and every wait fits a time.Duration:
const (
	// maxTimestamp: a request's time in ms (year 37 648); times, and the
	// window starts and ends formed from them, stay below 2^53.
	maxTimestamp = 1 << 50
	// maxWindow: a window; a wait is at most about two windows, far below
	// the 292 years a time.Duration holds.
	maxWindow = 100 * 365 * 24 * time.Hour
	// maxLocalKeys: Config.MaxLocalKeys, far beyond what a process keeps
	// resident (the memory per key is in bench/RESULTS.md); ristretto sizes
	// its counters from it at New.
	maxLocalKeys = 1 << 24
	// maxLogLimit and maxLogN bound a SlidingLog rule's Limit and a call's
	// n: the log keeps a member per admission, and one script call adds n
	// and may drop up to Limit of them, all while Redis serves no one else
	// (bench/RESULTS.md has the cost of a call at both bounds).
	maxLogLimit = 1000
	maxLogN     = 100
)

// Rule is one limit: at most Limit requests per Window for each user.
type Rule struct {
	// Name identifies the rule in Allow calls, e.g. "GET /v1/orders".
	// Required and unique.
	Name string
	// ID names the rule's counters in Redis and identifies the rule across
	// Reload: a rule renamed under the same ID keeps every user's counts.
	// Default Name (so keys named before IDs existed do not change).
	// Unique.
	ID string
	// Limit is the number of requests admitted per Window. Must be > 0.
	Limit int64
	// Window is the period of the limit; at least 1 ms, whole
	// milliseconds, at most 100 years. Limit × Window in ms must not exceed
	// 2^50.
	Window time.Duration
	// Algorithm defaults to SlidingWindow.
	Algorithm Algorithm
	// Mode defaults to Hybrid where the algorithm supports it, else Strict.
	Mode Mode
	// OnFailure is what the rule decides when Redis cannot answer. Default
	// FailLocal. Local rules never need Redis.
	OnFailure FailurePolicy
	// Burst is a TokenBucket rule's capacity: the bucket holds at most Burst
	// tokens and refills at Limit per Window, so a user idle for long may
	// send Burst at once, then Limit per Window. Default (0) Limit. At most
	// 2·Limit (a full bucket then drains within two windows, the span for
	// which every key's state is kept). Set on another algorithm, it is an
	// error.
	Burst int64
	// Classes overrides the rule for the users of a class (a plan, a
	// tenant, an allow or deny list): a class's Override replaces Limit (and
	// Burst), or makes its users Unlimited or denied (Deny). A user's class
	// comes from Config.Classes, else Config.ClassOf; a class not listed
	// here uses the rule itself. An override with a Limit keeps the rule's
	// counters: same key, same Window and Algorithm, another limit. See
	// Override.
	Classes map[string]Override
	// Shadow makes the rule decide and count as usual but never deny: the
	// Decision is always Allowed, with RetryAfter 0, while Remaining and
	// ResetAfter are the rule's real ones (Remaining 0 when it would have
	// denied). What it would have decided is counted in RuleStats
	// (ShadowAllowed, ShadowDenied): a way to try a limit on live traffic
	// before enforcing it (Reload can then clear Shadow, counts intact).
	// Errors (bad input; FailError while Redis is down) are still errors.
	Shadow bool
}

// Config configures a Limiter. The zero value of each field means its
// default; New does not modify the Config.
type Config struct {
	// Redis is the shared store; required when any rule is Hybrid or Strict.
	// A single node, failover or cluster client all work; a Redis Cluster
	// needs a cluster client: New rejects a single-node client of a cluster
	// node that does not serve every slot (when Redis answers at New).
	Redis redis.UniversalClient
	// Rules are the limits. At least one.
	Rules []Rule
	// SyncInterval is the hybrid mode's flush period: how often each
	// instance reports demand, returns and renews leases, and learns the
	// global counts. Shorter means fresher views and smaller leases, at more
	// Redis traffic. Default 100 ms.
	SyncInterval time.Duration
	// SyncDuty is the share of a long sync pass's time that its pipelines
	// may take: after each pipeline of many keys but the last, the pass
	// waits as long as the pipeline took times (1−SyncDuty)/SyncDuty, so
	// that strict and lease-less decisions find Redis free in between
	// (docs/design.md, "Sync pass: spreading and cost per key"). Lower
	// means fewer stalls and longer passes. Default 0.5; 1 never waits; in
	// (0, 1].
	SyncDuty float64
	// ManualSync stops the Limiter from running its own sync loop: the
	// caller runs every pass with Sync (deterministic tests, simulations).
	ManualSync bool
	// MaxLocalKeys bounds the (user, rule) keys whose hybrid state this process keeps, at most 2^24
	// (a ristretto cache; less used users are evicted, which only costs them
	// a Redis call on their next request). Default 1<<17; the cache takes
	// about 20 bytes of admission counters per key on top of the states.
	MaxLocalKeys int64
	// InstanceID names this instance in the Redis registry of live
	// instances. Default: random.
	InstanceID string
	// Logger receives the sync loop's errors and the outages of Redis: a
	// line when one starts and when it ends, a summary per LogInterval in
	// between. Default: discarded.
	Logger *slog.Logger
	// Now is the clock for work not tied to a request (sync ticks,
	// validating timestamps). Default time.Now. Decisions use the
	// timestamp passed to Allow, never this clock.
	Now func() time.Time
	// KeyPrefix starts every Redis key. Default "rl". No braces.
	KeyPrefix string
	// MaxKeyBytes bounds the length of a user key. Default 512.
	MaxKeyBytes int
	// MaxSkew bounds how far a request's timestamp may lie from Now, in
	// either direction, before Allow rejects it with ErrInvalidArgument.
	// Default 5 minutes; negative disables the check. While a hybrid sync
	// loop runs, Now is read once per pass, not per request, and the bound
	// widens by SyncInterval.
	MaxSkew time.Duration
	// ServerTime makes strict scripts read the Redis server's clock (TIME)
	// instead of the timestamp passed to Allow. Use it when gateway clocks
	// are skewed: every instance then agrees on time, at the price of
	// decisions that tests cannot replay and of ignoring the request's own
	// time. The timestamp is still validated.
	ServerTime bool
	// Pipeline tunes how concurrent strict calls are coalesced.
	Pipeline PipelineConfig

	// Timeout is the longest a decision waits on Redis (a strict call, a
	// hybrid key's call without lease); then the rule's OnFailure policy
	// decides. A shorter deadline on the caller's context wins. Each sync
	// pipeline gets max(Timeout, SyncInterval). Default 1 s: long enough
	// that a loaded Redis (or a loaded gateway) is not taken for a dead
	// one, since a call that times out may still be counted by Redis while
	// the policy admits it too; gateways with a tight latency budget set
	// 20–100 ms. The breaker makes an outage cost Timeout only to its first
	// few calls. For the network wait itself to end at the deadline (not
	// only the caller's), give the go-redis client ContextTimeoutEnabled.
	Timeout time.Duration
	// Breaker tunes the circuit breaker in front of Redis.
	Breaker BreakerConfig
	// OnHealthChange, if not nil, is called with the new Health each time
	// it changes state (for alerting). It runs on the goroutine that saw the
	// change, a decision's maybe: it must return quickly.
	OnHealthChange func(Health)
	// RequireRedis makes New fail when Redis does not answer. By default
	// New succeeds and the Limiter starts Degraded, loading the scripts
	// when Redis appears.
	RequireRedis bool
	// MaxPendingKeys bounds the keys whose admissions made without Redis
	// (FailLocal, FailOpen) wait to be credited to it. The admissions of
	// keys beyond it are not credited, and counted in Stats.PendingDropped.
	// Default 1<<16.
	MaxPendingKeys int
	// MinInstances is the fewest instances FailLocal assumes share each
	// limit: it admits Limit ÷ max(live instances last seen, MinInstances)
	// per key and window. An instance that starts while Redis is down has
	// seen no other, and would otherwise give every user a whole Limit of
	// its own; set it to the fleet's usual size. A fleet smaller than it
	// only admits less. Default 1; at most 1<<20.
	MinInstances int64
	// LogInterval is how often Logger gets a summary while Redis is
	// unavailable (a line also marks the outage's start and end). Default
	// 10 s.
	LogInterval time.Duration
	// StrictN makes AllowN return an error wrapping ErrInvalidArgument for
	// an n that can never pass (above the rule's Limit, or a token bucket's
	// Burst), instead of the default denial (see AllowN).
	StrictN bool

	// Classes maps a user key to its class, for the rules with
	// Rule.Classes: a static allow or deny list (Classes["user:42"] =
	// "blocked", a class whose Override is Deny), a few known tenants. Every
	// class named here must be defined under some rule (New and Reload
	// refuse rules that leave one undefined). It is read at New.
	Classes map[string]string
	// ClassOf, if not nil, returns the class of a user that Classes does
	// not list ("" for none: the rule itself applies), from the caller's own
	// store (a plan, a tenant). It is called with the caller's context only
	// for a rule with Rule.Classes: once per decision (Allow, AllowN, Peek,
	// and once per AllowAll), and once per Refund. It runs on the decision
	// path, so it must be fast: serve it from a cache. Its error fails the
	// decision: Allow returns it wrapped (errors.Is finds it), and nothing
	// is counted or admitted.
	ClassOf func(ctx context.Context, user string) (string, error)

	// noFront builds the hybrid mode's cache without its front table
	// (local.NewCacheWithoutFront), the reference path the front table
	// must agree with: a knob for the tests, which run every hybrid test
	// both ways, and for the bench module's benchmarks, which set it
	// through internal/knob. It is no part of the API.
	noFront bool
}

// PipelineConfig tunes the coalescing of concurrent strict calls into
// Redis pipelines. The zero value means the defaults.
type PipelineConfig struct {
	// MaxBatch caps the calls in one pipeline. Default 256.
	MaxBatch int
	// MaxInFlight caps the pipelines under way at once. Default 8.
	MaxInFlight int
	// BatchDelay is how long a pipeline that is not full waits for more
	// calls. Default 0: a lone call goes out at once, and calls that arrive
	// while pipelines are in flight form the next one.
	BatchDelay time.Duration
	// LeaseKeysPerCall caps the hybrid keys a sync pass sends in one call
	// of the lease script. Default 32; 1 sends one call per key. Keys share
	// a call only where Redis allows it: any keys on a single node (or a
	// failover pair), a user's keys on a cluster.
	LeaseKeysPerCall int
}

// Decision is the answer to Allow. It is 32 bytes in four fields, so that
// the compiler keeps it in registers from the decision to its caller's
// test of Allowed (a fifth field, the rule's limit, made a local decision
// measurably slower through store-forwarding stalls: bench/RESULTS.md); the
// rule's limit is RuleLimiter.Limit.
type Decision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Remaining is how many more requests would be admitted right now.
	Remaining int64
	// RetryAfter is, when not allowed, the wait after which a retry is
	// admitted if no other traffic comes; 0 when allowed.
	RetryAfter time.Duration
	// ResetAfter is the wait until the user's usage fully resets.
	ResetAfter time.Duration
}

// RetryAfterSeconds returns RetryAfter in whole seconds, rounded up: the
// value of an HTTP Retry-After header.
func (d Decision) RetryAfterSeconds() int {
	return int((d.RetryAfter + time.Second - 1) / time.Second)
}

// Limiter decides whether requests may pass. It is safe for concurrent use.
// Close it when done; it does not close the Redis client.
type Limiter struct {
	cfg    Config                  // defaults filled in
	rules  atomic.Pointer[ruleSet] // the rules in force (rules.go)
	store  *global.Store           // nil when no rule needs Redis
	hybrid *hybrid                 // nil when no rule is Hybrid
	syncer *syncer.Reconciler

	closeOnce sync.Once
	closed    atomic.Bool

	syncGate   sync.RWMutex // Sync holds it shared; Close takes it to set syncClosed
	syncClosed bool

	health    healthTracker
	pending   *pending
	fallbacks fallbackCounts

	strictAllowed, strictDenied, redisErrors atomic.Int64 // for Stats
	passes                                   *passStats   // SyncStats's (rulestats.go)
	loop                                     syncLoop     // the sync loop, unless ManualSync (rulestats.go)

	reloadMu   sync.Mutex                  // serialises Reload; guards cores
	cores      map[string]*ruleCore        // every rule core made, by ID, live or removed
	localCores atomic.Pointer[[]*ruleCore] // every Local rule's core, for Stats
}

// rule is a validated Rule with its derived values: one version of the
// rule, in one rule set, immutable. What lasts across versions (tables,
// hybrid index, counters) is in its core (rules.go).
type rule struct {
	Rule
	*ruleCore
	window int64 // ms
	algo   global.Algorithm

	maxN int64 // the largest n that can pass: Burst for a token bucket, else Limit

	classes  map[string]*rule // the rule's variants by class (overrides.go); nil without Rule.Classes
	override overrideKind     // a variant of an Unlimited or Deny class (overrides.go)
	base     *ruleCore        // the base rule's core (its own for a base rule): pending credits, Unlimited and Deny counts
}

// New validates cfg and returns a Limiter. When a rule needs Redis it loads
// the Lua scripts; if Redis does not answer, the Limiter starts Degraded
// (see Health) and recovers when Redis appears, unless cfg.RequireRedis
// asks New to fail.
func New(cfg Config) (*Limiter, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	l := &Limiter{cfg: cfg, passes: newPassStats()}
	l.health = healthTracker{l: l, started: cfg.Now()}
	l.health.cur = Health{State: Healthy, Since: l.health.started}
	l.pending = newPending(cfg.MaxPendingKeys)
	b, err := buildRules(cfg.Rules, nil, 0)
	if err != nil {
		return nil, err
	}
	if err := checkClasses(&l.cfg, b.set); err != nil {
		return nil, err
	}
	l.cfg.Classes = maps.Clone(l.cfg.Classes) // never alias the caller's map
	l.cores = make(map[string]*ruleCore, len(b.fresh))
	l.localCores.Store(&[]*ruleCore{})
	if _, r := b.set.first(Hybrid); r != nil {
		l.hybrid = &hybrid{l: l, ops: global.NewOps()}
		l.hybrid.cores.Store(&[]*ruleCore{})
	}
	l.install(b)
	_, needs := b.set.first(Hybrid, Strict)
	needRedis := needs != nil
	if needRedis {
		if cfg.Redis == nil {
			return nil, fmt.Errorf("%w: Config.Redis is nil but a rule needs Redis", ErrInvalidArgument)
		}
		l.store = global.NewStore(cfg.Redis, global.Options{
			MaxBatch:         cfg.Pipeline.MaxBatch,
			MaxInFlight:      cfg.Pipeline.MaxInFlight,
			BatchDelay:       cfg.Pipeline.BatchDelay,
			LeaseKeysPerCall: cfg.Pipeline.LeaseKeysPerCall,
			Timeout:          cfg.Timeout,
			SyncTimeout:      max(cfg.Timeout, cfg.SyncInterval),
			Breaker:          global.BreakerOptions(cfg.Breaker),
			Now:              cfg.Now,
			OnBreakerChange:  l.health.onBreaker,
		})
		ctx, cancel := context.WithTimeout(context.Background(), max(cfg.Timeout, time.Second))
		err := l.store.Load(ctx)
		if err == nil {
			err = l.store.CheckTopology(ctx)
		}
		cancel()
		if errors.Is(err, global.ErrNeedsClusterClient) {
			l.store.Close()
			return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
		}
		if err != nil {
			if !errors.Is(err, global.ErrUnavailable) {
				l.store.Close()
				return nil, fmt.Errorf("ratelimit: %w", err)
			}
			if cfg.RequireRedis {
				l.store.Close()
				return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			cfg.Logger.Warn("ratelimit: redis unavailable at start; scripts load when it answers", "err", err)
		}
	}
	if l.store != nil {
		scfg := syncer.Config{
			Store:        l.store,
			Now:          cfg.Now,
			Interval:     cfg.SyncInterval,
			Duty:         cfg.SyncDuty,
			InstancesKey: cfg.KeyPrefix + ":instances",
			ID:           cfg.InstanceID,
			OnPass:       l.onPass,
		}
		if h := l.hybrid; h != nil {
			newCache := local.NewCache
			if cfg.noFront {
				newCache = local.NewCacheWithoutFront
			}
			cache, err := newCache(cfg.MaxLocalKeys, max(len(*h.cores.Load()), 1))
			if err != nil {
				l.store.Close()
				return nil, fmt.Errorf("ratelimit: %w", err)
			}
			h.cache = cache
			scfg.Registry, scfg.Cache, scfg.Planner, scfg.OnTake = &h.registry, cache, h, h.fold
		}
		l.syncer = syncer.New(scfg)
		if h := l.hybrid; h != nil {
			h.instances = l.syncer.Instances
		}
		if !cfg.ManualSync {
			l.startLoop(func(err error) {
				if errors.Is(err, global.ErrUnavailable) {
					l.health.summary(cfg.Now()) // outages are logged rate-limited
					return
				}
				cfg.Logger.Warn("ratelimit: sync pass failed", "err", err)
			})
		}
	}
	return l, nil
}

// fill validates the Limiter-wide fields and sets their defaults.
func (c *Config) fill() error {
	if len(c.Rules) == 0 {
		return fmt.Errorf("%w: Config.Rules is empty", ErrInvalidArgument)
	}
	c.Rules = append([]Rule(nil), c.Rules...) // never alias the caller's slice
	if c.SyncInterval == 0 {
		c.SyncInterval = 100 * time.Millisecond
	}
	if c.SyncDuty == 0 {
		c.SyncDuty = 0.5
	}
	if !(c.SyncDuty > 0 && c.SyncDuty <= 1) { // NaN too
		return fmt.Errorf("%w: Config.SyncDuty %v is not in (0, 1]", ErrInvalidArgument, c.SyncDuty)
	}
	if c.SyncInterval < time.Millisecond {
		return fmt.Errorf("%w: Config.SyncInterval %v is below 1ms", ErrInvalidArgument, c.SyncInterval)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "rl"
	}
	if strings.ContainsAny(c.KeyPrefix, "{}") {
		return fmt.Errorf("%w: Config.KeyPrefix %q contains a brace", ErrInvalidArgument, c.KeyPrefix)
	}
	if c.MaxKeyBytes == 0 {
		c.MaxKeyBytes = 512
	}
	if c.MaxKeyBytes < 0 {
		return fmt.Errorf("%w: Config.MaxKeyBytes %d is negative", ErrInvalidArgument, c.MaxKeyBytes)
	}
	if c.MaxSkew == 0 {
		c.MaxSkew = 5 * time.Minute
	}
	if c.MaxLocalKeys == 0 {
		c.MaxLocalKeys = 1 << 17
	}
	if c.MaxLocalKeys < 0 || c.MaxLocalKeys > maxLocalKeys {
		return fmt.Errorf("%w: Config.MaxLocalKeys %d is outside [1, 2^24]", ErrInvalidArgument, c.MaxLocalKeys)
	}
	if c.InstanceID == "" {
		c.InstanceID = fmt.Sprintf("%016x", rand.Uint64())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Pipeline.MaxBatch < 0 || c.Pipeline.MaxInFlight < 0 || c.Pipeline.BatchDelay < 0 || c.Pipeline.LeaseKeysPerCall < 0 {
		return fmt.Errorf("%w: Config.Pipeline has a negative field", ErrInvalidArgument)
	}
	if c.Timeout == 0 {
		c.Timeout = time.Second
	}
	if c.MaxPendingKeys == 0 {
		c.MaxPendingKeys = 1 << 16
	}
	if c.LogInterval == 0 {
		c.LogInterval = 10 * time.Second
	}
	b := c.Breaker
	switch {
	case c.Timeout < 0:
		return fmt.Errorf("%w: Config.Timeout %v is negative", ErrInvalidArgument, c.Timeout)
	case c.MaxPendingKeys < 0:
		return fmt.Errorf("%w: Config.MaxPendingKeys %d is negative", ErrInvalidArgument, c.MaxPendingKeys)
	case c.MinInstances < 0 || c.MinInstances > 1<<20:
		return fmt.Errorf("%w: Config.MinInstances %d is not in [0, 2^20]", ErrInvalidArgument, c.MinInstances)
	case c.LogInterval < 0:
		return fmt.Errorf("%w: Config.LogInterval %v is negative", ErrInvalidArgument, c.LogInterval)
	case b.Failures < 0 || b.Backoff < 0 || b.MaxBackoff < 0 || b.ProbeTimeout < 0:
		return fmt.Errorf("%w: Config.Breaker has a negative field", ErrInvalidArgument)
	case b.Jitter > 1:
		return fmt.Errorf("%w: Config.Breaker.Jitter %v is above 1", ErrInvalidArgument, b.Jitter)
	}
	return nil
}

// RuleError is a rule that New, Reload or Rule.Validate refuse: the rule,
// the field at fault and why. It wraps ErrInvalidArgument. A rules file
// (package rulesfile) maps Field to the line it came from.
type RuleError struct {
	// Index is the rule's index in Config.Rules (or in Reload's rules); -1
	// from Rule.Validate, which sees one rule.
	Index int
	// Rule is the rule's Name.
	Rule string
	// Class is the class of Rule.Classes whose Override is at fault, or ""
	// for the rule's own fields.
	Class string
	// Field is the field at fault, of the Rule ("Name", "Limit", "Window",
	// "Algorithm", "Mode", "OnFailure", "Burst") or, with Class, of the
	// Override ("Limit", "Burst", "Unlimited"), or "" for the class as a
	// whole (its name, or no single kind of override).
	Field string
	// Reason says what is wrong, starting with the field's value where it
	// has one: "0 is not positive".
	Reason string
}

// Error returns, e.g., `ratelimit: invalid argument: rule 2 ("orders"):
// field Limit 0 is not positive`.
func (e *RuleError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalidArgument.Error())
	if e.Index >= 0 {
		fmt.Fprintf(&b, ": rule %d (%q)", e.Index, e.Rule)
	} else {
		fmt.Fprintf(&b, ": rule %q", e.Rule)
	}
	if e.Class != "" {
		fmt.Fprintf(&b, ": class %q", e.Class)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %s %s", e.Field, e.Reason)
	} else {
		fmt.Fprintf(&b, ": %s", e.Reason)
	}
	return b.String()
}

// Unwrap returns ErrInvalidArgument.
func (e *RuleError) Unwrap() error { return ErrInvalidArgument }

// Validate checks r as New and Reload do, alone: its fields and their
// bounds, its Mode against its Algorithm, and each class's Override
// (Rule.Classes) against the rule. What depends on the other rules or on
// the Limiter (a duplicate name or ID, an ID that counted otherwise before
// a Reload, a Strict rule without Redis) is checked by New and Reload only.
// A mistake is a *RuleError with Index -1.
func (r Rule) Validate() error {
	if e := r.validate(); e != nil {
		return e
	}
	return nil
}

// validate is Validate, with its *RuleError (nil: none).
func (r Rule) validate() *RuleError {
	if field, reason := r.fault(); field != "" {
		return &RuleError{Index: -1, Rule: r.Name, Field: field, Reason: reason}
	}
	if r.Mode == Hybrid && !r.Algorithm.supportsHybrid() {
		return &RuleError{Index: -1, Rule: r.Name, Field: "Mode", Reason: fmt.Sprintf("hybrid supports sliding_window and fixed_window, not %v", r.Algorithm)}
	}
	for _, class := range slices.Sorted(maps.Keys(r.Classes)) {
		if e := r.validateOverride(class, r.Classes[class]); e != nil {
			return e
		}
	}
	return nil
}

// fault returns the first field of r at fault and why, or "".
func (r Rule) fault() (field, reason string) {
	switch {
	case r.Name == "":
		return "Name", "is empty"
	case r.Limit <= 0:
		return "Limit", fmt.Sprintf("%d is not positive", r.Limit)
	case r.Window < time.Millisecond:
		return "Window", fmt.Sprintf("%v is below 1ms", r.Window)
	case r.Window%time.Millisecond != 0:
		return "Window", fmt.Sprintf("%v is not a whole number of milliseconds", r.Window)
	case r.Algorithm >= numAlgorithms:
		return "Algorithm", fmt.Sprintf("%d is unknown", r.Algorithm)
	case r.Mode >= numModes:
		return "Mode", fmt.Sprintf("%d is unknown", r.Mode)
	case r.OnFailure >= numPolicies:
		return "OnFailure", fmt.Sprintf("%d is unknown", r.OnFailure)
	case r.Algorithm == SlidingLog && r.Limit > maxLogLimit:
		return "Limit", fmt.Sprintf("%d exceeds %d for sliding_log, which keeps every admission (sliding_window has O(1) state)", r.Limit, maxLogLimit)
	case r.Window > maxWindow:
		return "Window", fmt.Sprintf("%v exceeds 100 years", r.Window)
	case r.Limit > maxLimitWindow/r.Window.Milliseconds():
		return "Limit", fmt.Sprintf("%d × window %v exceeds 2^50 ms", r.Limit, r.Window)
	case r.Burst < 0:
		return "Burst", fmt.Sprintf("%d is negative", r.Burst)
	case r.Burst != 0 && r.Algorithm != TokenBucket:
		return "Burst", fmt.Sprintf("%d is set, but only token_bucket has a burst, not %v", r.Burst, r.Algorithm)
	case r.Burst > 2*r.Limit:
		return "Burst", fmt.Sprintf("%d exceeds 2 × limit %d", r.Burst, r.Limit)
	}
	return "", ""
}

// validateOverride checks class's override o of r: exactly one kind, and
// for a Limit the rule's bounds with that limit and burst.
func (r Rule) validateOverride(class string, o Override) *RuleError {
	fail := func(field, reason string) *RuleError {
		return &RuleError{Index: -1, Rule: r.Name, Class: class, Field: field, Reason: reason}
	}
	set := 0
	for _, on := range []bool{o.Limit != 0, o.Unlimited, o.Deny} {
		if on {
			set++
		}
	}
	switch {
	case class == "":
		return fail("", "empty class name")
	case set != 1:
		return fail("", "set exactly one of fields Limit, Unlimited and Deny")
	case o.Burst != 0 && o.Limit == 0:
		return fail("Burst", fmt.Sprintf("%d is set without a Limit", o.Burst))
	case o.Limit == 0:
		return nil
	}
	v := r
	v.Limit, v.Burst = o.Limit, o.Burst
	if field, reason := v.fault(); field != "" {
		return fail(field, reason)
	}
	return nil
}

// Allow reports whether one request by user under the named rule, made at
// now, may proceed. It is shorthand for AllowN(ctx, ruleName, user, now, 1).
func (l *Limiter) Allow(ctx context.Context, ruleName, user string, now time.Time) (Decision, error) {
	return l.AllowN(ctx, ruleName, user, now, 1)
}

// AllowN reports whether n requests by user under the named rule, made at
// now, may proceed, and counts them if so: the check and the count are one
// atomic step. Decisions use now, never the Limiter's clock.
//
// n = 0 peeks: the Decision is the one Allow would return now (Allowed:
// whether one more request would pass; RetryAfter: the wait for one), and
// nothing is counted or written, in any mode (see Limiter.Peek).
//
// An n that can never pass, above the rule's Limit (a token bucket's
// Burst), is denied without being counted: Allowed false, RetryAfter the
// rule's Window (waiting does not help: split the request), Remaining and
// ResetAfter those of a peek. With Config.StrictN it is an error wrapping
// ErrInvalidArgument instead. A negative n is always such an error.
func (l *Limiter) AllowN(ctx context.Context, ruleName, user string, now time.Time, n int64) (Decision, error) {
	r, ok := l.rules.Load().byName[ruleName]
	if !ok {
		return Decision{}, fmt.Errorf("%w: %q", ErrUnknownRule, ruleName)
	}
	return l.allowN(ctx, r, user, now, n)
}

// RuleLimiter decides requests under one rule of a Limiter, as
// Limiter.AllowN does with the rule's name, without looking the name up.
// Get one from Limiter.Rule at startup; it is safe for concurrent use and
// works as long as its Limiter. It follows its rule by ID across Reload:
// it decides with the rule's newest Limit (and Name), and returns
// ErrUnknownRule while a Reload has removed the rule.
type RuleLimiter struct {
	l    *Limiter
	id   string
	core atomic.Pointer[ruleCore]
}

// Rule returns the RuleLimiter of the named rule, or an error wrapping
// ErrUnknownRule.
func (l *Limiter) Rule(name string) (*RuleLimiter, error) {
	r, ok := l.rules.Load().byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRule, name)
	}
	rl := &RuleLimiter{l: l, id: r.ID}
	rl.core.Store(r.ruleCore)
	return rl, nil
}

// rule returns the rule's version in force: its core's, while the core is
// in the newest set (three atomic loads), else the rule of its ID in the
// current set, if any.
func (rl *RuleLimiter) rule() (*rule, error) {
	c := rl.core.Load()
	if !c.removed.Load() {
		return c.cur.Load(), nil
	}
	r, ok := rl.l.rules.Load().byID[rl.id]
	if !ok {
		return nil, fmt.Errorf("%w: ID %q (removed by Reload)", ErrUnknownRule, rl.id)
	}
	rl.core.Store(r.ruleCore)
	return r, nil
}

// Name returns the rule's name (its newest, after a Reload renamed it).
func (rl *RuleLimiter) Name() string { return rl.core.Load().cur.Load().Name }

// Limit returns the rule's limit: the value of an X-RateLimit-Limit
// header. After a Reload it is the newest (or, for a removed rule, its
// last). A user whose class overrides the rule has its class's: LimitFor.
func (rl *RuleLimiter) Limit() int64 { return rl.core.Load().cur.Load().Limit }

// LimitFor returns user's quota under the rule: the rule's Limit, or the
// limit of the user's class (Rule.Classes) when it overrides the rule; 0
// for a Deny class, math.MaxInt64 for an Unlimited one. It looks the class
// up as a decision does (Config.ClassOf's error is returned). AllowAll
// reports the same in MultiDecision.Quotas, without another lookup.
func (rl *RuleLimiter) LimitFor(ctx context.Context, user string) (int64, error) {
	r, err := rl.rule()
	if err != nil {
		return 0, err
	}
	if r, err = rl.l.ruleFor(ctx, r, user, &userClass{}); err != nil {
		return 0, err
	}
	return r.quota(), nil
}

// ID returns the rule's ID (Rule.ID), which stays the same across Reload.
func (rl *RuleLimiter) ID() string { return rl.id }

// Window returns the rule's window (its newest, after a Reload).
func (rl *RuleLimiter) Window() time.Duration { return rl.core.Load().cur.Load().Window }

// Allow reports whether one request by user, made at now, may proceed
// under the rule. It is shorthand for AllowN(ctx, user, now, 1).
func (rl *RuleLimiter) Allow(ctx context.Context, user string, now time.Time) (Decision, error) {
	return rl.AllowN(ctx, user, now, 1)
}

// AllowN reports whether n requests by user, made at now, may proceed under
// the rule, as Limiter.AllowN does.
func (rl *RuleLimiter) AllowN(ctx context.Context, user string, now time.Time, n int64) (Decision, error) {
	r, err := rl.rule()
	if err != nil {
		return Decision{}, err
	}
	return rl.l.allowN(ctx, r, user, now, n)
}

func (l *Limiter) allowN(ctx context.Context, r *rule, user string, now time.Time, n int64) (Decision, error) {
	if l.closed.Load() {
		return Decision{}, ErrClosed
	}
	r, err := l.ruleFor(ctx, r, user, &userClass{})
	if err != nil {
		return Decision{}, err
	}
	ms, earliest, err := l.check(r, user, now, n)
	if err != nil {
		return Decision{}, err
	}
	d, _, err := l.decideChecked(ctx, r, user, ms, earliest, n)
	return d, err
}

// decideChecked is allowN's decision, for arguments that check accepted
// (ms and earliest are its answers). A shadow rule's is always Allowed
// (see Rule.Shadow); counted reports whether the rule really counted the
// request (its would-be decision admitted it).
func (l *Limiter) decideChecked(ctx context.Context, r *rule, user string, ms, earliest, n int64) (d Decision, counted bool, err error) {
	d, err = l.decide(ctx, r, user, ms, earliest, n)
	counted = err == nil && d.Allowed && n > 0 && n <= r.maxN && r.override == 0 // Unlimited and Deny count nothing
	if r.Shadow && err == nil {
		d = r.shadow(d, n)
	}
	return d, counted, err
}

// shadow turns a shadow rule's real decision d of n into the one it
// returns, and counts d among its would-be decisions (not a peek's).
func (r *rule) shadow(d Decision, n int64) Decision {
	if n > 0 {
		r.stats.shadowed(d.Allowed)
	}
	d.Allowed, d.RetryAfter = true, 0
	return d
}

// decide is the rule's real decision.
func (l *Limiter) decide(ctx context.Context, r *rule, user string, ms, earliest, n int64) (Decision, error) {
	if r.override != 0 {
		return r.overridden(n), nil
	}
	if n == 0 || n > r.maxN {
		return l.peek(ctx, r, user, ms, n)
	}
	var (
		res result
		err error
	)
	switch r.Mode {
	case Hybrid:
		res, err = l.hybrid.decide(ctx, r, user, ms, n)
		if err != nil {
			if redisFailed(err) {
				if res, err = l.fallback(r, user, ms, earliest, n, err); err == nil {
					break
				}
				return Decision{}, err
			}
			if !errors.Is(err, ErrClosed) {
				l.redisErrors.Add(1)
			}
			return Decision{}, err
		}
	case Local:
		// An entry is dead once no request to come can fall in its windows.
		dead := earliest - 2*r.window
		r.table.Do(user, ms, dead, func(s *localState) bool {
			res = s.take(r.Algorithm, ms, r.window, r.Limit, r.maxN, n)
			return res.allowed
		})
	default:
		// Straight to the policy, without building a call, when the breaker
		// refuses calls or the key's fallback admissions are not credited.
		key := r.key(l.cfg.KeyPrefix, user)
		if cause := l.refusal(r, user, key); cause != nil {
			if res, err = l.fallback(r, user, ms, earliest, n, cause); err != nil {
				return Decision{}, err
			}
			break
		}
		g, err := l.store.Take(ctx, global.Request{
			Algorithm:  r.algo,
			Key:        key,
			Now:        ms,
			Window:     r.window,
			Limit:      r.Limit,
			N:          n,
			ServerTime: l.cfg.ServerTime,
			Burst:      r.Burst,
		})
		if err != nil {
			if errors.Is(err, global.ErrClosed) {
				return Decision{}, ErrClosed
			}
			if redisFailed(err) {
				if res, err = l.fallback(r, user, ms, earliest, n, err); err == nil {
					break
				}
				return Decision{}, err
			}
			l.redisErrors.Add(1)
			return Decision{}, fmt.Errorf("ratelimit: rule %q: %w", r.Name, err)
		}
		r.stats.redis(g.Allowed)
		if g.Allowed {
			l.strictAllowed.Add(1)
		} else {
			l.strictDenied.Add(1)
		}
		res = result{allowed: g.Allowed, remaining: g.Remaining, retryAfter: g.RetryAfter, resetAfter: g.ResetAfter}
	}
	return res.decision(), nil
}

// check validates a request's arguments and returns its time in ms, and
// the earliest time a request still to come may carry: the clock less
// MaxSkew (and the clock's staleness), or, with the skew check off, the
// request's own time.
func (l *Limiter) check(r *rule, user string, now time.Time, n int64) (ms, earliest int64, err error) {
	switch {
	case user == "":
		return 0, 0, fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(user) > l.cfg.MaxKeyBytes:
		return 0, 0, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidKey, len(user), l.cfg.MaxKeyBytes)
	case n < 0:
		return 0, 0, fmt.Errorf("%w: n = %d is negative", ErrInvalidArgument, n)
	case n > r.maxN && l.cfg.StrictN:
		return 0, 0, fmt.Errorf("%w: n = %d exceeds rule %q's limit %d and could never pass", ErrInvalidArgument, n, r.Name, r.maxN)
	case n > maxLogN && n <= r.maxN && r.Algorithm == SlidingLog:
		return 0, 0, fmt.Errorf("%w: n = %d exceeds %d, the most a sliding_log call adds", ErrInvalidArgument, n, maxLogN)
	case now.IsZero():
		return 0, 0, fmt.Errorf("%w: zero timestamp", ErrInvalidArgument)
	}
	ms = now.UnixMilli()
	if ms <= 0 {
		return 0, 0, fmt.Errorf("%w: timestamp %v is not after the epoch", ErrInvalidArgument, now)
	}
	if ms > maxTimestamp {
		return 0, 0, fmt.Errorf("%w: timestamp %v is past 2^50 ms after the epoch", ErrInvalidArgument, now)
	}
	earliest = ms
	if skew := l.cfg.MaxSkew.Milliseconds(); skew > 0 {
		ref, slack := l.clockMs()
		if d := ms - ref; d > skew+slack || d < -skew-slack {
			return 0, 0, fmt.Errorf("%w: timestamp %v is %v from the clock, more than MaxSkew %v",
				ErrInvalidArgument, now, time.Duration(d)*time.Millisecond, l.cfg.MaxSkew)
		}
		earliest = min(ms, ref-skew-slack)
	}
	return ms, earliest, nil
}

// clockMs returns the reference time (ms) for validating timestamps, and
// how stale it may be. While a sync loop runs it is the loop's last reading
// (an atomic load, not a clock read on the decision path); otherwise it is
// Config.Now.
func (l *Limiter) clockMs() (ref, slack int64) {
	if l.syncer != nil && !l.cfg.ManualSync {
		return l.syncer.LastNow(), l.cfg.SyncInterval.Milliseconds()
	}
	return l.cfg.Now().UnixMilli(), 0
}

func (r result) decision() Decision {
	return Decision{
		Allowed:    r.allowed,
		Remaining:  r.remaining,
		RetryAfter: time.Duration(r.retryAfter) * time.Millisecond,
		ResetAfter: time.Duration(r.resetAfter) * time.Millisecond,
	}
}

// Stats counts a Limiter's decisions since New.
type Stats struct {
	// LocalModeAllowed and LocalModeDenied are the decisions of Local rules
	// (Mode Local), all made in process.
	LocalModeAllowed, LocalModeDenied int64
	// HybridInProcessAllowed and HybridInProcessDenied are decisions of
	// Hybrid rules made in process, from a lease or from the known global
	// counts, as of the last sync pass.
	HybridInProcessAllowed, HybridInProcessDenied int64
	// HybridRedis are decisions of Hybrid rules that asked Redis (a key
	// without lease), failed ones included; HybridRedisAllowed and
	// HybridRedisDenied are the answers.
	HybridRedis, HybridRedisAllowed, HybridRedisDenied int64
	// StrictAllowed and StrictDenied are strict decisions.
	StrictAllowed, StrictDenied int64
	// RedisErrors are decisions that failed because Redis did.
	RedisErrors int64
	// SyncPasses counts the hybrid sync passes run, SyncFailures those
	// that returned an error.
	SyncPasses, SyncFailures int64
	// Instances is the number of live instances seen at the last sync.
	Instances int64
	// ActiveKeys is the number of hybrid keys with activity since the last
	// sync pass.
	ActiveKeys int64

	// Decisions that the failure policies made while Redis could not
	// answer: FailLocal's admissions and denials, FailOpen's admissions,
	// FailClosed's denials. (FailError's errors are in RedisErrors.)
	FallbackLocalAllowed, FallbackLocalDenied, FallbackOpen, FallbackClosed int64
	// Timeouts are calls to Redis that did not answer within Timeout.
	Timeouts int64
	// NotSent are decisions whose caller gave up (its context ended) before
	// their call went to Redis: Redis never counted them. Abandoned are
	// those whose caller gave up after the call was sent (its context, or
	// Timeout): Redis may have counted them.
	NotSent, Abandoned int64
	// BreakerState is the circuit breaker's state now; BreakerOpened counts
	// the times it opened; BreakerRejected the calls it kept from Redis.
	BreakerState                   string
	BreakerOpened, BreakerRejected int64
	// PendingKeys are the keys with admissions made without Redis that wait
	// to be credited to it. PendingDropped are admissions never credited
	// because MaxPendingKeys was reached (or Close found Redis down), those
	// that AllowAll gave back since included (RuleStats.GivenBack);
	// PendingExpired those whose window was over before Redis answered (they
	// no longer count); PendingFlushed those credited.
	PendingKeys, PendingDropped, PendingExpired, PendingFlushed int64
	// Evictions are the hybrid key states the local cache (MaxLocalKeys)
	// evicted or refused to admit: each costs its user a Redis call on
	// their next request.
	Evictions int64
	// ResidentKeys are the hybrid key states the local cache holds now, at
	// most MaxLocalKeys: those handed to it less those it let go of (an
	// estimate that errs high: a key set again over a state the cache
	// still holds counts twice until one is let go). A key's first request
	// makes no state: one-off ids are not resident.
	ResidentKeys int64
}

// Stats returns the decision counters. It reads a few atomic counters and
// visits no key, so a metrics scrape costs nothing with many keys. Hybrid
// decisions made in process are counted in their key and added to
// HybridInProcessAllowed and HybridInProcessDenied by the next sync pass:
// those two lag the decisions by at most one SyncInterval (Sync, and Close,
// bring them up to date). Every other count is current.
func (l *Limiter) Stats() Stats {
	st := Stats{
		StrictAllowed: l.strictAllowed.Load(),
		StrictDenied:  l.strictDenied.Load(),
		RedisErrors:   l.redisErrors.Load(),
	}
	st.FallbackLocalAllowed, st.FallbackLocalDenied = l.fallbacks.localAllowed.Load(), l.fallbacks.localDenied.Load()
	st.FallbackOpen, st.FallbackClosed = l.fallbacks.open.Load(), l.fallbacks.closed.Load()
	st.PendingKeys, st.PendingDropped = l.pending.len(), l.pending.dropped.Load()
	st.PendingExpired, st.PendingFlushed = l.pending.expired.Load(), l.pending.flushed.Load()
	if l.store != nil {
		c := l.store.Counters()
		st.Timeouts, st.NotSent, st.Abandoned = c.Timeouts, c.Dropped, c.Abandoned
		st.BreakerOpened, st.BreakerRejected = c.BreakerOpened, c.Rejected
		st.BreakerState = l.store.Breaker().State.String()
	}
	for _, c := range *l.localCores.Load() { // removed rules' too: counts never go down
		if c.table != nil {
			a, d := c.table.Counts()
			st.LocalModeAllowed += a
			st.LocalModeDenied += d
		}
	}
	if l.syncer != nil { // nil only while New builds the Limiter
		st.SyncPasses, st.SyncFailures = l.syncer.Passes()
		st.Instances = l.syncer.Instances()
	}
	if h := l.hybrid; h != nil {
		st.HybridInProcessAllowed, st.HybridInProcessDenied = h.localAllowed.Load(), h.localDenied.Load()
		st.HybridRedis, st.HybridRedisAllowed, st.HybridRedisDenied = h.remote.Load(), h.remoteAllowed.Load(), h.remoteDenied.Load()
		st.ActiveKeys = int64(h.registry.Len())
		if h.cache != nil { // nil only while New builds the Limiter
			st.Evictions, st.ResidentKeys = h.cache.LetGo(), h.cache.Resident()
		}
	}
	return st
}

// Sync runs one reconciliation pass now, on the calling goroutine: for
// every hybrid key with activity it reports requests, returns unneeded
// leases, renews leases and learns the global counts, in pipelines of up
// to 256 keys (split per node on a cluster), each followed by a pause as
// long as it took (so that decisions find Redis free half of the time),
// and credits to Redis what the failure policies admitted without it. Strict and local rules have
// nothing else to reconcile.
func (l *Limiter) Sync(ctx context.Context) error {
	if l.closed.Load() {
		return ErrClosed
	}
	if l.syncer == nil {
		return nil
	}
	// The gate keeps Close from closing the Store under a pass (and a pass
	// from running after Close's last one).
	l.syncGate.RLock()
	defer l.syncGate.RUnlock()
	if l.syncClosed {
		return ErrClosed
	}
	if h := l.hybrid; h != nil {
		h.gate.RLock()
		defer h.gate.RUnlock()
		if h.closed {
			return ErrClosed
		}
	}
	if err := l.pass(ctx); err != nil {
		l.health.summary(l.cfg.Now())
		if errors.Is(err, global.ErrUnavailable) {
			return fmt.Errorf("ratelimit: sync: %w: %w", ErrUnavailable, err)
		}
		return fmt.Errorf("ratelimit: sync: %w", err)
	}
	return nil
}

// Close stops the Limiter: it stops the sync loop, runs a last pass that
// gives every lease back, reports every request and credits what the
// failure policies admitted, waits for the decisions and Redis calls under
// way, and makes later calls return ErrClosed. It returns the last pass's
// error (wrapping ErrUnavailable when Redis did not answer). It is
// idempotent and does not close Config.Redis.
func (l *Limiter) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		if l.syncer != nil {
			l.stopLoop()
			l.syncer.Hurry()  // the Syncs under way and the last pass send without pauses
			l.syncGate.Lock() // waits for the Syncs under way
			l.syncClosed = true
			l.syncGate.Unlock()
			if h := l.hybrid; h != nil {
				h.gate.Lock() // waits for the Redis calls of decisions and Syncs under way
				h.closed = true
				h.gate.Unlock()
				h.closing.Store(true)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = l.pass(ctx)
			if lerr := l.store.Leave(ctx, l.cfg.KeyPrefix+":instances", l.cfg.InstanceID); err == nil {
				err = lerr
			}
			cancel()
			if n := l.pending.dropAll(); n > 0 {
				l.cfg.Logger.Warn("ratelimit: close: admissions made without redis were never credited to it", "admissions", n)
			}
			if h := l.hybrid; h != nil {
				h.cache.Close()
			}
		}
		if l.store != nil {
			l.store.Close()
		}
	})
	if errors.Is(err, global.ErrUnavailable) {
		return fmt.Errorf("ratelimit: close: %w: %w", ErrUnavailable, err)
	}
	if err != nil {
		return fmt.Errorf("ratelimit: close: %w", err)
	}
	return nil
}

// onPass runs at the end of each sync pass that reached Redis: it credits
// the admissions made without Redis, and logs the outage summary.
func (l *Limiter) onPass(ctx context.Context, now int64) error {
	err := l.flush(ctx, now)
	l.health.summary(time.UnixMilli(now))
	return err
}

// localState is one key's state under a Local rule; only the field of the
// rule's algorithm is used.
type localState struct {
	sw  slidingWindow
	fw  fixedWindow
	tb  tokenBucket
	log slidingLog
}

func (s *localState) take(a Algorithm, now, w, limit, burst, n int64) result {
	switch a {
	case SlidingLog:
		return s.log.take(now, w, limit, n)
	case FixedWindow:
		return s.fw.take(now, w, limit, n)
	case TokenBucket:
		return s.tb.takeBurst(now, w, limit, burst, n)
	}
	return s.sw.take(now, w, limit, n)
}
