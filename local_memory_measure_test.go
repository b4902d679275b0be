//go:build measure

package ratelimit

import (
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLocalMemoryMeasure measures, and prints, what the process holds per
// resident hybrid key and what New reserves per key of MaxLocalKeys, as Go
// heap (runtime.MemStats.HeapAlloc after runtime.GC) and as RSS
// (/proc/self/status): New with MaxLocalKeys 256 Ki; then 200 000 users
// each make two requests (the first is decided without a State, the second
// makes one), and the states ristretto holds are counted. It asserts only
// that most users are resident. Built only with the measure tag:
//
//	go test -tags measure -count=1 -run TestLocalMemoryMeasure -v . 2>&1 | grep -v '^redis: '
//
// With LOCAL_MEMORY_PROFILE set to a file name it also writes a heap
// profile there while the keys are resident (with -memprofilerate 1 for
// exact figures: go tool pprof -sample_index=inuse_space -top).
func TestLocalMemoryMeasure(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	const maxKeys, users = 1 << 18, 200_000
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	h0, r0 := heap(), rssKB(t)
	l, err := New(Config{Redis: c, KeyPrefix: prefix, ManualSync: true, MaxLocalKeys: maxKeys,
		Rules: []Rule{{Name: "m", Limit: 1 << 20, Window: time.Hour}}})
	must(t, err)
	defer l.Close()
	h1, r1 := heap(), rssKB(t)
	requestAll(t, l, "m", users, 0)
	requestAll(t, l, "m", users, 1)
	l.hybrid.cache.Wait()
	must(t, l.Sync(t.Context())) // the side map lets go of what ristretto holds
	resident := 0
	for u := range users {
		if s := l.hybrid.cache.State(l.hybrid.cache.Get("user"+strconv.Itoa(u), 0)); s != nil && !s.Orphaned() {
			resident++
		}
	}
	h2, r2 := heap(), rssKB(t)
	if name := os.Getenv("LOCAL_MEMORY_PROFILE"); name != "" {
		f, err := os.Create(name)
		must(t, err)
		must(t, pprof.WriteHeapProfile(f))
		must(t, f.Close())
	}
	t.Logf("New(MaxLocalKeys %d): heap +%d B (%.1f B per key of capacity), RSS +%d kB", maxKeys, h1-h0, float64(h1-h0)/maxKeys, r1-r0)
	t.Logf("%d users, %d resident: heap +%d B (%.1f B per resident key), RSS +%d kB (%.1f B per resident key)",
		users, resident, h2-h1, float64(h2-h1)/float64(resident), r2-r1, float64(r2-r1)*1024/float64(resident))
	if resident < users*8/10 {
		t.Fatalf("%d of %d users resident", resident, users)
	}
}

// rssKB returns the process's resident set (VmRSS), in kB.
func rssKB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	must(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			must(t, err)
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
