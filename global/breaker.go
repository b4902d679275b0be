package global

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// BreakerState is where a circuit breaker stands.
type BreakerState uint8

// The breaker's states.
const (
	// Closed: calls go to Redis; failures are counted.
	Closed BreakerState = iota
	// Open: calls fail at once, without going to Redis, until the backoff
	// ends.
	Open
	// HalfOpen: the backoff is over and one probe call is under way; the
	// others fail at once as while Open. The probe's success closes the
	// breaker, its failure opens it again for a longer backoff.
	HalfOpen
)

// String returns the state's name.
func (s BreakerState) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "unknown"
}

// BreakerOptions tunes a breaker. The zero value of each field means its
// default.
type BreakerOptions struct {
	// Failures is how many failures in a row open the breaker. Default 5.
	Failures int
	// Backoff is how long the breaker stays open the first time. Each
	// failed probe doubles it, up to MaxBackoff. Default 100 ms.
	Backoff time.Duration
	// MaxBackoff caps the backoff. Default 5 s.
	MaxBackoff time.Duration
	// Jitter spreads each backoff by up to this fraction either way, so
	// that instances do not probe in step. Default 0.2; negative means none.
	Jitter float64
	// ProbeTimeout is how long a probe may stay unanswered before it counts
	// as failed. Default 1 s.
	ProbeTimeout time.Duration
}

func (o *BreakerOptions) fill() {
	if o.Failures <= 0 {
		o.Failures = 5
	}
	if o.Backoff <= 0 {
		o.Backoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	o.MaxBackoff = max(o.MaxBackoff, o.Backoff)
	if o.Jitter == 0 {
		o.Jitter = 0.2
	}
	o.Jitter = min(max(o.Jitter, 0), 1)
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = time.Second
	}
}

// BreakerStatus is a breaker's state as of one moment.
type BreakerStatus struct {
	State BreakerState
	// Since is when the breaker entered State.
	Since time.Time
	// Reason is the failure that opened the breaker (nil when Closed).
	Reason error
	// Until is when an Open breaker lets its next probe through.
	Until time.Time
	// Node is the address of the master the breaker stands for, on a
	// cluster; empty for the breaker of a single node (or, on a cluster,
	// of keys whose master is not known yet).
	Node string

	seq int64 // orders transitions for notify
}

// breaker is a circuit breaker over one Redis node. Its closed state costs
// a caller one atomic load; the rest runs under a mutex, only while Redis
// fails.
type breaker struct {
	node     string // BreakerStatus.Node
	opts     BreakerOptions
	now      func() time.Time
	onChange func(BreakerStatus) // called outside the lock, in transition order per breaker

	state    atomic.Uint32 // BreakerState
	failures atomic.Int64  // in a row, while Closed
	until    atomic.Int64  // status.Until in Unix ns, for retryAfter without the lock

	mu      sync.Mutex
	status  BreakerStatus
	backoff time.Duration // the next open period, before jitter
	probe   ticket        // the newest probe's

	probing   atomic.Bool  // HalfOpen: a probe is out (else the next call is one)
	probeAtNs atomic.Int64 // when the probe of HalfOpen went out, Unix ns (read without the lock)

	notifyMu    sync.Mutex // serialises onChange calls
	delivered   int64      // the newest transition given to onChange; under notifyMu
	transitions atomic.Int64
	opened      atomic.Int64
	rejected    atomic.Int64 // calls refused while open
}

func newBreaker(opts BreakerOptions, now func() time.Time, onChange func(BreakerStatus)) *breaker {
	opts.fill()
	b := &breaker{opts: opts, now: now, onChange: onChange, backoff: opts.Backoff}
	b.status = BreakerStatus{State: Closed, Since: now()}
	return b
}

// ticket identifies the call a breaker let through: 0 for an ordinary
// call, else the probe's number. Only the current probe's outcome moves a
// breaker that is not Closed: a late answer to a call sent before it
// opened says nothing of Redis now.
type ticket uint64

// allow reports whether a call may go to Redis now, and its ticket; the one
// call that a HalfOpen breaker lets through gets a probe's.
func (b *breaker) allow() (ok bool, t ticket) {
	if BreakerState(b.state.Load()) == Closed {
		return true, 0
	}
	b.mu.Lock()
	now := b.now()
	var st *BreakerStatus
	switch b.status.State {
	case Closed:
		ok = true
	case Open:
		if !now.Before(b.status.Until) {
			st = b.setLocked(HalfOpen, now, b.status.Reason)
			b.probeAtNs.Store(now.UnixNano())
			b.probing.Store(true)
			b.probe++
			ok, t = true, b.probe
		}
	case HalfOpen:
		switch {
		case !b.probing.Load():
			// The probe's caller left before it had an answer (release):
			// this call is the probe now.
			b.probeAtNs.Store(now.UnixNano())
			b.probing.Store(true)
			b.probe++
			ok, t = true, b.probe
		case time.Duration(now.UnixNano()-b.probeAtNs.Load()) > b.opts.ProbeTimeout:
			// The probe was never answered: count it failed, and probe
			// again after the next backoff.
			st = b.openLocked(now, errProbeTimeout)
		}
	}
	b.mu.Unlock()
	if !ok {
		b.rejected.Add(1)
	}
	b.notify(st)
	return ok, t
}

// release gives back the probe whose caller left before it had an
// answer (its call was never sent, or its outcome will never be known):
// the next call becomes the probe, at once, and the backoff stays as it is.
func (b *breaker) release(t ticket) {
	if t == 0 {
		return
	}
	b.mu.Lock()
	if b.status.State == HalfOpen && t == b.probe {
		b.probing.Store(false)
	}
	b.mu.Unlock()
}

// refuses reports whether a call now would be refused, without taking a
// probe: the breaker is open with backoff left, or half-open with its
// probe out and not yet overdue.
func (b *breaker) refuses() bool {
	switch BreakerState(b.state.Load()) {
	case Closed:
		return false
	case Open:
		return b.retryAfter() > 0
	}
	return b.probing.Load() && time.Duration(b.now().UnixNano()-b.probeAtNs.Load()) <= b.opts.ProbeTimeout
}

// success records a call that Redis answered.
func (b *breaker) success(t ticket) {
	if BreakerState(b.state.Load()) == Closed {
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
		return
	}
	b.mu.Lock()
	var st *BreakerStatus
	if b.status.State == HalfOpen && t == b.probe {
		st = b.setLocked(Closed, b.now(), nil)
		b.backoff = b.opts.Backoff
		b.failures.Store(0)
	}
	b.mu.Unlock()
	b.notify(st)
}

// record records how Redis answered a call: a failure when err says it
// was unavailable, else a success.
func (b *breaker) record(err error, t ticket) {
	if countsAsFailure(err) {
		b.failure(err, t)
	} else {
		b.success(t)
	}
}

// failure records a call that failed because Redis did (err says how).
func (b *breaker) failure(err error, t ticket) {
	if BreakerState(b.state.Load()) == Closed && b.failures.Add(1) < int64(b.opts.Failures) {
		return
	}
	b.mu.Lock()
	var st *BreakerStatus
	switch b.status.State {
	case Closed:
		if b.failures.Load() >= int64(b.opts.Failures) {
			st = b.openLocked(b.now(), err)
		}
	case HalfOpen:
		if t == b.probe {
			st = b.openLocked(b.now(), err)
		}
	}
	b.mu.Unlock()
	b.notify(st)
}

// trip opens the breaker now, whatever its count of failures.
func (b *breaker) trip(err error) {
	b.mu.Lock()
	var st *BreakerStatus
	if b.status.State != Open {
		st = b.openLocked(b.now(), err)
	}
	b.mu.Unlock()
	b.notify(st)
}

// openLocked opens the breaker for the next backoff. It requires b.mu.
func (b *breaker) openLocked(now time.Time, err error) *BreakerStatus {
	d := b.backoff
	if j := b.opts.Jitter; j > 0 {
		d = time.Duration(float64(d) * (1 + j*(2*rand.Float64()-1)))
	}
	b.backoff = min(2*b.backoff, b.opts.MaxBackoff)
	st := b.setLocked(Open, now, err)
	b.status.Until = now.Add(d)
	b.until.Store(b.status.Until.UnixNano())
	if st != nil {
		st.Until = b.status.Until
	}
	b.opened.Add(1)
	return st
}

// setLocked moves the breaker to state and returns a copy of the new
// status for notify. It requires b.mu.
func (b *breaker) setLocked(state BreakerState, now time.Time, reason error) *BreakerStatus {
	if state == b.status.State {
		b.status.Reason = reason
		return nil
	}
	b.status = BreakerStatus{State: state, Since: now, Reason: reason, Node: b.node, seq: b.transitions.Add(1)}
	b.state.Store(uint32(state))
	st := b.status
	return &st
}

func (b *breaker) notify(st *BreakerStatus) {
	if st == nil || b.onChange == nil {
		return
	}
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	if st.seq <= b.delivered {
		return // a newer transition was delivered first: this one is stale
	}
	b.delivered = st.seq
	b.onChange(*st)
}

// get returns the breaker's status.
func (b *breaker) get() BreakerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// retryAfter returns how long an Open breaker stays open from now (0 when
// it lets calls through).
func (b *breaker) retryAfter() time.Duration {
	if BreakerState(b.state.Load()) != Open {
		return 0
	}
	return max(time.Duration(b.until.Load()-b.now().UnixNano()), 0)
}
