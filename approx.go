package ratelimit

// This file holds the sliding-window math: the two-window weighted counter
// that Cloudflare popularised. It is the single source of truth for the
// algorithm: the strict Lua script (global/scripts/sliding_window.lua)
// implements the same integer formulas, a test requires both to agree, and
// the local and hybrid modes call these functions directly.
//
// All quantities are integers in milliseconds. The estimate
//
//	estimate = prev·(W − elapsed)/W + cur
//
// is never divided: a request for n is admitted when
//
//	prev·(W − elapsed) + (cur + n)·W ≤ limit·W
//
// which is exact in int64 (and in a Lua double, because New caps
// limit·W at maxLimitWindow).

// maxLimitWindow caps limit × window (ms). Every product the algorithms form
// stays below 4·maxLimitWindow < 2^53, so Lua's doubles compute it exactly.
const maxLimitWindow = 1 << 50

// slidingWindow is the state of the two-window sliding counter of one key.
// The zero value is an empty key.
type slidingWindow struct {
	index int64 // window number, floor(t / W), of cur
	cur   int64 // admitted in window index
	prev  int64 // admitted in window index−1
	last  int64 // newest timestamp admitted (ms), so old timestamps buy nothing
}

// at returns the counts as seen at now (ms): the current and previous
// window's admitted counts and the time elapsed in the current window. It
// does not modify s.
func (s *slidingWindow) at(now, w int64) (prev, cur, elapsed int64) {
	idx := now / w
	switch s.index {
	case idx:
		prev, cur = s.prev, s.cur
	case idx - 1:
		prev = s.cur
	}
	return prev, cur, now - idx*w
}

// take decides a request for n at now (ms) against limit per window w (ms)
// and records it when admitted. Timestamps older than the newest admitted
// one are treated as that newest one.
func (s *slidingWindow) take(now, w, limit, n int64) result {
	req := now
	if now < s.last {
		now = s.last
	}
	prev, cur, elapsed := s.at(now, w)
	var r result
	if slidingAdmits(prev, cur, elapsed, w, limit, n) {
		cur += n
		*s = slidingWindow{index: now / w, cur: cur, prev: prev, last: now}
		r.allowed = true
	} else {
		r.retryAfter = slidingRetryAfter(prev, cur, elapsed, w, limit, n)
	}
	r.remaining = slidingRemaining(prev, cur, elapsed, w, limit)
	r.resetAfter = slidingResetAfter(prev, cur, elapsed, w)
	return r.shift(now - req)
}

// slidingScaled returns the estimate multiplied by w:
// prev·(w − elapsed) + cur·w.
func slidingScaled(prev, cur, elapsed, w int64) int64 {
	return prev*(w-elapsed) + cur*w
}

// slidingAdmits reports whether n more fit under limit.
func slidingAdmits(prev, cur, elapsed, w, limit, n int64) bool {
	return slidingScaled(prev, cur+n, elapsed, w) <= limit*w
}

// slidingRemaining is how many more requests the estimate admits now:
// floor(limit − estimate), never negative.
func slidingRemaining(prev, cur, elapsed, w, limit int64) int64 {
	rem := (limit*w - slidingScaled(prev, cur, elapsed, w)) / w
	return max(rem, 0)
}

// slidingResetAfter is the time until the estimate reaches zero.
func slidingResetAfter(prev, cur, elapsed, w int64) int64 {
	switch {
	case cur > 0:
		return 2*w - elapsed
	case prev > 0:
		return w - elapsed
	}
	return 0
}

// slidingRetryAfter returns the smallest wait d ≥ 0 (ms) after which, with
// no other traffic, the estimate admits n. The estimate never grows with
// time, so a retry after d is admitted and one after d−1 is not. It
// requires n ≤ limit.
func slidingRetryAfter(prev, cur, elapsed, w, limit, n int64) int64 {
	// Still in this window: need prev·(w − e) ≤ (limit − cur − n)·w.
	if a := limit - cur - n; a >= 0 {
		if prev == 0 {
			return 0
		}
		e := max(w-a*w/prev, elapsed)
		if e < w {
			return e - elapsed
		}
	}
	// In the next window cur becomes prev and nothing is current:
	// need cur·(w − e) ≤ (limit − n)·w.
	if cur == 0 {
		return w - elapsed
	}
	e := max(w-(limit-n)*w/cur, 0)
	if e < w {
		return w - elapsed + e
	}
	return 2*w - elapsed
}

// result is one algorithm's decision, all durations in ms.
type result struct {
	allowed    bool
	dropped    bool // a failure policy's admission beyond MaxPendingKeys: never credited to Redis (pending.add)
	remaining  int64
	retryAfter int64 // 0 when allowed
	resetAfter int64
}

// shift adds d ms to the waits of a decision taken d ms after the request's
// own timestamp (because an older timestamp was clamped forward).
func (r result) shift(d int64) result {
	if d > 0 {
		if !r.allowed {
			r.retryAfter += d
		}
		r.resetAfter += d
	}
	return r
}
