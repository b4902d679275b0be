package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Limiter's Stats to Prometheus. It reads the counters
// when scraped, so the decision path pays nothing for it.
type collector struct {
	l *Limiter

	decisions, redisErrors, syncPasses, instances, activeKeys *prometheus.Desc

	fallbacks, timeouts, givenUp, breakerState, breakerOpened, breakerRejected *prometheus.Desc
	health, pendingKeys, pendingAdmissions                                     *prometheus.Desc
}

func newCollector(l *Limiter) *collector {
	return &collector{
		l: l,
		decisions: prometheus.NewDesc("ratelimit_decisions_total",
			"Decisions made, by mode (local, hybrid, strict), where (local: in process; redis: a script call) and result.",
			[]string{"mode", "path", "result"}, nil),
		redisErrors: prometheus.NewDesc("ratelimit_redis_errors_total",
			"Decisions that failed because Redis did.", nil, nil),
		syncPasses: prometheus.NewDesc("ratelimit_sync_passes_total",
			"Hybrid sync passes run, by outcome (ok, error).", []string{"outcome"}, nil),
		instances: prometheus.NewDesc("ratelimit_instances",
			"Live instances seen in the Redis registry at the last sync pass.", nil, nil),
		activeKeys: prometheus.NewDesc("ratelimit_active_keys",
			"Hybrid keys with activity since the last sync pass.", nil, nil),
		fallbacks: prometheus.NewDesc("ratelimit_fallback_decisions_total",
			"Decisions made by a rule's failure policy because Redis could not answer, by policy and result.",
			[]string{"policy", "result"}, nil),
		timeouts: prometheus.NewDesc("ratelimit_redis_timeouts_total",
			"Calls to Redis that did not answer within Config.Timeout.", nil, nil),
		givenUp: prometheus.NewDesc("ratelimit_redis_calls_given_up_total",
			"Decisions whose caller gave up on Redis, by whether the call had been sent (sent: Redis may have counted it).",
			[]string{"sent"}, nil),
		breakerState: prometheus.NewDesc("ratelimit_breaker_state",
			"The circuit breaker's state: 0 closed, 1 open, 2 half-open.", nil, nil),
		breakerOpened: prometheus.NewDesc("ratelimit_breaker_opened_total",
			"Times the circuit breaker opened.", nil, nil),
		breakerRejected: prometheus.NewDesc("ratelimit_breaker_rejected_total",
			"Calls the open circuit breaker kept from Redis.", nil, nil),
		health: prometheus.NewDesc("ratelimit_health",
			"What the Limiter believes about Redis: 0 healthy, 1 degraded, 2 recovering.", nil, nil),
		pendingKeys: prometheus.NewDesc("ratelimit_pending_keys",
			"Keys with admissions made without Redis, not yet credited to it.", nil, nil),
		pendingAdmissions: prometheus.NewDesc("ratelimit_pending_admissions_total",
			"Admissions made without Redis, by outcome: flushed (credited to Redis), expired (their window ended first), dropped (MaxPendingKeys reached, or Close found Redis down).",
			[]string{"outcome"}, nil),
	}
}

func (c *collector) descs() []*prometheus.Desc {
	return []*prometheus.Desc{c.decisions, c.redisErrors, c.syncPasses, c.instances, c.activeKeys,
		c.fallbacks, c.timeouts, c.givenUp, c.breakerState, c.breakerOpened, c.breakerRejected,
		c.health, c.pendingKeys, c.pendingAdmissions}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.decisions, st.LocalModeAllowed, "local", "local", "allowed")
	counter(c.decisions, st.LocalModeDenied, "local", "local", "denied")
	counter(c.decisions, st.HybridInProcessAllowed, "hybrid", "local", "allowed")
	counter(c.decisions, st.HybridInProcessDenied, "hybrid", "local", "denied")
	counter(c.decisions, st.HybridRedisAllowed, "hybrid", "redis", "allowed")
	counter(c.decisions, st.HybridRedisDenied, "hybrid", "redis", "denied")
	counter(c.decisions, st.StrictAllowed, "strict", "redis", "allowed")
	counter(c.decisions, st.StrictDenied, "strict", "redis", "denied")
	counter(c.redisErrors, st.RedisErrors)
	counter(c.syncPasses, st.SyncPasses-st.SyncFailures, "ok")
	counter(c.syncPasses, st.SyncFailures, "error")
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	gauge(c.instances, st.Instances)
	gauge(c.activeKeys, st.ActiveKeys)
	counter(c.fallbacks, st.FallbackLocalAllowed, "fail_local", "allowed")
	counter(c.fallbacks, st.FallbackLocalDenied, "fail_local", "denied")
	counter(c.fallbacks, st.FallbackOpen, "fail_open", "allowed")
	counter(c.fallbacks, st.FallbackClosed, "fail_closed", "denied")
	counter(c.timeouts, st.Timeouts)
	counter(c.givenUp, st.NotSent, "false")
	counter(c.givenUp, st.Abandoned, "true")
	var breaker int64
	switch st.BreakerState {
	case "open":
		breaker = 1
	case "half-open":
		breaker = 2
	}
	gauge(c.breakerState, breaker)
	counter(c.breakerOpened, st.BreakerOpened)
	counter(c.breakerRejected, st.BreakerRejected)
	gauge(c.health, int64(c.l.Health().State))
	gauge(c.pendingKeys, st.PendingKeys)
	counter(c.pendingAdmissions, st.PendingFlushed, "flushed")
	counter(c.pendingAdmissions, st.PendingExpired, "expired")
	counter(c.pendingAdmissions, st.PendingDropped, "dropped")
}
