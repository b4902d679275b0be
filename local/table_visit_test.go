package local

import "testing"

// TestTableVisitAndDelete: Visit finds only live entries, creates, stamps
// and counts nothing, and may change the value; Delete removes it.
func TestTableVisitAndDelete(t *testing.T) {
	tb := NewTable[int](100)
	if tb.Visit("k", 0, func(*int) { t.Fatal("visited an absent key") }) {
		t.Fatal("Visit found an absent key")
	}
	if tb.Len() != 0 {
		t.Fatal("Visit created an entry")
	}
	tb.Do("k", 10, 0, func(v *int) bool { *v = 7; return true })
	if !tb.Visit("k", 50, func(v *int) { *v-- }) {
		t.Fatal("Visit missed a live key")
	}
	tb.Do("k", 60, 0, func(v *int) bool {
		if *v != 6 {
			t.Fatalf("value %d after Visit, want 6", *v)
		}
		return false
	})
	if a, d := tb.Counts(); a != 1 || d != 1 {
		t.Fatalf("counts %d, %d: Visit counted", a, d)
	}
	if tb.Visit("k", 161, func(*int) {}) {
		t.Fatal("Visit found an expired key")
	}
	tb.Delete("k")
	if tb.Len() != 0 || tb.Visit("k", 60, func(*int) {}) {
		t.Fatal("Delete left the key")
	}
}
