package local

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestFrontStartsSmall: a new Cache reserves the smallest front table
// whatever its capacity, and the sync pass (Forget) grows it to two slots
// per resident key, a power of two, up to its bound (two per key of
// capacity); every key stays found, and a growth moves the states it finds
// into the new table.
func TestFrontStartsSmall(t *testing.T) {
	big, err := NewCache(1<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if got := len(big.table.Load().owners); got != frontMin || len(big.table.Load().front) != frontMin/frontWays {
		t.Fatalf("New(1<<20) reserves %d slots, want %d", got, frontMin)
	}
	if big.maxSlots != 1<<21 {
		t.Fatalf("New(1<<20) bounds its table at %d slots, want %d", big.maxSlots, 1<<21)
	}
	if got := NewCacheWithoutFrontOrFail(t).table.Load(); len(got.front) != 0 || len(got.owners) != 0 {
		t.Fatal("a cache without front table has one")
	}

	const maxKeys = 4096 // bound: 8192 slots
	c := newTestCache(t, maxKeys, true)
	var users []string
	create := func(n int) {
		for len(users) < n {
			u := fmt.Sprint("u", len(users))
			users = append(users, u)
			c.GetOrCreate(u, 0, func() string { return u })
		}
		c.Wait()
		c.Forget()
	}
	for _, step := range []struct{ keys, slots int }{
		{400, frontMin}, // 800 slots wanted: no growth
		{600, 2048},     // 1200
		{1500, 4096},    // 3000
		{3000, 8192},    // 6000
		{maxKeys, 8192}, // the bound
		{2 * maxKeys, 8192},
	} {
		create(step.keys)
		if got := len(c.table.Load().owners); got != step.slots {
			t.Fatalf("%d keys created: %d slots, want %d", step.keys, got, step.slots)
		}
		if len(c.table.Load().front) != step.slots/frontWays {
			t.Fatal("owners and buckets disagree")
		}
		if step.keys > maxKeys {
			break // ristretto lets keys go: those are no longer found
		}
		inFrontN := 0
		for _, u := range users {
			s := c.Find(u, 0)
			if s == nil || s.Key != u {
				t.Fatalf("%d keys created: Find(%s) = %v", step.keys, u, s)
			}
			if inFront(c, s) {
				inFrontN++
			}
		}
		// Those moved over by a growth and those promoted since: at two
		// slots per key, nearly all (a bucket holds four).
		if inFrontN < len(users)*3/4 {
			t.Fatalf("%d keys created: %d in the front table", step.keys, inFrontN)
		}
	}
	checkOwners(t, c)
}

// NewCacheWithoutFrontOrFail returns a cache without front table, closed
// when the test ends.
func NewCacheWithoutFrontOrFail(t *testing.T) *Cache {
	t.Helper()
	return newTestCache(t, 1<<20, false)
}

// checkOwners checks, with the cache at rest, that no state owns two slots,
// that every owner's home is its slot, and that no slot's key or tag
// names a state other than its owner.
func checkOwners(t *testing.T, c *Cache) {
	t.Helper()
	if c.old.Load() != nil {
		t.Fatal("a growth left its old table")
	}
	tb := c.table.Load()
	owned := map[*State]int{}
	for bi := range tb.front {
		for i := range tb.front[bi] {
			h := &tb.front[bi][i]
			s := tb.owners[bi*frontWays+i].Load()
			if s == nil {
				if h.tag.Load() != 0 {
					t.Fatalf("free slot %d/%d has tag %x", bi, i, h.tag.Load())
				}
				continue
			}
			owned[s]++
			if owned[s] > 1 {
				t.Fatalf("state %s owns two slots", s.Key)
			}
			if s.home.Load() != h || h.tag.Load() != s.check || h.key.Load() != s.own.key.Load() {
				t.Fatalf("slot %d/%d's owner %s is not at home there", bi, i, s.Key)
			}
		}
	}
}

// TestFrontGrowthRaces: goroutines decide for a set of hot keys as the
// decision path does (Get and Spend; else State, and a locked spend; and
// Promote), and one more promotes at random, while the test creates cold
// keys and runs sync passes (Forget) that grow the front table from its
// minimum to its bound, moving the hot keys' states (and their open
// leases) from table to table. Every hot key's state is found every time,
// never another; per hot key, the tokens handed out equal what its state
// counts as admitted and what its lease lost: a move loses and duplicates
// no token. At the end no slot is owned twice.
func TestFrontGrowthRaces(t *testing.T) {
	const (
		hotKeys = 64
		cold    = 12_000
		lease   = 1 << 30
		w       = 1000
	)
	c := newTestCache(t, 1<<14, true) // bound: 32768 slots
	users := make([]string, hotKeys)
	states := make([]*State, hotKeys)
	for k := range users {
		u := fmt.Sprint("hot", k)
		users[k] = u
		s := c.GetOrCreate(u, 0, func() string { return u })
		s.Lock()
		s.Roll(1)
		s.Lease, s.Last = lease, w
		s.Unlock()
		states[k] = s
	}
	c.Wait()

	var got [hotKeys]atomic.Int64
	var lockfree, locked, fromFront, wrong atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 3 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 3))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := r.IntN(hotKeys)
				ref := c.Get(users[k], 0)
				if _, _, l, _, ok := ref.Spend(w+500, w); ok {
					got[k].Add(1)
					lockfree.Add(1)
					if ref.InFront() {
						fromFront.Add(1)
					} else if l%4 == 0 { // as the decision path promotes
						c.Promote(c.State(ref))
					}
					continue
				}
				s := c.State(ref)
				if s != states[k] {
					wrong.Add(1)
					continue
				}
				spendLocked(c, s, &got[k], &locked)
			}
		})
	}
	wg.Go(func() {
		r := rand.New(rand.NewPCG(7, 3))
		for {
			select {
			case <-stop:
				return
			default:
			}
			c.Promote(states[r.IntN(hotKeys)])
		}
	})
	growths, slots := 0, len(c.table.Load().owners)
	for i := range cold {
		u := fmt.Sprint("cold", i)
		c.GetOrCreate(u, 0, func() string { return u })
		if i%500 == 499 {
			c.Wait()
			c.Forget()
			if n := len(c.table.Load().owners); n != slots {
				growths++
				slots = n
			}
		}
	}
	close(stop)
	wg.Wait()

	if slots != c.maxSlots || growths < 4 {
		t.Fatalf("the table grew %d times to %d slots, want at least 4 times, to %d", growths, slots, c.maxSlots)
	}
	if wrong.Load() != 0 {
		t.Errorf("State(Get) named another state than the key's %d times", wrong.Load())
	}
	for k, s := range states {
		s.Lock()
		if g := got[k].Load(); s.LocalAllowed != g || s.Attempts != g || lease-s.Lease != g {
			t.Errorf("%s: handed out %d tokens; its state counts %d admitted, %d attempts, lease lost %d",
				users[k], g, s.LocalAllowed, s.Attempts, lease-s.Lease)
		}
		s.Unlock()
		if c.Find(users[k], 0) != s {
			t.Errorf("%s: its state is lost", users[k])
		}
		inFront(c, s) // panics if its home is a slot of no table but the current one
	}
	checkOwners(t, c)
	if fromFront.Load() == 0 || locked.Load() == 0 {
		t.Fatalf("%d lock-free spends (%d from the front), %d locked: the test proves little",
			lockfree.Load(), fromFront.Load(), locked.Load())
	}
	t.Logf("%d growths, %d lock-free spends (%d from the front), %d locked", growths, lockfree.Load(), fromFront.Load(), locked.Load())
}
