// Package prom exports a ratelimit.Limiter's counters as Prometheus
// metrics. It is a package of its own so that only programs that want
// Prometheus link its client:
//
//	reg.MustRegister(prom.NewCollector(limiter))
//
// The collector reads Limiter.Stats, RuleStats, SyncStats, Breakers and
// Health when scraped: a decision pays nothing for it, and a scrape visits
// no key. Its labels are bounded: rule names, modes, sources, results and
// Redis masters, never users.
package prom

import (
	"github.com/prometheus/client_golang/prometheus"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// Collector is a prometheus.Collector of one Limiter's metrics. Register
// it with the program's registry; wrap the registerer
// (prometheus.WrapRegistererWith) to tell several Limiters apart, and
// unregister it when the Limiter is closed if the registry outlives it.
type Collector struct {
	l *ratelimit.Limiter

	decisions, givenBack, leaseTokens, reconciliations, overshoots, overshootTokens, overshootMax *prometheus.Desc

	redisErrors, syncPasses, syncDuration, syncKeys, instances, activeKeys, evictions, resident *prometheus.Desc

	timeouts, givenUp, breakerState, breakerOpened, breakerRejected *prometheus.Desc
	health, pendingKeys, pendingAdmissions                          *prometheus.Desc
}

// NewCollector returns the Collector of l's metrics.
func NewCollector(l *ratelimit.Limiter) *Collector {
	return &Collector{
		l: l,
		decisions: prometheus.NewDesc("ratelimit_decisions_total",
			"Decisions made, by rule, its mode (local, hybrid, strict), source (local: in process; redis: Redis answered; fallback: the rule's failure policy, Redis could not answer; shadow: a shadow rule's would-be decisions, which let every request through and are also counted under their real source) and result (allowed, denied). A hybrid rule's local decisions are counted at the sync pass after them.",
			[]string{"rule", "mode", "source", "result"}, nil),
		givenBack: prometheus.NewDesc("ratelimit_given_back_total",
			"Admissions of the rule given back: by Refund, and by AllowAll when another of the request's rules denied or failed. ratelimit_decisions_total still counts them as allowed.",
			[]string{"rule"}, nil),
		leaseTokens: prometheus.NewDesc("ratelimit_lease_tokens_total",
			"Tokens of hybrid rules leased to this instance (op granted) and given back unspent (op returned).",
			[]string{"rule", "op"}, nil),
		reconciliations: prometheus.NewDesc("ratelimit_reconciliations_total",
			"Lease answers of sync passes for the hybrid rule's keys.",
			[]string{"rule"}, nil),
		overshoots: prometheus.NewDesc("ratelimit_overshoot_reconciliations_total",
			"Reconciliations in which the key's global weighted count, as Redis reported it, exceeded the rule's limit.",
			[]string{"rule"}, nil),
		overshootTokens: prometheus.NewDesc("ratelimit_overshoot_tokens_total",
			"Sum over overshooting reconciliations of the count's excess over the limit, in tokens rounded up.",
			[]string{"rule"}, nil),
		overshootMax: prometheus.NewDesc("ratelimit_overshoot_max_tokens",
			"The largest excess over the limit seen at a reconciliation since the Limiter started (never reset).",
			[]string{"rule"}, nil),
		redisErrors: prometheus.NewDesc("ratelimit_redis_errors_total",
			"Decisions that failed because Redis did.", nil, nil),
		syncPasses: prometheus.NewDesc("ratelimit_sync_passes_total",
			"Sync passes run, by outcome (ok, error).", []string{"outcome"}, nil),
		syncDuration: prometheus.NewDesc("ratelimit_sync_pass_duration_seconds",
			"Wall-clock duration of the sync passes.", nil, nil),
		syncKeys: prometheus.NewDesc("ratelimit_sync_pass_keys",
			"Hybrid keys each sync pass sent to Redis.", nil, nil),
		instances: prometheus.NewDesc("ratelimit_instances",
			"Live instances seen in the Redis registry at the last sync pass.", nil, nil),
		activeKeys: prometheus.NewDesc("ratelimit_active_keys",
			"Hybrid keys with activity since the last sync pass.", nil, nil),
		resident: prometheus.NewDesc("ratelimit_resident_keys",
			"Hybrid key states held in the local cache now (an estimate that errs high; a key's first request makes none).",
			nil, nil),
		evictions: prometheus.NewDesc("ratelimit_local_evictions_total",
			"Hybrid key states the local cache (Config.MaxLocalKeys) evicted or refused to admit; each costs its user a Redis call on their next request.", nil, nil),
		timeouts: prometheus.NewDesc("ratelimit_redis_timeouts_total",
			"Calls to Redis that did not answer within Config.Timeout.", nil, nil),
		givenUp: prometheus.NewDesc("ratelimit_redis_calls_given_up_total",
			"Decisions whose caller gave up on Redis, by whether the call had been sent (sent: Redis may have counted it).",
			[]string{"sent"}, nil),
		breakerState: prometheus.NewDesc("ratelimit_breaker_state",
			"Each circuit breaker's state: 0 closed, 1 open, 2 half-open; node is the master's address on a cluster, empty for a single node.",
			[]string{"node"}, nil),
		breakerOpened: prometheus.NewDesc("ratelimit_breaker_opened_total",
			"Times a circuit breaker opened.", nil, nil),
		breakerRejected: prometheus.NewDesc("ratelimit_breaker_rejected_total",
			"Calls an open circuit breaker kept from Redis.", nil, nil),
		health: prometheus.NewDesc("ratelimit_health",
			"What the Limiter believes about Redis: 0 healthy, 1 degraded, 2 recovering.", nil, nil),
		pendingKeys: prometheus.NewDesc("ratelimit_pending_keys",
			"Keys with admissions made without Redis, not yet credited to it.", nil, nil),
		pendingAdmissions: prometheus.NewDesc("ratelimit_pending_admissions_total",
			"Admissions made without Redis, by outcome: flushed (credited to Redis), expired (their window ended first), dropped (MaxPendingKeys reached, or Close found Redis down).",
			[]string{"outcome"}, nil),
	}
}

func (c *Collector) descs() []*prometheus.Desc {
	return []*prometheus.Desc{c.decisions, c.givenBack, c.leaseTokens, c.reconciliations, c.overshoots, c.overshootTokens, c.overshootMax,
		c.redisErrors, c.syncPasses, c.syncDuration, c.syncKeys, c.instances, c.activeKeys, c.evictions, c.resident,
		c.timeouts, c.givenUp, c.breakerState, c.breakerOpened, c.breakerRejected,
		c.health, c.pendingKeys, c.pendingAdmissions}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	histogram := func(d *prometheus.Desc, h ratelimit.Histogram) {
		buckets := make(map[float64]uint64, len(h.UpperBounds))
		for i, b := range h.UpperBounds {
			buckets[b] = h.Counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets)
	}

	for _, r := range c.l.RuleStats() {
		mode := r.Mode.String()
		decision := func(source string, allowed, denied int64) {
			counter(c.decisions, allowed, r.Name, mode, source, "allowed")
			counter(c.decisions, denied, r.Name, mode, source, "denied")
		}
		if r.Shadow || r.ShadowAllowed > 0 || r.ShadowDenied > 0 { // two series per rule at most
			decision("shadow", r.ShadowAllowed, r.ShadowDenied)
		}
		counter(c.givenBack, r.GivenBack, r.Name)
		if r.Mode != ratelimit.Strict {
			decision("local", r.LocalAllowed, r.LocalDenied)
		}
		if r.Mode == ratelimit.Local {
			continue
		}
		decision("redis", r.RedisAllowed, r.RedisDenied)
		decision("fallback", r.FallbackAllowed, r.FallbackDenied)
		if r.Mode != ratelimit.Hybrid {
			continue
		}
		counter(c.leaseTokens, r.LeaseGranted, r.Name, "granted")
		counter(c.leaseTokens, r.LeaseReturned, r.Name, "returned")
		counter(c.reconciliations, r.Reconciliations, r.Name)
		counter(c.overshoots, r.Overshoots, r.Name)
		counter(c.overshootTokens, r.OvershootTokens, r.Name)
		gauge(c.overshootMax, r.MaxOvershoot, r.Name)
	}

	st := c.l.Stats()
	counter(c.redisErrors, st.RedisErrors)
	counter(c.syncPasses, st.SyncPasses-st.SyncFailures, "ok")
	counter(c.syncPasses, st.SyncFailures, "error")
	ss := c.l.SyncStats()
	histogram(c.syncDuration, ss.Duration)
	histogram(c.syncKeys, ss.Keys)
	gauge(c.instances, st.Instances)
	gauge(c.activeKeys, st.ActiveKeys)
	counter(c.evictions, st.Evictions)
	gauge(c.resident, st.ResidentKeys)
	counter(c.timeouts, st.Timeouts)
	counter(c.givenUp, st.NotSent, "false")
	counter(c.givenUp, st.Abandoned, "true")
	for _, b := range c.l.Breakers() {
		gauge(c.breakerState, breakerValue(b.State), b.Node)
	}
	counter(c.breakerOpened, st.BreakerOpened)
	counter(c.breakerRejected, st.BreakerRejected)
	gauge(c.health, int64(c.l.Health().State))
	gauge(c.pendingKeys, st.PendingKeys)
	counter(c.pendingAdmissions, st.PendingFlushed, "flushed")
	counter(c.pendingAdmissions, st.PendingExpired, "expired")
	counter(c.pendingAdmissions, st.PendingDropped, "dropped")
}

// breakerValue is a breaker state's gauge value.
func breakerValue(state string) int64 {
	switch state {
	case "open":
		return 1
	case "half-open":
		return 2
	}
	return 0
}
