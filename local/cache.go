package local

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// Cache holds the hybrid states of (user, rule) keys in a ristretto cache
// bounded by a number of keys.
//
// A key is two independent 64-bit hashes of the user and the rule: the
// first is ristretto's key, the second is kept in the State and checked on
// every lookup (ristretto itself identifies string keys by two hashes in the
// same way). So a lookup builds no string, allocates nothing and touches
// one State.
//
// Ristretto's Set is buffered and may be dropped by its admission policy, so
// a key just created is also kept in a small side map until the next
// Forget, and is found there until ristretto shows it. Losing a State
// loses nothing that matters: a state with a lease or unreported requests is
// held by the sync Registry until its lease is returned (sooner when the
// cache evicts or rejects it: it is marked orphaned), and a key that comes
// back gets a new State with no lease, which asks Redis before it admits
// anything locally.
type Cache struct {
	c            *ristretto.Cache[uint64, *State]
	seed1, seed2 maphash.Seed
	ruleMix      []uint64 // per rule, mixed into the user's hashes

	// front is a table of states in front of ristretto, 4-way set
	// associative with a bucket per cache line: a key is found with one
	// bucket load and one State load, without ristretto's read lock and
	// access buffers, and a miss touches no State (a slot holds its key's
	// hash next to the pointer). The decision path promotes a state it
	// found in ristretto (Promote) and tells ristretto of some front uses
	// (Touch), so that its admission policy still sees the keys in use.
	// It has two slots per key the cache may hold, rounded up to a power
	// of two within frontMin and frontMax, so that nearly every resident
	// key has one (with one slot per key, a full cache leaves a fifth of
	// its keys out of their bucket: TestFrontHoldsResidentKeys); a slot
	// whose state ristretto lets go of is cleared, so the
	// table keeps alive almost no state that the cache dropped (at most one
	// per slot, and only after a promotion raced with the eviction).
	front []frontBucket

	mu     sync.Mutex
	recent map[uint64]*State // created since the last Forget
}

// frontSlot is one slot of Cache.front. Its two words are written apart;
// a reader checks the State itself, so a torn read only misses.
type frontSlot struct {
	key atomic.Uint64
	s   atomic.Pointer[State]
}

// frontBucket is a set of Cache.front: 64 bytes, one cache line (the
// table is a large allocation, so page aligned).
type frontBucket [frontWays]frontSlot

// The front table's bounds, in slots of 16 bytes, and its ways.
const (
	frontMin  = 1 << 10
	frontMax  = 1 << 22 // 64 MiB
	frontWays = 4
)

// NewCache returns a cache for up to maxKeys keys of rules rules.
func NewCache(maxKeys int64, rules int) (*Cache, error) {
	if maxKeys < 1 || rules < 1 || rules > MaxRules {
		return nil, fmt.Errorf("local: NewCache(%d, %d): both must be positive, and rules at most %d", maxKeys, rules, MaxRules)
	}
	slots := int64(frontMin)
	for slots < 2*maxKeys && slots < frontMax { // two per key: see Cache.front
		slots *= 2
	}
	c := &Cache{
		seed1:   maphash.MakeSeed(),
		seed2:   maphash.MakeSeed(),
		ruleMix: make([]uint64, rules),
		front:   make([]frontBucket, slots/frontWays),
		recent:  make(map[uint64]*State),
	}
	for i := range c.ruleMix {
		c.ruleMix[i] = rand.Uint64()
	}
	var err error
	c.c, err = ristretto.NewCache(&ristretto.Config[uint64, *State]{
		NumCounters:        10 * maxKeys, // ristretto's advice: 10× the items held
		MaxCost:            maxKeys,      // every entry costs 1
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            c.letGo,
		OnReject:           c.letGo,
	})
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return c, nil
}

// letGo marks a state that ristretto evicted or rejected as orphaned, and
// clears its front slot. (A rejected state still serves from the side map
// until the next Forget, which the same sync pass runs before it plans.)
func (c *Cache) letGo(item *ristretto.Item[*State]) {
	s := item.Value
	s.orphan()
	b := c.bucket(s.key)
	for i := range b {
		b[i].s.CompareAndSwap(s, nil)
	}
}

func (c *Cache) bucket(key uint64) *frontBucket { return &c.front[key&uint64(len(c.front)-1)] }

func (c *Cache) hash(user string, rule int) (key, check uint64) {
	key = maphash.String(c.seed1, user) ^ c.ruleMix[rule]
	check = (maphash.String(c.seed2, user) + c.ruleMix[rule]) | 1 // odd: a live tag is never 0
	return key, check
}

// Get returns the state of user under rule, or nil, and whether it came
// from the front table. It allocates nothing.
func (c *Cache) Get(user string, rule int) (s *State, front bool) {
	key, check := c.hash(user, rule)
	b := c.bucket(key)
	for i := range b {
		if b[i].key.Load() == key {
			if s := b[i].s.Load(); s != nil && s.key == key && s.tag.Load() == check {
				return s, true
			}
		}
	}
	if s, ok := c.c.Get(key); ok && s.tag.Load() == check {
		return s, false
	}
	return nil, false
}

// Promote puts s in the front table: in the slot its key has there, else
// in an empty one, else in place of one of its bucket's states. An orphan
// is not promoted (one orphaned while it is being promoted may stay in its
// slot until another state takes it; lookups pass it by).
func (c *Cache) Promote(s *State) {
	if s.Orphaned() {
		return
	}
	b := c.bucket(s.key)
	way := -1
	for i := range b {
		if b[i].key.Load() == s.key {
			way = i
			break
		}
		if way < 0 && b[i].s.Load() == nil {
			way = i
		}
	}
	if way < 0 {
		way = int(rand.Uint32() % frontWays)
	}
	b[way].s.Store(s)
	b[way].key.Store(s.key)
}

// Touch tells ristretto's admission policy of a use of s that the front
// table served.
func (c *Cache) Touch(s *State) { c.c.Get(s.key) }

// GetOrCreate returns the state of user under rule, creating it (with
// NewState(redisKey(), rule)) if needed.
func (c *Cache) GetOrCreate(user string, rule int, redisKey func() string) *State {
	key, check := c.hash(user, rule)
	if s, ok := c.c.Get(key); ok && s.tag.Load() == check {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.recent[key]; ok && s.check == check {
		return s // even if rejected: it serves until Forget, and its pass returns its lease
	}
	s := NewState(redisKey(), rule)
	s.key, s.check = key, check
	s.tag.Store(check)
	c.recent[key] = s
	if !c.c.Set(key, s, 1) {
		s.orphan() // dropped at once: it serves from recent until Forget
		return s
	}
	c.Promote(s)
	return s
}

// Forget drops from the side map the states that ristretto now holds, and
// those it evicted, rejected or dropped; the sync pass calls it once per
// interval. A state ristretto has not processed yet stays, so that it is
// never replaced by a second state for the same key while it is pending.
func (c *Cache) Forget() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for key, s := range c.recent {
		if s.Orphaned() {
			delete(c.recent, key)
		} else if v, ok := c.c.Get(key); ok && v == s {
			delete(c.recent, key)
		}
	}
}

// Close stops the cache's goroutines.
func (c *Cache) Close() { c.c.Close() }
