package prom_test

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/prom"
)

// Register a Limiter's collector on the program's registry: a scrape
// reads the Limiter's counters (here of a Local rule, which needs no
// Redis).
func ExampleNewCollector() {
	l, err := ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{
		{Name: "login", Limit: 2, Window: time.Minute, Mode: ratelimit.Local},
	}})
	if err != nil {
		panic(err)
	}
	defer l.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prom.NewCollector(l))

	now := time.Now()
	for range 3 {
		if _, err := l.Allow(context.Background(), "login", "alice", now); err != nil {
			panic(err)
		}
	}

	mfs, err := reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ratelimit_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			fmt.Printf("rule=%s mode=%s source=%s result=%s: %v\n",
				labels["rule"], labels["mode"], labels["source"], labels["result"], m.GetCounter().GetValue())
		}
	}
	// Output:
	// rule=login mode=local source=local result=allowed: 2
	// rule=login mode=local source=local result=denied: 1
}
