package local

import (
	"runtime"
	"sync/atomic"
)

// closeGuard lets Close wait for the calls into ristretto under way, so
// that none runs while ristretto closes its channels (ristretto's own Close
// does not guard against it, and a concurrent Get or Set panics with a send
// on a closed channel). A call enters a shard chosen by its key, so that
// calls on two cores rarely share a counter's cache line; only calls that
// go to ristretto pay for it, not decisions from the front table.
type closeGuard struct {
	closed atomic.Bool
	shards [guardShards]guardShard
}

const guardShards = 64

type guardShard struct {
	n atomic.Int64
	_ [56]byte // a cache line each
}

// enter reports whether a call for key may go to ristretto; if so, the
// caller must call exit with the same key when done.
func (g *closeGuard) enter(key uint64) bool {
	s := &g.shards[key%guardShards]
	s.n.Add(1)
	// close stores closed, then reads the counters; enter adds, then reads
	// closed: with Go's sequentially consistent atomics, one of the two
	// sees the other.
	if g.closed.Load() {
		s.n.Add(-1)
		return false
	}
	return true
}

func (g *closeGuard) exit(key uint64) { g.shards[key%guardShards].n.Add(-1) }

// close makes every later enter fail and waits for the calls that entered.
func (g *closeGuard) close() {
	g.closed.Store(true)
	for i := range g.shards {
		for g.shards[i].n.Load() != 0 {
			runtime.Gosched()
		}
	}
}
