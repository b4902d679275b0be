package local

import (
	"sync"
	"sync/atomic"
)

// State is one key's hybrid-mode state on this instance: what it last
// learned of the key's global counts, the lease it holds, and the demand it
// has seen. The exported fields are guarded by the State's lock (Lock and
// Unlock), which no one holds across I/O; a request for one unit spends
// from the lease without it (Spend), and the rest of the decision path
// holds it for a few arithmetic operations.
//
// Counts are the key's sliding-window counts in Redis: admissions plus every
// instance's unreturned lease, so a leased token is counted before it is
// spent.
type State struct {
	// A State is 256 bytes, four cache lines, and the allocator aligns it
	// to them. Line 1 is the state's own hot record (all that a decision
	// from the lease reads and writes), unless the state is in the Cache's
	// front table: then its record is its slot there, so that a decision
	// touches one line, the slot. Line 2 holds the counters the locked path
	// writes; lines 3 and 4 the rest.
	own hot

	// The exported fields below are guarded by the lock.
	mu       sync.Mutex
	Last     int64 // newest time (ms) judged or answered; older timestamps are judged at Last. Last ≥ the start of Window, so a lease is never spent before its window
	Lease    int64 // tokens reserved in Redis for Window, not yet spent here
	Attempts int64 // requests seen (n-weighted) since the last report to Redis
	Seen     int64 // requests seen since the last sync pass (demand, whether reported or not)
	// Local decisions not yet folded into the Limiter's totals.
	LocalAllowed, LocalDenied int64
	opened                    int64 // tokens the home's budget was opened with

	// home is where the state's lease is open to Spend: &own, or its slot
	// in the front table. It changes only under the lock.
	home      atomic.Pointer[hot]
	flags     atomic.Uint32 // inRegistry
	Rule      uint16        // index of the key's rule; read-only
	Acquiring bool          // a lease request of the decision path is under way
	// Touches is how many uses the sync pass is to report to the Cache's
	// admission policy for the key (see Cache.Touch), set as the
	// Registry's Take folds its counts.
	Touches uint8

	Window    int64  // window index of Prev, Cur and Lease
	Prev, Cur int64  // global counts of windows Window−1 and Window, as last known (lower bounds)
	Key       string // the key's base Redis key; read-only
	// Unspent lease of window ReturnWindow (< Window), owed back to Redis.
	ReturnWindow, Return int64
	Demand               int64 // requests seen over the last sync interval
	Version              int64 // the key's version in Redis as of Prev and Cur; answers with lower versions are stale
	// Reported requests per window, this instance's and all instances':
	// the ratio is this instance's share of the key's demand.
	MinePrev, MineCur int64
	AllPrev, AllCur   int64

	check uint64 // second hash of (user, rule), odd, to tell Cache collisions apart; read-only
}

// hot is what a decision from the lease touches: the budget open to Spend
// and the window and counts it was opened with, and who it belongs to. It
// is one cache line. A State has one of its own; the Cache's front table is
// made of them, and a state given a slot there keeps its lease in the slot
// (State.home) until it leaves.
//
// budget is the lease open to Spend: a generation in the top 24 bits and
// tokens in the low 40. Unlock opens it with the whole Lease and a new
// generation; Lock closes it (tokens to 0) and counts what Spend took. A
// Spend that read the tag, window and counts succeeds only if budget did
// not change meanwhile, so they are the ones it was opened with, for the
// owner the tag names: a slot changes owner only after its owner closed
// its budget, and opens only after the new owner's tag is in. (Unless 2^24
// Unlocks of the record came between a Spend's load and its swap and left
// the same tokens: then it took a token of a later window, or, in a slot
// that changed hands meanwhile, of another key, and answered from stale
// counts. A goroutine would have to stall through 16.7 million lease
// openings of one slot.)
type hot struct {
	budget    atomic.Uint64
	win       atomic.Int64  // State.Window, as of the last Unlock
	last      atomic.Int64  // State.Last, as of the last Unlock
	prev, cur atomic.Int64  // State.Prev and Cur, as of the last Unlock
	tag       atomic.Uint64 // the owner's check; 0 for a free slot, or in own once the Cache lets go of the state
	key       atomic.Uint64 // the owner's Cache key (the hash of user and rule)
	// No pointer: the front table, made of these, is then memory the
	// garbage collector never scans (nor makes resident); a slot's owner
	// is in Cache.owners.
	_ uint64 // one cache line
}

// State.flags.
const (
	inRegistry = 1 // held by a Registry
	naming     = 2 // see Naming
)

// Naming reports whether a call of this instance that gives the key's
// tokens back (a named op, see global.Op) is under way: no other may be
// named until it is answered, so that the key's ops reach Redis in the
// order of their numbers (an op that two newer ones overtook would be
// stale, and its returns stranded). Guarded by the lock, as the exported
// fields are (a bit of flags only to keep the layout).
func (s *State) Naming() bool { return s.flags.Load()&naming != 0 }

// SetNaming sets what Naming reports. It requires the lock.
func (s *State) SetNaming(on bool) {
	if on {
		s.flags.Or(naming)
	} else {
		s.flags.And(^uint32(naming))
	}
}

// The layout of State.budget.
const (
	tokenBits = 40
	tokenMask = 1<<tokenBits - 1 // also the largest lease open to Spend
)

// MaxRules bounds the rules a Cache serves: a State keeps its rule's index
// in 16 bits.
const MaxRules = 1 << 16

// Orphaned reports whether the Cache has let go of the state (evicted or
// rejected its user): its lease can serve no one and should go back.
func (s *State) Orphaned() bool { return s.own.tag.Load() == 0 }

// orphan marks the state as let go of by the Cache.
func (s *State) orphan() { s.own.tag.Store(0) }

// NewState returns the state of a key that this instance knows nothing of:
// no lease, so its first decision asks Redis. rule is below MaxRules.
func NewState(key string, rule int) *State {
	s := &State{Key: key, Rule: uint16(rule), Window: -1, check: 1}
	s.own.tag.Store(s.check)
	s.own.win.Store(-1)
	s.home.Store(&s.own)
	return s
}

// Lock locks the state and closes its budget: from here to Unlock, Lease
// and the counters are exact and Spend takes nothing.
func (s *State) Lock() {
	s.mu.Lock()
	s.close()
}

// tryLock is Lock if the lock is free; it reports whether it locked.
func (s *State) tryLock() bool {
	if !s.mu.TryLock() {
		return false
	}
	s.close()
	return true
}

// close closes the budget at the state's home and counts what Spend took.
func (s *State) close() {
	h := s.home.Load()
	left := int64(0)
	if h.budget.Load()&tokenMask != 0 { // else Spend can take nothing: only Unlock adds tokens
		left = int64(h.budget.And(^uint64(tokenMask)) & tokenMask)
	}
	// What Spend took, it took one request at a time, each admitted here.
	spent := s.opened - left
	s.opened = 0
	s.Lease -= spent
	s.Attempts += spent
	s.Seen += spent
	s.LocalAllowed += spent
}

// Unlock publishes the window and its counts to Spend, opens the budget
// with the lease (unless it is larger than the budget holds: then every
// decision locks), and unlocks the state.
func (s *State) Unlock() {
	h := s.home.Load()
	publish(&h.win, s.Window)
	publish(&h.last, s.Last)
	publish(&h.prev, s.Prev)
	publish(&h.cur, s.Cur)
	if s.Lease > 0 && s.Lease <= tokenMask {
		gen := h.budget.Load()>>tokenBits + 1
		h.budget.Store(gen<<tokenBits | uint64(s.Lease))
		s.opened = s.Lease
	}
	s.mu.Unlock()
}

// publish stores v in a unless it holds it already (a load is cheaper
// than a store).
func publish(a *atomic.Int64, v int64) {
	if a.Load() != v {
		a.Store(v)
	}
}

// Spend takes one token of the state's lease without the lock: see
// Ref.Spend.
func (s *State) Spend(ms, w int64) (prev, cur, lease, elapsed int64, ok bool) {
	return s.home.Load().spend(s.check, ms, w)
}

// spend takes one token of the budget open in h, if it is open for the
// owner whose check is given and ms falls in its window (w ms long), no
// earlier than its Last: so no token is spent before the time Redis leased
// it, and a request older than Last is judged at Last by the locked path.
// It returns the window's counts as of the last Unlock, the tokens the
// lease held before this one was taken, and the time elapsed in the
// window. When ok is false nothing was taken and the caller decides under
// the lock. A token taken is one request admitted locally: the owner's next
// Lock takes it off Lease and adds it to Attempts, Seen and LocalAllowed.
func (h *hot) spend(check uint64, ms, w int64) (prev, cur, lease, elapsed int64, ok bool) {
	for {
		b := h.budget.Load()
		// The tag after the budget: a slot's budget opens only after its
		// owner's tag is in, and closes before it goes.
		if b&tokenMask == 0 || h.tag.Load() != check {
			return 0, 0, 0, 0, false
		}
		elapsed = ms - h.win.Load()*w
		if elapsed < 0 || elapsed >= w || ms < h.last.Load() {
			return 0, 0, 0, 0, false
		}
		prev, cur = h.prev.Load(), h.cur.Load()
		if h.budget.CompareAndSwap(b, b-1) {
			return prev, cur, int64(b & tokenMask), elapsed, true
		}
		// Another Spend took a token, or Lock closed the budget: look again.
	}
}

// moveHome makes h (a free slot the state has reserved, or its own record)
// the state's home, and returns the old one. It requires the lock: Lock
// closed the old home, and Unlock opens the new one. A slot left gets tag
// 0 here, before the Cache frees it (Cache.moveHome).
func (s *State) moveHome(h *hot) (old *hot) {
	old = s.home.Load()
	if old == h {
		return old
	}
	if old != &s.own {
		old.tag.Store(0)
		old.key.Store(0)
	}
	if h != &s.own {
		h.key.Store(s.own.key.Load())
		h.tag.Store(s.check) // last: Spend and Get find the slot from here on
	}
	s.home.Store(h)
	return old
}

// InFront reports whether the state's home is a front-table slot. It
// requires the lock.
func (s *State) InFront() bool { return s.home.Load() != &s.own }

// Roll moves the state forward to window idx (> Window): the current
// counts become the previous ones (or both clear, after a gap), and an
// unspent lease becomes owed back to Redis for its window. A return owed
// for an older window is dropped: that window no longer counts. Roll
// requires the lock.
func (s *State) Roll(idx int64) {
	if idx <= s.Window {
		return
	}
	s.ReturnWindow, s.Return = s.Window, s.Lease
	s.Version = 0 // the first answer for the new window is the newest
	if idx == s.Window+1 {
		s.Prev, s.Cur = max(s.Cur-s.Lease, 0), 0 // our unspent lease is on its way back
		s.MinePrev, s.MineCur = s.MineCur, 0
		s.AllPrev, s.AllCur = s.AllCur, 0
	} else {
		s.Prev, s.Cur = 0, 0
		s.MinePrev, s.MineCur = 0, 0
		s.AllPrev, s.AllCur = 0, 0
	}
	s.Lease = 0
	s.Window = idx
}

// Registry is the set of states the sync pass must visit: those with
// requests to report or a lease to renew or return. It is safe for
// concurrent use; the zero Registry is empty and ready.
type Registry struct {
	mu     sync.Mutex
	states []*State
}

// Add puts s in the registry unless it is there already. The check is one
// atomic load, so the decision path calls it freely.
func (r *Registry) Add(s *State) {
	if s.flags.Load()&inRegistry != 0 || s.flags.Or(inRegistry)&inRegistry != 0 {
		return
	}
	r.mu.Lock()
	r.states = append(r.states, s)
	r.mu.Unlock()
}

// Take empties the registry and returns what it held, calling visit (if
// not nil) on each state after its removal. Only the swap of the list holds
// the registry's lock: visit (which may lock the state) runs outside it, so
// a decision that adds a state never waits for a pass to visit every
// active key. The states may be added again at once, by the decision path
// (during their visit too) or by the caller.
func (r *Registry) Take(visit func(*State)) []*State {
	r.mu.Lock()
	states := r.states
	r.states = nil
	r.mu.Unlock()
	for _, s := range states {
		s.flags.And(^uint32(inRegistry)) // before visit: an Add after it counts
		if visit != nil {
			visit(s)
		}
	}
	return states
}

// Len returns the number of states held.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}
