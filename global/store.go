package global

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Request is one strict decision: may N more requests pass under Limit per
// Window, at Now?
type Request struct {
	Algorithm Algorithm
	Key       string // base key, from Key
	Now       int64  // request time, ms since the epoch; ignored with ServerTime
	Window    int64  // ms, > 0
	Limit     int64  // > 0, Limit·Window ≤ 2^50
	N         int64  // 1 ≤ N ≤ Limit (a token bucket's Burst)
	// ServerTime makes the script read the Redis server's clock (TIME)
	// instead of Now.
	ServerTime bool
	// Mode is what the call does: take N (the zero value), peek (answer
	// for N without changing the key), or refund N.
	Mode Mode
	// Burst is a token bucket's capacity in tokens, ≤ 2·Limit; 0 means
	// Limit. Other algorithms ignore it.
	Burst int64
}

// Mode is what a strict call does with its key.
type Mode uint8

// The strict calls' modes (a script's ARGV[6]).
const (
	Take   Mode = iota // decide N and count it if admitted
	Peek               // decide N, count nothing, write nothing
	Refund             // give N back, then answer a peek of one
)

// Result is a script's answer; durations are in milliseconds.
type Result struct {
	Allowed    bool
	Remaining  int64
	RetryAfter int64 // 0 when allowed
	ResetAfter int64
}

// Options tunes a Store. The zero value means the defaults.
type Options struct {
	// MaxBatch caps the calls sent in one pipeline. Default 256.
	MaxBatch int
	// MaxInFlight caps the pipelines under way at once. Default 8.
	MaxInFlight int
	// BatchDelay is how long a pipeline that is not full waits for more
	// calls before it is sent. Default 0: send at once what is queued;
	// calls that arrive while pipelines are in flight form the next batch.
	BatchDelay time.Duration
	// LeaseKeysPerCall caps the keys LeaseBatch sends in one call of the
	// lease script. Default 32; 1 sends a call per key.
	LeaseKeysPerCall int
	// Timeout is the longest a caller of Take or Lease waits for Redis; the
	// call then fails with ErrUnavailable. Sync calls (LeaseBatch,
	// Heartbeat) get SyncTimeout. Default 1 s.
	Timeout time.Duration
	// SyncTimeout bounds each pipeline of LeaseBatch and each Heartbeat.
	// Default: Timeout.
	SyncTimeout time.Duration
	// Breaker tunes the circuit breaker in front of Redis.
	Breaker BreakerOptions
	// Now is the breaker's clock. Default time.Now.
	Now func() time.Time
	// OnBreakerChange, if not nil, is told of each change of the breaker's
	// state. It runs on the goroutine that caused the change and must
	// return quickly.
	OnBreakerChange func(BreakerStatus)
}

// Store runs the strict scripts on Redis. Concurrent Take calls are
// coalesced, per master on a cluster: a caller that finds a pipeline slot
// of its master's free sends what is queued for it (its own call
// included) in one pipeline on its own goroutine, so a lone caller pays
// exactly one round trip; callers that find every slot busy queue up and
// go out together in the next pipeline.
//
// A Store is safe for concurrent use. Close waits for the pipelines under
// way; the Redis client stays the caller's to close.
type Store struct {
	rdb     redis.UniversalClient
	opts    Options
	sharded atomic.Bool // keys live on several slots: a script call takes keys of one slot only
	// bySlot: where keys are sharded, they are by Redis Cluster's slots
	// (a cluster client, or a single-node client of a cluster-mode
	// server), so that keys of one slot may share a call; a client that
	// shards otherwise (a Ring) may join only keys of one hash tag.
	bySlot bool

	breakers *breakers // one per master on a cluster
	// ctxTimeouts: the client ends its network waits at the context's
	// deadline, so a pipeline's context gets Timeout (else the deadline
	// would only cost an allocation).
	ctxTimeouts bool

	mu      sync.Mutex
	lanes   map[*breaker]*lane // one per master (its breaker's), so that a dead master's calls never hold up another's
	closed  bool
	wg      sync.WaitGroup // drain goroutines, bounded pipelines
	callers sync.WaitGroup // callers of do waiting for their answer

	timeouts, dropped, abandoned atomic.Int64 // for Counters
}

// Counters counts calls that did not end with Redis's answer to their
// caller.
type Counters struct {
	// Timeouts are calls whose caller stopped waiting at Timeout.
	Timeouts int64
	// Dropped are calls never sent: their caller had given up (its context
	// ended) before a pipeline took them.
	Dropped int64
	// Abandoned are calls already sent when their caller gave up (its own
	// context, or Timeout): Redis may have counted them.
	Abandoned int64
	// Rejected are calls the open breaker refused.
	Rejected int64
	// BreakerOpened counts the times the breaker opened.
	BreakerOpened int64
}

// Counters returns the Store's counters.
func (s *Store) Counters() Counters {
	var rejected, opened int64
	for _, b := range s.breakers.all() {
		rejected += b.rejected.Load()
		opened += b.opened.Load()
	}
	return Counters{
		Timeouts:      s.timeouts.Load(),
		Dropped:       s.dropped.Load(),
		Abandoned:     s.abandoned.Load(),
		Rejected:      rejected,
		BreakerOpened: opened,
	}
}

// Breaker returns the status of the least healthy circuit breaker: the
// only one for a single node, on a cluster the one of the master furthest
// from closed (Node names it).
func (s *Store) Breaker() BreakerStatus { return s.breakers.worst() }

// Breakers returns the status of every circuit breaker: one for a single
// node; on a cluster one per master seen, and one (Node "") for keys whose
// master was not known.
func (s *Store) Breakers() []BreakerStatus {
	all := s.breakers.all()
	out := make([]BreakerStatus, len(all))
	for i, b := range all {
		out[i] = b.get()
	}
	return out
}

// Cluster reports whether the Store talks to a Redis Cluster through a
// cluster client, with a breaker per master.
func (s *Store) Cluster() bool { return s.breakers.cc != nil }

// RetryAfter returns how long the breaker of key's master refuses calls
// from now, 0 when it lets them through.
func (s *Store) RetryAfter(key string) time.Duration { return s.breakers.forKey(key).retryAfter() }

// Refuses reports whether the breaker of key's master refuses a call now
// (it is half-open, its probe out, or open with backoff left), and counts
// the call refused if so. It takes no probe: a caller that finds it false
// makes its call, which may be the probe; one that finds it true need not
// build its call.
func (s *Store) Refuses(key string) bool {
	b := s.breakers.forKey(key)
	if !b.refuses() {
		return false
	}
	b.rejected.Add(1)
	return true
}

// ErrClosed is returned by Take after Close.
var ErrClosed = errors.New("global: store closed")

// NewStore returns a Store over rdb, which may be a single node, a
// failover (sentinel) or a cluster client.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 8
	}
	if opts.LeaseKeysPerCall <= 0 {
		opts.LeaseKeysPerCall = 32
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Second
	}
	if opts.SyncTimeout <= 0 {
		opts.SyncTimeout = opts.Timeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	// Only a client of one node (single, or failover through sentinels)
	// may mix keys of many slots in one script call; a client type this
	// package does not know is taken to be sharded.
	// (A single-node client of a server in cluster mode learns it from
	// the first CROSSSLOT error: see LeaseBatch.)
	s := &Store{rdb: rdb, opts: opts, breakers: newBreakers(rdb, opts)}
	switch c := rdb.(type) {
	case *redis.Client:
		s.ctxTimeouts = c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		s.ctxTimeouts = c.Options().ContextTimeoutEnabled
	default:
		s.ctxTimeouts = true
	}
	_, single := rdb.(*redis.Client)
	s.sharded.Store(!single)
	_, cluster := rdb.(*redis.ClusterClient)
	s.bySlot = single || cluster
	return s
}

// Load loads every script into every master, so that pipelined EVALSHA
// finds them. Take works without it (it falls back to EVAL on NOSCRIPT),
// but the first calls then pay twice.
func (s *Store) Load(ctx context.Context) error {
	all := append(scripts[:], multiScript, leaseScript, admitScript, heartbeatScript, creditScript)
	load := func(ctx context.Context, c *redis.Client) error {
		for _, sc := range all {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("global: loading scripts: %w", classify(err))
			}
		}
		return nil
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return s.loaded(cc.ForEachMaster(ctx, load))
	}
	for _, sc := range all {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return s.loaded(fmt.Errorf("global: loading scripts: %w", classify(err)))
		}
	}
	return nil
}

// loaded opens the breaker when Load found Redis unavailable, so that a
// Limiter started without Redis starts degraded and probes for it. On a
// cluster it is the breaker of keys whose master is unknown: it matters
// only while the slot map has not loaded (a master that fails after that
// opens its own breaker as its calls fail).
func (s *Store) loaded(err error) error {
	if unavailable(err) {
		s.breakers.def.trip(err)
	}
	return err
}

// op is one script invocation.
type op interface {
	script() *redis.Script
	keysArgs() ([]string, []any)
	// route is a key of the call: its master's breaker gates it.
	route() string
}

// coalesced is an op that goes through the coalescer (do), which decodes
// its answer.
type coalesced interface {
	op
	// ints returns the script's answer as integers.
	ints(cmd *redis.Cmd) ([]int64, error)
}

// lane is the coalescer of one master's calls: its queue and pipelines.
// On a cluster each master has its own, so that the calls of a master that
// does not answer wait in their own pipelines, not in those of the others
// (a pipeline spanning masters answers when its slowest node does).
type lane struct {
	queue   []*call
	running int // pipelines under way, ≤ opts.MaxInFlight
}

// laneLocked returns b's lane, making it. It requires s.mu.
func (s *Store) laneLocked(b *breaker) *lane {
	l, ok := s.lanes[b]
	if !ok {
		if s.lanes == nil {
			s.lanes = make(map[*breaker]*lane)
		}
		l = &lane{}
		s.lanes[b] = l
	}
	return l
}

// call is one queued script invocation.
type call struct {
	ctx   context.Context
	op    coalesced
	gate  gate         // the breaker that let it through
	state atomic.Int32 // queued, sent or given up: who wins decides whether it is sent
	res   []int64
	err   error
	done  chan struct{} // buffered(1); receives once when res and err are set
	timer *time.Timer   // the caller's Timeout, reused with the call
}

// A call's states. The caller gives up on a queued call by moving it to
// gaveUp, and a pipeline takes it by moving it to sent: exactly one wins,
// so a call whose caller left before it went out is never sent.
const (
	queued int32 = iota
	sent
	gaveUp
)

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// Take runs req's script. It returns ctx's error if ctx ends first, or an
// error wrapping ErrUnavailable after Timeout or when the breaker is open;
// Redis may have counted the request then only if it was already sent
// (Counters.Abandoned).
func (s *Store) Take(ctx context.Context, req Request) (Result, error) {
	v, err := s.do(ctx, req)
	if err != nil {
		return Result{}, err
	}
	if len(v) != 4 {
		return Result{}, fmt.Errorf("global: script returned %d values, want 4", len(v))
	}
	return Result{Allowed: v[0] == 1, Remaining: v[1], RetryAfter: v[2], ResetAfter: v[3]}, nil
}

// do runs o through the coalescer and returns the script's integers. The
// pipelines go out on goroutines of their own (but a lone call with a
// client that honours deadlines: see alone), so that the caller waits at
// most until its context ends or Timeout passes, whatever Redis does.
func (s *Store) do(ctx context.Context, o coalesced) ([]int64, error) {
	if err := ctx.Err(); err != nil {
		s.dropped.Add(1)
		return nil, err
	}
	b := s.breakers.forKey(o.route())
	ok, t := b.allow()
	if !ok {
		return nil, ErrBreakerOpen
	}
	c := callPool.Get().(*call)
	c.ctx, c.op, c.gate = ctx, o, gate{b, t}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		callPool.Put(c)
		return nil, ErrClosed
	}
	s.callers.Add(1) // under mu, so that Close, once it set closed, waits for every caller in
	defer s.callers.Done()
	l := s.laneLocked(b)
	l.queue = append(l.queue, c)
	if l.running < s.opts.MaxInFlight {
		l.running++
		if s.ctxTimeouts && len(l.queue) == 1 && s.opts.BatchDelay == 0 {
			l.queue = l.queue[:0]
			s.mu.Unlock()
			return s.alone(ctx, l, c)
		}
		s.wg.Add(1)
		go s.drain(l)
	}
	s.mu.Unlock()

	if c.timer == nil {
		c.timer = time.NewTimer(s.opts.Timeout) // kept with the pooled call
	} else {
		c.timer.Reset(s.opts.Timeout)
	}
	timer := c.timer
	select {
	case <-c.done:
		timer.Stop() // before the call goes back to the pool, where another caller may Reset it
		res, err := c.res, c.err
		*c = call{done: c.done, timer: timer}
		callPool.Put(c)
		return res, err
	case <-ctx.Done():
		timer.Stop()
		s.giveUp(c)
		return nil, ctx.Err()
	case <-timer.C:
		s.timeouts.Add(1)
		s.report(outcome{gate{b, t}, errTimeout})
		s.giveUp(c)
		return nil, errTimeout
	}
}

// alone sends c, a call that found no other queued and a pipeline slot
// free, on the caller's goroutine: a lone call pays one round trip and no
// handoff to a goroutine (whose wake-up is a large share of a serial strict
// decision: bench/RESULTS.md, "Fault tolerance"). Only for a client whose network waits end
// at the context's deadline, so that the caller still returns at its own
// deadline or at Timeout. It frees the slot, or hands it to a drainer if
// calls queued meanwhile.
func (s *Store) alone(ctx context.Context, l *lane, c *call) ([]int64, error) {
	c.state.Store(sent)
	mine := time.Now().Add(s.opts.Timeout)
	cctx, cancel := context.WithDeadline(ctx, mine)
	cmd := s.runRetrying(cctx, c.op)
	cancel()
	// Which deadline ended the call: the network's deadline can fire before
	// the context's own timer, so compare the clock with the deadlines.
	now := time.Now()
	theirs, hasTheirs := ctx.Deadline()
	callerLeft := ctx.Err() != nil || hasTheirs && !now.Before(theirs) && !theirs.After(mine)
	timedOut := !callerLeft && !now.Before(mine)
	s.mu.Lock()
	if len(l.queue) > 0 {
		s.wg.Add(1)
		go s.drain(l)
	} else {
		l.running--
	}
	s.mu.Unlock()

	err := cmd.Err()
	switch {
	case err != nil && callerLeft: // the caller's own deadline or cancellation
		s.abandoned.Add(1)
		c.gate.b.release(c.gate.t) // what Redis did is unknown: no outcome for the breaker
		if ctx.Err() == nil {
			return nil, context.DeadlineExceeded
		}
		return nil, ctx.Err()
	case err != nil && timedOut: // Timeout
		s.timeouts.Add(1)
		s.abandoned.Add(1) // sent: Redis may have counted it
		s.report(outcome{c.gate, errTimeout})
		return nil, errTimeout
	}
	s.report(outcome{c.gate, err})
	var res []int64
	if unavailable(err) {
		err = fmt.Errorf("global: script: %w", classify(err))
	} else {
		res, err = c.op.ints(cmd)
	}
	*c = call{done: c.done, timer: c.timer}
	callPool.Put(c)
	return res, err
}

// giveUp abandons c to its pipeline (it is not reused): unsent, it will
// not be sent; sent, it is counted as abandoned.
func (s *Store) giveUp(c *call) {
	if c.state.CompareAndSwap(queued, gaveUp) {
		s.dropped.Add(1)
		c.gate.b.release(c.gate.t) // never sent: it tells nothing of Redis
	} else {
		s.abandoned.Add(1)
	}
}

// drain sends l's queued batches until its queue is empty, then frees its
// slot.
func (s *Store) drain(l *lane) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(l.queue) == 0 {
			l.running--
			s.mu.Unlock()
			return
		}
		batch := l.take(s.opts.MaxBatch)
		s.mu.Unlock()
		s.send(l, batch)
	}
}

// take removes up to n calls from the head of l's queue. It requires the
// Store's mu.
func (l *lane) take(n int) []*call {
	n = min(len(l.queue), n)
	batch := make([]*call, n)
	copy(batch, l.queue)
	rest := copy(l.queue, l.queue[n:])
	clear(l.queue[rest:])
	l.queue = l.queue[:rest]
	return batch
}

// send runs one batch and completes each call in it. Calls whose caller
// has already given up are left out.
func (s *Store) send(l *lane, batch []*call) {
	if d := s.opts.BatchDelay; d > 0 && len(batch) < s.opts.MaxBatch {
		time.Sleep(d)
		s.mu.Lock()
		batch = append(batch, l.take(s.opts.MaxBatch-len(batch))...)
		s.mu.Unlock()
	}
	live := batch[:0]
	for _, c := range batch {
		if c.state.CompareAndSwap(queued, sent) {
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		return
	}
	batch = live
	// The pipeline serves many callers: it keeps the first one's values
	// (tracing) but none of their deadlines, only the Store's Timeout (which
	// ends the network wait only with a client whose ContextTimeoutEnabled
	// is set; callers stop waiting at Timeout either way).
	ctx := context.WithoutCancel(batch[0].ctx)
	if s.ctxTimeouts {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.opts.Timeout)
		defer cancel()
	}
	if len(batch) == 1 {
		c := batch[0]
		cmd := s.runRetrying(ctx, c.op)
		s.report(outcome{c.gate, cmd.Err()})
		s.complete(c, cmd)
		return
	}
	ops := make([]op, len(batch))
	gates := make([]gate, len(batch))
	for i, c := range batch {
		ops[i], gates[i] = c.op, c.gate
	}
	cmds := s.pipeline(ctx, ops)
	s.reportCmds(cmds, gates)
	for i, cmd := range cmds {
		s.complete(batch[i], cmd)
	}
}

// complete hands cmd's answer to c's caller.
func (s *Store) complete(c *call, cmd *redis.Cmd) {
	if err := cmd.Err(); unavailable(err) {
		c.err = fmt.Errorf("global: script: %w", classify(err))
	} else {
		c.res, c.err = c.op.ints(cmd)
	}
	c.done <- struct{}{}
}

// reportCmds tells the breakers how Redis answered a pipeline whose
// command i went through gates[i]: per breaker, a failure if any of its
// commands met an unavailable Redis, else a success.
func (s *Store) reportCmds(cmds []*redis.Cmd, gates []gate) {
	outs := make([]outcome, len(cmds))
	for i, cmd := range cmds {
		outs[i] = outcome{gates[i], nil}
		if err := cmd.Err(); unavailable(err) {
			outs[i].err = classify(err)
		}
	}
	s.report(outs...)
}

// report tells the breakers how calls went (see report), and, on a
// cluster, when one met an unavailable Redis, asks the client to reload its
// slot map: after a failover or a resharding the map go-redis holds names a
// dead or former master until its timer reloads it
// (ClusterStateReloadInterval, 60 s by default), and a reload is cheap
// (go-redis runs one at a time, in the background, at most one each
// 200 ms).
func (s *Store) report(outs ...outcome) {
	report(outs)
	if s.breakers.cc == nil {
		return
	}
	for _, o := range outs {
		if unavailable(o.err) {
			s.breakers.cc.ReloadState(context.Background())
			return
		}
	}
}

// bounded sends ops in one pipeline on a goroutine of its own and returns
// their commands, or, if ctx ends or SyncTimeout passes first, commands
// that carry that error. A pipeline given up on may still run: its calls
// must be safe to lose (the lease script's are, see LeaseRequest.Op). Op i
// went through gates[i].
func (s *Store) bounded(parent context.Context, gates []gate, ops []op) []*redis.Cmd {
	ctx, cancel := context.WithTimeout(parent, s.opts.SyncTimeout)
	defer cancel()
	done := make(chan []*redis.Cmd, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		cmds := s.pipeline(ctx, ops)
		s.reportCmds(cmds, gates)
		done <- cmds
	}()
	select {
	case cmds := <-done:
		return cmds
	case <-ctx.Done():
	}
	err := ctx.Err()
	if parent.Err() == nil { // the Store's own deadline, not the caller's
		err = errTimeout
		s.timeouts.Add(1)
		outs := make([]outcome, len(gates))
		for i, g := range gates {
			outs[i] = outcome{g, err}
		}
		s.report(outs...)
	}
	cmds := make([]*redis.Cmd, len(ops))
	for i := range cmds {
		cmds[i] = redis.NewCmd(ctx)
		cmds[i].SetErr(err)
	}
	return cmds
}

// pipeline sends ops in one pipeline (one per node on a cluster) and
// returns their commands, in order. Ops whose script the server lost
// (NOSCRIPT) are run again alone through EVAL.
func (s *Store) pipeline(ctx context.Context, ops []op) []*redis.Cmd {
	start := time.Now()
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ops))
	for i, o := range ops {
		keys, args := o.keysArgs()
		cmds[i] = o.script().EvalSha(ctx, pipe, keys, args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	cmds = s.retryBusy(ctx, start, ops, cmds)
	var again []int
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			again = append(again, i)
		}
	}
	if len(again) == 0 {
		return cmds
	}
	// The server lost its scripts (a restart, a failover): load them once
	// and send those ops again in one pipeline, not one EVAL each.
	if len(again) > 1 && s.Load(ctx) == nil {
		pipe := s.rdb.Pipeline()
		for _, i := range again {
			keys, args := ops[i].keysArgs()
			cmds[i] = ops[i].script().EvalSha(ctx, pipe, keys, args...)
		}
		_, _ = pipe.Exec(ctx)
	}
	for _, i := range again {
		if isNoScript(cmds[i].Err()) {
			cmds[i] = run(ctx, s.rdb, ops[i])
		}
	}
	return s.retryBusy(ctx, start, ops, cmds)
}

// Close stops accepting calls and waits for the callers waiting for an
// answer (each waits at most Timeout) and for the pipelines under way. It
// is idempotent.
func (s *Store) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.callers.Wait() // each waits at most Timeout
	s.wg.Wait()
}

func (r Request) script() *redis.Script { return scripts[r.Algorithm] }

func (r Request) route() string { return r.Key }

func (r Request) ints(cmd *redis.Cmd) ([]int64, error) { return ints(cmd) }

func (r Request) keysArgs() ([]string, []any) {
	keys := []string{r.Key}
	if keyCount[r.Algorithm] == 2 {
		keys = append(keys, r.Key+":m")
	}
	st := "0"
	if r.ServerTime {
		st = "1"
	}
	burst := r.Burst
	if burst == 0 {
		burst = r.Limit
	}
	return keys, []any{r.Now, r.Window, r.Limit, r.N, st, int(r.Mode), burst}
}

// run executes one request outside a pipeline: EVALSHA, then EVAL on
// NOSCRIPT.
func run(ctx context.Context, rdb redis.Scripter, o op) *redis.Cmd {
	keys, args := o.keysArgs()
	return o.script().Run(ctx, rdb, keys, args...)
}

// ints returns a script's integer array.
func ints(cmd *redis.Cmd) ([]int64, error) {
	v, err := cmd.Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("global: script: %w", err)
	}
	return v, nil
}

// Slot-busy retries: the first wait, the longest, and (without a deadline
// in the context) how long a call keeps retrying.
const (
	busyWait    = 5 * time.Millisecond
	busyMaxWait = 100 * time.Millisecond
	busyMargin  = 100 * time.Millisecond
)

// runRetrying runs o alone (see run) and sends it again while its answer
// says its slot is moving (see slotBusy), until ctx's deadline or the
// Store's Timeout.
func (s *Store) runRetrying(ctx context.Context, o op) *redis.Cmd {
	start := time.Now()
	return s.retryBusy(ctx, start, []op{o}, []*redis.Cmd{run(ctx, s.rdb, o)})[0]
}

// retryBusy sends again, alone, each op whose command says its slot is
// moving: such a call did not run. go-redis already retried it a few
// times; a migration of many keys takes longer, so this waits, doubling
// from busyWait to busyMaxWait, until ctx's deadline or the Store's
// Timeout after start (when the calls were first sent: the callers' own
// Timeout runs from about then, and a deadline taken after go-redis's own
// retries would let them time out first), and leaves the last answer in
// cmds.
func (s *Store) retryBusy(ctx context.Context, start time.Time, ops []op, cmds []*redis.Cmd) []*redis.Cmd {
	var busy []int
	for i, cmd := range cmds {
		if slotBusy(cmd.Err()) {
			busy = append(busy, i)
		}
	}
	if len(busy) == 0 {
		return cmds
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = start.Add(s.opts.Timeout)
	}
	wait := busyWait
	// go-redis's own retries of a call take tens of ms: stop with room
	// for the last one, so that the caller hears TRYAGAIN, not a timeout.
	for len(busy) > 0 && time.Until(deadline) > 2*wait+busyMargin {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return cmds
		case <-t.C:
		}
		wait = min(2*wait, busyMaxWait)
		still := busy[:0]
		for _, i := range busy {
			cmds[i] = run(ctx, s.rdb, ops[i])
			if slotBusy(cmds[i].Err()) {
				still = append(still, i)
			}
		}
		busy = still
	}
	return cmds
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}
