package ratelimit

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
)

// Tests of the pending admissions alone: no Redis, no Limiter.

// pendRule returns a rule as New builds it, of window w.
func pendRule(name string, w time.Duration) *rule {
	return testRule(Rule{Name: name, Limit: 100, Window: w}, w.Milliseconds())
}

// pendGet returns the delta of (r, user) in p's map, or nil.
func pendGet(p *pending, r *rule, user string) *pendingDelta {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[pendingKey{r.ruleCore, user}]
}

func wantDelta(t *testing.T, what string, got *pendingDelta, want pendingDelta) {
	t.Helper()
	if got == nil {
		t.Fatalf("%s: no delta, want %+v", what, want)
	}
	g := *got
	g.by = nil // the rule that added, not part of the delta's counts
	if g != want {
		t.Fatalf("%s: delta = %+v, want %+v", what, g, want)
	}
}

func wantCounts(t *testing.T, p *pending, size, dropped, expired int64) {
	t.Helper()
	if got := p.len(); got != size {
		t.Errorf("len = %d, want %d", got, size)
	}
	if got := p.dropped.Load(); got != dropped {
		t.Errorf("dropped = %d, want %d", got, dropped)
	}
	if got := p.expired.Load(); got != expired {
		t.Errorf("expired = %d, want %d", got, expired)
	}
}

func TestAddAt(t *testing.T) {
	start := pendingDelta{idx: 10, cur: 3, prev: 2, last: 10_500}
	for _, tc := range []struct {
		name        string
		idx, n, at  int64
		want        pendingDelta
		wantLost    int64
		description string
	}{
		{"same window", 10, 4, 10_900, pendingDelta{idx: 10, cur: 7, prev: 2, last: 10_900}, 0, "adds to cur"},
		{"same window, earlier time", 10, 4, 10_100, pendingDelta{idx: 10, cur: 7, prev: 2, last: 10_500}, 0, "last stays the newest"},
		{"next window", 11, 5, 11_000, pendingDelta{idx: 11, cur: 5, prev: 3, last: 11_000}, 2, "cur becomes prev, prev is lost"},
		{"two windows on", 12, 5, 12_000, pendingDelta{idx: 12, cur: 5, prev: 0, last: 12_000}, 5, "cur and prev are lost"},
		{"many windows on", 50, 1, 50_999, pendingDelta{idx: 50, cur: 1, prev: 0, last: 50_999}, 5, "cur and prev are lost"},
		{"one window back", 9, 4, 9_999, pendingDelta{idx: 10, cur: 3, prev: 6, last: 10_500}, 0, "adds to prev"},
		{"two windows back", 8, 4, 8_000, start, 4, "the admissions themselves are lost"},
		{"far back", 0, 7, 1, start, 7, "the admissions themselves are lost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := start
			lost := d.addAt(tc.idx, tc.n, tc.at)
			if lost != tc.wantLost {
				t.Errorf("lost = %d, want %d (%s)", lost, tc.wantLost, tc.description)
			}
			wantDelta(t, tc.description, &d, tc.want)
			// Nothing is created or lost but what lost says.
			if in, out := start.cur+start.prev+tc.n, d.cur+d.prev+lost; in != out {
				t.Errorf("admissions in %d, kept + lost %d", in, out)
			}
		})
	}
}

func TestPendingAdd(t *testing.T) {
	const w = time.Second
	type add struct{ ms, n int64 }
	for _, tc := range []struct {
		name        string
		adds        []add
		want        pendingDelta
		wantExpired int64
	}{
		{"same window adds up", []add{{5_000, 1}, {5_300, 2}, {5_999, 3}},
			pendingDelta{idx: 5, cur: 6, last: 5_999}, 0},
		{"next window shifts cur into prev", []add{{5_100, 2}, {5_900, 1}, {6_000, 4}},
			pendingDelta{idx: 6, cur: 4, prev: 3, last: 6_000}, 0},
		{"next window twice loses prev", []add{{5_100, 2}, {6_100, 3}, {7_100, 4}},
			pendingDelta{idx: 7, cur: 4, prev: 3, last: 7_100}, 2},
		{"two windows on: old ones expire", []add{{5_100, 2}, {5_200, 1}, {7_000, 4}},
			pendingDelta{idx: 7, cur: 4, last: 7_000}, 3},
		{"jump over prev and cur", []add{{5_100, 2}, {6_100, 1}, {9_500, 4}},
			pendingDelta{idx: 9, cur: 4, last: 9_500}, 3},
		{"older, one window back, adds to prev", []add{{5_100, 2}, {4_800, 3}},
			pendingDelta{idx: 5, cur: 2, prev: 3, last: 5_100}, 0},
		{"older, two windows back, is lost", []add{{5_100, 2}, {3_999, 3}},
			pendingDelta{idx: 5, cur: 2, last: 5_100}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := pendRule("r", w)
			p := newPending(10)
			for _, a := range tc.adds {
				p.add(r, "u", a.ms, a.n)
			}
			wantDelta(t, "after the adds", pendGet(p, r, "u"), tc.want)
			wantCounts(t, p, 1, 0, tc.wantExpired)
		})
	}
}

func TestPendingKeysAreRuleAndUser(t *testing.T) {
	r1, r2 := pendRule("a", time.Second), pendRule("b", 10*time.Second)
	p := newPending(10)
	p.add(r1, "u", 1_000, 1)
	p.add(r1, "v", 1_000, 2)
	p.add(r2, "u", 1_000, 3)
	wantCounts(t, p, 3, 0, 0)
	wantDelta(t, "a/u", pendGet(p, r1, "u"), pendingDelta{idx: 1, cur: 1, last: 1_000})
	wantDelta(t, "a/v", pendGet(p, r1, "v"), pendingDelta{idx: 1, cur: 2, last: 1_000})
	wantDelta(t, "b/u", pendGet(p, r2, "u"), pendingDelta{idx: 0, cur: 3, last: 1_000}) // window 10 s
}

func TestPendingMaxKeys(t *testing.T) {
	for _, max := range []int{1, 2, 5} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			r := pendRule("r", time.Second)
			p := newPending(max)
			for i := range max {
				p.add(r, fmt.Sprint("in", i), 1_000, 1)
			}
			wantCounts(t, p, int64(max), 0, 0)
			// Keys beyond max are dropped, counted by admission.
			p.add(r, "out1", 1_000, 4)
			p.add(r, "out2", 1_500, 3)
			p.add(r, "out1", 2_000, 2)
			wantCounts(t, p, int64(max), 4+3+2, 0)
			if p.has(r, "out1") || p.has(r, "out2") {
				t.Fatal("a dropped key is pending")
			}
			// The keys already held keep working, windows and all.
			for i := range max {
				p.add(r, fmt.Sprint("in", i), 1_200, 2)
				p.add(r, fmt.Sprint("in", i), 2_100, 5)
				wantDelta(t, fmt.Sprint("in", i), pendGet(p, r, fmt.Sprint("in", i)), pendingDelta{idx: 2, cur: 5, prev: 3, last: 2_100})
			}
			wantCounts(t, p, int64(max), 9, 0)
			// Once taken and settled, there is room again; taken but
			// unsettled (in flight), the keys still count.
			taken := p.take()
			if got := len(taken); got != max {
				t.Fatalf("take returned %d, want %d", got, max)
			}
			p.add(r, "out1", 2_900, 1)
			if p.has(r, "out1") {
				t.Fatal("no room while the taken keys are in flight, yet the key is pending")
			}
			for _, e := range taken {
				p.done(e.k)
			}
			p.add(r, "out1", 3_000, 1)
			if !p.has(r, "out1") {
				t.Fatal("room after take, yet the key is not pending")
			}
			wantCounts(t, p, 1, 10, 0)
		})
	}
}

func TestPendingTake(t *testing.T) {
	r := pendRule("r", time.Second)
	p := newPending(10)
	if got := p.take(); len(got) != 0 {
		t.Fatalf("take of nothing = %+v", got)
	}
	for _, u := range []string{"a", "b", "c"} {
		p.add(r, u, 1_000, 1)
	}
	first := p.take()
	if len(first) != 3 {
		t.Fatalf("take returned %d, want 3", len(first))
	}
	wantCounts(t, p, 3, 0, 0) // in flight: still pending
	if !p.has(r, "a") {
		t.Fatal("a key in flight is not pending")
	}
	for _, e := range first {
		if e.k.user == "c" {
			p.done(e.k) // c's credit was applied
		}
	}
	// Two fail and come back as retries; b gets new admissions meanwhile,
	// before its restore, and d is new.
	var retries []pendingRetry
	for _, e := range first {
		switch e.k.user {
		case "a", "b":
			e.d.op = testOp(e.k.user)
			retries = append(retries, e)
		}
	}
	p.add(r, "b", 1_500, 7)
	p.add(r, "d", 1_500, 1)
	for _, e := range retries {
		p.restore(e.k, e.d)
	}
	// a went back into the map (nothing new for it), b into the retry list.
	wantCounts(t, p, 3, 0, 0) // a, b, d (c settled)
	got := p.take()
	if len(got) != 4 {
		t.Fatalf("take returned %d entries, want 4: %+v", len(got), got)
	}
	if got[0].k.user != "b" || got[0].d.op != testOp("b") || got[0].d.cur != 1 {
		t.Fatalf("take's first entry = %+v %+v, want b's retry", got[0].k, *got[0].d)
	}
	seen := map[string]int64{}
	for _, e := range got[1:] {
		seen[e.k.user] += e.d.cur
	}
	if want := map[string]int64{"a": 1, "b": 7, "d": 1}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("the other entries = %v, want %v", seen, want)
	}
	for _, e := range got {
		p.done(e.k)
	}
	wantCounts(t, p, 0, 0, 0)
	if got := p.take(); len(got) != 0 {
		t.Fatalf("second take = %+v", got)
	}
}

func TestPendingRestore(t *testing.T) {
	r := pendRule("r", time.Second)
	for _, tc := range []struct {
		name      string
		readd     bool // new admissions of the key between take and restore
		wantSize  int64
		wantTaken int
	}{
		{"key gone", false, 1, 1},
		{"key re-added", true, 1, 2}, // one key, two credits
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPending(10)
			p.add(r, "u", 1_000, 3)
			e := p.take()[0]
			e.d.op = testOp("1") // as flush names it
			if tc.readd {
				p.add(r, "u", 1_200, 2)
			}
			p.restore(e.k, e.d)
			wantCounts(t, p, tc.wantSize, 0, 0)
			if !p.has(r, "u") {
				t.Fatal("restored key not pending")
			}
			got := p.take()
			if len(got) != tc.wantTaken {
				t.Fatalf("take returned %d, want %d", len(got), tc.wantTaken)
			}
			if got[0].d != e.d {
				t.Fatalf("take's first entry %+v is not the restored delta", *got[0].d)
			}
			wantDelta(t, "restored", got[0].d, pendingDelta{idx: 1, cur: 3, last: 1_000, op: testOp("1")})
			if tc.readd {
				wantDelta(t, "re-added", got[1].d, pendingDelta{idx: 1, cur: 2, last: 1_200})
			}
		})
	}
}

// TestPendingAddAfterRestoreKeepsCreditsApart: a restored delta is a credit
// already sent under its op, perhaps applied (its answer was lost), to be
// sent again as it was; Redis ignores a re-sent op. Admissions made after
// the restore must not join it, or they are never credited.
func TestPendingAddAfterRestoreKeepsCreditsApart(t *testing.T) {
	r := pendRule("r", time.Second)
	for _, tc := range []struct {
		name string
		ms   int64
	}{
		{"same window", 1_500},
		{"next window", 2_100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPending(10)
			p.add(r, "u", 1_000, 3)
			e := p.take()[0]
			e.d.op = testOp("1") // flush named it and sent it; the call failed
			p.restore(e.k, e.d)
			p.add(r, "u", tc.ms, 2) // a request while the credit is pending
			var named, fresh int64
			for _, x := range p.take() {
				if x.d.op == testOp("1") {
					named += x.d.cur + x.d.prev
					if x.d.idx != 1 {
						t.Errorf("the credit sent as op-1 for window 1 now says window %d", x.d.idx)
					}
				} else {
					fresh += x.d.cur + x.d.prev
				}
			}
			if named != 3 || fresh != 2 {
				t.Fatalf("credit op-1 carries %d admissions and unnamed credits %d; want 3 and 2: "+
					"if op-1 was applied before, its re-send is ignored and the %d admissions since are lost",
					named, fresh, 2)
			}
		})
	}
}

func TestPendingHas(t *testing.T) {
	r, other := pendRule("r", time.Second), pendRule("o", time.Second)
	p := newPending(10)
	if p.has(r, "u") {
		t.Fatal("has on an empty pending = true")
	}
	p.add(r, "u", 1_000, 1)
	for _, tc := range []struct {
		name string
		r    *rule
		user string
		want bool
	}{
		{"pending key", r, "u", true},
		{"other user", r, "v", false},
		{"other rule", other, "u", false},
		{"same name, other rule value", pendRule("r", time.Second), "u", false},
	} {
		if got := p.has(tc.r, tc.user); got != tc.want {
			t.Errorf("%s: has = %v, want %v", tc.name, got, tc.want)
		}
	}
	taken := p.take()
	if !p.has(r, "u") {
		t.Fatal("a key in flight is not pending")
	}
	for _, e := range taken {
		p.done(e.k)
	}
	if p.has(r, "u") {
		t.Fatal("has after the credit was applied")
	}
}

func TestPendingDropAll(t *testing.T) {
	r := pendRule("r", time.Second)
	p := newPending(3)
	if got := p.dropAll(); got != 0 {
		t.Fatalf("dropAll of nothing = %d", got)
	}
	p.add(r, "a", 1_000, 2)
	p.add(r, "a", 2_000, 3) // prev 2, cur 3
	p.add(r, "b", 2_000, 4)
	p.add(r, "c", 2_000, 1)
	p.add(r, "d", 2_000, 10) // beyond max: dropped at once
	wantCounts(t, p, 3, 10, 0)
	// A retry: b's credit failed after new admissions of b.
	all := p.take()
	for _, e := range all {
		if e.k.user != "b" {
			p.restore(e.k, e.d)
		}
	}
	p.add(r, "b", 2_500, 6)
	for _, e := range all {
		if e.k.user == "b" {
			e.d.op = testOp("b")
			p.restore(e.k, e.d)
		}
	}
	wantCounts(t, p, 3, 10, 0) // a, b (two credits), c
	if got, want := p.dropAll(), int64(2+3+4+1+6); got != want {
		t.Fatalf("dropAll = %d, want %d", got, want)
	}
	wantCounts(t, p, 0, 10+16, 0)
	if p.has(r, "a") || len(p.take()) != 0 {
		t.Fatal("admissions left after dropAll")
	}
}

// testOp is the op of a credit that flush named and sent.
func testOp(name string) global.Op { return global.Op{Stream: "~" + name, Seq: 1} }

// TestFailLocalMinInstances: an instance that starts while Redis is down
// has seen no other instance; FailLocal divides each limit by
// Config.MinInstances then (30 / 3 = 10 a user), where it would otherwise
// give each user the whole limit. A bad MinInstances is refused.
func TestFailLocalMinInstances(t *testing.T) {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 50 * time.Millisecond})
	defer rdb.Close()
	for _, tc := range []struct{ min, want int64 }{{0, 30}, {1, 30}, {3, 10}, {40, 1}} {
		l, err := New(Config{Redis: rdb, ManualSync: true, MinInstances: tc.min, Now: fixedClock(base),
			Rules: []Rule{{Name: "r", Limit: 30, Window: time.Minute, Mode: Strict, OnFailure: FailLocal}}})
		require.NoError(t, err)
		var admitted int64
		for range 40 {
			d, err := l.Allow(ctx, "r", "u", base)
			require.NoError(t, err)
			if d.Allowed {
				admitted++
			}
		}
		require.Equal(t, tc.want, admitted, "MinInstances %d", tc.min)
		require.ErrorIs(t, l.Close(), ErrUnavailable, "the admissions could not be credited to Redis")
	}
	for _, bad := range []int64{-1, 1<<20 + 1} {
		_, err := New(Config{Redis: rdb, MinInstances: bad, Rules: []Rule{{Name: "r", Limit: 30, Window: time.Minute}}})
		require.ErrorIs(t, err, ErrInvalidArgument, "MinInstances %d", bad)
	}
}

// testRule returns a rule version of r with a core of its own, window w
// ms, as buildRules would make it (without validation or defaults).
func testRule(r Rule, w int64) *rule {
	if r.ID == "" {
		r.ID = r.Name
	}
	c := &ruleCore{id: r.ID, algorithm: r.Algorithm, mode: r.Mode, window: w}
	rl := &rule{Rule: r, ruleCore: c, base: c, window: w, algo: global.Algorithm(r.Algorithm), maxN: r.Limit}
	c.cur.Store(rl)
	return rl
}

// TestPendingSub: sub takes back admissions of an unsent delta, of its
// newest window or the one before, never more than it holds; a delta
// emptied leaves the key not pending; a delta taken for sending cannot
// change, nor one sent again (restored under its name).
func TestPendingSub(t *testing.T) {
	r := pendRule("r", time.Second)
	p := newPending(10)
	p.add(r, "u", 5_100, 2)
	p.add(r, "u", 6_100, 3)
	require.False(t, p.sub(r, "u", 6_200, 4), "more than the window holds")
	require.False(t, p.sub(r, "u", 4_200, 1), "a window the delta does not hold")
	require.False(t, p.sub(r, "v", 6_200, 1), "another user")
	require.True(t, p.sub(r, "u", 6_200, 3))
	require.True(t, p.sub(r, "u", 5_900, 1))
	wantDelta(t, "after the subs", pendGet(p, r, "u"), pendingDelta{idx: 6, prev: 1, last: 6_100})
	require.True(t, p.has(r, "u"))
	require.True(t, p.sub(r, "u", 5_000, 1))
	require.False(t, p.has(r, "u"), "emptied: nothing to credit")
	require.Equal(t, int64(0), p.len())

	p.add(r, "u", 7_000, 2)
	sent := p.take()
	require.Len(t, sent, 1)
	require.False(t, p.sub(r, "u", 7_000, 1), "taken for sending")
	sent[0].d.op = global.NewOps().Next()
	p.restore(sent[0].k, sent[0].d)
	require.False(t, p.sub(r, "u", 7_000, 1), "to be sent again as it was")
	require.True(t, p.has(r, "u"))
}
