package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Decision sequences are written as tables of steps, in the manner of
// golang.org/x/time/rate's rate_test.go: each step is a request on a fixed
// timeline and the answer it must get.
//
//	tg := newTarget(t, Rule{Limit: 10, Window: time.Second}, Local, t0)
//	run(t, tg, []step{
//		{0, 6, true, 4, 0},
//		{500 * ms, 4, true, 0, 0},
//		{900 * ms, 1, false, 0, 199 * ms},
//	})
//
// Each step checks Allowed, and Remaining and RetryAfter unless they are
// unchecked. A failure names the step, its time, n, and the decision got
// and wanted:
//
//	step 2: sliding_window/local AllowN(t0+900ms, 1) = allowed=false remaining=0 retry=200ms, want allowed=false remaining=0 retry=199ms
//
// eachTarget runs one table on several algorithms and modes, where their
// answers coincide; run returns the decisions, for checks a table cannot
// express.

// ms keeps the tables short.
const ms = time.Millisecond

// unchecked, as a step's rem or retry, leaves that field of the decision
// out of the comparison.
const unchecked = -1

// step is one request of a sequence and the decision it must get.
type step struct {
	at    time.Duration // after the target's t0; negative for a stamp before it
	n     int64
	ok    bool          // Decision.Allowed
	rem   int64         // Decision.Remaining, or unchecked
	retry time.Duration // Decision.RetryAfter, or unchecked
}

// steps returns k copies of s: a run of identical requests.
func steps(k int, s step) []step {
	out := make([]step, k)
	for i := range out {
		out[i] = s
	}
	return out
}

// alone, as a target's mode, is the rule's algorithm by itself: its Go
// code (approx.go, exact.go) fed milliseconds, with no Limiter around it.
const alone Mode = 0

// target is what a sequence runs on: one user of one rule, decided by the
// rule's algorithm alone or by a Limiter in some mode.
type target struct {
	name  string    // algorithm/mode, for messages
	t0    time.Time // the steps' times are offsets from it
	lim   *Limiter  // nil when alone
	rule  string
	user  string
	allow func(t *testing.T, at time.Time, n int64) Decision
}

// modeName names a target's mode.
func modeName(m Mode) string {
	if m == alone {
		return "alone"
	}
	return m.String()
}

// newTarget returns user "u" of rule r (Name defaults to "r") in mode, on
// the timeline starting at t0: alone, the algorithm's Go code; otherwise a
// Limiter with r as its only rule, whose clock stays at t0 and whose sync
// passes run only at Sync (on the test Redis for Strict and Hybrid, under a
// prefix of the test's own), closed when the test ends.
func newTarget(t *testing.T, r Rule, mode Mode, t0 time.Time) target {
	t.Helper()
	name := r.Algorithm.String() + "/" + modeName(mode)
	if mode == alone {
		s := newTaker(r.Algorithm)
		w := r.Window.Milliseconds()
		return target{name: name, t0: t0, allow: func(_ *testing.T, at time.Time, n int64) Decision {
			return s.take(at.UnixMilli(), w, r.Limit, n).decision()
		}}
	}
	if r.Name == "" {
		r.Name = "r"
	}
	r.Mode = mode
	cfg := Config{Rules: []Rule{r}, Now: fixedClock(t0), ManualSync: true}
	if mode != Local {
		c := testRedis(t)
		cfg.Redis, cfg.KeyPrefix = c, testPrefix(t, c)
	}
	l, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, l.Close()) })
	tg := onLimiter(l, r.Name, "u", t0)
	tg.name = name
	return tg
}

// onLimiter returns user of rule on l, on the timeline starting at t0.
func onLimiter(l *Limiter, rule, user string, t0 time.Time) target {
	return target{name: rule + "/" + user, t0: t0, lim: l, rule: rule, user: user,
		allow: func(t *testing.T, at time.Time, n int64) Decision {
			t.Helper()
			d, err := l.AllowN(context.Background(), rule, user, at, n)
			if err != nil {
				t.Fatalf("%s AllowN(%v, %d): %v", rule, at, n, err)
			}
			return d
		}}
}

// eachTarget runs f in a subtest "algorithm/mode" for each algorithm and
// mode, on a fresh target of r with that algorithm; Hybrid is left out for
// the algorithms it does not support. Use it for a sequence whose answers
// are the same on all of them.
func eachTarget(t *testing.T, r Rule, algos []Algorithm, modes []Mode, t0 time.Time, f func(t *testing.T, tg target)) {
	t.Helper()
	for _, a := range algos {
		for _, m := range modes {
			if m == Hybrid && !a.supportsHybrid() {
				continue
			}
			r.Algorithm = a
			t.Run(a.String()+"/"+modeName(m), func(t *testing.T) { f(t, newTarget(t, r, m, t0)) })
		}
	}
}

// run makes the steps' requests on tg in order, reports every decision
// that differs from its step's, and returns the decisions, for the checks
// a table cannot express.
func run(t *testing.T, tg target, seq []step) []Decision {
	t.Helper()
	got := make([]Decision, len(seq))
	for i, s := range seq {
		d := tg.allow(t, tg.t0.Add(s.at), s.n)
		got[i] = d
		if d.Allowed != s.ok || (s.rem != unchecked && d.Remaining != s.rem) || (s.retry != unchecked && d.RetryAfter != s.retry) {
			t.Errorf("step %d: %s AllowN(%s, %d) = %s, want %s", i, tg.name, stepTime(s.at), s.n, showDecision(d), s.want())
		}
	}
	return got
}

// stepTime shows a step's time: t0, t0+900ms, t0-1s.
func stepTime(d time.Duration) string {
	switch {
	case d == 0:
		return "t0"
	case d > 0:
		return "t0+" + d.String()
	}
	return "t0" + d.String()
}

// showDecision formats the fields of a decision that steps check.
func showDecision(d Decision) string {
	return fmt.Sprintf("allowed=%v remaining=%d retry=%v", d.Allowed, d.Remaining, d.RetryAfter)
}

// want formats what s checks, leaving out the unchecked fields.
func (s step) want() string {
	var b strings.Builder
	fmt.Fprintf(&b, "allowed=%v", s.ok)
	if s.rem != unchecked {
		fmt.Fprintf(&b, " remaining=%d", s.rem)
	}
	if s.retry != unchecked {
		fmt.Fprintf(&b, " retry=%v", s.retry)
	}
	return b.String()
}
