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

	// front is a direct-mapped table of states in front of ristretto: a
	// hot key is found with one pointer load, without ristretto's read
	// lock and access buffers. One front hit in touchEvery is passed on
	// to ristretto, so that its admission policy still sees hot keys.
	front [frontSize]atomic.Pointer[State]

	mu     sync.Mutex
	recent map[uint64]*State // created since the last Forget
}

const (
	frontSize  = 1 << 14 // slots, a power of two: 128 KiB
	touchEvery = 16      // a power of two
)

// NewCache returns a cache for up to maxKeys keys of rules rules.
func NewCache(maxKeys int64, rules int) (*Cache, error) {
	if maxKeys < 1 || rules < 1 {
		return nil, fmt.Errorf("local: NewCache(%d, %d): both must be positive", maxKeys, rules)
	}
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *State]{
		NumCounters:        10 * maxKeys, // ristretto's advice: 10× the items held
		MaxCost:            maxKeys,      // every entry costs 1
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            orphan,
		OnReject:           orphan,
	})
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	mix := make([]uint64, rules)
	for i := range mix {
		mix[i] = rand.Uint64()
	}
	return &Cache{c: c, seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed(), ruleMix: mix, recent: make(map[uint64]*State)}, nil
}

// orphan marks a state that ristretto evicted or rejected. (A rejected
// state still serves from the side map until the next Forget, which the
// same sync pass runs before it plans.)
func orphan(item *ristretto.Item[*State]) { item.Value.orphan.Store(true) }

func (c *Cache) hash(user string, rule int) (key, check uint64) {
	return maphash.String(c.seed1, user) ^ c.ruleMix[rule], maphash.String(c.seed2, user) + c.ruleMix[rule]
}

// Get returns the state of user under rule, or nil. It allocates nothing.
func (c *Cache) Get(user string, rule int) *State {
	key, check := c.hash(user, rule)
	slot := &c.front[key&(frontSize-1)]
	if s := slot.Load(); s != nil && s.key == key && s.check == check && !s.Orphaned() {
		if rand.Uint32()&(touchEvery-1) == 0 {
			c.c.Get(key)
		}
		return s
	}
	if s, ok := c.c.Get(key); ok && s.check == check && !s.Orphaned() {
		slot.Store(s)
		return s
	}
	return nil
}

// GetOrCreate returns the state of user under rule, creating it (with
// NewState(redisKey(), rule)) if needed.
func (c *Cache) GetOrCreate(user string, rule int, redisKey func() string) *State {
	key, check := c.hash(user, rule)
	if s, ok := c.c.Get(key); ok && s.check == check && !s.Orphaned() {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.recent[key]; ok && s.check == check {
		return s // even if rejected: it serves until Forget, and its pass returns its lease
	}
	s := NewState(redisKey(), rule)
	s.key, s.check = key, check
	c.front[key&(frontSize-1)].Store(s)
	c.recent[key] = s
	if !c.c.Set(key, s, 1) {
		s.orphan.Store(true) // dropped at once: it serves from recent until Forget
	}
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
