package global

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// leaseModel is a Go reference model of scripts/lease.lua, written from the
// script's header and code and sharing nothing with it. It holds as plain Go
// values what the script keeps in Redis for the keys it is given (each key's
// hash {w, c, p, t, ac, ap, v} and its op records, one field per op stream)
// and answers a call key by key, in order, as the script does:
//
//   - The call's time is its Now, or the key's newest time t if that is
//     later, and idx = floor(time / Window) its window index. The key's
//     counts are read as of idx: its window's counts and attempts when
//     w = idx; its current ones as the previous window's when w = idx-1;
//     zeros when w is older.
//   - The key records for each op stream the last two ops of it that it
//     applied (one, after the first). A named call (Op set) that is one of
//     them (a copy), or older than both (stale), changes nothing, not even
//     a TTL, and answers the key's counts as of idx, its version,
//     Restored 0 and Op 1 (a copy) or 2 (stale). A copy answers the
//     recorded op's Allowed, and its Granted if floor(Now / Window) = idx
//     (else 0); a stale call answers 0 for both.
//   - A missing key with Known.Version > 0 and Known.Window = idx or idx-1
//     was lost (Redis restarted, flushed, failed over): it starts from
//     Known, Cur and Prev when Known.Window = idx, Cur as the previous
//     window's when idx-1, attempts from zero, and the reply says Restored.
//     Known of any other window, or with version 0, is ignored: the key
//     starts from zero.
//   - Returns (N > 0) of window idx come off cur, of idx-1 off prev, never
//     below zero; returns of other windows are ignored. Attempts, and N,
//     add to the current window's.
//   - N (> 0) is admitted when prev, weighted by the part of its window
//     still inside the sliding window, (Window-elapsed)/Window exactly, plus
//     cur plus N is at most Limit; Fixed gives prev no weight. Only if
//     admitted (N = 0 always is) it grants the largest number of tokens up
//     to Want that fit under Limit the same way, at least 0.
//   - It writes the whole hash, and for a named call its stream's record:
//     the call's op, then the recorded op of the higher Seq, if any, each
//     as "Seq:x" with x = 8·Granted + 2·(idx mod 4) + Allowed for the idx
//     it applied in, joined by ':'. If the hash then has more than 12
//     fields, it drops every stream (but the call's) whose first op's
//     idx mod 4 is neither idx mod 4 nor (idx-1) mod 4. It sets the TTL to
//     2·Window ms.
//
// Versions: a call that changes a key answers the key's version plus one.
// A key that starts (a new key, or a restored one) takes T+1, where T is
// the server's clock (TIME) in µs during the call; restored, the larger of
// that and Known.Version+1. The model cannot know T: it answers the floor
// (Known.Version+1 or 0) and the test checks the version against the
// server's clock read just before and just after the call, so that a key
// that starts again answers a version newer than the clock before the call
// (and so than any version it answered while its versions stayed behind the
// clock), and not newer than the clock after it. The test then tells the
// model the version Redis chose (pin), and every later version of that key
// is exact until it starts again.
//
// TTLs run in real time and are the test's to check; the model keeps no
// clock, and the test keeps its histories far shorter than the shortest
// TTL, so that nothing expires under it.
//
// Left out: a key's error reply (a foreign value under it; see
// TestLeaseBatchIsolatesBadKey), hashes written by others (credit.lua
// writes one without v, ac and ap: the model has a key whole or not at
// all), and inputs hybrid.go never sends (negative N, Want or returns; a
// Known of a window after the call's; one key under several windows;
// Limit·Window over 2^50, where the script's floats lose integers).
type leaseModel struct {
	hashes map[string]leaseHash // the keys that exist
}

// leaseHash is a key's hash: window index, counts of that window and the
// one before, newest time, attempts of the two windows, version, and the
// op records by stream.
type leaseHash struct {
	w, c, p, t, ac, ap, v int64
	noP, noAP             bool                  // p or ap absent: admit.lua does not write a new key's zeros
	ops                   map[string][]opRecord // by stream: the latest applied first
}

// opRecord is an op of a stream that a key applied: its number, what it
// answered, and the window index it applied in.
type opRecord struct {
	seq                     uint64
	allowed, granted, index int64
}

// fields returns the hash as HGETALL answers it.
func (h leaseHash) fields() map[string]string {
	f := func(x int64) string { return strconv.FormatInt(x, 10) }
	out := map[string]string{"w": f(h.w), "c": f(h.c), "p": f(h.p), "t": f(h.t), "ac": f(h.ac), "ap": f(h.ap)}
	if h.noP {
		delete(out, "p")
	}
	if h.noAP {
		delete(out, "ap")
	}
	if h.v != 0 { // a key only admit.lua wrote has no version
		out["v"] = f(h.v)
	}
	for stream, recs := range h.ops {
		var parts []string
		for _, rec := range recs {
			parts = append(parts, fmt.Sprintf("%d:%d", rec.seq, 8*rec.granted+2*(rec.index%4)+rec.allowed))
		}
		out[stream] = strings.Join(parts, ":")
	}
	return out
}

// leaseInts is the script's reply for one key, its 10 integers in order.
type leaseInts struct {
	Allowed, Granted, Prev, Cur, PrevAttempts, CurAttempts, Now, Version, Restored, Op int64
}

func toLeaseInts(v []int64) leaseInts {
	return leaseInts{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9]}
}

// modelAnswer is what the model expects of one key's call.
type modelAnswer struct {
	reply    leaseInts
	replayed bool // a copy or a stale call: nothing changed
	pruned   int  // records dropped
	behind   bool // applied, though older than an op of its stream the key applied
	// newVersion: the key started at this call; reply.Version is not known
	// and the version must lie in [max(T0+1, floor), max(T1+1, floor)]
	// for T0 and T1 the server's clock (µs) before and after the call.
	newVersion bool
	floor      int64
}

func newLeaseModel() *leaseModel {
	return &leaseModel{hashes: make(map[string]leaseHash)}
}

// floorDiv is ⌊a/b⌋ for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// lease answers r and applies it, as the lease script would, or with admit
// the admit script (which gives a key no version of its own).
func (m *leaseModel) lease(r LeaseRequest, admit bool) modelAnswer {
	w := r.Window
	h, exists := m.hashes[r.Key]
	now := r.Now
	if exists && h.t > now {
		now = h.t
	}
	idx := floorDiv(now, w)

	var prev, cur, prevAttempts, curAttempts int64
	restored := false
	switch {
	case exists && h.w == idx:
		prev, cur, prevAttempts, curAttempts = h.p, h.c, h.ap, h.ac
	case exists && h.w == idx-1:
		prev, prevAttempts = h.c, h.ac
	case exists:
		// an older window: nothing of it counts
	case r.Known.Version > 0 && r.Known.Window == idx:
		prev, cur, restored = r.Known.Prev, r.Known.Cur, true
	case r.Known.Version > 0 && r.Known.Window == idx-1:
		prev, restored = r.Known.Cur, true
	}

	recs := h.ops[r.Op.Stream]
	if !r.Op.IsZero() {
		ro := leaseInts{Prev: prev, Cur: cur, PrevAttempts: prevAttempts, CurAttempts: curAttempts, Now: now, Version: h.v}
		for _, rec := range recs {
			if rec.seq == r.Op.Seq { // a copy
				ro.Op, ro.Allowed = 1, rec.allowed
				if floorDiv(r.Now, w) == idx {
					ro.Granted = rec.granted
				}
				return modelAnswer{replayed: true, reply: ro}
			}
		}
		if len(recs) == 2 && r.Op.Seq < recs[0].seq && r.Op.Seq < recs[1].seq { // stale
			ro.Op = 2
			return modelAnswer{replayed: true, reply: ro}
		}
	}

	for _, ret := range r.Returns {
		if ret.N <= 0 {
			continue
		}
		switch ret.Window {
		case idx:
			cur = max(cur-ret.N, 0)
		case idx - 1:
			prev = max(prev-ret.N, 0)
		}
	}
	curAttempts += r.Attempts + r.N

	// fits reports whether cur+extra stays within the limit, with prev
	// weighted by (w-elapsed)/w; both sides are multiplied by w to stay in
	// integers.
	elapsed := now - idx*w
	weighted := prev * (w - elapsed) // prev's weight, times w
	if r.Fixed {
		weighted = 0
	}
	fits := func(count int64) bool { return weighted+count*w <= r.Limit*w }
	allowed := true
	if r.N > 0 {
		allowed = fits(cur + r.N)
		if allowed {
			cur += r.N
		}
	}
	var granted int64
	if allowed && r.Want > 0 {
		room := floorDiv(r.Limit*w-weighted, w) - cur // the largest g with fits(cur+g)
		granted = min(r.Want, max(room, 0))
		cur += granted
	}

	unversioned := !exists || h.v == 0
	a := modelAnswer{newVersion: unversioned && !admit}
	version := h.v + 1 // of a versioned key; else pinned later
	if restored {
		a.floor = r.Known.Version + 1
	}
	if admit && unversioned {
		version = 0 // none, unless restored
		if restored {
			version = r.Known.Version + 1
		}
	}
	a.reply = leaseInts{
		Allowed: b2i(allowed), Granted: granted, Prev: prev, Cur: cur,
		PrevAttempts: prevAttempts, CurAttempts: curAttempts,
		Now: now, Version: version, Restored: b2i(restored),
	}
	if a.newVersion {
		a.reply.Version = 0 // not known until pinned
	}
	same := exists && h.w == idx && !restored
	var noP, noAP bool // fields p and ap absent after the write
	switch {
	case same:
		// In the key's own window the scripts write c, t, ac (v), and
		// lease.lua p if a return took from it.
		noP, noAP = h.noP && (admit || prev == h.p), h.noAP
	case admit:
		// all but the zeros of fields the key does not hold
		noP = prev == 0 && (!exists || h.noP)
		noAP = prevAttempts == 0 && (!exists || h.noAP)
	}
	ops := h.ops // a missing key has none
	if ops == nil {
		ops = make(map[string][]opRecord)
	}
	if !r.Op.IsZero() {
		next := []opRecord{{seq: r.Op.Seq, allowed: a.reply.Allowed, granted: granted, index: idx}}
		for _, rec := range recs {
			a.behind = a.behind || rec.seq > r.Op.Seq
		}
		if len(recs) > 0 {
			keep := recs[0]
			if len(recs) > 1 && recs[1].seq > keep.seq {
				keep = recs[1]
			}
			next = append(next, keep)
		}
		ops[r.Op.Stream] = next
		if 7-b2i(noP)-b2i(noAP)+int64(len(ops)) > 12 { // op_prune: more than 12 fields
			for stream, recs := range ops {
				if win := recs[0].index % 4; win != idx%4 && win != (idx-1)%4 {
					delete(ops, stream)
					a.pruned++
				}
			}
		}
	}
	m.hashes[r.Key] = leaseHash{w: idx, c: cur, p: prev, t: now, ac: curAttempts, ap: prevAttempts, v: a.reply.Version,
		ops: ops, noP: noP, noAP: noAP}
	return a
}

// pin records v as the version Redis chose for the key that started at the
// call r (an answer with newVersion).
func (m *leaseModel) pin(r LeaseRequest, v int64) {
	h := m.hashes[r.Key]
	h.v = v
	m.hashes[r.Key] = h
}

// lose forgets key, as Redis does when it loses it (an eviction, a flush, a
// restart): its op records with it.
func (m *leaseModel) lose(key string) { delete(m.hashes, key) }

// leaseOracleConfigs are the keys' settings a history draws from: windows
// of at least 30 s, so that the 2-window TTLs (real time) outlast any
// history by far, and limits from 1 to 2^30 (Limit·Window ≤ 2^50).
var leaseOracleConfigs = []struct{ w, limit int64 }{
	{30_000, 1}, {29_999, 3}, {60_000, 10}, {3_600_000, 100}, {1 << 20, 1 << 30},
}

// leaseOracleMaxRun bounds a history's real time: well under the shortest
// TTL (60 s), so that nothing expires under the model, which keeps no
// clock.
const leaseOracleMaxRun = 30 * time.Second

// TestLeaseScriptMatchesModel runs random histories of several instances
// through scripts/lease.lua on Redis and through leaseModel, and requires
// the same reply, field by field, for every key of every call, and the same
// state after every step: each key's hash (HGETALL, op records included)
// and its TTL, and no other key. The histories are valid ones, of the kind
// hybrid.go sends: instances whose clocks differ, that admit, lease, spend
// leases locally, give unspent leases back (of the current window, the
// previous one, or one that no longer counts), report attempts, pass
// windows, name their calls from a stream of ops each, have answers lost
// and send the call again (a copy), hold a call back while a newer one of
// theirs overtakes it (stale when it lands), see old named calls arrive
// again (copies or stale), restart with a new stream (so that records
// pile up and are dropped), and send what they last learned of a key
// (Known) while Redis loses keys. Some steps send several keys (the same
// one twice, even) in one script call, as a sync pass does.
//
// The seed is logged; LEASE_ORACLE_SEED=<seed> repeats a run.
func TestLeaseScriptMatchesModel(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	for _, sc := range []*redis.Script{leaseScript, admitScript} {
		if err := sc.Load(ctx, c).Err(); err != nil {
			t.Fatal(err)
		}
	}
	seed := rand.Uint64()
	if s := os.Getenv("LEASE_ORACLE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("LEASE_ORACLE_SEED: %v", err)
		}
	}
	t.Logf("seed %d (LEASE_ORACLE_SEED=%d repeats this run)", seed, seed)
	const histories, steps = 20, 200
	start := time.Now()
	// The histories share nothing but the client: they run at once, each
	// on its own goroutine, its own keys and its own random source.
	hs := make([]*leaseHistory, histories)
	var wg sync.WaitGroup
	for i := range hs {
		hs[i] = newLeaseHistory(c, fmt.Sprintf("%s:h%d", p, i), rand.New(rand.NewPCG(seed, uint64(i))))
		hs[i].tag = fmt.Sprintf("seed %d, history %d", seed, i)
		wg.Go(hs[i].run(steps))
	}
	wg.Wait()
	var totals leaseOracleCounts
	for _, h := range hs {
		if h.err != nil {
			t.Error(h.err)
		}
		totals.add(h.counts)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d histories × %d steps in %v: %+v", histories, steps, time.Since(start).Round(time.Millisecond), totals)
	// The histories must reach every path of the script.
	for name, n := range map[string]int{
		"denials": totals.denied, "grants cut by the limit": totals.cut, "restores": totals.restored,
		"restores from the previous window": totals.restoredPrev, "restores ahead of the clock": totals.ahead,
		"replays": totals.replayed, "replays with their grant": totals.replayedGrant,
		"replays without their grant": totals.replayedNoGrant, "stale calls": totals.stale,
		"overtaken calls": totals.overtaken, "calls applied behind a newer one": totals.behind, "dropped records": totals.pruned, "restarts": totals.restarts,
		"rolls": totals.rolled, "old timestamps": totals.clamped,
		"batches": totals.batches, "lost keys": totals.lost,
		"admit-script calls": totals.admits, "admit-script restores": totals.admitRestores,
	} {
		if n == 0 {
			t.Errorf("seed %d: the histories had no %s", seed, name)
		}
	}
}

// leaseOracleCounts counts what the histories exercised.
type leaseOracleCounts struct {
	calls, batches, denied, cut, restored, restoredPrev, ahead, rolled, clamped, lost    int
	replayed, replayedGrant, replayedNoGrant, stale, overtaken, behind, pruned, restarts int
	admits, admitRestores                                                                int // calls of the admit script
}

func (c *leaseOracleCounts) add(o leaseOracleCounts) {
	c.calls += o.calls
	c.batches += o.batches
	c.denied += o.denied
	c.cut += o.cut
	c.restored += o.restored
	c.restoredPrev += o.restoredPrev
	c.ahead += o.ahead
	c.replayed += o.replayed
	c.replayedGrant += o.replayedGrant
	c.replayedNoGrant += o.replayedNoGrant
	c.stale += o.stale
	c.overtaken += o.overtaken
	c.behind += o.behind
	c.pruned += o.pruned
	c.restarts += o.restarts
	c.rolled += o.rolled
	c.clamped += o.clamped
	c.lost += o.lost
	c.admits += o.admits
	c.admitRestores += o.admitRestores
}

// oracleKey is one key of a history, with its rule's settings.
type oracleKey struct {
	key      string
	w, limit int64
	fixed    bool
}

// instView is what one instance knows of one key, as hybrid.go keeps it.
type instView struct {
	last    int64           // newest time the instance has stamped or seen
	leases  map[int64]int64 // window index → tokens leased, not spent nor given back
	known   Known           // from the newest answer it applied
	pending *LeaseRequest   // a named call whose answer was lost: sent again next
}

// oracleInstance is one instance of a history: its clock's skew, its
// stream of ops (a new one when it restarts), and its views of the keys.
type oracleInstance struct {
	skew   int64 // ms the instance's clock is off the history's
	stream string
	seq    uint64
	views  []*instView // by key
}

// next returns the instance's next op.
func (in *oracleInstance) next() Op {
	in.seq++
	return Op{Stream: in.stream, Seq: in.seq}
}

// ttlMark is when a TTL of ttl ms was set: between lo and hi.
type ttlMark struct {
	lo, hi time.Time
	ttl    int64
}

// leaseHistory is one random history: instances, keys, the model, and
// what the test needs to check Redis's state.
type leaseHistory struct {
	c      *redis.Client
	rng    *rand.Rand
	tag    string // seed and history, for messages
	prefix string // of the history's keys
	model  *leaseModel
	keys   []oracleKey
	insts  []*oracleInstance
	clock  int64 // the history's time, ms
	sent   []LeaseRequest
	late   []oracleCall       // overtaken calls, still to land
	ttls   map[string]ttlMark // key → its TTL's last setting
	n      int                // steps done
	start  time.Time
	counts leaseOracleCounts
	err    error // the first difference found; the history stops there
}

func newLeaseHistory(c *redis.Client, prefix string, rng *rand.Rand) *leaseHistory {
	h := &leaseHistory{
		c: c, rng: rng, model: newLeaseModel(), ttls: make(map[string]ttlMark),
		clock: 1_700_000_000_000 + rng.Int64N(1<<30), start: time.Now(), prefix: prefix,
	}
	for k := range 2 {
		cfg := leaseOracleConfigs[rng.IntN(len(leaseOracleConfigs))]
		h.keys = append(h.keys, oracleKey{
			key: Key(prefix, "r", fmt.Sprint("u", k)), w: cfg.w, limit: cfg.limit, fixed: rng.IntN(3) == 0,
		})
	}
	for range 3 {
		in := &oracleInstance{skew: rng.Int64N(1000) - 500, stream: h.newStream()}
		for range h.keys {
			in.views = append(in.views, &instView{leases: make(map[int64]int64)})
		}
		h.insts = append(h.insts, in)
	}
	return h
}

// newStream returns a stream's name as NewOps draws one, from the
// history's random source.
func (h *leaseHistory) newStream() string {
	b := []byte{'~'}
	for range 8 {
		b = append(b, opAlphabet[h.rng.IntN(64)])
	}
	return string(b)
}

// restart gives an instance a new stream, as a restarted process has;
// its views start over, its calls in flight still land.
func (h *leaseHistory) restart() {
	in := h.insts[h.rng.IntN(len(h.insts))]
	in.stream, in.seq = h.newStream(), 0
	for i := range in.views {
		in.views[i] = &instView{leases: make(map[int64]int64)}
	}
	h.counts.restarts++
}

// run returns a function that runs steps steps of the history and checks
// its keyspace, or stops at the first difference.
func (h *leaseHistory) run(steps int) func() {
	return func() {
		h.start = time.Now()
		for range steps {
			h.step()
		}
		h.checkKeyspace()
	}
}

// fatalf records the history's failure and ends its goroutine.
func (h *leaseHistory) fatalf(format string, args ...any) {
	h.err = fmt.Errorf("%s, step %d: %s", h.tag, h.n, fmt.Sprintf(format, args...))
	runtime.Goexit()
}

// oracleCall is one key's call in a step: the request, and the view its
// answer goes to (nil: nobody takes it, as for a late duplicate).
type oracleCall struct {
	r     LeaseRequest
	view  *instView
	key   oracleKey
	admit bool // sent to the admit script
}

// step moves the clock and then loses a key or sends a script call.
func (h *leaseHistory) step() {
	h.n++
	if time.Since(h.start) > leaseOracleMaxRun {
		h.fatalf("the history is too slow (%v) to keep TTLs out of play", time.Since(h.start))
	}
	w := h.keys[h.rng.IntN(len(h.keys))].w
	switch x := h.rng.IntN(40); {
	case x == 0: // two windows or more
		h.clock += 2*w + h.rng.Int64N(w)
	case x < 4: // about a window
		h.clock += w/2 + h.rng.Int64N(w)
	default: // a moment, by the shortest window
		h.clock += h.rng.Int64N(min(h.keys[0].w, h.keys[1].w)/20 + 1)
	}
	if h.rng.IntN(25) == 0 {
		h.loseKey()
		return
	}
	if h.rng.IntN(12) == 0 {
		h.restart()
	}
	var calls []oracleCall
	size := 1
	if h.rng.IntN(5) == 0 {
		size = 2 + h.rng.IntN(3)
		h.counts.batches++
	}
	for range size {
		calls = append(calls, h.nextCall())
	}
	if len(h.late) > 0 && h.rng.IntN(3) == 0 {
		i := h.rng.IntN(len(h.late))
		calls = append(calls, h.late[i])
		h.late = slices.Delete(h.late, i, i+1)
	}
	h.send(calls)
}

// loseKey deletes a key as Redis loses it (an eviction, a flush, a
// restart), sometimes as the key's window ends (a restart takes a while).
func (h *leaseHistory) loseKey() {
	lost := h.keys[h.rng.IntN(len(h.keys))]
	if h.rng.IntN(3) == 0 {
		h.clock += lost.w/2 + h.rng.Int64N(lost.w)
	}
	k := lost.key
	if err := h.c.Del(context.Background(), k).Err(); err != nil {
		h.fatalf("DEL: %v", err)
	}
	h.model.lose(k)
	delete(h.ttls, k)
	h.counts.lost++
	h.checkState()
}

// nextCall picks the next key call: a late duplicate of an old named call,
// a call sent again after its answer was lost, a call held back that a
// newer one overtook, or a new one (held back, sometimes, if named).
func (h *leaseHistory) nextCall() oracleCall {
	if len(h.sent) > 0 && h.rng.IntN(12) == 0 {
		r := h.sent[h.rng.IntN(len(h.sent))]
		return oracleCall{r: r, key: h.keyOf(r.Key)}
	}
	inst, k := h.rng.IntN(len(h.insts)), h.rng.IntN(len(h.keys))
	v := h.insts[inst].views[k]
	if v.pending != nil {
		r := *v.pending
		v.pending = nil
		return oracleCall{r: r, view: v, key: h.keys[k]}
	}
	r := h.newRequest(inst, k)
	if !r.Op.IsZero() && h.rng.IntN(8) == 0 {
		// r is slow (a sync pass's call, say): the instance's next call
		// for the key overtakes it, and r lands later in this step or in
		// a later one.
		h.late = append(h.late, oracleCall{r: r, view: v, key: h.keys[k]})
		h.counts.overtaken++
		r = h.newRequest(inst, k)
	}
	return oracleCall{r: r, view: v, key: h.keys[k]}
}

func (h *leaseHistory) keyOf(key string) oracleKey {
	for _, k := range h.keys {
		if k.key == key {
			return k
		}
	}
	h.fatalf("no key %q", key)
	return oracleKey{}
}

// newRequest returns instance inst's next call for key k, as hybrid.go
// would make it: stamped no earlier than what the instance has seen, after
// spending some of its lease, giving some back, with its knowledge.
func (h *leaseHistory) newRequest(inst, k int) LeaseRequest {
	in := h.insts[inst]
	key, v, rng := h.keys[k], in.views[k], h.rng
	w := key.w
	now := max(h.clock+in.skew, v.last)
	v.last = now
	idx := floorDiv(now, w)
	r := LeaseRequest{Key: key.key, Now: now, Window: w, Limit: key.limit, Fixed: key.fixed}

	if n := v.leases[idx]; n > 0 {
		v.leases[idx] -= rng.Int64N(n + 1) // spent locally: still counted
	}
	for i, win := range []int64{idx - 1, idx} {
		if n := v.leases[win]; n > 0 && rng.IntN(2) == 0 {
			back := 1 + rng.Int64N(n)
			v.leases[win] -= back
			r.Returns[i] = Return{Window: win, N: back}
		}
	}
	if rng.IntN(15) == 0 {
		// Tokens of a window that no longer counts: ignored.
		r.Returns[rng.IntN(2)] = Return{Window: idx - 2 - rng.Int64N(3), N: 1 + rng.Int64N(5)}
	}
	if rng.IntN(4) == 0 {
		r.Returns[0], r.Returns[1] = r.Returns[1], r.Returns[0]
	}
	for win := range v.leases {
		if win < idx-1 {
			delete(v.leases, win)
		}
	}

	switch rng.IntN(3) {
	case 0:
		r.N = 0 // a sync pass
	default:
		r.N = 1 + rng.Int64N(min(key.limit, 3))
	}
	switch rng.IntN(4) {
	case 0:
	case 1:
		r.Want = rng.Int64N(key.limit + 1)
	default:
		r.Want = rng.Int64N(min(key.limit, 20) + 1)
	}
	if rng.IntN(5) != 0 {
		r.Attempts = rng.Int64N(6)
	}
	if r.Returns[0].N > 0 || r.Returns[1].N > 0 || rng.IntN(4) == 0 {
		r.Op = in.next()
	}
	r.Known = h.known(v, idx)
	return r
}

// known returns what an instance tells of a key in a call of window idx:
// nothing, what it last learned as it is, or that rolled to idx (as
// hybrid.go's know); rarely with a version ahead of the server's clock, as
// a key that ran more than one call per µs would have.
func (h *leaseHistory) known(v *instView, idx int64) Known {
	k := v.known
	if k.Version == 0 || k.Window > idx { // hybrid.go never knows a later window than its Now's
		return Known{}
	}
	switch h.rng.IntN(5) {
	case 0:
		return Known{}
	case 1, 2: // stale: as last learned, of whatever window
	default:
		switch {
		case k.Window == idx-1:
			k = Known{Window: idx, Prev: k.Cur, Version: 1} // a roll resets the version
		case k.Window < idx-1:
			return Known{} // nothing left to know
		}
	}
	if k.Prev == 0 && k.Cur == 0 && h.rng.IntN(2) == 0 {
		return Known{} // hybrid.go sends counts only
	}
	if h.rng.IntN(5) == 0 {
		k.Version += 1 << 40 // about 13 days of µs ahead of the clock
	}
	return k
}

// send runs calls as one script call, with the server's clock read just
// before and just after it and the keys' state just after, in one
// pipeline; then it checks every answer and the state against the model.
func (h *leaseHistory) send(calls []oracleCall) {
	ctx := context.Background()
	batch := make(leaseBatch, len(calls))
	for i, c := range calls {
		batch[i] = c.r
	}
	keys, args := batch.keysArgs()
	script := leaseScript
	if len(batch) == 1 { // a call of one key may go to the admit script
		keys, args = batch[0].keysArgs()
		script = batch[0].script()
		calls[0].admit = script == admitScript
	}
	var (
		before, after time.Time
		t0, t1        *redis.TimeCmd
		cmd           *redis.Cmd
		reads         stateReads
		err           error
	)
	for try := 0; ; try++ {
		before = time.Now()
		pipe := h.c.Pipeline()
		t0 = pipe.Time(ctx)
		cmd = pipe.EvalSha(ctx, script.Hash(), keys, args...)
		t1 = pipe.Time(ctx)
		reads = h.readState(pipe)
		_, err = pipe.Exec(ctx)
		after = time.Now()
		// Another package's test may flush the scripts of a shared Redis:
		// Redis refuses EVALSHA then, before running anything.
		if err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") || try == 3 {
			break
		}
		if err := script.Load(ctx, h.c).Err(); err != nil {
			h.fatalf("SCRIPT LOAD: %v", err)
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		h.fatalf("pipeline: %v", err)
	}
	var replies []leaseReply
	if calls[0].admit {
		v, err := batch[0].ints(cmd)
		replies = []leaseReply{{v: v, err: err}}
	} else if replies, err = leaseReplies(cmd, len(calls)); err != nil {
		h.fatalf("%v", err)
	}
	lo, hi := micros(t0.Val()), micros(t1.Val())
	h.counts.calls++

	for i, c := range calls {
		if replies[i].err != nil {
			h.fatalf("lease(%+v): %v", c.r, replies[i].err)
		}
		if len(replies[i].v) != 10 {
			h.fatalf("lease(%+v) answered %d integers, want 10", c.r, len(replies[i].v))
		}
		got := toLeaseInts(replies[i].v)
		want := h.model.lease(c.r, c.admit)
		if want.newVersion {
			vlo, vhi := max(lo+1, want.floor), max(hi+1, want.floor)
			if got.Version < vlo || got.Version > vhi {
				h.fatalf("lease(%+v) = %+v: version %d, want in [%d, %d] (a key that starts takes the server's clock %d..%d µs, plus 1, or Known.Version+1 if larger)",
					c.r, got, got.Version, vlo, vhi, lo, hi)
			}
			h.model.pin(c.r, got.Version)
			want.reply.Version = got.Version
		}
		if got != want.reply {
			h.fatalf("lease(%+v) = %+v, want %+v", c.r, got, want.reply)
		}
		h.count(c, want)
		if !want.replayed {
			h.ttls[c.r.Key] = ttlMark{lo: before, hi: after, ttl: 2 * c.r.Window}
			if !c.r.Op.IsZero() {
				h.sent = append(h.sent, c.r)
			}
		}
		if c.view == nil || got.Op == 2 {
			continue // a late duplicate, that nobody waits for; or a stale answer, that hybrid.go drops
		}
		if !c.r.Op.IsZero() && h.rng.IntN(8) == 0 {
			c.view.pending = &c.r // the answer is lost: go-redis sends the call again
			continue
		}
		c.view.apply(c.key, got)
	}
	h.checkReads(reads, before, after)
}

// count notes the paths a call took.
func (h *leaseHistory) count(c oracleCall, a modelAnswer) {
	r, rep := c.r, a.reply
	h.counts.pruned += a.pruned
	if a.behind {
		h.counts.behind++
	}
	switch {
	case a.replayed && rep.Op == 2:
		h.counts.stale++
		return
	case a.replayed:
		h.counts.replayed++
		if rep.Granted > 0 {
			h.counts.replayedGrant++
		} else if rep.Now/r.Window != r.Now/r.Window {
			h.counts.replayedNoGrant++
		}
		return
	case rep.Allowed == 0:
		h.counts.denied++
	case rep.Granted < r.Want:
		h.counts.cut++
	}
	if c.admit {
		h.counts.admits++
		h.counts.admitRestores += int(rep.Restored)
	}
	if rep.Restored == 1 {
		h.counts.restored++
		if r.Known.Window < floorDiv(rep.Now, r.Window) {
			h.counts.restoredPrev++
		}
		if rep.Version == a.floor { // Known.Version+1 beat the clock
			h.counts.ahead++
		}
	}
	if rep.Now > r.Now {
		h.counts.clamped++
	}
	if rep.PrevAttempts > 0 || rep.Prev > 0 {
		h.counts.rolled++
	}
}

// apply folds an answer into what the instance knows, as hybrid.go does:
// its grant is its lease of the answer's window, its counts its knowledge.
func (v *instView) apply(k oracleKey, res leaseInts) {
	idx := floorDiv(res.Now, k.w)
	v.leases[idx] += res.Granted
	v.last = max(v.last, res.Now)
	v.known = Known{Window: idx, Prev: res.Prev, Cur: res.Cur, Version: max(res.Version, 1)} // as hybrid.go's know
}

func micros(t time.Time) int64 { return t.Unix()*1_000_000 + int64(t.Nanosecond()/1000) }

// stateReads are the reads of a step's state, queued on a pipeline.
type stateReads struct {
	hashes map[string]*redis.MapStringStringCmd
	ttls   map[string]*redis.DurationCmd
}

// readState queues HGETALL and PTTL of every key of the history.
func (h *leaseHistory) readState(pipe redis.Pipeliner) stateReads {
	ctx := context.Background()
	s := stateReads{hashes: map[string]*redis.MapStringStringCmd{}, ttls: map[string]*redis.DurationCmd{}}
	for _, k := range h.keys {
		s.hashes[k.key] = pipe.HGetAll(ctx, k.key)
		s.ttls[k.key] = pipe.PTTL(ctx, k.key)
	}
	return s
}

// checkState reads and checks the state of every key of the history.
func (h *leaseHistory) checkState() {
	before := time.Now()
	pipe := h.c.Pipeline()
	reads := h.readState(pipe)
	if _, err := pipe.Exec(context.Background()); err != nil && !errors.Is(err, redis.Nil) {
		h.fatalf("pipeline: %v", err)
	}
	h.checkReads(reads, before, time.Now())
}

// checkReads compares state read between before and after with the
// model's: the hashes field by field (op records included), and every TTL
// against when it was set.
func (h *leaseHistory) checkReads(s stateReads, before, after time.Time) {
	for key, cmd := range s.hashes {
		want := map[string]string{}
		if hash, ok := h.model.hashes[key]; ok {
			want = hash.fields()
		}
		if got := cmd.Val(); !maps.Equal(got, want) {
			h.fatalf("HGETALL %s = %v, want %v", key, got, want)
		}
	}
	for key, cmd := range s.ttls {
		got := cmd.Val()
		mark, ok := h.ttls[key]
		if !ok {
			if got != -2 {
				h.fatalf("PTTL %s = %v, want none (-2)", key, got)
			}
			continue
		}
		// Set at some instant in [mark.lo, mark.hi], read in [before,
		// after]; 3 ms for rounding to ms and the two clocks.
		const tol = 3
		ms := got.Milliseconds()
		lo := mark.ttl - after.Sub(mark.lo).Milliseconds() - tol
		hi := min(mark.ttl-before.Sub(mark.hi).Milliseconds()+tol, mark.ttl)
		if got < 0 || ms < lo || ms > hi {
			h.fatalf("PTTL %s = %d ms, want in [%d, %d] (a TTL of %d ms, set at most %v before the read)",
				key, ms, lo, hi, mark.ttl, after.Sub(mark.lo).Round(time.Millisecond))
		}
	}
}

// checkKeyspace checks that the history's keys in Redis are exactly the
// model's hashes: no key of an op, nor anything else.
func (h *leaseHistory) checkKeyspace() {
	ctx := context.Background()
	prefix := h.prefix
	got := map[string]bool{}
	iter := h.c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for i := 0; iter.Next(ctx); i++ {
		if i > 100_000 {
			h.fatalf("SCAN %s:* does not end", prefix)
		}
		got[iter.Val()] = true
	}
	if err := iter.Err(); err != nil {
		h.fatalf("SCAN: %v", err)
	}
	want := map[string]bool{}
	for k := range h.model.hashes {
		want[k] = true
	}
	if !maps.Equal(got, want) {
		h.fatalf("keys under %s: %d in Redis, %d in the model", prefix, len(got), len(want))
	}
}
