//go:build measure

package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestFaultMeasure measures what each network or server fault costs the
// callers, against a run without fault in the same test, and prints it
// (t.Logf). It asserts nothing about timing, only what cannot be flaky: no
// caller error under a failure policy, every load goroutine ends, and (the
// package's TestMain) no goroutine leaks. It is built only with the
// measure tag, so CI does not run it:
//
//	go test -tags measure -count=1 -run TestFaultMeasure -v . 2>&1 | grep -v '^redis: '
//
// Setup: a redis-server of the test's own behind a toxiproxy, three
// Limiters with a client each, the real clock and the sync loop
// (SyncInterval 100 ms), Timeout 50 ms, a hybrid and a strict sliding
// window rule of 1 000 000 per minute, both FailLocal.
//
// Each phase runs 8 goroutines per instance, each deciding one rule for
// random users, timed with time.Now: 4 on the hybrid rule, paced at most at
// measurePaceHybrid decisions per second each, 4 on the strict rule at
// measurePaceStrict (a rate that the run without fault sustains). The load
// is paced so that it stays the same whatever Redis does (a gateway's
// requests do not come faster because Redis failed), which keeps the
// hybrid keys' demand, hence their leases, as before the fault, and the two
// cores unsaturated, so that the tails measure the library and not the
// scheduler. A phase first warms its 200 users without fault for
// measureWarm: leases are sized to the demand of the last sync interval and
// given back once a pass sees none, so only keys in use hold one when the
// fault starts. Then the load pauses for the time of one decision (the
// Stats snapshot), the fault is set and the same load, now recorded, runs
// for measureFor or measureCap decisions per goroutine, a tenth of it on
// 20 users new to the phase ("cold": without lease). The fault is then
// removed, and the next phase waits until every instance is Healthy again
// and its sync passes folded the counts.
//
// Rows per phase: hybrid (every hybrid decision); hy:lease* (warm keys,
// decided on the global view: from the lease, or by Redis when it answered
// in time, which only the phases where Redis answers have; told apart from
// FailLocal's decisions by Remaining, which FailLocal counts from Limit ÷
// 3); hy:fb (warm keys, decided by FailLocal); hy:cold; strict. Sources
// come from Stats deltas: remote and strict are the calls Redis answered;
// fallbk is what FailLocal decided (the strict rule's share is its
// decisions that Redis did not answer, the hybrid's the rest of Stats'
// FallbackLocal*); local is the hybrid decisions left. Stats'
// HybridInProcessAllowed+HybridInProcessDenied (st.loc in the second table) count them too,
// plus the warm stage's last interval, which no sync pass had folded yet
// when the phase started.
func TestFaultMeasure(t *testing.T) {
	const (
		instances = 3
		perInst   = 8
		warmUsers = 200
		coldUsers = 20
	)
	proc := redistest.StartProc(t)
	proxy := redistest.StartProxy(t, proc.Addr())
	logs := &logCounter{}
	rules := []Rule{
		{Name: "hybrid", Limit: measureLimit, Window: time.Minute, Mode: Hybrid, OnFailure: FailLocal},
		{Name: "strict", Limit: measureLimit, Window: time.Minute, Mode: Strict, OnFailure: FailLocal},
	}
	var lims []*Limiter
	for range instances {
		l, err := New(Config{
			Redis: faultClient(t, proxy.Addr()), Rules: rules, KeyPrefix: "measure",
			SyncInterval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond,
			Logger: slog.New(logs),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		lims = append(lims, l)
	}
	warm := make([]string, warmUsers)
	for i := range warm {
		warm[i] = fmt.Sprint("user", i)
	}

	phases := []struct {
		name         string
		inject, undo func()
	}{
		{"no fault", func() {}, func() {}},
		{"+200ms latency", func() { proxy.Latency(200 * time.Millisecond) }, proxy.Clear},
		{"black hole", proxy.BlackHole, proxy.Clear},
		{"reset peer", proxy.ResetPeer, proxy.Clear},
		{"slow close 200ms", func() { proxy.SlowClose(200 * time.Millisecond) }, proxy.Clear},
		{"kill 2s, restart", proc.Kill, func() { proc.Restart(t); proxy.Clear() }},
	}
	var results []phaseResult
	for pi, ph := range phases {
		// A window boundary in the phase would take every lease back.
		waitOutMinute(measureWarm + measureFor + 2*time.Second)
		cold := make([]string, coldUsers)
		for i := range cold {
			cold[i] = fmt.Sprintf("cold%d-%d", pi, i)
		}
		res := phaseResult{name: ph.name}
		var (
			stage   atomic.Int32 // see the stage constants
			parked  atomic.Int32
			release = make(chan struct{})
			wg      sync.WaitGroup
			workers []*measureWorker
		)
		for i, l := range lims {
			for g := range perInst {
				w := &measureWorker{
					rule: g % numRuleIdx,
					rng:  rand.New(rand.NewPCG(uint64(pi), uint64(i*perInst+g))),
				}
				workers = append(workers, w)
				wg.Go(func() { w.run(l, &stage, &parked, release, warm, cold) })
			}
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		var releaseOnce sync.Once
		stop := func() { // ends the load, parked goroutines included
			stage.Store(stageStop)
			releaseOnce.Do(func() { close(release) })
		}

		time.Sleep(measureWarm)
		// Pause the load for the snapshot, so that no decision straddles it.
		stage.Store(stagePark)
		for deadline := time.Now().Add(10 * time.Second); int(parked.Load()) < len(workers); {
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("%s: only %d of %d load goroutines paused within 10 s", ph.name, parked.Load(), len(workers))
			}
			time.Sleep(100 * time.Microsecond)
		}
		beforeInst := make([]Stats, len(lims))
		for i, l := range lims {
			beforeInst[i] = l.Stats()
			res.startHealth[i] = l.Health().State
		}
		stage.Store(stageMeasure)
		start := time.Now()
		releaseOnce.Do(func() { close(release) })
		ph.inject()
		select {
		case <-done: // every goroutine reached measureCap
		case <-time.After(measureFor):
		}
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			var buf strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
			t.Fatalf("%s: load goroutines still running 30 s after the phase's end:\n%s", ph.name, buf.String())
		}
		for i, l := range lims {
			res.health[i] = l.Health().State
		}
		undone := time.Now()
		ph.undo()
		res.recovery = -1
		if waitHealthy(lims, 20*time.Second) {
			res.recovery = time.Since(undone)
		}
		waitPasses(lims, 2, 5*time.Second) // fold the local counts, credit the fallbacks
		for i, l := range lims {
			st := l.Stats()
			res.stats = addStats(res.stats, subStats(st, beforeInst[i]), 1)
			// Since New: every fallback admission must be accounted for once
			// the instance is Healthy and its passes ran.
			res.owed += owed(st)
			res.pendingKeys += st.PendingKeys
			if o := owed(st); o != 0 || st.PendingKeys != 0 {
				res.notes = append(res.notes, fmt.Sprintf("%s: instance %d: owed %d, pending keys %d; stats %+v", ph.name, i, o, st.PendingKeys, st))
			}
		}
		for _, w := range workers {
			res.add(w)
			res.wall[w.rule] = max(res.wall[w.rule], w.last.Sub(start))
		}
		results = append(results, res)
		for r := range numRuleIdx {
			if res.errs[r] > 0 {
				t.Errorf("%s: %d errors from %s decisions under FailLocal; first: %v", ph.name, res.errs[r], rules[r].Name, res.firstErr[r])
			}
		}
	}
	for _, l := range lims {
		if err := l.Close(); err != nil {
			t.Logf("close: %v", err)
		}
	}
	t.Log("\n" + formatMeasure(results) + logs.String())
}

const (
	measureWarm       = 600 * time.Millisecond // warm stage of each phase, not recorded
	measureFor        = 2 * time.Second        // recorded stage of each phase, at most
	measureCap        = 12_000                 // recorded decisions per goroutine, at most
	measurePaceHybrid = 5_000                  // decisions per second per goroutine, at most
	measurePaceStrict = 250                    // the strict rule's: what the run without fault sustains
	measureLimit      = 1_000_000              // per minute, both rules
)

// Stages of a phase's load.
const (
	stageWarm    = iota // not recorded
	stagePark           // wait for release
	stageMeasure        // recorded
	stageStop
)

// Rules and latency classes of TestFaultMeasure.
const (
	ruleHybrid = iota
	ruleStrict
	numRuleIdx
)

const (
	clsLease = iota // hybrid, warm key, decided on the global view
	clsFb           // hybrid, warm key, decided by FailLocal
	clsCold         // hybrid, key new to the phase
	clsStrict
	numCls
)

// measureWorker is one load goroutine's loop and records.
type measureWorker struct {
	rule     int
	rng      *rand.Rand
	lat      [numCls][]time.Duration
	n, errs  int64
	denied   int64
	firstErr error
	last     time.Time // end of the last recorded decision
}

func (w *measureWorker) run(l *Limiter, stage, parked *atomic.Int32, release <-chan struct{}, warm, cold []string) {
	ctx := context.Background()
	name, every := "hybrid", time.Second/measurePaceHybrid
	if w.rule == ruleStrict {
		name, every = "strict", time.Second/measurePaceStrict
	}
	next := time.Now()
	for w.n < measureCap {
		st := stage.Load()
		switch st {
		case stageStop:
			return
		case stagePark:
			parked.Add(1)
			<-release
			st = stage.Load()
		}
		rec := st == stageMeasure
		user, isCold := warm[w.rng.IntN(len(warm))], false
		if rec && w.rng.IntN(10) == 0 {
			user, isCold = cold[w.rng.IntN(len(cold))], true
		}
		t0 := time.Now()
		d, err := l.Allow(ctx, name, user, t0)
		t1 := time.Now()
		if rec {
			w.record(d, err, isCold, t1.Sub(t0))
			w.last = t1
		}
		// Pace without catching up: a goroutine that fell behind (slow
		// decisions) does not then run unpaced.
		next = next.Add(every)
		if next.Before(t1.Add(-time.Millisecond)) {
			next = t1
		} else if ahead := next.Sub(t1); ahead > time.Millisecond {
			time.Sleep(ahead)
		}
	}
}

func (w *measureWorker) record(d Decision, err error, isCold bool, took time.Duration) {
	w.n++
	switch {
	case err != nil:
		w.errs++
		if w.firstErr == nil {
			w.firstErr = err
		}
		return
	case !d.Allowed:
		w.denied++
	}
	cls := clsStrict
	if w.rule == ruleHybrid {
		switch {
		case isCold:
			cls = clsCold
		case d.Remaining > measureLimit/2: // FailLocal counts from Limit ÷ 3
			cls = clsLease
		default:
			cls = clsFb
		}
	}
	w.lat[cls] = append(w.lat[cls], took)
}

// phaseResult is what one phase measured.
type phaseResult struct {
	name     string
	wall     [numRuleIdx]time.Duration // from the phase's start to its last decision
	lat      [numCls][]time.Duration
	n, errs  [numRuleIdx]int64
	denied   [numRuleIdx]int64
	firstErr [numRuleIdx]error
	stats    Stats          // deltas over the recorded stage and the recovery
	health   [3]HealthState // at the end of the recorded stage
	// at its start, when the warm stage may have degraded an instance
	// (a loaded machine: Timeout is 50 ms)
	startHealth [3]HealthState
	owed        int64 // fallback admissions since New not accounted for, at the end of the recovery
	pendingKeys int64 // then
	notes       []string
	recovery    time.Duration // from removing the fault to all Healthy; -1: not within the bound
}

func (p *phaseResult) add(w *measureWorker) {
	for c := range numCls {
		p.lat[c] = append(p.lat[c], w.lat[c]...)
	}
	r := w.rule
	p.n[r] += w.n
	p.errs[r] += w.errs
	p.denied[r] += w.denied
	if p.firstErr[r] == nil {
		p.firstErr[r] = w.firstErr
	}
}

// waitOutMinute returns at once if the current minute has need left, else
// after the next minute's start.
func waitOutMinute(need time.Duration) {
	now := time.Now()
	if left := now.Truncate(time.Minute).Add(time.Minute).Sub(now); left < need {
		time.Sleep(left + 100*time.Millisecond)
	}
}

// waitHealthy reports whether every Limiter is Healthy within bound.
func waitHealthy(lims []*Limiter, bound time.Duration) bool {
	deadline := time.Now().Add(bound)
	for {
		ok := true
		for _, l := range lims {
			ok = ok && l.Health().State == Healthy
		}
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitPasses waits (at most bound) until every Limiter's sync loop ran n
// more passes.
func waitPasses(lims []*Limiter, n int64, bound time.Duration) {
	from := make([]int64, len(lims))
	for i, l := range lims {
		from[i] = l.Stats().SyncPasses
	}
	deadline := time.Now().Add(bound)
	for i, l := range lims {
		for l.Stats().SyncPasses < from[i]+n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func subStats(a, b Stats) Stats { return addStats(a, b, -1) }

// addStats returns a + sign·b over the counters TestFaultMeasure reports.
func addStats(a, b Stats, sign int64) Stats {
	a.HybridInProcessAllowed += sign * b.HybridInProcessAllowed
	a.HybridInProcessDenied += sign * b.HybridInProcessDenied
	a.HybridRedis += sign * b.HybridRedis
	a.HybridRedisAllowed += sign * b.HybridRedisAllowed
	a.HybridRedisDenied += sign * b.HybridRedisDenied
	a.StrictAllowed += sign * b.StrictAllowed
	a.StrictDenied += sign * b.StrictDenied
	a.RedisErrors += sign * b.RedisErrors
	a.SyncPasses += sign * b.SyncPasses
	a.SyncFailures += sign * b.SyncFailures
	a.FallbackLocalAllowed += sign * b.FallbackLocalAllowed
	a.FallbackLocalDenied += sign * b.FallbackLocalDenied
	a.FallbackOpen += sign * b.FallbackOpen
	a.FallbackClosed += sign * b.FallbackClosed
	a.Timeouts += sign * b.Timeouts
	a.NotSent += sign * b.NotSent
	a.Abandoned += sign * b.Abandoned
	a.BreakerOpened += sign * b.BreakerOpened
	a.BreakerRejected += sign * b.BreakerRejected
	a.PendingKeys += sign * b.PendingKeys
	a.PendingDropped += sign * b.PendingDropped
	a.PendingExpired += sign * b.PendingExpired
	a.PendingFlushed += sign * b.PendingFlushed
	return a
}

// formatMeasure prints the two tables of TestFaultMeasure.
func formatMeasure(results []phaseResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-17s %-8s %7s %8s %4s %5s %7s %7s %7s %8s %8s %8s %8s\n",
		"phase", "rows", "n", "dec/s", "err", "deny", "local", "remote", "fallbk", "p50", "p99", "p999", "max")
	for _, p := range results {
		st := p.stats
		strictOK := st.StrictAllowed + st.StrictDenied
		strictFb := p.n[ruleStrict] - p.errs[ruleStrict] - strictOK
		remoteOK := st.HybridRedisAllowed + st.HybridRedisDenied
		hybridFb := st.FallbackLocalAllowed + st.FallbackLocalDenied + st.FallbackOpen + st.FallbackClosed - strictFb
		hybridLocal := p.n[ruleHybrid] - p.errs[ruleHybrid] - remoteOK - hybridFb
		rate := func(r int) string { return fmt.Sprintf("%.0f", float64(p.n[r])/p.wall[r].Seconds()) }
		all := slices.Concat(p.lat[clsLease], p.lat[clsFb], p.lat[clsCold])
		rows := []struct {
			name                   string
			lat                    []time.Duration
			n, err, deny           string
			local, remote, fallbck string
			rate                   string
		}{
			{"hybrid", all, itoa(p.n[ruleHybrid]), itoa(p.errs[ruleHybrid]), itoa(p.denied[ruleHybrid]),
				itoa(hybridLocal), itoa(remoteOK), itoa(hybridFb), rate(ruleHybrid)},
			{"hy:lease*", p.lat[clsLease], itoa(int64(len(p.lat[clsLease]))), "", "", "", "", "", ""},
			{"hy:fb", p.lat[clsFb], itoa(int64(len(p.lat[clsFb]))), "", "", "", "", "", ""},
			{"hy:cold", p.lat[clsCold], itoa(int64(len(p.lat[clsCold]))), "", "", "", "", "", ""},
			{"strict", p.lat[clsStrict], itoa(p.n[ruleStrict]), itoa(p.errs[ruleStrict]), itoa(p.denied[ruleStrict]),
				"", itoa(strictOK), itoa(strictFb), rate(ruleStrict)},
		}
		for i, r := range rows {
			name := p.name
			if i > 0 {
				name = ""
			}
			q := quantiles(r.lat)
			fmt.Fprintf(&b, "%-17s %-8s %7s %8s %4s %5s %7s %7s %7s %8s %8s %8s %8s\n",
				name, r.name, r.n, r.rate, r.err, r.deny, r.local, r.remote, r.fallbck, q[0], q[1], q[2], q[3])
		}
	}
	fmt.Fprintf(&b, "\n%-17s %6s %6s %6s %5s %6s %6s %6s %6s %6s %5s %6s %5s %6s %-11s %s\n",
		"phase (+recovery)", "wall", "st.loc", "remfl", "tmout", "notsnt", "aband", "brkop", "brkrej",
		"pflush", "pexp", "pdrop", "owed", "syncfl", "health", "recovery")
	for _, p := range results {
		st := p.stats
		var h0, h []string
		for i, s := range p.health {
			h0 = append(h0, p.startHealth[i].String()[:1])
			h = append(h, s.String()[:1])
		}
		rec := "not in 20s"
		if p.recovery >= 0 {
			rec = p.recovery.Round(time.Millisecond).String()
		}
		fmt.Fprintf(&b, "%-17s %6s %6d %6d %5d %6d %6d %6d %6d %6d %5d %6d %5d %6d %-11s %s\n",
			p.name, max(p.wall[0], p.wall[1]).Round(10*time.Millisecond), st.HybridInProcessAllowed+st.HybridInProcessDenied,
			st.HybridRedis-st.HybridRedisAllowed-st.HybridRedisDenied, st.Timeouts, st.NotSent, st.Abandoned,
			st.BreakerOpened, st.BreakerRejected, st.PendingFlushed, st.PendingExpired, st.PendingDropped,
			p.owed, st.SyncFailures, strings.Join(h0, "/")+">"+strings.Join(h, "/"), rec)
	}
	b.WriteString("hy:lease*: warm keys decided from the lease, or by Redis where it answered in time (no fault, slow close);\n" +
		"st.loc: Stats' HybridInProcessAllowed+HybridInProcessDenied delta; remfl: hybrid calls to Redis that failed (in fallbk);\n" +
		"owed: fallback admissions since New less those flushed, expired or dropped, after the recovery (0: all accounted for);\n" +
		"health: each instance's at the recorded stage's start > end (h healthy, d degraded, r recovering); recovery: from removing the fault.\n")
	for _, p := range results {
		for _, n := range p.notes {
			b.WriteString(n + "\n")
		}
	}
	return b.String()
}

// owed returns the fallback admissions counted in st not accounted for
// by its pending counters.
func owed(st Stats) int64 {
	return st.FallbackLocalAllowed + st.FallbackOpen - st.PendingFlushed - st.PendingExpired - st.PendingDropped
}

// quantiles returns p50, p99, p99.9 and max of d, formatted; it sorts d.
func quantiles(d []time.Duration) [4]string {
	if len(d) == 0 {
		return [4]string{"-", "-", "-", "-"}
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(int(q*float64(len(d))), len(d)-1)] }
	return [4]string{fmtLatency(at(0.5)), fmtLatency(at(0.99)), fmtLatency(at(0.999)), fmtLatency(d[len(d)-1])}
}

func fmtLatency(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// logCounter is a slog.Handler that counts the Limiters' warnings and
// errors by message, keeping the first "err" of each.
type logCounter struct {
	mu    sync.Mutex
	count map[string]int
	first map[string]string
	order []string
}

func (h *logCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.count == nil {
		h.count, h.first = map[string]int{}, map[string]string{}
	}
	if h.count[r.Message] == 0 {
		h.order = append(h.order, r.Message)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				h.first[r.Message] = a.Value.String()
			}
			return true
		})
	}
	h.count[r.Message]++
	return nil
}

func (h *logCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCounter) WithGroup(string) slog.Handler      { return h }

func (h *logCounter) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	b.WriteString("warnings logged by the Limiters:\n")
	for _, m := range h.order {
		fmt.Fprintf(&b, "  %4d× %s", h.count[m], m)
		if e := h.first[m]; e != "" {
			fmt.Fprintf(&b, " (first err: %s)", e)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// itoa formats n in decimal, for the report's table.
func itoa(n int64) string { return strconv.FormatInt(n, 10) }
