package local

import (
	"hash/maphash"
	"sync"
)

// numShards spreads lock contention; a power of two.
const numShards = 64

// Table is a concurrency-safe map from key to *V whose entries expire when
// unused: Do stamps an entry with the time it was used, and every shard
// sweeps out entries idle for longer than the Table's TTL as it grows.
// Memory is therefore bounded by the keys used within one TTL.
//
// The zero Table is not usable; create one with NewTable.
type Table[V any] struct {
	ttl    int64 // ms
	seed   maphash.Seed
	shards [numShards]shard[V]
}

type shard[V any] struct {
	mu              sync.Mutex
	m               map[string]*entry[V]
	inserts         int   // since the last sweep
	allowed, denied int64 // Do's outcomes, as f reported them
}

type entry[V any] struct {
	v    V
	used int64 // ms
}

// NewTable returns an empty table whose entries expire ttl ms after their
// last use. ttl must be positive.
func NewTable[V any](ttl int64) *Table[V] {
	t := &Table[V]{ttl: ttl, seed: maphash.MakeSeed()}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*entry[V])
	}
	return t
}

// Do calls f with key's value, creating a zero value first if the key is
// absent or expired (last used more than the TTL before now), and marks the
// key used at now (ms). f reports whether it admitted the request: the
// Table counts both outcomes (see Counts). A shard that grows sweeps out the entries last used
// before dead (ms): the caller's bound on the requests still to come, which
// must not follow now (a request stamped in the future must not expire
// other keys early). f runs under the key's shard lock: it must be short
// and must not call back into the Table.
func (t *Table[V]) Do(key string, now, dead int64, f func(*V) (allowed bool)) {
	s := &t.shards[maphash.String(t.seed, key)&(numShards-1)]
	s.mu.Lock()
	e, ok := s.m[key]
	if !ok || now-e.used > t.ttl {
		if !ok {
			s.inserts++
			if s.inserts >= len(s.m)/2+64 {
				s.sweepLocked(dead)
			}
		}
		e = &entry[V]{}
		s.m[key] = e
	}
	e.used = max(e.used, now)
	if f(&e.v) {
		s.allowed++
	} else {
		s.denied++
	}
	s.mu.Unlock()
}

// sweepLocked deletes the entries last used before dead.
func (s *shard[V]) sweepLocked(dead int64) {
	for k, e := range s.m {
		if e.used < dead {
			delete(s.m, k)
		}
	}
	s.inserts = 0
}

// Counts returns how many calls of Do admitted and denied their request.
// It visits no entry: counting costs Do nothing but an increment under the
// shard lock it holds anyway.
func (t *Table[V]) Counts() (allowed, denied int64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		allowed += s.allowed
		denied += s.denied
		s.mu.Unlock()
	}
	return allowed, denied
}

// Len returns the number of entries held, expired or not.
func (t *Table[V]) Len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// Sweep deletes every entry idle for more than the TTL at now (ms).
func (t *Table[V]) Sweep(now int64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.sweepLocked(now - t.ttl)
		s.mu.Unlock()
	}
}

// Visit calls f with key's value if the key is present and not expired at
// now (ms), under its shard lock, and reports whether it did. Unlike Do it
// creates nothing, marks nothing used and counts nothing: f may read the
// value (a peek) or change it (a refund). f must be short and must not
// call back into the Table.
func (t *Table[V]) Visit(key string, now int64, f func(*V)) bool {
	s := &t.shards[maphash.String(t.seed, key)&(numShards-1)]
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok || now-e.used > t.ttl {
		return false
	}
	f(&e.v)
	return true
}

// Delete removes key's value, if any.
func (t *Table[V]) Delete(key string) {
	s := &t.shards[maphash.String(t.seed, key)&(numShards-1)]
	s.mu.Lock()
	delete(s.m, key)
	s.mu.Unlock()
}
