package global

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// breakers holds the Store's circuit breakers: one for a client of one
// node, one per master on a cluster, so that a dead master opens only the
// breaker of its own slots and the keys of the others still go to Redis.
// A slot's breaker is its master's as of the client's slot map: after a
// failover the slot moves to the promoted replica's breaker, which is
// closed, while the dead master's stays open.
type breakers struct {
	opts     BreakerOptions
	now      func() time.Time
	onChange func(BreakerStatus)
	timeout  time.Duration // bounds a lookup that loads the slot map

	cc *redis.ClusterClient // nil: one node
	// def is the single node's breaker; on a cluster, the breaker of keys
	// whose master is unknown (the slot map never loaded: the cluster was
	// down when the Store started).
	def *breaker

	mu     sync.RWMutex
	byAddr map[string]*breaker
	mapped atomic.Bool // the cluster's slot map loaded once
}

func newBreakers(rdb redis.UniversalClient, opts Options) *breakers {
	bs := &breakers{opts: opts.Breaker, now: opts.Now, onChange: opts.OnBreakerChange, timeout: opts.Timeout}
	bs.def = bs.newBreaker("")
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		bs.cc = cc
		bs.byAddr = make(map[string]*breaker)
	}
	return bs
}

func (bs *breakers) newBreaker(node string) *breaker {
	b := newBreaker(bs.opts, bs.now, bs.onChange)
	b.node = node
	b.status.Node = node
	return b
}

// forKey returns the breaker of the master that serves key.
func (bs *breakers) forKey(key string) *breaker {
	if bs.cc == nil {
		return bs.def
	}
	if !bs.mapped.Load() && bs.def.refuses() {
		// No slot map yet and the cluster unreachable: refuse at once
		// rather than wait for a load of the map.
		return bs.def
	}
	ctx, cancel := context.WithTimeout(context.Background(), bs.timeout)
	c, err := bs.cc.MasterForKey(ctx, key)
	cancel()
	if err != nil {
		return bs.def
	}
	bs.mapped.Store(true)
	return bs.forNode(c.Options().Addr)
}

// forNode returns node's breaker, made on first use.
func (bs *breakers) forNode(node string) *breaker {
	bs.mu.RLock()
	b := bs.byAddr[node]
	bs.mu.RUnlock()
	if b != nil {
		return b
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if b = bs.byAddr[node]; b == nil {
		b = bs.newBreaker(node)
		bs.byAddr[node] = b
	}
	return b
}

// all returns every breaker, the default one first.
func (bs *breakers) all() []*breaker {
	out := []*breaker{bs.def}
	bs.mu.RLock()
	for _, b := range bs.byAddr {
		out = append(out, b)
	}
	bs.mu.RUnlock()
	return out
}

// worst returns the status of the breaker furthest from closed (open before
// half-open), the oldest such when several are: a Store is as healthy as
// its least healthy master.
func (bs *breakers) worst() BreakerStatus {
	var w BreakerStatus
	found := false
	for _, b := range bs.all() {
		st := b.get()
		switch {
		case !found, rank(st.State) > rank(w.State),
			rank(st.State) == rank(w.State) && st.State != Closed && st.Since.Before(w.Since):
			w, found = st, true
		}
	}
	return w
}

// rank orders states from closed to open.
func rank(s BreakerState) int {
	switch s {
	case Open:
		return 2
	case HalfOpen:
		return 1
	}
	return 0
}

// gate is a call's pass through one breaker: the breaker and the ticket
// it gave.
type gate struct {
	b *breaker
	t ticket
}

// outcome is what one call or pipeline told of the node behind a gate.
type outcome struct {
	gate
	err error // nil, or a failure that met an unavailable Redis
}

// report tells each breaker how its calls went: per breaker, a failure if
// any of its calls met an unavailable Redis (one, however many calls of a
// pipeline did), else a success with the newest ticket among them.
func report(outs []outcome) {
	if len(outs) == 1 { // the common case, without a map
		outs[0].b.record(outs[0].err, outs[0].t)
		return
	}
	merged := make(map[*breaker]outcome, 4)
	var order []*breaker
	for _, o := range outs {
		m, ok := merged[o.b]
		if !ok {
			order = append(order, o.b)
			merged[o.b] = o
			continue
		}
		m.t = max(m.t, o.t)
		if m.err == nil {
			m.err = o.err
		}
		merged[o.b] = m
	}
	for _, b := range order {
		m := merged[b]
		b.record(m.err, m.t)
	}
}
