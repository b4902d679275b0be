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
// first is ristretto's key, the second is kept in the State (and in its
// front-table slot) and checked on every lookup (ristretto itself
// identifies string keys by two hashes in the same way). So a lookup builds
// no string, allocates nothing, and for a key in the front table touches
// its slot and nothing else.
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
	ruleSeed     uint64 // mixed with a rule's index into the user's hashes (ruleMix)

	// table is the front table of hot records (see hot) in front of
	// ristretto, 4-way set associative: a state given a slot here keeps its
	// lease in it, so that a decision from the lease finds the key and
	// spends in one cache line, without ristretto's read lock and access
	// buffers and without touching the State. The decision path promotes a
	// state it found in ristretto (Promote), and the sync pass tells
	// ristretto of the front's uses (Touch), so that its admission policy
	// still sees the keys in use. A state ristretto lets go of leaves its
	// slot. A cache made by NewCacheWithoutFront has an empty table.
	//
	// The table starts at frontMin slots and grows (Forget, from the sync
	// pass) to two slots per resident key, rounded up to a power of two, up
	// to maxSlots: two per key the cache may hold, within frontMin and
	// frontMax (with one slot per key, a full cache leaves a fifth of its
	// keys out of their bucket: TestFrontHoldsResidentKeys). So New
	// reserves 72 KiB of it, not 144 bytes per key of capacity. Growth
	// swaps in a larger empty table and moves the old one's states over
	// (grow): a state's home points into the table it was promoted to, so
	// slots are never copied.
	table    atomic.Pointer[frontTable]
	old      atomic.Pointer[frontTable] // the table a growth is emptying, or nil: see owner
	maxSlots int
	growMu   sync.Mutex // one growth at a time

	mu     sync.Mutex
	recent map[uint64]*State // created since the last Forget

	guard closeGuard // every call into ristretto passes it

	door    *doorkeeper  // keys seen lately: see FirstSight
	letGoes atomic.Int64 // states evicted or rejected, for LetGo
	// resident counts the states handed to ristretto less those it let go
	// of: the keys the front table is sized for. It is an estimate (a key
	// set again over a state ristretto still holds is counted twice), and
	// errs high, which only grows the table sooner.
	resident atomic.Int64
}

// frontTable is the front table: its buckets, and the owners of their
// slots (slot i of bucket b is owners[b·frontWays+i]), nil for a free slot:
// kept apart so that the buckets hold no pointer. A decision from the front
// table reads its slot only; State reads the owner. A table never changes
// size: Cache.grow replaces it.
type frontTable struct {
	front  []frontBucket
	owners []atomic.Pointer[State]
}

// newFrontTable returns an empty table of slots slots (a power of two, at
// least frontWays; 0 for none).
func newFrontTable(slots int) *frontTable {
	return &frontTable{front: make([]frontBucket, slots/frontWays), owners: make([]atomic.Pointer[State], slots)}
}

// bucket returns the index of key's bucket, and the bucket. The table
// must have some.
func (t *frontTable) bucket(key uint64) (uint64, *frontBucket) {
	bi := key & uint64(len(t.front)-1)
	return bi, &t.front[bi]
}

// owner returns the owner cell of h, a slot of key's bucket in t, or nil if
// h is none of them.
func (t *frontTable) owner(h *hot, key uint64) *atomic.Pointer[State] {
	if len(t.front) == 0 {
		return nil
	}
	bi, b := t.bucket(key)
	for i := range b {
		if &b[i] == h {
			return &t.owners[bi*frontWays+uint64(i)]
		}
	}
	return nil
}

// LetGo returns how many states ristretto evicted or rejected.
func (c *Cache) LetGo() int64 { return c.letGoes.Load() }

// Resident returns the states the cache holds: those handed to ristretto
// less those it let go of, an estimate that errs high (see resident).
func (c *Cache) Resident() int64 { return max(c.resident.Load(), 0) }

// frontBucket is a set of Cache.front: four slots, a cache line each.
type frontBucket [frontWays]hot

// The front table's bounds, in slots of 64 bytes, and its ways.
const (
	frontMin  = 1 << 10
	frontMax  = 1 << 22 // 256 MiB
	frontWays = 4
)

// NewCache returns a cache for up to maxKeys keys. rules is the number of
// rules known at New, between 1 and MaxRules; it bounds nothing: a rule's
// index is mixed into its keys' hashes by a function of the index (and a
// seed per cache), so every index below MaxRules works, rules added after
// New (Limiter.Reload) included.
func NewCache(maxKeys int64, rules int) (*Cache, error) {
	return newCache("NewCache", maxKeys, rules, true)
}

// NewCacheWithoutFront returns a cache like NewCache's but without the
// front table: Get looks every key up in ristretto, Promote and Touch do
// nothing (ristretto sees every use), and a state's lease stays in its own
// record. It is the reference the front table must agree with: the hybrid
// mode's tests run both ways, and the benchmarks weigh one against the
// other.
func NewCacheWithoutFront(maxKeys int64, rules int) (*Cache, error) {
	return newCache("NewCacheWithoutFront", maxKeys, rules, false)
}

func newCache(name string, maxKeys int64, rules int, front bool) (*Cache, error) {
	if maxKeys < 1 || rules < 1 || rules > MaxRules {
		return nil, fmt.Errorf("local: %s(%d, %d): both must be positive, and rules at most %d", name, maxKeys, rules, MaxRules)
	}
	c := &Cache{
		seed1:    maphash.MakeSeed(),
		seed2:    maphash.MakeSeed(),
		ruleSeed: rand.Uint64() | 1,
		recent:   make(map[uint64]*State),
		door:     newDoorkeeper(maxKeys),
	}
	c.table.Store(newFrontTable(0))
	if front {
		c.maxSlots = frontMin
		for int64(c.maxSlots) < 2*maxKeys && c.maxSlots < frontMax { // two per key: see Cache.table
			c.maxSlots *= 2
		}
		c.table.Store(newFrontTable(frontMin))
	}
	var err error
	c.c, err = ristretto.NewCache(&ristretto.Config[uint64, *State]{
		NumCounters:        counters(maxKeys),
		MaxCost:            maxKeys, // every entry costs 1
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

// counters returns the NumCounters of a cache for maxKeys keys: the
// smallest power of two of at least 8 per key. Ristretto's advice is 10
// per key, but its count-min sketch rounds the count up to a power of two
// (4 rows of 4-bit counters: 2 bytes a counter), so 10 per key gives 10 to
// 20, and 16 for a power-of-two maxKeys; this gives 8 to 16, half the
// sketch for a power-of-two maxKeys (4 MiB less at 1<<18 keys, 16 MiB at
// 1<<20). Its Bloom filter (1 % false positives: 9.6 bits a counter,
// rounded up to a power of two) is the same size either way for those.
// The count also sets how many increments age the sketch (halve its
// counters): 8 per key, not 10.
func counters(maxKeys int64) int64 {
	n := int64(1)
	for n < 8*maxKeys {
		n *= 2
	}
	return n
}

// letGo marks a state that ristretto evicted or rejected as orphaned, and
// takes it out of the front table. (A rejected state still serves from the
// side map until the next Forget, which the same sync pass runs before it
// plans.)
func (c *Cache) letGo(item *ristretto.Item[*State]) {
	c.letGoes.Add(1)
	c.resident.Add(-1)
	s := item.Value
	s.Lock()
	s.orphan()
	c.moveHome(s, &s.own)
	s.Unlock()
}

// moveHome moves s's home to h (State.moveHome) and frees the front slot it
// left, if any. It requires s's lock.
func (c *Cache) moveHome(s *State, h *hot) {
	if old := s.moveHome(h); old != h && old != &s.own {
		if o := c.owner(old, s.own.key.Load()); o != nil {
			o.Store(nil) // free for another state
		}
	}
}

// owner returns the owner cell of h, a slot of key's bucket in the front
// table or in the one a growth is emptying, or nil if h is none of them.
// (Only those two hold states: grow moves every state out of the old table
// before it forgets it.)
func (c *Cache) owner(h *hot, key uint64) *atomic.Pointer[State] {
	if o := c.table.Load().owner(h, key); o != nil {
		return o
	}
	if t := c.old.Load(); t != nil {
		return t.owner(h, key)
	}
	return nil
}

func (c *Cache) hash(user string, rule int) (key, check uint64) {
	mix := c.ruleMix(rule)
	key = maphash.String(c.seed1, user) ^ mix
	check = (maphash.String(c.seed2, user) + mix) | 1 // odd: a live tag is never 0
	return key, check
}

// ruleMix returns the value mixed into the hashes of rule's keys: the
// index through splitmix64's finalizer, under the cache's seed, so that
// distinct indexes give unrelated values (a bijection of the index: no two
// rules share one) without a table sized at New.
func (c *Cache) ruleMix(rule int) uint64 {
	z := (uint64(rule) + 1) * c.ruleSeed
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// Ref is a key's entry as Get found it: where its lease is open to Spend,
// and its State. It is four words, so that it is returned in registers.
type Ref struct {
	hot        *hot
	s          *State // as ristretto named it (nil for a front slot, whose owner State reads): State checks it
	key, check uint64
}

// Found reports whether Get found a state for the key.
func (r Ref) Found() bool { return r.hot != nil }

// InFront reports whether the key's lease is in the front table (as of
// Get). It requires Found.
func (r Ref) InFront() bool { return r.s == nil || r.hot != &r.s.own }

// Spend takes one token of the key's lease without a lock, if it is open
// and ms falls in its window (w ms long), no earlier than the key's Last:
// so no token is spent before the time Redis leased it, and a request older
// than Last is judged at Last by the locked path. It returns the window's
// counts as of the State's last Unlock, the tokens the lease held before
// this one was taken, and the time elapsed in the window. When ok is false
// nothing was taken and the caller decides under the State's lock. A token
// taken is one request admitted locally: the State's next Lock takes it
// off Lease and adds it to Attempts, Seen and LocalAllowed. A Spend from
// the front table touches one cache line, the key's slot.
func (r Ref) Spend(ms, w int64) (prev, cur, lease, elapsed int64, ok bool) {
	if r.hot == nil {
		return 0, 0, 0, 0, false
	}
	return r.hot.spend(r.check, ms, w)
}

// Get returns the entry of user under rule; it has no state if the key is
// unknown. It allocates nothing, and a key found in the front table costs
// one load of its bucket (one line per way looked at) and no State.
func (c *Cache) Get(user string, rule int) Ref {
	key, check := c.hash(user, rule)
	// Without a front table, straight to ristretto. (The test stands in for
	// the bounds check of the bucket's index, which it proves needless.)
	if t := c.table.Load(); len(t.front) != 0 {
		b := &t.front[key&uint64(len(t.front)-1)]
		for i := range b {
			h := &b[i]
			if h.key.Load() == key && h.tag.Load() == check {
				return Ref{hot: h, key: key, check: check}
			}
		}
	}
	return c.lookup(key, check)
}

// lookup finds a key's state in ristretto.
func (c *Cache) lookup(key, check uint64) Ref {
	if s, ok := c.get(key); ok && s.own.tag.Load() == check {
		return Ref{hot: s.home.Load(), s: s, key: key, check: check}
	}
	return Ref{key: key, check: check}
}

// get is ristretto's Get, but for a closed Cache, which holds nothing.
func (c *Cache) get(key uint64) (*State, bool) {
	if !c.guard.enter(key) {
		return nil, false
	}
	defer c.guard.exit(key)
	return c.c.Get(key)
}

// set is ristretto's Set, but for a closed Cache, which takes nothing.
func (c *Cache) set(key uint64, s *State) bool {
	if !c.guard.enter(key) {
		return false
	}
	defer c.guard.exit(key)
	return c.c.Set(key, s, 1)
}

// State returns the state r names, or nil if the key has none. (A slot may
// change owner between Get's loads; the State's own check tells.)
func (c *Cache) State(r Ref) *State {
	switch {
	case r.s != nil:
		if r.s.check == r.check {
			return r.s
		}
	case r.hot != nil: // a front slot: its owner, if still the key's
		if o := c.owner(r.hot, r.key); o != nil {
			if s := o.Load(); s != nil && s.check == r.check {
				return s
			}
		}
	default:
		return nil // Get found nothing
	}
	return c.lookup(r.key, r.check).s
}

// Promote gives s a slot in the front table: an empty one of its bucket,
// else one whose state it can lock at once. An orphan, or a state that has
// a slot, is left as it is. Promote takes s's lock. Without a front table
// it does nothing.
func (c *Cache) Promote(s *State) {
	t := c.table.Load()
	if len(t.front) == 0 {
		return
	}
	s.Lock()
	defer s.Unlock() // opens the budget in its new home
	if s.Orphaned() || s.InFront() {
		return
	}
	key := s.own.key.Load()
	bi, b := t.bucket(key)
	owners := t.owners[bi*frontWays : (bi+1)*frontWays]
	for i := range b {
		if owners[i].CompareAndSwap(nil, s) {
			c.settle(t, s, &b[i], &owners[i])
			return
		}
	}
	i := rand.Uint32() % frontWays
	h := &b[i]
	o := owners[i].Load()
	if o == nil || !o.tryLock() { // never wait on another state's lock while holding one
		return
	}
	if o.home.Load() == h { // o holds its lock, so its home is settled
		c.moveHome(o, &o.own)
	}
	o.Unlock()
	if owners[i].CompareAndSwap(nil, s) {
		c.settle(t, s, h, &owners[i])
	}
}

// settle moves s (locked, at home) into h, a slot of t it has just claimed
// (its owner cell o holds s), unless t is no longer the front table: a
// growth swapped it out after Promote loaded it, and may have looked at o
// before s claimed it, so s leaves at once and frees the slot itself.
// (grow stores the new table before it reads an owner, and settle reads
// the table after it claimed o: either grow sees s in o, and waits for its
// lock to move it, or settle sees the new table.)
func (c *Cache) settle(t *frontTable, s *State, h *hot, o *atomic.Pointer[State]) {
	c.moveHome(s, h)
	if c.table.Load() != t {
		s.moveHome(&s.own)
		o.Store(nil)
	}
}

// grow replaces the front table with a larger one if the keys resident
// outnumber half its slots: two slots per key, rounded up to a power of
// two, up to maxSlots. The states of the old table move to the new one
// (or to their own record, if their bucket there is full), each under its
// lock, as Promote moves them: their leases close in the old slot and
// reopen in the new. Until a state has moved, Get does not find it in the
// front table but through ristretto, whose Ref names its old slot, where
// Spend still serves it. grow runs in the sync pass (Forget), not in a
// decision: it visits every slot of the old table.
func (c *Cache) grow() {
	c.growMu.Lock()
	defer c.growMu.Unlock()
	old := c.table.Load()
	slots := len(old.owners)
	want := 2 * c.resident.Load()
	if slots == 0 || slots >= c.maxSlots || want <= int64(slots) {
		return
	}
	for int64(slots) < want && slots < c.maxSlots {
		slots *= 2
	}
	t := newFrontTable(slots)
	c.old.Store(old) // first: owner must find the old slots as long as states hold them
	c.table.Store(t) // Promote promotes into t from here on (see settle)
	for bi := range old.front {
		for i := range old.front[bi] {
			o := old.owners[bi*frontWays+i].Load()
			if o == nil {
				continue
			}
			o.Lock()
			if h := &old.front[bi][i]; o.home.Load() == h {
				c.moveInto(t, o)
			}
			o.Unlock()
		}
	}
	c.old.Store(nil)
}

// moveInto moves s (locked, in a slot of the old table) to a free slot of
// its bucket in t, or home to its own record if there is none.
func (c *Cache) moveInto(t *frontTable, s *State) {
	if !s.Orphaned() {
		bi, b := t.bucket(s.own.key.Load())
		for i := range b {
			if t.owners[bi*frontWays+uint64(i)].CompareAndSwap(nil, s) {
				c.moveHome(s, &b[i])
				return
			}
		}
	}
	c.moveHome(s, &s.own)
}

// Touch tells ristretto's admission policy of a use of s that the front
// table served. Without a front table it does nothing: every use went
// through ristretto's Get.
func (c *Cache) Touch(s *State) {
	if c.HasFront() {
		c.get(s.own.key.Load())
	}
}

// HasFront reports whether the cache has a front table (NewCache) or not
// (NewCacheWithoutFront).
func (c *Cache) HasFront() bool { return c.maxSlots != 0 }

// FirstSight reports whether the key of r, which Get did not find, is one
// not seen lately (then it records the sighting), for a request at ms: the
// caller may decide its request without a State, so that a key seen once,
// or seldom, costs none. A key is remembered for at least the cache's
// maxKeys first sightings of others and, when span > 0, for at least span
// ms of request time; with span > 0 it is forgotten once requests have
// come for two spans after its sighting (see doorkeeper). About 1.4 % of
// new keys are taken for seen ones.
func (c *Cache) FirstSight(r Ref, ms, span int64) bool { return !c.door.seen(r.key, r.check, ms, span) }

// GetOrCreate returns the state of user under rule, creating it (with
// NewState(redisKey(), rule)) if needed.
func (c *Cache) GetOrCreate(user string, rule int, redisKey func() string) *State {
	key, check := c.hash(user, rule)
	if s, ok := c.get(key); ok && s.own.tag.Load() == check {
		return s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.recent[key]; ok && s.check == check {
		return s // even if rejected: it serves until Forget, and its pass returns its lease
	}
	s := NewState(redisKey(), rule)
	s.check = check
	s.own.key.Store(key)
	s.own.tag.Store(check)
	c.recent[key] = s
	if !c.set(key, s) {
		s.orphan() // dropped at once: it serves from recent until Forget
		return s
	}
	c.resident.Add(1) // less one when ristretto lets go of it (letGo)
	c.Promote(s)
	return s
}

// Find returns the state of user under rule, from ristretto, its front
// table or the side map of states ristretto has not applied yet, or nil.
// Unlike GetOrCreate it creates nothing.
func (c *Cache) Find(user string, rule int) *State {
	if s := c.State(c.Get(user, rule)); s != nil {
		return s
	}
	key, check := c.hash(user, rule)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.recent[key]; ok && s.check == check {
		return s
	}
	return nil
}

// Forget drops from the side map the states that ristretto now holds, and
// those it evicted, rejected or dropped; the sync pass calls it once per
// interval. A state ristretto has not processed yet stays, so that it is
// never replaced by a second state for the same key while it is pending.
// Then it grows the front table if the keys resident have outgrown it
// (grow).
//
// The states kept move to a new map: a Go map never shrinks, and one that
// held every key created in a burst (200 000 at once: 24 bytes a key)
// would keep that size for good, however few it holds after.
func (c *Cache) Forget() {
	c.mu.Lock()
	kept := make(map[uint64]*State)
	for key, s := range c.recent {
		if s.Orphaned() {
			continue
		}
		if v, ok := c.get(key); ok && v == s {
			continue
		}
		kept[key] = s
	}
	c.recent = kept
	c.mu.Unlock() // before grow: GetOrCreate, which takes c.mu, must not wait for it
	c.grow()
}

// Close stops the cache's goroutines. It waits for the calls into
// ristretto under way; calls after it find nothing and keep nothing. It is
// safe while decisions run.
func (c *Cache) Close() {
	c.guard.close()
	c.c.Close()
}

// Wait waits for ristretto to apply the Sets buffered so far (for tests).
func (c *Cache) Wait() { c.c.Wait() }
