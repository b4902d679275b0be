package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// taker is the common shape of the in-process algorithms.
type taker interface {
	take(now, w, limit, n int64) result
}

func newTaker(a Algorithm) taker {
	switch a {
	case SlidingLog:
		return &slidingLog{}
	case FixedWindow:
		return &fixedWindow{}
	case TokenBucket:
		return &tokenBucket{}
	}
	return &slidingWindow{}
}

var allAlgorithms = []Algorithm{SlidingWindow, SlidingLog, FixedWindow, TokenBucket}

// TestSlidingWindowSteps walks a fixed timeline through the sliding window,
// limit 10 per 1000 ms: its Go code, and the same algorithm in every mode.
func TestSlidingWindowSteps(t *testing.T) {
	t0 := time.UnixMilli(1_000_000) // start of window 1000
	seq := []step{
		{0, 6, true, 4, 0},
		{500 * ms, 4, true, 0, 0},
		{900 * ms, 1, false, 0, 200 * ms}, // next window: prev 10, need 10·(1000−e) ≤ 9·1000 → e ≥ 100
		{1099 * ms, 1, false, 0, 1 * ms},  // 10·0.901 + 1 > 10
		{1100 * ms, 1, true, 0, 0},        // 10·0.9 + 1 = 10
		// prev 10 weighs 0.4 → 4, cur 1 → 5; n=3 → 8 ≤ 10, remaining 2.
		{1600 * ms, 3, true, 2, unchecked},
		// 10·0.399 + 4 = 7.99; n=3 → 10.99 > 10: denied. Need
		// 10·(1000−e) ≤ 3·1000 → e ≥ 700: retry 99 ms.
		{1601 * ms, 3, false, unchecked, 99 * ms},
	}
	r := Rule{Limit: 10, Window: time.Second}
	eachTarget(t, r, []Algorithm{SlidingWindow}, []Mode{alone, Local, Strict, Hybrid}, t0, func(t *testing.T, tg target) {
		run(t, tg, seq)
	})
}

// TestOldTimestampBuysNothing: a timestamp older than one admitted is
// judged as the newest one, by each algorithm alone and in each mode it
// runs in.
func TestOldTimestampBuysNothing(t *testing.T) {
	const limit = 5
	t0 := time.UnixMilli(10_000_500)
	backs := []time.Duration{1 * ms, 500 * ms, 999 * ms, 1000 * ms, 5000 * ms, 100_000 * ms}
	seq := steps(limit, step{0, 1, true, unchecked, unchecked}) // the limit, at t0
	for _, back := range backs {
		seq = append(seq, step{-back, 1, false, unchecked, unchecked})
	}
	r := Rule{Limit: limit, Window: time.Second}
	eachTarget(t, r, allAlgorithms, []Mode{alone, Local, Strict, Hybrid}, t0, func(t *testing.T, tg target) {
		got := run(t, tg, seq)
		// The wait is measured from the old timestamp.
		for i, back := range backs {
			if d := got[limit+i]; d.RetryAfter <= back {
				t.Errorf("step %d: %s AllowN(%s, 1).RetryAfter = %v, want > %v (measured from the old timestamp)",
					limit+i, tg.name, stepTime(-back), d.RetryAfter, back)
			}
		}
	})
}

// checkRetryAfter drives a random history into a taker, and at every denial
// checks on copies that a retry at t+RetryAfter is admitted and one at
// t+RetryAfter−1 is not.
func checkRetryAfter(t *testing.T, a Algorithm, rng *rand.Rand, w, limit int64, steps int) {
	t.Helper()
	s := newTaker(a)
	now := int64(1_700_000_000_000)
	for i := range steps {
		now += rng.Int64N(w / 4 * 3)
		n := 1 + rng.Int64N(min(limit, 4))
		before := clone(s)
		r := s.take(now, w, limit, n)
		if r.allowed {
			if r.retryAfter != 0 {
				t.Fatalf("step %d: allowed with retryAfter %d", i, r.retryAfter)
			}
			continue
		}
		if r.retryAfter <= 0 {
			t.Fatalf("%v step %d: denied with retryAfter %d", a, i, r.retryAfter)
		}
		if got := clone(before).take(now+r.retryAfter, w, limit, n); !got.allowed {
			t.Fatalf("%v step %d (w=%d limit=%d n=%d): retry at +%d denied", a, i, w, limit, n, r.retryAfter)
		}
		if got := clone(before).take(now+r.retryAfter-1, w, limit, n); got.allowed {
			t.Fatalf("%v step %d (w=%d limit=%d n=%d): retry at +%d−1 admitted", a, i, w, limit, n, r.retryAfter)
		}
	}
}

func clone(s taker) taker {
	switch s := s.(type) {
	case *slidingWindow:
		c := *s
		return &c
	case *fixedWindow:
		c := *s
		return &c
	case *tokenBucket:
		c := *s
		return &c
	case *slidingLog:
		c := slidingLog{times: append([]int64(nil), s.times...), last: s.last}
		return &c
	}
	panic(fmt.Sprintf("clone: %T", s))
}

func TestRetryAfterIsExact(t *testing.T) {
	for _, a := range allAlgorithms {
		for _, cfg := range []struct{ w, limit int64 }{{1000, 1}, {1000, 10}, {60_000, 100}, {7, 3}, {100, 1000}} {
			t.Run(fmt.Sprintf("%v/w=%d/limit=%d", a, cfg.w, cfg.limit), func(t *testing.T) {
				checkRetryAfter(t, a, rand.New(rand.NewPCG(uint64(cfg.w), uint64(cfg.limit))), cfg.w, cfg.limit, 3000)
			})
		}
	}
}

func FuzzRetryAfter(f *testing.F) {
	f.Add(uint8(0), uint64(1), uint32(1000), uint32(10))
	f.Add(uint8(3), uint64(7), uint32(3), uint32(1))
	f.Fuzz(func(t *testing.T, algo uint8, seed uint64, w, limit uint32) {
		if w < 4 || limit == 0 || int64(limit)*int64(w) > maxLimitWindow {
			t.Skip()
		}
		a := allAlgorithms[int(algo)%len(allAlgorithms)]
		steps := 200
		if a == SlidingLog {
			limit = min(limit, 10_000)
		}
		checkRetryAfter(t, a, rand.New(rand.NewPCG(seed, 0)), int64(w), int64(limit), steps)
	})
}

// FuzzSlidingWindowMath checks the estimate's invariants for any state:
// remaining is within [0, limit], an admission leaves the estimate within
// the limit, and the retry-after is inside two windows.
func FuzzSlidingWindowMath(f *testing.F) {
	f.Add(int64(3), int64(4), int64(500), int64(1000), int64(10), int64(1))
	f.Fuzz(func(t *testing.T, prev, cur, elapsed, w, limit, n int64) {
		if w <= 0 || limit <= 0 || limit > maxLimitWindow/w || n <= 0 || n > limit ||
			prev < 0 || prev > limit || cur < 0 || cur > limit || elapsed < 0 || elapsed >= w {
			t.Skip()
		}
		rem := slidingRemaining(prev, cur, elapsed, w, limit)
		if rem < 0 || rem > limit {
			t.Fatalf("remaining = %d, want in [0, %d]", rem, limit)
		}
		if slidingAdmits(prev, cur, elapsed, w, limit, n) {
			if slidingScaled(prev, cur+n, elapsed, w) > limit*w {
				t.Fatal("admitted above the limit")
			}
			return
		}
		d := slidingRetryAfter(prev, cur, elapsed, w, limit, n)
		if d <= 0 || d > 2*w-elapsed {
			t.Fatalf("retryAfter = %d, want in (0, %d]", d, 2*w-elapsed)
		}
	})
}
