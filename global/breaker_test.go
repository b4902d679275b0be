package global

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The breaker's tests run on a virtual clock: nothing sleeps.

var breakerEpoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// breakerClock is a virtual clock: now returns the epoch plus what advance
// added. It is safe for concurrent use.
type breakerClock struct{ ns atomic.Int64 }

func (c *breakerClock) now() time.Time          { return breakerEpoch.Add(time.Duration(c.ns.Load())) }
func (c *breakerClock) advance(d time.Duration) { c.ns.Add(int64(d)) }
func (c *breakerClock) set(t time.Time)         { c.ns.Store(int64(t.Sub(breakerEpoch))) }

// breakerLog records what onChange receives, and whether it was called
// while the breaker's lock was held.
type breakerLog struct {
	t *testing.T
	b *breaker // set once the breaker exists

	mu  sync.Mutex
	got []BreakerStatus
}

func (l *breakerLog) onChange(st BreakerStatus) {
	if l.b != nil {
		if !l.b.mu.TryLock() {
			l.t.Errorf("onChange(%v) called with the breaker's lock held", st.State)
		} else {
			l.b.mu.Unlock()
		}
	}
	l.mu.Lock()
	l.got = append(l.got, st)
	l.mu.Unlock()
}

func (l *breakerLog) all() []BreakerStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]BreakerStatus(nil), l.got...)
}

// newTestBreaker returns a breaker on a virtual clock, with a log of its
// transitions. Jitter is turned off unless opts asks for some.
func newTestBreaker(t *testing.T, opts BreakerOptions) (*breaker, *breakerClock, *breakerLog) {
	t.Helper()
	if opts.Jitter == 0 {
		opts.Jitter = -1
	}
	clk := &breakerClock{}
	log := &breakerLog{t: t}
	b := newBreaker(opts, clk.now, log.onChange)
	log.b = b
	return b, clk, log
}

func wantState(t *testing.T, b *breaker, want BreakerState) {
	t.Helper()
	if got := b.get().State; got != want {
		t.Fatalf("state = %v, want %v", got, want)
	}
	if got := BreakerState(b.state.Load()); got != want {
		t.Fatalf("atomic state = %v, want %v (status says %v)", got, want, b.get().State)
	}
}

// openFor returns how long the Open breaker stays open, as it set it.
func openFor(t *testing.T, b *breaker) time.Duration {
	t.Helper()
	st := b.get()
	if st.State != Open {
		t.Fatalf("state = %v, want open", st.State)
	}
	return st.Until.Sub(st.Since)
}

// failN records n failures with ticket 0.
func failN(b *breaker, n int, err error) {
	for range n {
		b.failure(err, 0)
	}
}

// probe advances the clock to the end of the backoff and takes the probe.
func probe(t *testing.T, b *breaker, clk *breakerClock) ticket {
	t.Helper()
	st := b.get()
	if st.State != Open {
		t.Fatalf("probe: state = %v, want open", st.State)
	}
	clk.set(st.Until)
	ok, tk := b.allow()
	if !ok || tk == 0 {
		t.Fatalf("allow at the end of the backoff = %v, ticket %d; want true with a probe's ticket", ok, tk)
	}
	wantState(t, b, HalfOpen)
	return tk
}

var (
	errA = errors.New("redis down A")
	errB = errors.New("redis down B")
)

func TestBreakerOpensAtFailures(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures int // BreakerOptions.Failures
		want     int // effective
	}{
		{"one", 1, 1},
		{"two", 2, 2},
		{"five", 5, 5},
		{"ten", 10, 10},
		{"default", 0, 5},
		{"negative means default", -3, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: tc.failures, Backoff: 100 * time.Millisecond})
			for i := 1; i < tc.want; i++ {
				b.failure(errB, 0)
				wantState(t, b, Closed)
				if ok, tk := b.allow(); !ok || tk != 0 {
					t.Fatalf("after %d failures allow = %v, %d; want true, 0", i, ok, tk)
				}
			}
			if len(log.all()) != 0 {
				t.Fatalf("onChange called before the breaker opened: %v", log.all())
			}
			clk.advance(time.Millisecond)
			b.failure(errA, 0)
			wantState(t, b, Open)
			st := b.get()
			if st.Reason != errA || !st.Since.Equal(clk.now()) || !st.Until.Equal(clk.now().Add(100*time.Millisecond)) {
				t.Fatalf("status = %+v, want reason %v, since %v, until +100ms", st, errA, clk.now())
			}
			if got := b.opened.Load(); got != 1 {
				t.Fatalf("opened = %d, want 1", got)
			}
			if got := log.all(); len(got) != 1 || got[0].State != Open {
				t.Fatalf("onChange got %+v, want one open", got)
			}
		})
	}
}

func TestBreakerSuccessResetsFailures(t *testing.T) {
	const failures = 4
	for before := 1; before < failures; before++ {
		t.Run(fmt.Sprintf("success after %d", before), func(t *testing.T) {
			b, _, _ := newTestBreaker(t, BreakerOptions{Failures: failures})
			failN(b, before, errA)
			b.success(0)
			if got := b.failures.Load(); got != 0 {
				t.Fatalf("failures after a success = %d, want 0", got)
			}
			failN(b, failures-1, errA)
			wantState(t, b, Closed)
			b.failure(errA, 0)
			wantState(t, b, Open)
		})
	}
}

func TestBreakerRejectsWhileOpen(t *testing.T) {
	const backoff = 100 * time.Millisecond
	for _, tc := range []struct {
		name  string
		steps []time.Duration // clock advances; one allow() after each
	}{
		{"at once", []time.Duration{0}},
		{"many at once", []time.Duration{0, 0, 0, 0, 0}},
		{"through the backoff", []time.Duration{10 * time.Millisecond, 30 * time.Millisecond, 59 * time.Millisecond}},
		{"up to the last nanosecond", []time.Duration{backoff - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, _ := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: backoff})
			b.failure(errA, 0)
			until := b.get().Until
			for i, d := range tc.steps {
				clk.advance(d)
				if ok, tk := b.allow(); ok || tk != 0 {
					t.Fatalf("allow %d while open = %v, %d; want false, 0", i, ok, tk)
				}
				if got := b.rejected.Load(); got != int64(i+1) {
					t.Fatalf("rejected = %d after %d refusals", got, i+1)
				}
				if got, want := b.retryAfter(), until.Sub(clk.now()); got != want {
					t.Fatalf("retryAfter = %v, want %v", got, want)
				}
				wantState(t, b, Open)
			}
		})
	}
}

func TestBreakerOneProbeAtBackoffEnd(t *testing.T) {
	b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 2, Backoff: 50 * time.Millisecond})
	failN(b, 2, errA)
	until := b.get().Until

	clk.set(until.Add(-1))
	if ok, _ := b.allow(); ok {
		t.Fatal("allow 1 ns before the end of the backoff = true")
	}
	clk.set(until)
	ok, tk := b.allow()
	if !ok || tk == 0 {
		t.Fatalf("allow at the end of the backoff = %v, %d; want true with a non-zero ticket", ok, tk)
	}
	st := b.get()
	if st.State != HalfOpen || !st.Since.Equal(until) || st.Reason != errA || !st.Until.IsZero() {
		t.Fatalf("status = %+v, want half-open since %v, reason %v, no until", st, until, errA)
	}
	for i := range 5 {
		if ok, tk2 := b.allow(); ok || tk2 != 0 {
			t.Fatalf("allow %d during the probe = %v, %d; want false, 0", i, ok, tk2)
		}
	}
	if got := b.rejected.Load(); got != 1+5 {
		t.Fatalf("rejected = %d, want 6", got)
	}
	if got := b.retryAfter(); got != 0 {
		t.Fatalf("retryAfter while half-open = %v, want 0", got)
	}
	if got := log.all(); len(got) != 2 || got[1].State != HalfOpen {
		t.Fatalf("onChange got %+v, want open then half-open", got)
	}
}

func TestBreakerConcurrentProbe(t *testing.T) {
	const goroutines, rounds = 50, 20
	b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: 10 * time.Millisecond, MaxBackoff: time.Second})
	log.b = nil // the other goroutines hold the lock at times: no TryLock check here
	b.failure(errA, 0)
	var last ticket
	for round := range rounds {
		clk.set(b.get().Until)
		rejected := b.rejected.Load()
		var (
			start   = make(chan struct{})
			wg      sync.WaitGroup
			oks     atomic.Int64
			tickets = make(chan ticket, goroutines)
		)
		for range goroutines {
			wg.Go(func() {
				<-start
				if ok, tk := b.allow(); ok {
					oks.Add(1)
					tickets <- tk
				} else if tk != 0 {
					t.Errorf("refused allow with ticket %d", tk)
				}
			})
		}
		close(start)
		wg.Wait()
		close(tickets)
		if got := oks.Load(); got != 1 {
			t.Fatalf("round %d: %d of %d concurrent allow() calls passed, want exactly 1", round, got, goroutines)
		}
		if got := b.rejected.Load() - rejected; got != goroutines-1 {
			t.Fatalf("round %d: rejected grew by %d, want %d", round, got, goroutines-1)
		}
		tk := <-tickets
		if tk == 0 || tk <= last {
			t.Fatalf("round %d: probe ticket %d, previous %d: want non-zero and newer", round, tk, last)
		}
		last = tk
		wantState(t, b, HalfOpen)
		b.failure(errA, tk)
		wantState(t, b, Open)
	}
}

func TestBreakerProbeSuccessCloses(t *testing.T) {
	const backoff = 20 * time.Millisecond
	for _, failedProbes := range []int{0, 1, 3, 10} {
		t.Run(fmt.Sprintf("after %d failed probes", failedProbes), func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 3, Backoff: backoff, MaxBackoff: time.Second})
			failN(b, 3, errA)
			for range failedProbes {
				b.failure(errA, probe(t, b, clk))
			}
			tk := probe(t, b, clk)
			b.success(tk)
			wantState(t, b, Closed)
			st := b.get()
			if st.Reason != nil || !st.Since.Equal(clk.now()) || !st.Until.IsZero() {
				t.Fatalf("closed status = %+v, want no reason, since now, no until", st)
			}
			if got := log.all(); got[len(got)-1].State != Closed {
				t.Fatalf("last onChange = %+v, want closed", got[len(got)-1])
			}
			if b.backoff != backoff {
				t.Fatalf("backoff after closing = %v, want %v", b.backoff, backoff)
			}
			if ok, tk := b.allow(); !ok || tk != 0 {
				t.Fatalf("allow once closed = %v, %d; want true, 0", ok, tk)
			}
			// The count starts over, and the next opening lasts Backoff.
			failN(b, 2, errB)
			wantState(t, b, Closed)
			b.failure(errB, 0)
			if got := openFor(t, b); got != backoff {
				t.Fatalf("next opening lasts %v, want %v", got, backoff)
			}
		})
	}
}

func TestBreakerBackoffDoubles(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name             string
		backoff, maxBack time.Duration
		want             []time.Duration // the successive openings
	}{
		{"doubles then caps", 100 * ms, time.Second, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second}},
		{"cap not a power of two", 30 * ms, 100 * ms, []time.Duration{30 * ms, 60 * ms, 100 * ms, 100 * ms}},
		{"cap equals backoff", 100 * ms, 100 * ms, []time.Duration{100 * ms, 100 * ms, 100 * ms}},
		{"cap below backoff is raised", 100 * ms, 10 * ms, []time.Duration{100 * ms, 100 * ms}},
		{"defaults", 0, 0, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5 * time.Second, 5 * time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: tc.backoff, MaxBackoff: tc.maxBack})
			b.failure(errA, 0)
			for i, want := range tc.want {
				if i > 0 {
					b.failure(errB, probe(t, b, clk))
				}
				if got := openFor(t, b); got != want {
					t.Fatalf("opening %d lasts %v, want %v", i, got, want)
				}
				if got := b.retryAfter(); got != want {
					t.Fatalf("opening %d: retryAfter = %v, want %v", i, got, want)
				}
			}
			if got, want := b.opened.Load(), int64(len(tc.want)); got != want {
				t.Fatalf("opened = %d, want %d", got, want)
			}
			// The log alternates open, half-open, open, ...
			got := log.all()
			if len(got) != 2*len(tc.want)-1 {
				t.Fatalf("onChange called %d times, want %d", len(got), 2*len(tc.want)-1)
			}
			for i, st := range got {
				if want := []BreakerState{Open, HalfOpen}[i%2]; st.State != want {
					t.Fatalf("transition %d = %v, want %v", i, st.State, want)
				}
			}
		})
	}
}

func TestBreakerIgnoresForeignTickets(t *testing.T) {
	// Each case brings the breaker to a HalfOpen state with a current probe
	// and an older one, then calls act. Nothing may change.
	type setup struct {
		b          *breaker
		clk        *breakerClock
		cur, older ticket
	}
	for _, tc := range []struct {
		name string
		act  func(s setup)
	}{
		{"success ticket 0", func(s setup) { s.b.success(0) }},
		{"failure ticket 0", func(s setup) { s.b.failure(errB, 0) }},
		{"many failures ticket 0", func(s setup) { failN(s.b, 20, errB) }},
		{"success of an older probe", func(s setup) { s.b.success(s.older) }},
		{"failure of an older probe", func(s setup) { s.b.failure(errB, s.older) }},
		{"success of a ticket never issued", func(s setup) { s.b.success(s.cur + 1) }},
		{"failure of a ticket never issued", func(s setup) { s.b.failure(errB, s.cur+1) }},
	} {
		for _, olderFate := range []string{"failed", "timed out"} {
			t.Run(tc.name+"/older probe "+olderFate, func(t *testing.T) {
				b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: 10 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond})
				b.failure(errA, 0)
				older := probe(t, b, clk)
				if olderFate == "failed" {
					b.failure(errA, older)
				} else {
					clk.advance(50*time.Millisecond + 1)
					if ok, _ := b.allow(); ok {
						t.Fatal("allow after the probe timed out = true")
					}
				}
				wantState(t, b, Open)
				// While Open, the older probe's answer changes nothing either.
				before, calls := b.get(), len(log.all())
				b.success(older)
				b.failure(errB, older)
				if got := b.get(); got != before || len(log.all()) != calls {
					t.Fatalf("older probe's answer while open changed %+v to %+v", before, got)
				}
				cur := probe(t, b, clk)
				if cur == older || cur == 0 {
					t.Fatalf("new probe ticket %d, older %d", cur, older)
				}
				before, calls = b.get(), len(log.all())
				opened, backoff := b.opened.Load(), b.backoff
				tc.act(setup{b, clk, cur, older})
				if got := b.get(); got != before {
					t.Fatalf("status changed from %+v to %+v", before, got)
				}
				wantState(t, b, HalfOpen)
				if n := len(log.all()); n != calls {
					t.Fatalf("onChange called %d more times", n-calls)
				}
				if b.opened.Load() != opened || b.backoff != backoff {
					t.Fatalf("opened %d→%d, backoff %v→%v", opened, b.opened.Load(), backoff, b.backoff)
				}
				// The current probe still decides.
				b.success(cur)
				wantState(t, b, Closed)
			})
		}
	}
}

func TestBreakerProbeTimeout(t *testing.T) {
	const backoff, timeout = 40 * time.Millisecond, 300 * time.Millisecond
	for _, tc := range []struct {
		name   string
		after  time.Duration // from the probe to the allow() that notices
		reopen bool
	}{
		{"well within", timeout / 2, false},
		{"1 ns before", timeout - 1, false},
		{"1 ns after", timeout + 1, true},
		{"long after", 10 * timeout, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: backoff, ProbeTimeout: timeout})
			b.failure(errA, 0)
			tk := probe(t, b, clk)
			clk.advance(tc.after)
			rejected := b.rejected.Load()
			if ok, _ := b.allow(); ok {
				t.Fatal("allow during the probe = true")
			}
			if got := b.rejected.Load(); got != rejected+1 {
				t.Fatalf("rejected grew by %d, want 1", got-rejected)
			}
			if !tc.reopen {
				wantState(t, b, HalfOpen)
				b.success(tk)
				wantState(t, b, Closed)
				return
			}
			st := b.get()
			if st.State != Open || st.Reason != errProbeTimeout || !st.Since.Equal(clk.now()) || !st.Until.Equal(clk.now().Add(2*backoff)) {
				t.Fatalf("after the timeout status = %+v, want open for %v from now, reason %v", st, 2*backoff, errProbeTimeout)
			}
			if got := log.all(); len(got) != 3 || got[2].State != Open || got[2].Reason != errProbeTimeout {
				t.Fatalf("onChange got %+v, want open, half-open, open(timeout)", got)
			}
			// The unanswered probe's late answer changes nothing.
			b.success(tk)
			wantState(t, b, Open)
			// The next probe is a new one, after the doubled backoff.
			if next := probe(t, b, clk); next == tk {
				t.Fatalf("next probe reuses ticket %d", tk)
			}
		})
	}
}

func TestBreakerTrip(t *testing.T) {
	const backoff = 25 * time.Millisecond
	errTrip := errors.New("tripped")
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, b *breaker, clk *breakerClock) ticket // returns the probe's ticket, if any
		change  bool
		lasts   time.Duration
	}{
		{"closed, no failures", func(*testing.T, *breaker, *breakerClock) ticket { return 0 }, true, backoff},
		{"closed, some failures", func(_ *testing.T, b *breaker, _ *breakerClock) ticket { failN(b, 2, errA); return 0 }, true, backoff},
		{"half-open", func(t *testing.T, b *breaker, clk *breakerClock) ticket {
			failN(b, 3, errA)
			return probe(t, b, clk)
		}, true, 2 * backoff},
		{"open", func(_ *testing.T, b *breaker, _ *breakerClock) ticket { failN(b, 3, errA); return 0 }, false, backoff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 3, Backoff: backoff, MaxBackoff: time.Second})
			tk := tc.prepare(t, b, clk)
			clk.advance(time.Millisecond)
			before, calls := b.get(), len(log.all())
			b.trip(errTrip)
			wantState(t, b, Open)
			if !tc.change {
				if got := b.get(); got != before || len(log.all()) != calls {
					t.Fatalf("trip of an open breaker changed %+v to %+v", before, got)
				}
				return
			}
			st := b.get()
			if st.Reason != errTrip || !st.Since.Equal(clk.now()) || st.Until.Sub(st.Since) != tc.lasts {
				t.Fatalf("status = %+v, want open since now for %v, reason %v", st, tc.lasts, errTrip)
			}
			if got := log.all(); len(got) != calls+1 || got[calls].Reason != errTrip {
				t.Fatalf("onChange got %+v, want one more: open(%v)", got, errTrip)
			}
			if ok, _ := b.allow(); ok {
				t.Fatal("allow right after trip = true")
			}
			if tk != 0 {
				b.success(tk) // the probe that the trip overtook
				wantState(t, b, Open)
			}
		})
	}
}

func TestBreakerRetryAfter(t *testing.T) {
	const backoff = 100 * time.Millisecond
	b, clk, _ := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: backoff})
	check := func(want time.Duration) {
		t.Helper()
		if got := b.retryAfter(); got != want {
			t.Fatalf("at %v (%v): retryAfter = %v, want %v", clk.now().Sub(breakerEpoch), b.get().State, got, want)
		}
	}
	check(0) // closed
	b.failure(errA, 0)
	for _, step := range []struct{ advance, want time.Duration }{
		{0, backoff},
		{time.Millisecond, backoff - time.Millisecond},
		{49 * time.Millisecond, 50 * time.Millisecond},
		{50*time.Millisecond - 1, 1},
		{1, 0},
		{time.Hour, 0}, // past the end but no allow() yet: still Open, never negative
	} {
		clk.advance(step.advance)
		check(step.want)
	}
	wantState(t, b, Open)
	tk, _ := b.allow()
	if !tk {
		t.Fatal("no probe")
	}
	check(0) // half-open
}

func TestBreakerOnChangeSequence(t *testing.T) {
	const (
		ms      = time.Millisecond
		backoff = 10 * ms
		timeout = 100 * ms
	)
	errTrip := errors.New("tripped")
	at := func(d time.Duration) time.Time { return breakerEpoch.Add(d) }
	tTimeout := at(33*ms + timeout + 1)
	b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 2, Backoff: backoff, MaxBackoff: time.Second, ProbeTimeout: timeout})
	// Each step sets the clock, acts, and expects one transition or none.
	for i, step := range []struct {
		name string
		at   time.Time
		act  func()
		want *BreakerStatus
	}{
		{"first failure", at(1 * ms), func() { b.failure(errA, 0) }, nil},
		{"second failure opens", at(2 * ms), func() { b.failure(errA, 0) },
			&BreakerStatus{State: Open, Since: at(2 * ms), Until: at(12 * ms), Reason: errA}},
		{"refused while open", at(5 * ms), func() { b.allow() }, nil},
		{"probe", at(12 * ms), func() { b.allow() },
			&BreakerStatus{State: HalfOpen, Since: at(12 * ms), Reason: errA}},
		{"stale success", at(12 * ms), func() { b.success(0) }, nil},
		{"probe fails", at(13 * ms), func() { b.failure(errB, b.probe) },
			&BreakerStatus{State: Open, Since: at(13 * ms), Until: at(33 * ms), Reason: errB}},
		{"trip while open", at(14 * ms), func() { b.trip(errTrip) }, nil},
		{"second probe", at(33 * ms), func() { b.allow() },
			&BreakerStatus{State: HalfOpen, Since: at(33 * ms), Reason: errB}},
		{"probe not yet late", at(33*ms + timeout - 1), func() { b.allow() }, nil},
		{"probe unanswered", tTimeout, func() { b.allow() },
			&BreakerStatus{State: Open, Since: tTimeout, Until: tTimeout.Add(40 * ms), Reason: errProbeTimeout}},
		{"third probe", tTimeout.Add(40 * ms), func() { b.allow() },
			&BreakerStatus{State: HalfOpen, Since: tTimeout.Add(40 * ms), Reason: errProbeTimeout}},
		{"old probe's failure", at(190 * ms), func() { b.failure(errB, b.probe-1) }, nil},
		{"probe succeeds", at(200 * ms), func() { b.success(b.probe) },
			&BreakerStatus{State: Closed, Since: at(200 * ms)}},
		{"success while closed", at(250 * ms), func() { b.success(0) }, nil},
		{"trip", at(300 * ms), func() { b.trip(errTrip) },
			&BreakerStatus{State: Open, Since: at(300 * ms), Until: at(300*ms + backoff), Reason: errTrip}},
	} {
		clk.set(step.at)
		before := len(log.all())
		step.act()
		got := log.all()[before:]
		if step.want == nil {
			if len(got) != 0 {
				t.Fatalf("step %d (%s): unexpected transitions %+v", i, step.name, got)
			}
			continue
		}
		if len(got) != 1 {
			t.Fatalf("step %d (%s): %d transitions %+v, want one", i, step.name, len(got), got)
		}
		g, w := got[0], *step.want
		if g.State != w.State || !g.Since.Equal(w.Since) || !g.Until.Equal(w.Until) || g.Reason != w.Reason {
			t.Fatalf("step %d (%s): got {%v since %v until %v reason %v}, want {%v since %v until %v reason %v}",
				i, step.name, g.State, g.Since.Sub(breakerEpoch), g.Until, g.Reason, w.State, w.Since.Sub(breakerEpoch), w.Until, w.Reason)
		}
		if st := b.get(); st != g {
			t.Fatalf("step %d (%s): delivered %+v, status %+v", i, step.name, g, st)
		}
	}
	all := log.all()
	for i, st := range all {
		if st.seq != int64(i+1) {
			t.Fatalf("delivery %d has seq %d, want %d", i, st.seq, i+1)
		}
	}
}

// TestBreakerOnChangeDropsStale builds the interleaving in which two
// goroutines make transitions in one order and reach notify in the other:
// the older transition must not be delivered after the newer one.
func TestBreakerOnChangeDropsStale(t *testing.T) {
	for _, tc := range []struct {
		name  string
		order []int // which transitions reach notify, in order
		want  []int // which are delivered
	}{
		{"in order", []int{0, 1, 2}, []int{0, 1, 2}},
		{"newest first", []int{2, 1, 0}, []int{2}},
		{"middle overtaken", []int{0, 2, 1}, []int{0, 2}},
		{"first overtaken", []int{1, 0, 2}, []int{1, 2}},
		{"twice", []int{1, 1}, []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: 10 * time.Millisecond})
			var sts []*BreakerStatus
			// As failure(), allow() and success() make them, without their
			// notify.
			b.mu.Lock()
			sts = append(sts, b.openLocked(clk.now(), errA))
			clk.advance(10 * time.Millisecond)
			sts = append(sts, b.setLocked(HalfOpen, clk.now(), b.status.Reason))
			clk.advance(time.Millisecond)
			sts = append(sts, b.setLocked(Closed, clk.now(), nil))
			b.mu.Unlock()
			for _, i := range tc.order {
				b.notify(sts[i])
			}
			got := log.all()
			if len(got) != len(tc.want) {
				t.Fatalf("delivered %d transitions, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				if got[i] != *sts[w] {
					t.Fatalf("delivery %d = %+v, want transition %d %+v", i, got[i], w, *sts[w])
				}
			}
		})
	}
}

// TestBreakerOnChangeConcurrent drives the breaker from many goroutines:
// onChange must see transitions in order, outside the lock, and end on the
// breaker's status.
func TestBreakerOnChangeConcurrent(t *testing.T) {
	b, clk, log := newTestBreaker(t, BreakerOptions{Failures: 3, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, ProbeTimeout: 2 * time.Millisecond})
	log.b = nil // other goroutines hold the lock at times: no TryLock check here
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				if i%7 == 0 {
					clk.advance(time.Millisecond)
				}
				ok, tk := b.allow()
				switch {
				case !ok:
				case (g+i)%3 == 0:
					b.success(tk)
				case (g+i)%97 == 0:
					b.trip(errB)
				default:
					b.failure(errA, tk)
				}
			}
		})
	}
	wg.Wait()
	got := log.all()
	if len(got) < 10 {
		t.Fatalf("only %d transitions delivered: the test drives too little", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].seq <= got[i-1].seq {
			t.Fatalf("delivery %d has seq %d after %d: stale or out of order", i, got[i].seq, got[i-1].seq)
		}
		if got[i].Since.Before(got[i-1].Since) {
			t.Fatalf("delivery %d since %v before the previous one's %v", i, got[i].Since, got[i-1].Since)
		}
	}
	if last, st := got[len(got)-1], b.get(); last != st {
		t.Fatalf("last delivered %+v, status %+v", last, st)
	}
	if int64(len(got)) > b.transitions.Load() {
		t.Fatalf("delivered %d of %d transitions", len(got), b.transitions.Load())
	}
}

func TestBreakerJitterBounds(t *testing.T) {
	const (
		backoff  = 100 * time.Millisecond
		maxBack  = 800 * time.Millisecond
		jitter   = 0.2
		openings = 4000
	)
	b, clk, _ := newTestBreaker(t, BreakerOptions{Failures: 1, Backoff: backoff, MaxBackoff: maxBack, Jitter: jitter})
	type spread struct{ lo, hi float64 }
	seen := map[time.Duration]*spread{}
	nominal := backoff
	b.failure(errA, 0)
	for i := range openings {
		d := openFor(t, b)
		lo := time.Duration(float64(nominal) * (1 - jitter))
		hi := time.Duration(float64(nominal) * (1 + jitter))
		if d < lo || d > hi {
			t.Fatalf("opening %d lasts %v, nominal %v: outside [%v, %v]", i, d, nominal, lo, hi)
		}
		r := float64(d) / float64(nominal)
		s := seen[nominal]
		if s == nil {
			s = &spread{r, r}
			seen[nominal] = s
		}
		s.lo, s.hi = min(s.lo, r), max(s.hi, r)
		// Alternate: a few failed probes (growing backoff), then a success
		// and a fresh opening.
		tk := probe(t, b, clk)
		if i%6 == 5 {
			b.success(tk)
			b.failure(errA, 0)
			nominal = backoff
		} else {
			b.failure(errA, tk)
			nominal = min(2*nominal, maxBack)
		}
	}
	for _, n := range []time.Duration{backoff, 2 * backoff, 4 * backoff, maxBack} {
		s := seen[n]
		if s == nil {
			t.Fatalf("no opening with nominal backoff %v", n)
		}
		// Jitter is applied: the openings spread over most of ±20 %.
		if s.lo > 0.9 || s.hi < 1.1 {
			t.Errorf("nominal %v: openings spread only over [%.3f, %.3f] of it", n, s.lo, s.hi)
		}
	}
}

func TestBreakerOptionDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   BreakerOptions
		want BreakerOptions
	}{
		{"zero", BreakerOptions{}, BreakerOptions{Failures: 5, Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, Jitter: 0.2, ProbeTimeout: time.Second}},
		{"negative jitter is none", BreakerOptions{Jitter: -0.5}, BreakerOptions{Failures: 5, Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, Jitter: 0, ProbeTimeout: time.Second}},
		{"jitter above 1 capped", BreakerOptions{Jitter: 3}, BreakerOptions{Failures: 5, Backoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second, Jitter: 1, ProbeTimeout: time.Second}},
		{"max below backoff", BreakerOptions{Failures: 2, Backoff: time.Second, MaxBackoff: time.Millisecond, Jitter: 0.1, ProbeTimeout: time.Minute},
			BreakerOptions{Failures: 2, Backoff: time.Second, MaxBackoff: time.Second, Jitter: 0.1, ProbeTimeout: time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in
			got.fill()
			if got != tc.want {
				t.Fatalf("fill(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}
