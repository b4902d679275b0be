package local

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// Cache maps a user to the hybrid states of that user's keys, one per
// hybrid rule, in a ristretto cache bounded by a number of users.
//
// Ristretto's Set is buffered and may be dropped by its admission policy, so
// a user just created is also kept in a small side map until the next
// Forget, and is found there until ristretto shows it. Losing an entry loses
// nothing that matters: a state with a lease or unreported requests is held
// by the sync Registry until its lease is returned, and a user who comes
// back gets a new State with no lease, which asks Redis before it admits
// anything locally.
type Cache struct {
	c     *ristretto.Cache[string, *Entry]
	rules int

	mu     sync.Mutex
	recent map[string]*Entry // created since the last Forget
}

// Entry holds one user's states, indexed by rule.
type Entry struct {
	states []atomic.Pointer[State]
}

// NewCache returns a cache for up to maxUsers users of rules hybrid rules.
func NewCache(maxUsers int64, rules int) (*Cache, error) {
	if maxUsers < 1 || rules < 1 {
		return nil, fmt.Errorf("local: NewCache(%d, %d): both must be positive", maxUsers, rules)
	}
	c, err := ristretto.NewCache(&ristretto.Config[string, *Entry]{
		NumCounters:        10 * maxUsers, // ristretto's advice: 10× the items held
		MaxCost:            maxUsers,      // every entry costs 1
		BufferItems:        64,
		IgnoreInternalCost: true,
		OnEvict:            orphan,
		OnReject:           orphan,
	})
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return &Cache{c: c, rules: rules, recent: make(map[string]*Entry)}, nil
}

// orphan marks the states of an entry that ristretto evicted or rejected.
// (A rejected entry still serves from the side map until the next Forget,
// which the same sync pass runs before it plans.)
func orphan(item *ristretto.Item[*Entry]) {
	for i := range item.Value.states {
		if s := item.Value.states[i].Load(); s != nil {
			s.orphan.Store(true)
		}
	}
}

// Get returns the state of user under rule, or nil. It allocates nothing.
func (c *Cache) Get(user string, rule int) *State {
	if e, ok := c.c.Get(user); ok {
		if s := e.states[rule].Load(); s != nil {
			return s
		}
	}
	return nil
}

// GetOrCreate returns the state of user under rule, creating it (with
// NewState(key(), rule)) if needed.
func (c *Cache) GetOrCreate(user string, rule int, key func() string) *State {
	e, ok := c.c.Get(user)
	if !ok {
		c.mu.Lock()
		e, ok = c.recent[user]
		if !ok {
			e = &Entry{states: make([]atomic.Pointer[State], c.rules)}
			c.recent[user] = e
			c.c.Set(user, e, 1) // may be dropped; recent holds it until Forget
		}
		c.mu.Unlock()
	}
	if s := e.states[rule].Load(); s != nil {
		return s
	}
	s := NewState(key(), rule)
	if !e.states[rule].CompareAndSwap(nil, s) {
		return e.states[rule].Load()
	}
	return s
}

// Forget empties the side map of recently created users; the sync pass
// calls it once per interval, by when ristretto has admitted or dropped
// them.
func (c *Cache) Forget() {
	c.mu.Lock()
	clear(c.recent)
	c.mu.Unlock()
}

// Close stops the cache's goroutines.
func (c *Cache) Close() { c.c.Close() }
