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
	N         int64  // 1 ≤ N ≤ Limit
	// ServerTime makes the script read the Redis server's clock (TIME)
	// instead of Now.
	ServerTime bool
}

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
}

// Store runs the strict scripts on Redis. Concurrent Take calls are
// coalesced: a caller that finds a pipeline slot free sends what is queued
// (its own call included) in one pipeline on its own goroutine, so a lone
// caller pays exactly one round trip; callers that find every slot busy
// queue up and go out together in the next pipeline.
//
// A Store is safe for concurrent use. Close waits for the pipelines under
// way; the Redis client stays the caller's to close.
type Store struct {
	rdb     redis.UniversalClient
	opts    Options
	sharded atomic.Bool // keys live on several slots: a script call takes keys of one hash tag only

	mu      sync.Mutex
	queue   []*call
	running int // pipelines under way, ≤ opts.MaxInFlight
	closed  bool
	wg      sync.WaitGroup // drain goroutines
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
	// Only a client of one node (single, or failover through sentinels)
	// may mix keys of many slots in one script call; a client type this
	// package does not know is taken to be sharded.
	// (A single-node client of a server in cluster mode learns it from
	// the first CROSSSLOT error: see LeaseBatch.)
	s := &Store{rdb: rdb, opts: opts}
	_, single := rdb.(*redis.Client)
	s.sharded.Store(!single)
	return s
}

// Load loads every script into every master, so that pipelined EVALSHA
// finds them. Take works without it (it falls back to EVAL on NOSCRIPT),
// but the first calls then pay twice.
func (s *Store) Load(ctx context.Context) error {
	all := append(scripts[:], leaseScript, heartbeatScript)
	load := func(ctx context.Context, c *redis.Client) error {
		for _, sc := range all {
			if err := sc.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("global: loading scripts: %w", err)
			}
		}
		return nil
	}
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, load)
	}
	for _, sc := range all {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("global: loading scripts: %w", err)
		}
	}
	return nil
}

// op is one script invocation.
type op interface {
	script() *redis.Script
	keysArgs() ([]string, []any)
}

// coalesced is an op that goes through the coalescer (do), which decodes
// its answer.
type coalesced interface {
	op
	// ints returns the script's answer as integers.
	ints(cmd *redis.Cmd) ([]int64, error)
}

// call is one queued script invocation.
type call struct {
	ctx  context.Context
	op   coalesced
	res  []int64
	err  error
	done chan struct{} // buffered(1); receives once when res and err are set
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

// Take runs req's script. It returns ctx's error if ctx ends first; the
// request may still be counted by Redis then.
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

// do runs o through the coalescer and returns the script's integers.
func (s *Store) do(ctx context.Context, o coalesced) ([]int64, error) {
	c := callPool.Get().(*call)
	c.ctx, c.op = ctx, o

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		callPool.Put(c)
		return nil, ErrClosed
	}
	s.queue = append(s.queue, c)
	lead := s.running < s.opts.MaxInFlight
	var batch []*call
	if lead {
		s.running++
		batch = s.takeBatchLocked()
	}
	s.mu.Unlock()

	if lead {
		s.send(batch)
		s.mu.Lock()
		if len(s.queue) > 0 {
			// Hand the slot to a drainer, so this caller returns now.
			s.wg.Add(1)
			go s.drain()
		} else {
			s.running--
		}
		s.mu.Unlock()
	}

	select {
	case <-c.done:
		res, err := c.res, c.err
		*c = call{done: c.done}
		callPool.Put(c)
		return res, err
	case <-ctx.Done():
		return nil, ctx.Err() // c is abandoned to its pipeline, not reused
	}
}

// drain sends queued batches until the queue is empty, then frees its slot.
func (s *Store) drain() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.running--
			s.mu.Unlock()
			return
		}
		batch := s.takeBatchLocked()
		s.mu.Unlock()
		s.send(batch)
	}
}

// takeBatchLocked removes up to MaxBatch calls from the head of the queue.
// It requires s.mu.
func (s *Store) takeBatchLocked() []*call {
	n := min(len(s.queue), s.opts.MaxBatch)
	batch := make([]*call, n)
	copy(batch, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	return batch
}

// send runs one batch and completes each call in it.
func (s *Store) send(batch []*call) {
	if d := s.opts.BatchDelay; d > 0 && len(batch) < s.opts.MaxBatch {
		time.Sleep(d)
		s.mu.Lock()
		extra := min(len(s.queue), s.opts.MaxBatch-len(batch))
		batch = append(batch, s.queue[:extra]...)
		rest := copy(s.queue, s.queue[extra:])
		clear(s.queue[rest:])
		s.queue = s.queue[:rest]
		s.mu.Unlock()
	}
	// The pipeline serves many callers: it keeps the first one's values
	// (tracing) but none of their deadlines; the client's own read and
	// write timeouts bound it.
	ctx := context.WithoutCancel(batch[0].ctx)
	if len(batch) == 1 {
		c := batch[0]
		c.res, c.err = c.op.ints(run(ctx, s.rdb, c.op))
		c.done <- struct{}{}
		return
	}
	ops := make([]op, len(batch))
	for i, c := range batch {
		ops[i] = c.op
	}
	for i, cmd := range s.pipeline(ctx, ops) {
		c := batch[i]
		c.res, c.err = c.op.ints(cmd)
		c.done <- struct{}{}
	}
}

// pipeline sends ops in one pipeline (one per node on a cluster) and
// returns their commands, in order. Ops whose script the server lost
// (NOSCRIPT) are run again alone through EVAL.
func (s *Store) pipeline(ctx context.Context, ops []op) []*redis.Cmd {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(ops))
	for i, o := range ops {
		keys, args := o.keysArgs()
		cmds[i] = o.script().EvalSha(ctx, pipe, keys, args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for i, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			cmds[i] = run(ctx, s.rdb, ops[i])
		}
	}
	return cmds
}

// Close stops accepting calls and waits for the pipelines under way.
// It is idempotent.
func (s *Store) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
}

func (r Request) script() *redis.Script { return scripts[r.Algorithm] }

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
	return keys, []any{r.Now, r.Window, r.Limit, r.N, st}
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

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}
