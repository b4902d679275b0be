package local

import (
	"testing"
	"time"
)

// TestTakeVisitsOutsideTheLock: a pass's visit (which locks each state)
// runs without the Registry's lock, so that a decision that adds a new
// state never waits for the pass to visit every active key.
func TestTakeVisitsOutsideTheLock(t *testing.T) {
	var r Registry
	for i := range 4 {
		r.Add(NewState("k"+string(rune('a'+i)), 0))
	}
	outside := NewState("outside", 0)
	visited := 0
	r.Take(func(*State) {
		visited++
		if visited != 1 {
			return
		}
		added := make(chan struct{})
		go func() {
			r.Add(outside)
			close(added)
		}()
		select {
		case <-added:
		case <-time.After(5 * time.Second):
			t.Fatal("Add waited for Take's visit: the visit holds the Registry's lock")
		}
	})
	if visited != 4 {
		t.Fatalf("Take visited %d states, want 4", visited)
	}
	if got := r.Len(); got != 1 {
		t.Fatalf("after Take, Len() = %d, want 1 (the state added meanwhile)", got)
	}
}

// TestTakeClearsBeforeVisit: a state added again while Take visits the
// states it took (by a decision after the visit folded its counts) is in the
// registry afterwards, for the next pass.
func TestTakeClearsBeforeVisit(t *testing.T) {
	var r Registry
	s := NewState("k", 0)
	r.Add(s)
	r.Take(func(v *State) { r.Add(v) })
	if got := r.Len(); got != 1 {
		t.Fatalf("a state added during its visit: Len() = %d after Take, want 1", got)
	}
}
