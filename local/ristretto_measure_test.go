//go:build measure

package local

import (
	"runtime"
	"testing"
	"unsafe"

	"github.com/dgraph-io/ristretto/v2"
)

// heapAlloc returns the live heap after a collection.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestRistrettoMeasure measures, and prints, what ristretto alone holds
// per item: a cache configured as NewCache configures it for 256 Ki keys,
// holding 200 000 uint64 keys whose values all point to one State (so no
// value is counted). Then what a NewCache holds per resident key, states
// and front table included, with and without the front table. Built only
// with the measure tag:
//
//	go test -tags measure -count=1 -run TestRistrettoMeasure -v ./local
func TestRistrettoMeasure(t *testing.T) {
	const maxKeys, n = 1 << 18, 200_000
	t.Logf("sizes: State %d B, hot %d B", unsafe.Sizeof(State{}), unsafe.Sizeof(hot{}))

	h0 := heapAlloc()
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *State]{
		NumCounters:        counters(maxKeys),
		MaxCost:            maxKeys,
		BufferItems:        64,
		IgnoreInternalCost: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h1 := heapAlloc()
	v := NewState("k", 0)
	for i := range uint64(n) {
		for !c.Set(i*0x9e3779b97f4a7c15, v, 1) { // dropped by a full buffer: again
			c.Wait()
		}
	}
	c.Wait()
	held := 0
	for i := range uint64(n) {
		if _, ok := c.Get(i * 0x9e3779b97f4a7c15); ok {
			held++
		}
	}
	h2 := heapAlloc()
	t.Logf("ristretto alone: New +%d B; %d items held: +%d B (%.1f B per item)", h1-h0, held, h2-h1, float64(h2-h1)/float64(held))

	for _, front := range []bool{true, false} {
		h0 := heapAlloc()
		var lc *Cache
		if front {
			lc, err = NewCache(maxKeys, 1)
		} else {
			lc, err = NewCacheWithoutFront(maxKeys, 1)
		}
		if err != nil {
			t.Fatal(err)
		}
		h1 := heapAlloc()
		users := make([]string, n)
		for i := range users {
			users[i] = "user" + itoa(i)
		}
		h1b := heapAlloc()
		for i, u := range users {
			lc.GetOrCreate(u, 0, func() string { return "rl:{" + u + "}:m" })
			if i%4096 == 4095 {
				lc.Wait()
				lc.Forget()
			}
		}
		lc.Wait()
		lc.Forget()
		held := 0
		for _, u := range users {
			if s := lc.Find(u, 0); s != nil && !s.Orphaned() {
				held++
			}
		}
		h2 := heapAlloc()
		t.Logf("Cache (front %v): New +%d B; %d states resident (keys %d B each): +%d B (%.1f B per key), front table %d slots",
			front, h1-h0, held, len("rl:{user199999}:m"), h2-h1b, float64(h2-h1b)/float64(held), len(lc.table.Load().owners))
		runtime.KeepAlive(users)
		lc.Close()
	}
}

func itoa(i int) string {
	var b [20]byte
	p := len(b)
	for {
		p--
		b[p] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[p:])
		}
	}
}
