package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exports a Limiter's Stats to Prometheus. It reads the counters
// when scraped, so the decision path pays nothing for it.
type collector struct {
	l *Limiter

	decisions, redisErrors, syncPasses, instances, activeKeys *prometheus.Desc
}

func newCollector(l *Limiter) *collector {
	return &collector{
		l: l,
		decisions: prometheus.NewDesc("ratelimit_decisions_total",
			"Decisions made, by mode (hybrid, strict), where (local: in process; redis: a script call) and result.",
			[]string{"mode", "path", "result"}, nil),
		redisErrors: prometheus.NewDesc("ratelimit_redis_errors_total",
			"Decisions that failed because Redis did.", nil, nil),
		syncPasses: prometheus.NewDesc("ratelimit_sync_passes_total",
			"Hybrid sync passes run, by outcome (ok, error).", []string{"outcome"}, nil),
		instances: prometheus.NewDesc("ratelimit_instances",
			"Live instances seen in the Redis registry at the last sync pass.", nil, nil),
		activeKeys: prometheus.NewDesc("ratelimit_active_keys",
			"Hybrid keys with activity since the last sync pass.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.decisions, c.redisErrors, c.syncPasses, c.instances, c.activeKeys} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.l.Stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.decisions, st.LocalAllowed, "hybrid", "local", "allowed")
	counter(c.decisions, st.LocalDenied, "hybrid", "local", "denied")
	counter(c.decisions, st.RemoteAllowed, "hybrid", "redis", "allowed")
	counter(c.decisions, st.RemoteDenied, "hybrid", "redis", "denied")
	counter(c.decisions, st.StrictAllowed, "strict", "redis", "allowed")
	counter(c.decisions, st.StrictDenied, "strict", "redis", "denied")
	counter(c.redisErrors, st.RedisErrors)
	counter(c.syncPasses, st.SyncPasses-st.SyncFailures, "ok")
	counter(c.syncPasses, st.SyncFailures, "error")
	ch <- prometheus.MustNewConstMetric(c.instances, prometheus.GaugeValue, float64(st.Instances))
	ch <- prometheus.MustNewConstMetric(c.activeKeys, prometheus.GaugeValue, float64(st.ActiveKeys))
}
