package local

import (
	"strconv"
	"sync"
	"testing"
)

// TestFirstSight: a key is new once; it is remembered for at least the
// cache's maxKeys first sightings of others; and at capacity few new keys
// are taken for seen ones.
func TestFirstSight(t *testing.T) {
	const maxKeys = 1 << 12
	c, err := NewCache(maxKeys, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := func(u string, rule int) bool { return c.FirstSight(c.Get(u, rule), 0, 0) }
	if !first("a", 0) {
		t.Fatal("a key never seen is not new")
	}
	if first("a", 0) {
		t.Fatal("a key just seen is new again")
	}
	if !first("a", 1) {
		t.Fatal("the same user under another rule is another key")
	}
	falsePos := 0
	for i := range maxKeys - 2 {
		if !first("u"+strconv.Itoa(i), 0) {
			falsePos++
		}
	}
	if first("a", 0) {
		t.Fatalf("a forgotten after %d first sightings of others, want at least %d", maxKeys-2, maxKeys)
	}
	if limit := maxKeys * 3 / 100; falsePos > limit {
		t.Fatalf("%d of %d new keys taken for seen ones, want at most %d (3%%)", falsePos, maxKeys-2, limit)
	}
	t.Logf("%d of %d new keys taken for seen ones", falsePos, maxKeys-2)
	// Two generations later the keys seen once are new again, but for the
	// false positives of a full filter (one key alone would fail the test
	// now and then: a few percent of the time).
	for i := range 3 * maxKeys {
		first("v"+strconv.Itoa(i), 0)
	}
	const once = 1000
	remembered := 0
	for i := range once {
		if !first("u"+strconv.Itoa(i), 0) {
			remembered++
		}
	}
	if limit := once * 3 / 100; remembered > limit {
		t.Fatalf("%d of %d keys seen once two generations ago are still known, want at most %d (3%%): remembered forever", remembered, once, limit)
	}
}

// TestFirstSightConcurrent: goroutines sighting the same keys at once
// (under -race); afterwards every key is remembered, and each was new to at
// most as many goroutines as saw it (no more than one when their tests did
// not overlap), in total at most keys × goroutines and at least keys less
// the false positives.
func TestFirstSightConcurrent(t *testing.T) {
	c, err := NewCache(1<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const keys, goroutines = 1 << 9, 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	news := 0
	for range goroutines {
		wg.Go(func() {
			n := 0
			for i := range keys {
				if c.FirstSight(c.Get("k"+strconv.Itoa(i), 0), 1000, 100) {
					n++
				}
			}
			mu.Lock()
			news += n
			mu.Unlock()
		})
	}
	wg.Wait()
	for i := range keys {
		if c.FirstSight(c.Get("k"+strconv.Itoa(i), 0), 1000, 100) {
			t.Fatalf("key %d forgotten", i)
		}
	}
	if news < keys*97/100 || news > keys*goroutines {
		t.Fatalf("%d first sightings of %d keys by %d goroutines", news, keys, goroutines)
	}
}

// TestFirstSightSpan: with a span, a key is remembered for at least span
// ms of request time after its sighting, however few keys come meanwhile,
// and forgotten once requests have come for two spans after it: a user
// whose requests come further apart than that is new at every request. A
// timestamp older than the generation's start rotates nothing.
func TestFirstSightSpan(t *testing.T) {
	c, err := NewCache(1<<12, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const span = 100
	first := func(u string, ms int64) bool { return c.FirstSight(c.Get(u, 0), ms, span) }
	t0 := int64(1_700_000_000_000)
	if !first("a", t0) {
		t.Fatal("a key never seen is not new")
	}
	// Remembered through its own span and the next, request by request
	// (each sighting of a rotates the filter at most once).
	for _, ms := range []int64{t0 + 1, t0 + span - 1, t0 + span, t0 + span + 1, t0 + 2*span - 1} {
		if first("a", ms) {
			t.Fatalf("a new again at +%d ms, want remembered for at least %d ms", ms-t0, span)
		}
	}
	if first("a", t0-10*span) {
		t.Fatal("an old timestamp made a new")
	}
	// Others' requests at +2·span and +3·span: two rotations since a was
	// last recorded (at t0, in the generation that started at t0).
	first("b", t0+2*span)
	first("b", t0+3*span)
	if !first("a", t0+3*span) {
		t.Fatal("a still remembered three spans later: a rare user would get a State")
	}
	if first("a", t0+3*span) {
		t.Fatal("a just seen is new again")
	}
	// A user every 3 spans, with other traffic in between, is new every time.
	u := "rare"
	for i := range int64(10) {
		ms := t0 + 10*span + 3*span*i
		first("other", ms+span)
		first("other", ms+2*span)
		if !first(u, ms) && i > 0 {
			t.Fatalf("request %d of a user every %d ms taken for a seen one", i, 3*span)
		}
	}
	// A request stamped ahead holds the time rotation back (keys are then
	// remembered longer, never shorter): y, seen before it, is still
	// remembered ten spans later by the clock of the other requests.
	ahead := t0 + 1000*span
	first("y", ahead-10*span)
	first("early", ahead)
	for i := range int64(10) {
		first("other", ahead-9*span+i*span)
	}
	if first("y", ahead-span) {
		t.Fatal("y forgotten on time while the generation started ahead of the stamps")
	}
	// Span 0: counts only, however far time moves.
	first("z", t0)
	if c.FirstSight(c.Get("z", 0), t0+100*span, 0) {
		t.Fatal("span 0 forgot a key on time")
	}
}

// TestDoorkeeperSeenAdd: Seen records nothing; a key added is seen, and
// still seen after capacity-1 additions of others.
func TestDoorkeeperSeenAdd(t *testing.T) {
	const capacity = 1 << 12
	k := NewDoorkeeper(capacity)
	if k.Seen("a") || k.Seen("a") {
		t.Fatal("a key never added is seen")
	}
	k.Add("a")
	for i := range capacity - 1 {
		k.Add("u" + strconv.Itoa(i))
	}
	if !k.Seen("a") {
		t.Fatalf("a forgotten after %d additions of others", capacity-1)
	}
}
