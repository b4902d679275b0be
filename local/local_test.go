package local

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestTableExpires(t *testing.T) {
	tb := NewTable[int](100)
	for i := range 1000 {
		tb.Do(fmt.Sprint(i), 1000, 1000-tb.ttl, func(v *int) bool { *v++; return true })
	}
	if got := tb.Len(); got != 1000 {
		t.Fatalf("Len() = %d, want 1000", got)
	}
	// Within the TTL the value survives; after it, a use starts from zero.
	tb.Do("1", 1100, 1100-tb.ttl, func(v *int) bool {
		if *v != 1 {
			t.Errorf("value at ttl = %d, want 1", *v)
		}
		return true
	})
	tb.Do("2", 1101, 1101-tb.ttl, func(v *int) bool {
		if *v != 0 {
			t.Errorf("value after ttl = %d, want 0", *v)
		}
		return false
	})
	if a, d := tb.Counts(); a != 1001 || d != 1 {
		t.Fatalf("Counts() = %d, %d, want 1001, 1", a, d)
	}
	tb.Sweep(1102)
	if got := tb.Len(); got != 2 {
		t.Fatalf("Len() after Sweep = %d, want 2 (keys 1 and 2)", got)
	}
}

// TestTableBoundedByTTL: a stream of distinct keys keeps the table at about
// the keys of one TTL, without explicit sweeps.
func TestTableBoundedByTTL(t *testing.T) {
	tb := NewTable[int](10)
	for i := range 100_000 {
		tb.Do(fmt.Sprint(i), int64(i), int64(i)-tb.ttl, func(*int) bool { return true })
	}
	if got := tb.Len(); got > 64*(64+2*11) {
		t.Fatalf("Len() = %d after 100000 one-off keys with a TTL of 10 keys", got)
	}
}

func TestRegistryAddsOnce(t *testing.T) {
	var r Registry
	s := NewState("k", 0)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { r.Add(s) })
	}
	wg.Wait()
	if got := r.Take(nil); len(got) != 1 || got[0] != s {
		t.Fatalf("Take() = %v, want [s]", got)
	}
	if r.Len() != 0 {
		t.Fatal("registry not empty after Take")
	}
	r.Add(s)
	if r.Len() != 1 {
		t.Fatal("a taken state could not be added again")
	}
}

func TestRollMovesCountsAndLease(t *testing.T) {
	s := NewState("k", 0)
	s.Roll(10)
	s.Prev, s.Cur, s.Lease = 3, 7, 2
	s.Roll(11)
	// Prev leaves out our own unspent lease: it is owed back.
	if s.Prev != 5 || s.Cur != 0 || s.Lease != 0 || s.ReturnWindow != 10 || s.Return != 2 {
		t.Fatalf("after Roll(11): %+v", s)
	}
	s.Cur, s.Lease = 4, 1
	s.Roll(13) // a gap: nothing carries over, the old return is superseded
	if s.Prev != 0 || s.Cur != 0 || s.ReturnWindow != 11 || s.Return != 1 {
		t.Fatalf("after Roll(13): %+v", s)
	}
	s.Roll(12) // backwards: no-op
	if s.Window != 13 {
		t.Fatalf("Roll backwards moved the window to %d", s.Window)
	}
}

// TestCacheFindsNewUsers: a user just created is found before ristretto has
// admitted it, and the same state is returned every time.
func TestCacheFindsNewUsers(t *testing.T) {
	forEachFront(t, func(t *testing.T, front bool) { testCacheFindsNewUsers(t, front) })
	for _, newCache := range []func(int64, int) (*Cache, error){NewCache, NewCacheWithoutFront} {
		if _, err := newCache(0, 1); err == nil {
			t.Fatal("a cache for 0 keys was made")
		}
		if _, err := newCache(1, MaxRules+1); err == nil {
			t.Fatal("a cache for MaxRules+1 rules was made")
		}
	}
}

func testCacheFindsNewUsers(t *testing.T, front bool) {
	newCache := NewCache
	if !front {
		newCache = NewCacheWithoutFront
	}
	c, err := newCache(100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	calls := 0
	key := func() string { calls++; return "key" }
	a := c.GetOrCreate("u", 1, key)
	b := c.GetOrCreate("u", 1, key)
	if a != b || calls != 1 {
		t.Fatalf("GetOrCreate twice: same=%v, key() called %d times", a == b, calls)
	}
	if other := c.GetOrCreate("u", 0, key); other == a {
		t.Fatal("rules share a state")
	}
	c.c.Wait()
	ref := c.Get("u", 1)
	if got := c.State(ref); got != a {
		t.Fatalf("Get after Wait = %p, want %p", got, a)
	}
	if ref.InFront() != front {
		t.Fatalf("a new user's InFront() = %v, want %v (GetOrCreate promotes)", ref.InFront(), front)
	}
}

// TestStateLayout: a State is 256 bytes, a multiple of the cache line, so
// the allocator aligns it; its own hot record is the first line, what a
// locked decision writes the second. A hot record, a front-table slot, is
// one line, and a front bucket four.
func TestStateLayout(t *testing.T) {
	if got := unsafe.Sizeof(State{}); got != 256 {
		t.Fatalf("State is %d bytes, want 256", got)
	}
	if got := unsafe.Sizeof(hot{}); got != 64 {
		t.Fatalf("a hot record is %d bytes, want 64", got)
	}
	if got := unsafe.Sizeof(frontBucket{}); got != 4*64 {
		t.Fatalf("a front bucket is %d bytes, want 256", got)
	}
	var s State
	line := func(off uintptr) uintptr { return off / 64 }
	if off := unsafe.Offsetof(s.own); off != 0 {
		t.Errorf("own is at offset %d, want 0 (one line)", off)
	}
	for name, off := range map[string]uintptr{
		"mu": unsafe.Offsetof(s.mu), "Last": unsafe.Offsetof(s.Last), "Lease": unsafe.Offsetof(s.Lease),
		"Attempts": unsafe.Offsetof(s.Attempts), "Seen": unsafe.Offsetof(s.Seen),
		"LocalAllowed": unsafe.Offsetof(s.LocalAllowed), "LocalDenied": unsafe.Offsetof(s.LocalDenied) + 7,
	} {
		if line(off) != 1 {
			t.Errorf("%s is on line %d, want 1 (written by locked decisions)", name, line(off))
		}
	}
}

// inFront reports whether s's home is a slot of c's front table.
func inFront(c *Cache, s *State) bool {
	s.Lock()
	defer s.Unlock()
	h := s.home.Load()
	t := c.table.Load()
	for i := range t.front {
		for j := range t.front[i] {
			if h == &t.front[i][j] {
				if t.owners[i*frontWays+j].Load() != s {
					panic("a state's slot names another owner")
				}
				return true
			}
		}
	}
	if h != &s.own {
		panic("a state's home is neither its own record nor a slot")
	}
	return false
}

// TestCacheFront: Get finds a promoted state in the front table; a full
// bucket takes a fifth key in place of one of its four, which keeps its
// lease in its own record; a state ristretto lets go of leaves the front
// table and is found nowhere.
func TestCacheFront(t *testing.T) {
	c := newTestCache(t, 1000, true)
	// Users whose keys share one bucket.
	users := bucketUsers(c, frontWays+1)
	states := make([]*State, len(users))
	for i, u := range users[:frontWays] {
		states[i] = c.GetOrCreate(u, 0, func() string { return u })
		ref := c.Get(u, 0)
		if !ref.Found() || !ref.InFront() || c.State(ref) != states[i] || !inFront(c, states[i]) {
			t.Fatalf("Get(%s) = %+v; want %p from the front table", u, ref, states[i])
		}
	}
	// A lease opened in the front table is spent there.
	s0 := states[0]
	s0.Lock()
	s0.Roll(5)
	s0.Lease, s0.Last = 2, 5000
	s0.Unlock()
	if _, _, lease, _, ok := c.Get(users[0], 0).Spend(5001, 1000); !ok || lease != 2 {
		t.Fatalf("Spend from the front = lease %d, %v; want 2, true", lease, ok)
	}
	last := users[frontWays]
	states[frontWays] = c.GetOrCreate(last, 0, func() string { return last })
	inFrontN := 0
	for i, u := range users {
		ref := c.Get(u, 0)
		if ref.Found() && ref.InFront() {
			inFrontN++
		}
		if got := c.State(ref); got != nil && got != states[i] {
			t.Fatalf("Get(%s) returned another user's state", u)
		}
	}
	if inFrontN != frontWays {
		t.Fatalf("%d of %d users of one bucket in the front table, want %d", inFrontN, len(users), frontWays)
	}
	// Whoever left the front table took its lease along.
	s0.Lock()
	if s0.Lease != 1 || s0.LocalAllowed != 1 {
		t.Fatalf("after one spend: Lease %d, LocalAllowed %d; want 1, 1", s0.Lease, s0.LocalAllowed)
	}
	s0.Unlock()
	c.c.Wait()
	if _, _, lease, _, ok := c.Get(users[0], 0).Spend(5002, 1000); !ok || lease != 1 {
		t.Fatalf("second Spend = lease %d, %v; want 1, true", lease, ok)
	}
	s := states[frontWays]
	if !inFront(c, s) {
		t.Fatal("the fifth user was not promoted")
	}
	c.letGo(&ristretto.Item[*State]{Value: s})
	if !s.Orphaned() {
		t.Fatal("a state let go of is not orphaned")
	}
	if inFront(c, s) {
		t.Fatal("a state let go of is still in the front table")
	}
	if got := c.State(c.Get(last, 0)); got != nil {
		t.Fatalf("Get(%s) after letGo = %p, want nil", last, got)
	}
}

// spend is one lock-free Spend call and what it must return: ok, and when
// ok the window's counts, the lease before the spend and the time elapsed
// in the window.
type spend struct {
	ms                        int64
	ok                        bool
	prev, cur, lease, elapsed int64 // compared only when ok
}

// spender is what a sequence of spends runs on: a State, or a Cache's Ref.
type spender interface {
	Spend(ms, w int64) (prev, cur, lease, elapsed int64, ok bool)
}

// runSpends makes the spends on s in order, with windows of w ms, and
// reports every one whose result differs from its step's.
func runSpends(t *testing.T, s spender, w int64, seq []spend) {
	t.Helper()
	for i, want := range seq {
		var got spend
		got.prev, got.cur, got.lease, got.elapsed, got.ok = s.Spend(want.ms, w)
		got.ms = want.ms
		if got.ok != want.ok || want.ok && got != want {
			t.Errorf("step %d: Spend(%d, %d) = %s, want %s", i, want.ms, w, got, want)
		}
	}
}

func (s spend) String() string {
	if !s.ok {
		return "not ok"
	}
	return fmt.Sprintf("ok: prev %d, cur %d, lease %d, elapsed %d", s.prev, s.cur, s.lease, s.elapsed)
}

// TestCacheWithoutFront: a cache made by NewCacheWithoutFront finds every
// key in ristretto: Get names the state's own record, Promote leaves it
// there, a lease opened there is spent there, and a state let go of is
// found nowhere.
func TestCacheWithoutFront(t *testing.T) {
	c := newTestCache(t, 1000, false)
	users := []string{"a", "b", "c", "d", "e", "f"} // more than a bucket of the front table holds
	states := make([]*State, len(users))
	for i, u := range users {
		states[i] = c.GetOrCreate(u, 0, func() string { return u })
	}
	c.Wait() // Get looks in ristretto only
	for i, u := range users {
		c.Promote(states[i])
		c.Touch(states[i])
		ref := c.Get(u, 0)
		if !ref.Found() || ref.InFront() || c.State(ref) != states[i] || inFront(c, states[i]) {
			t.Fatalf("Get(%s) = %+v; want %p from its own record", u, ref, states[i])
		}
	}
	s0 := states[0]
	s0.Lock()
	s0.Roll(5)
	s0.Lease, s0.Last = 2, 5000
	s0.Unlock()
	ref := c.Get(users[0], 0)
	if _, _, lease, _, ok := ref.Spend(5001, 1000); !ok || lease != 2 || ref.hot != &s0.own {
		t.Fatalf("Spend = lease %d, %v, from its own record %v; want 2, true, true", lease, ok, ref.hot == &s0.own)
	}
	s0.Lock()
	if s0.Lease != 1 || s0.LocalAllowed != 1 {
		t.Fatalf("after one spend: Lease %d, LocalAllowed %d; want 1, 1", s0.Lease, s0.LocalAllowed)
	}
	s0.Unlock()
	c.letGo(&ristretto.Item[*State]{Value: s0})
	if !s0.Orphaned() {
		t.Fatal("a state let go of is not orphaned")
	}
	if ref := c.Get(users[0], 0); ref.Found() || c.State(ref) != nil {
		t.Fatalf("Get(%s) after letGo = %+v, want nothing", users[0], ref)
	}
	if _, _, _, _, ok := ref.Spend(5002, 1000); ok {
		t.Fatal("an orphan's lease was spent")
	}
}

// TestRefOfARetakenSlot: Get loads a slot's key, tag and owner one at a
// time, so a slot that changes hands between them gives a Ref that names
// the slot's new owner (TestFrontRaces's Gets hit it as one state is let
// go of and another promoted). Such a Ref is harmless: its Spend takes
// nothing, the slot's tag being another key's; and State looks the key up
// again, to find its state, or nil once the cache let go of it, never the
// slot's new owner.
func TestRefOfARetakenSlot(t *testing.T) {
	c := newTestCache(t, 1000, true)
	users := bucketUsers(c, 2)
	a := c.GetOrCreate(users[0], 0, func() string { return users[0] })
	b := c.GetOrCreate(users[1], 0, func() string { return users[1] })
	c.Wait()
	for _, s := range []*State{a, b} {
		s.Lock()
		s.Roll(1)
		s.Lease, s.Last = 100, 1000
		s.Unlock()
	}
	h := a.home.Load()
	if h == &a.own {
		t.Fatal("a was not promoted")
	}
	key, check := c.hash(users[0], 0)
	// Get has read h's key and tag, a's; then a leaves h and b takes it
	// (b leaves its own slot first, so that h is the bucket's free one).
	a.Lock()
	c.moveHome(a, &a.own)
	a.Unlock()
	b.Lock()
	c.moveHome(b, &b.own)
	b.Unlock()
	c.Promote(b)
	if b.home.Load() != h {
		t.Fatal("b did not take a's slot")
	}
	// The Ref Get returned names the slot, whose owner is now b.
	ref := Ref{hot: h, key: key, check: check}
	if !ref.Found() || !ref.InFront() {
		t.Fatal("the Ref names no front slot")
	}
	if o := c.owner(h, key); o == nil || o.Load() != b {
		t.Fatal("b does not own a's old slot")
	}
	if _, _, _, _, ok := ref.Spend(1500, 1000); ok {
		t.Fatal("a's Ref spent from b's slot")
	}
	if got := c.State(ref); got != a {
		t.Fatalf("State = %p, want a %p", got, a)
	}
	c.letGo(&ristretto.Item[*State]{Value: a})
	if got := c.State(ref); got != nil {
		t.Fatalf("State after a is let go of = %p, want nil", got)
	}
	b.Lock()
	if b.Lease != 100 || b.LocalAllowed != 0 {
		t.Fatalf("b: Lease %d, LocalAllowed %d; want 100, 0", b.Lease, b.LocalAllowed)
	}
	b.Unlock()
}

// TestSpend: Spend takes the lease opened by Unlock one token at a time,
// only for timestamps in the lease's window; Lock counts what it took as
// local admissions.
func TestSpend(t *testing.T) {
	const w = 1000
	s := NewState("k", 0)
	runSpends(t, s, w, []spend{{ms: 5500}}) // a new state has no lease
	s.Lock()
	s.Roll(5)
	s.Prev, s.Cur, s.Lease, s.Last = 40, 9, 3, 5100
	s.Unlock()
	runSpends(t, s, w, []spend{
		{ms: 4999}, // before window 5
		{ms: 5099}, // before Last
		{ms: 6000}, // window 6
		{ms: 7500}, // window 7
		{5250, true, 40, 9, 3, 250},
		{5250, true, 40, 9, 2, 250},
		{5250, true, 40, 9, 1, 250},
		{ms: 5250}, // beyond the lease
	})
	s.Lock()
	if s.Lease != 0 || s.Attempts != 3 || s.Seen != 3 || s.LocalAllowed != 3 {
		t.Fatalf("after three spends: %+v", s)
	}
	s.Lease = tokenMask + 1 // too large for the budget: every decision locks
	s.Unlock()
	runSpends(t, s, w, []spend{{ms: 5250}}) // a lease larger than the budget holds
	s.Lock()
	if s.Lease != tokenMask+1 || s.LocalAllowed != 3 {
		t.Fatalf("a closed budget changed the state: %+v", s)
	}
	s.Unlock()
}

// TestSpendRaces: goroutines spend while another rolls the state from
// window to window under the lock, opening each with a fresh lease. Every
// token Spend hands out must belong to the window of the timestamp it was
// given: the tokens the lock holder finds gone from each window's lease
// equal the spends that window's timestamps got, and no more than the
// lease.
func TestSpendRaces(t *testing.T) {
	const (
		w       = 100
		windows = 200
		lease   = 50
	)
	s := NewState("k", 0)
	var current atomic.Int64 // the window spenders aim at, sometimes behind
	var got [windows + 1]atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				idx := current.Load() - int64((i+g)%2) // half aim at the window before
				if idx < 0 {
					continue
				}
				if _, _, _, elapsed, ok := s.Spend(idx*w+int64(i%w), w); ok {
					if elapsed != int64(i%w) {
						t.Errorf("elapsed %d, want %d", elapsed, i%w)
					}
					got[idx].Add(1)
				}
			}
		}()
	}
	spent := make([]int64, windows+1)
	for idx := int64(1); idx <= windows; idx++ {
		s.Lock()
		if s.Window > 0 {
			spent[s.Window] = lease - s.Lease // opened with lease, less what is left
		}
		s.Roll(idx)
		s.Lease = lease
		current.Store(idx)
		s.Unlock()
		for range 200 { // let the spenders at it
			if s.own.budget.Load()&tokenMask == 0 {
				break
			}
			runtime.Gosched()
		}
	}
	close(stop)
	wg.Wait()
	s.Lock()
	spent[s.Window] = lease - s.Lease
	s.Unlock()
	var total int64
	for idx := 1; idx <= windows; idx++ {
		if g := got[idx].Load(); g != spent[idx] || g > lease {
			t.Fatalf("window %d: spenders got %d tokens, the lease lost %d (of %d)", idx, g, spent[idx], lease)
		}
		total += spent[idx]
	}
	s.Lock()
	defer s.Unlock()
	if s.LocalAllowed != total || s.Attempts != total {
		t.Fatalf("counted %d local admissions and %d attempts, want %d", s.LocalAllowed, s.Attempts, total)
	}
	if total == 0 {
		t.Fatal("no spend succeeded: the test proves nothing")
	}
}

// TestFrontHoldsResidentKeys: with the cache full, nearly every key has a
// slot in the front table, so that a lookup seldom falls through to
// ristretto. (At one slot per key, a 4-way table left about 20% out; the
// hashes are seeded at random, so the bound leaves a margin.) The keys
// arrive as the table grows, a sync pass (Forget) every 4096 of them; the
// states a growth found no slot for, and those created while the table was
// full, get one on their next use, which promotes them as the decision
// path does (one local decision in four of a key found in ristretto).
func TestFrontHoldsResidentKeys(t *testing.T) {
	const n = 1 << 16
	c, err := NewCache(n, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprint("u", i)
		c.GetOrCreate(users[i], 0, func() string { return users[i] })
		if i%4096 == 4095 {
			c.Forget()
		}
	}
	c.c.Wait()
	c.Forget()
	if got := len(c.table.Load().owners); got != 2*n {
		t.Fatalf("the front table has %d slots for %d resident keys, want %d", got, n, 2*n)
	}
	for _, u := range users {
		if ref := c.Get(u, 0); ref.Found() && !ref.InFront() {
			c.Promote(c.State(ref))
		}
	}
	front := 0
	for _, u := range users {
		if ref := c.Get(u, 0); ref.Found() && ref.InFront() {
			front++
		}
	}
	if out := float64(n-front) / n; out > 0.07 {
		t.Fatalf("%.1f%% of %d resident keys are not in the front table, want ≤ 7%%", 100*out, n)
	}
}

// TestFrontRaces: states move in and out of the front table (promoted over
// each other, locked and reopened, one let go of) while goroutines spend
// from wherever Get finds each key's lease. Every token handed out must
// come from its own key's lease: per key, the spends that succeeded equal
// what its Lock finds gone from its lease and counted as admitted. Without
// a front table the same holds of leases spent from the states' own
// records, opened and closed, and one let go of, as goroutines spend.
func TestFrontRaces(t *testing.T) {
	forEachFront(t, testFrontRaces)
}

func testFrontRaces(t *testing.T, front bool) {
	const (
		keys  = 2 * frontWays // twice what one bucket holds
		lease = 1 << 30
		w     = 1000
	)
	c := newTestCache(t, 1000, front)
	users := bucketUsers(c, keys)
	states := make([]*State, keys)
	for i, u := range users {
		s := c.GetOrCreate(u, 0, func() string { return u })
		s.Lock()
		s.Roll(1)
		s.Lease, s.Last = lease, w
		s.Unlock()
		states[i] = s
	}
	c.c.Wait() // so that Get finds in ristretto the keys the front table does not hold

	var got [keys]atomic.Int64
	var fromFront, fromOwn atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 3 {
		wg.Go(func() {
			for i := g; i < 2_000_000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := (i * 7) % keys
				ref := c.Get(users[k], 0)
				if !ref.Found() {
					continue
				}
				// A Ref is as of Get, which loads a slot's key, tag and
				// owner one at a time: a Get that read the slot of the
				// key let go of (states[keys-1]) just before letGo freed
				// it, and its owner after another state took it, names
				// that state. State sees the check differ, looks the key
				// up, and finds nothing: the key has no state any more
				// (TestRefOfARetakenSlot). That nil is what the API
				// promises; another key's state would be a defect.
				st := c.State(ref)
				if st == nil && states[k].Orphaned() {
					continue
				}
				if st != states[k] {
					t.Errorf("Get(%s): State = %p, want its state %p (orphaned %v)", users[k], st, states[k], states[k].Orphaned())
					return
				}
				if _, _, _, _, ok := ref.Spend(w+500, w); ok {
					got[k].Add(1)
					if ref.InFront() {
						fromFront.Add(1)
					} else {
						fromOwn.Add(1)
					}
				}
			}
		})
	}
	moves := 0
	for i := range 20_000 {
		s := states[i%keys]
		switch {
		case i == 10_000:
			c.letGo(&ristretto.Item[*State]{Value: states[keys-1]})
		case i%3 == 0:
			s.Lock() // closes and reopens the budget wherever it is
			s.Unlock()
		default:
			before := inFront(c, s)
			c.Promote(s)
			if !before && inFront(c, s) {
				moves++
			}
		}
		if i%64 == 0 {
			runtime.Gosched()
		}
	}
	close(stop)
	wg.Wait()
	for k, s := range states {
		s.Lock()
		if g := got[k].Load(); s.LocalAllowed != g || s.Lease != lease-g || s.Attempts != g {
			t.Errorf("%s: spends got %d tokens; its state counts %d admitted, %d attempts, lease %d (of %d)",
				users[k], g, s.LocalAllowed, s.Attempts, s.Lease, lease)
		}
		s.Unlock()
	}
	if front && (moves < 100 || fromFront.Load() == 0 || fromOwn.Load() == 0) {
		t.Fatalf("%d promotions, %d spends from the front, %d from own records: the test proves little",
			moves, fromFront.Load(), fromOwn.Load())
	}
	if !front && (moves != 0 || fromFront.Load() != 0 || fromOwn.Load() == 0) {
		t.Fatalf("without a front table: %d promotions, %d spends from the front, %d from own records; want 0, 0 and some",
			moves, fromFront.Load(), fromOwn.Load())
	}
	t.Logf("%d promotions, %d spends from the front, %d from own records", moves, fromFront.Load(), fromOwn.Load())
}

// TestFrontChurn: goroutines spend (lock-free and locked) and promote as
// the decision path does, two more promote at random, while the test lets
// states go and recreates them through GetOrCreate (which promotes under
// the Cache's lock). Per user, the tokens handed out must equal what that
// user's states, old and new, count as admitted. (Written by a reviewer:
// TestFrontRaces moves states from one goroutine only.) Without a front
// table the promotions do nothing, and the states churn through ristretto
// alone, a sixth as many times (each round takes longer, every Get going
// to ristretto): the front table's moves are what the full count is for.
func TestFrontChurn(t *testing.T) {
	forEachFront(t, testFrontChurn)
}

func testFrontChurn(t *testing.T, front bool) {
	const (
		keys  = 3 * frontWays
		lease = 1 << 30
		w     = 1000
	)
	rounds := 60000
	if !front {
		rounds /= 6
	}
	c := newTestCache(t, 1000, front)
	users := bucketUsers(c, keys)
	var mu sync.Mutex
	all := make([][]*State, keys)
	seen := map[*State]bool{}
	create := func(k int) *State {
		u := users[k]
		s := c.GetOrCreate(u, 0, func() string { return u })
		mu.Lock()
		defer mu.Unlock()
		if !seen[s] {
			seen[s] = true
			all[k] = append(all[k], s)
			s.Lock()
			s.Roll(1)
			s.Lease, s.Last = lease, w
			s.Unlock()
		}
		return s
	}
	for k := range keys {
		create(k)
	}
	c.c.Wait()
	var got [keys]atomic.Int64
	var locked, lockfree, wrong atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := r.IntN(keys)
				ref := c.Get(users[k], 0)
				if ref.Found() {
					if _, _, l, _, ok := ref.Spend(w+500, w); ok {
						got[k].Add(1)
						lockfree.Add(1)
						if l%4 == 0 && !ref.InFront() {
							c.Promote(c.State(ref))
						}
						continue
					}
				}
				s := c.State(ref)
				if s == nil {
					continue
				}
				if s.Key != users[k] {
					wrong.Add(1)
					continue
				}
				spendLocked(c, s, &got[k], &locked)
			}
		})
	}
	for g := range 2 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := r.IntN(keys)
				mu.Lock()
				s := all[k][len(all[k])-1]
				mu.Unlock()
				c.Promote(s)
			}
		})
	}
	for i := range rounds {
		k := i % keys
		mu.Lock()
		s := all[k][len(all[k])-1]
		mu.Unlock()
		c.letGo(&ristretto.Item[*State]{Value: s})
		if i%5 == 0 {
			c.Forget()
		}
		create(k)
	}
	close(stop)
	wg.Wait()
	gens := 0
	for k := range keys {
		var counted int64
		for _, s := range all[k] {
			gens++
			s.Lock()
			if s.LocalAllowed != s.Attempts || lease-s.Lease != s.LocalAllowed {
				t.Errorf("%s: state counts %d admitted, %d attempts, lease lost %d", users[k], s.LocalAllowed, s.Attempts, lease-s.Lease)
			}
			counted += s.LocalAllowed
			s.Unlock()
		}
		if g := got[k].Load(); g != counted {
			t.Errorf("%s: handed out %d tokens, its states counted %d", users[k], g, counted)
		}
	}
	if wrong.Load() != 0 {
		t.Errorf("State(ref) named another user's state %d times", wrong.Load())
	}
	t.Logf("%d states, %d lock-free spends, %d locked", gens, lockfree.Load(), locked.Load())
}

// newTestCache returns a Cache for maxKeys keys of one rule, with a front
// table or without (NewCacheWithoutFront), closed when the test ends.
func newTestCache(t *testing.T, maxKeys int64, front bool) *Cache {
	t.Helper()
	newCache := NewCache
	if !front {
		newCache = NewCacheWithoutFront
	}
	c, err := newCache(maxKeys, 1)
	if err != nil {
		t.Fatal(err)
	}
	if c.HasFront() != front {
		t.Fatalf("HasFront() = %v, want %v", c.HasFront(), front)
	}
	t.Cleanup(c.Close)
	return c
}

// forEachFront runs f as two subtests, front=on (a Cache from NewCache)
// and front=off (from NewCacheWithoutFront, the reference the front table
// must agree with).
func forEachFront(t *testing.T, f func(t *testing.T, front bool)) {
	t.Helper()
	for _, front := range []bool{true, false} {
		name := "front=on"
		if !front {
			name = "front=off"
		}
		t.Run(name, func(t *testing.T) { f(t, front) })
	}
}

// bucketUsers returns n users whose keys (under rule 0) share one bucket of
// c's front table; without a front table, any n users.
func bucketUsers(c *Cache, n int) []string {
	var users []string
	if !c.HasFront() {
		for i := range n {
			users = append(users, fmt.Sprint("u", i))
		}
		return users
	}
	t := c.table.Load()
	var first *frontBucket
	for i := 0; len(users) < n; i++ {
		u := fmt.Sprint("u", i)
		key, _ := c.hash(u, 0)
		_, b := t.bucket(key)
		if len(users) == 0 {
			first = b
		}
		if b == first {
			users = append(users, u)
		}
	}
	return users
}

// TestCacheServesRulesAddedLater: a cache made for one rule serves any
// index below MaxRules (rules a Reload adds), each with its own states.
func TestCacheServesRulesAddedLater(t *testing.T) {
	forEachFront(t, func(t *testing.T, front bool) {
		newCache := NewCache
		if !front {
			newCache = NewCacheWithoutFront
		}
		c, err := newCache(100, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rules := []int{0, 1, 2, 4999, MaxRules - 1}
		states := make(map[*State]int)
		for _, r := range rules {
			s := c.GetOrCreate("u", r, func() string { return "k" })
			if int(s.Rule) != r {
				t.Fatalf("state of rule %d has Rule %d", r, s.Rule)
			}
			states[s] = r
		}
		if len(states) != len(rules) {
			t.Fatalf("%d rules share %d states", len(rules), len(states))
		}
		for _, r := range rules {
			if s := c.Find("u", r); s == nil || states[s] != r {
				t.Fatalf("Find(u, %d) = %p, not the rule's state", r, s)
			}
		}
	})
}

// spendLocked spends one token of s's lease under its lock, as the locked
// decision path does, counting it in got and locked, then promotes s if it
// has no front slot, as the decision path would.
func spendLocked(c *Cache, s *State, got, locked *atomic.Int64) {
	s.Lock()
	if s.Lease > 0 {
		s.Lease--
		s.Attempts++
		s.LocalAllowed++
		got.Add(1)
		locked.Add(1)
	}
	pr := !s.InFront()
	s.Unlock()
	if pr {
		c.Promote(s)
	}
}
