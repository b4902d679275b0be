package ratelimit

// This file holds the in-process forms of the exact algorithms (fixed
// window, sliding log, token bucket). Each mirrors, formula for formula, its
// Lua script under global/scripts; the local mode runs them and the tests use
// them as the oracle for the scripts. Times are int64 milliseconds.

// fixedWindow counts admissions per aligned window [k·W, (k+1)·W).
type fixedWindow struct {
	index int64
	count int64
	last  int64
}

func (s *fixedWindow) take(now, w, limit, n int64) result {
	req := now
	now = max(now, s.last)
	idx := now / w
	count := int64(0)
	if s.index == idx {
		count = s.count
	}
	var r result
	end := (idx+1)*w - now
	if count+n <= limit {
		count += n
		*s = fixedWindow{index: idx, count: count, last: now}
		r.allowed = true
	} else {
		r.retryAfter = end
	}
	r.remaining = limit - count
	if count > 0 {
		r.resetAfter = end
	}
	return r.shift(now - req)
}

// tokenBucket is the generic cell rate algorithm in its integer form: a
// bucket of burst tokens refilled at limit per W. To stay in integers a
// token is W units and the bucket drains limit units per ms; level is the
// units in use (0 = full bucket). burst ≤ 2·limit, so a full bucket drains
// within two windows.
type tokenBucket struct {
	level int64
	last  int64
}

// take is takeBurst with a burst of limit.
func (s *tokenBucket) take(now, w, limit, n int64) result {
	return s.takeBurst(now, w, limit, limit, n)
}

// levelAt returns the units in use at now ≥ s.last.
func (s *tokenBucket) levelAt(now, limit, w int64) int64 {
	if elapsed := now - s.last; elapsed < 2*w {
		return max(s.level-elapsed*limit, 0)
	}
	return 0
}

func (s *tokenBucket) takeBurst(now, w, limit, burst, n int64) result {
	req := now
	now = max(now, s.last)
	level := s.levelAt(now, limit, w)
	var r result
	if level+n*w <= burst*w {
		level += n * w
		*s = tokenBucket{level: level, last: now}
		r.allowed = true
	} else {
		r.retryAfter = ceilDiv(level+n*w-burst*w, limit)
	}
	r.remaining = (burst*w - level) / w
	r.resetAfter = ceilDiv(level, limit)
	return r.shift(now - req)
}

// slidingLog keeps the timestamp of every admitted request of the last
// window: exact, and O(limit) memory per key.
type slidingLog struct {
	times []int64 // ascending
	last  int64
}

func (s *slidingLog) take(now, w, limit, n int64) result {
	req := now
	now = max(now, s.last)
	// The window is (now−W, now]: drop what is at or before now−W.
	drop := 0
	for drop < len(s.times) && s.times[drop] <= now-w {
		drop++
	}
	s.times = s.times[drop:]
	count := int64(len(s.times))
	var r result
	if count+n <= limit {
		for range n {
			s.times = append(s.times, now)
		}
		s.last = now
		count += n
		r.allowed = true
	} else {
		// The oldest count−(limit−n) entries must leave the window.
		k := count - (limit - n)
		r.retryAfter = s.times[k-1] + w - now
	}
	r.remaining = limit - count
	if count > 0 {
		r.resetAfter = s.times[len(s.times)-1] + w - now
	}
	return r.shift(now - req)
}

// ceilDiv returns ⌈a/b⌉ for a ≥ 0, b > 0, and 0 for a ≤ 0.
func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
