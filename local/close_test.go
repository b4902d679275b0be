package local

import (
	"fmt"
	"sync"
	"testing"
)

// TestCacheCloseRacesCalls: Close while GetOrCreate, Get and Touch run,
// as Limiter.Close does while decisions are under way. Nothing panics
// (ristretto's own Close does not wait for them: without the guard this
// panics with a send on a closed channel within a few hundred rounds), and
// calls after Close find and keep nothing. Without a front table every Get
// goes to ristretto; a third of the rounds show it (each takes as long).
func TestCacheCloseRacesCalls(t *testing.T) {
	forEachFront(t, testCacheCloseRacesCalls)
}

func testCacheCloseRacesCalls(t *testing.T, front bool) {
	newCache, rounds := NewCache, 300
	if !front {
		newCache, rounds = NewCacheWithoutFront, 100
	}
	for round := range rounds {
		c, err := newCache(1<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for g := range 4 {
			wg.Go(func() {
				<-start
				for i := range 500 {
					user := fmt.Sprint(round, "-", g, "-", i)
					s := c.GetOrCreate(user, 0, func() string { return "k" })
					c.Get(user, 0)
					c.Touch(s)
				}
			})
		}
		close(start)
		c.Close()
		wg.Wait()
		if s := c.State(c.Get("after", 0)); s != nil {
			t.Fatal("a closed cache found a state")
		}
	}
}
