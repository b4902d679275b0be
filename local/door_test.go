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
	first := func(u string, rule int) bool { return c.FirstSight(c.Get(u, rule)) }
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
				if c.FirstSight(c.Get("k"+strconv.Itoa(i), 0)) {
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
		if c.FirstSight(c.Get("k"+strconv.Itoa(i), 0)) {
			t.Fatalf("key %d forgotten", i)
		}
	}
	if news < keys*97/100 || news > keys*goroutines {
		t.Fatalf("%d first sightings of %d keys by %d goroutines", news, keys, goroutines)
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
