package global

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"strconv"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed scripts/lease.lua
	leaseLua    string
	leaseScript = redis.NewScript(leaseLua)

	//go:embed scripts/heartbeat.lua
	heartbeatLua    string
	heartbeatScript = redis.NewScript(heartbeatLua)
)

// LeaseRequest is one hybrid-mode exchange for one key: give back unspent
// leases, admit N now, reserve up to Want more, and report Attempts. Any
// part may be zero.
type LeaseRequest struct {
	Key      string // base key, from Key; same layout as SlidingWindow's
	Now      int64  // ms
	Window   int64  // ms
	Limit    int64
	N        int64
	Want     int64
	Returns  [2]Return // unspent leases given back
	Attempts int64
	Fixed    bool // fixed window: the previous window carries no weight
	// Op, when not empty, names this call so that a re-sent copy (go-redis
	// retries a call whose answer timed out) changes nothing: required
	// whenever Returns gives tokens back, since applying a return twice
	// would count fewer tokens than are admitted. Use NewOp.
	Op string
}

// NewOp returns a fresh operation name for a LeaseRequest.
func NewOp() string { return strconv.FormatUint(rand.Uint64(), 36) }

// Return gives back N tokens leased in window index Window and not spent.
// Tokens of a window that no longer counts are ignored.
type Return struct{ Window, N int64 }

// LeaseResult is the key's state after a LeaseRequest. Prev and Cur count
// admissions and unreturned leases of every instance.
type LeaseResult struct {
	Allowed      bool  // N was admitted (always true for N = 0)
	Granted      int64 // tokens leased, ≤ Want
	Prev, Cur    int64 // counts of the previous and current window
	PrevAttempts int64 // requests reported by all instances, previous window
	CurAttempts  int64 // and current window
	Now          int64 // the time the counts are as of: Now, or the newest time the key has seen
	Version      int64 // the key's version after this call: later calls answer higher versions (within a window)
}

func (r LeaseRequest) script() *redis.Script { return leaseScript }

func (r LeaseRequest) keysArgs() ([]string, []any) {
	fixed := "0"
	if r.Fixed {
		fixed = "1"
	}
	keys := []string{r.Key}
	if r.Op != "" {
		keys = append(keys, r.Key+":op:"+r.Op)
	}
	return keys, []any{r.Now, r.Window, r.Limit, r.N, r.Want,
		r.Returns[0].Window, r.Returns[0].N, r.Returns[1].Window, r.Returns[1].N, r.Attempts, fixed}
}

func leaseResult(v []int64, err error) (LeaseResult, error) {
	if err != nil {
		return LeaseResult{}, err
	}
	if len(v) != 8 {
		return LeaseResult{}, fmt.Errorf("global: lease script returned %d values, want 8", len(v))
	}
	return LeaseResult{Allowed: v[0] == 1, Granted: v[1], Prev: v[2], Cur: v[3], PrevAttempts: v[4], CurAttempts: v[5], Now: v[6], Version: v[7]}, nil
}

// Lease runs one LeaseRequest through the coalescer, like Take.
func (s *Store) Lease(ctx context.Context, r LeaseRequest) (LeaseResult, error) {
	return leaseResult(s.do(ctx, r))
}

// LeaseBatch runs many LeaseRequests in one pipeline (one per node on a
// cluster) and returns their results and errors, index by index.
func (s *Store) LeaseBatch(ctx context.Context, rs []LeaseRequest) ([]LeaseResult, []error) {
	ops := make([]op, len(rs))
	for i, r := range rs {
		ops[i] = r
	}
	res := make([]LeaseResult, len(rs))
	errs := make([]error, len(rs))
	if len(rs) == 0 {
		return res, errs
	}
	for i, cmd := range s.pipeline(ctx, ops) {
		res[i], errs[i] = leaseResult(ints(cmd))
	}
	return res, errs
}

// Heartbeat records instance id as alive at now (ms) in the registry at key
// and returns how many instances were seen within ttl ms, this one included.
func (s *Store) Heartbeat(ctx context.Context, key, id string, now, ttl int64) (int64, error) {
	n, err := heartbeatScript.Run(ctx, s.rdb, []string{key}, now, ttl, id).Int64()
	if err != nil {
		return 0, fmt.Errorf("global: heartbeat: %w", err)
	}
	return n, nil
}

// Leave removes instance id from the registry at key.
func (s *Store) Leave(ctx context.Context, key, id string) error {
	return s.rdb.ZRem(ctx, key, id).Err()
}
