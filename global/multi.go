package global

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// MultiRequest is several decisions of one user, all or nothing (TakeAll):
// strict decisions (Rules) and hybrid exchanges (Leases). Each key is the
// user's under another rule, so that all share a hash tag and, on a
// cluster, a slot. The Rules' Now, ServerTime and Mode are the
// MultiRequest's (Take only); each Lease has its own Now.
type MultiRequest struct {
	Now        int64 // ms since the epoch; ignored with ServerTime
	ServerTime bool  // decide the Rules at the Redis server's clock instead of Now
	// Rules are the strict decisions; no two may name the same key.
	Rules []Request
	// Leases are hybrid exchanges, each admitting its N (at least 1) and
	// maybe leasing Want more, as Lease does. They give nothing back (no
	// Returns, no Op): a call that gives tokens back goes alone, through
	// Lease, whose op record a deferred write cannot keep.
	Leases []LeaseRequest
}

// MultiResult is TakeAll's answer.
type MultiResult struct {
	// Denied is the index in Rules of the rule that denied, or -1.
	Denied int
	// LeaseDenied is the index in Leases of the exchange that denied (the
	// Rules all admitted), or -1.
	LeaseDenied int
	// Results are the Rules' answers when all admitted; when one denied,
	// only Results[Denied] is set, and nothing was counted.
	Results []Result
	// LeaseResults are the Leases' answers when all admitted; when
	// Leases[LeaseDenied] denied, only its result is set, with the key's
	// counts and Version as read (nothing was written: a caller must not
	// take them as newer than what it knows).
	LeaseResults []LeaseResult
}

// TakeAll decides req's rules and exchanges in one script call: every N is
// counted (and every lease granted) if every one admits, else none is. It
// goes through the coalescer as Take does, with Take's errors.
func (s *Store) TakeAll(ctx context.Context, req MultiRequest) (MultiResult, error) {
	if len(req.Rules)+len(req.Leases) == 0 {
		return MultiResult{}, fmt.Errorf("global: TakeAll of no rule")
	}
	for _, q := range req.Leases {
		if q.N < 1 || q.Op.Stream != "" || q.Returns[0].N != 0 || q.Returns[1].N != 0 {
			return MultiResult{}, fmt.Errorf("global: TakeAll of a lease exchange for %q with N %d, returns %v, op %q: want N ≥ 1 and nothing given back",
				q.Key, q.N, q.Returns, q.Op.Stream)
		}
	}
	v, err := s.do(ctx, req)
	if err != nil {
		return MultiResult{}, err
	}
	return req.result(v)
}

// result decodes the multi script's answer v.
func (r MultiRequest) result(v []int64) (MultiResult, error) {
	nr, nl := len(r.Rules), len(r.Leases)
	out := MultiResult{Denied: -1, LeaseDenied: -1, Results: make([]Result, nr), LeaseResults: make([]LeaseResult, nl)}
	bad := fmt.Errorf("global: multi script returned %d values for %d rules and %d leases", len(v), nr, nl)
	switch {
	case len(v) == 0:
		return MultiResult{}, bad
	case v[0] >= 1 && v[0] <= int64(nr) && len(v) == 5:
		out.Denied = int(v[0] - 1)
		out.Results[out.Denied] = Result{Remaining: v[2], RetryAfter: v[3], ResetAfter: v[4]}
	case v[0] > int64(nr) && v[0] <= int64(nr+nl) && len(v) == 11:
		out.LeaseDenied = int(v[0]) - 1 - nr
		lr, err := leaseResult(v[1:], nil)
		if err != nil {
			return MultiResult{}, err
		}
		out.LeaseResults[out.LeaseDenied] = lr
	case v[0] == 0 && len(v) == 1+4*nr+10*nl:
		for i := range out.Results {
			x := v[1+4*i:]
			out.Results[i] = Result{Allowed: x[0] == 1, Remaining: x[1], RetryAfter: x[2], ResetAfter: x[3]}
		}
		for i := range out.LeaseResults {
			lr, err := leaseResult(v[1+4*nr+10*i:][:10], nil)
			if err != nil {
				return MultiResult{}, err
			}
			out.LeaseResults[i] = lr
		}
	default:
		return MultiResult{}, bad
	}
	return out, nil
}

func (r MultiRequest) script() *redis.Script { return multiScript }

func (r MultiRequest) route() string {
	if len(r.Rules) > 0 {
		return r.Rules[0].Key
	}
	return r.Leases[0].Key
}

func (r MultiRequest) ints(cmd *redis.Cmd) ([]int64, error) { return ints(cmd) }

func (r MultiRequest) keysArgs() ([]string, []any) {
	keys := make([]string, 0, len(r.Rules)+len(r.Leases)+1)
	st := "0"
	if r.ServerTime {
		st = "1"
	}
	args := make([]any, 0, 3+5*len(r.Rules)+len(r.Leases))
	args = append(args, r.Now, st, len(r.Rules))
	for _, q := range r.Rules {
		keys = append(keys, q.Key)
		if keyCount[q.Algorithm] == 2 {
			keys = append(keys, q.Key+":m")
		}
		burst := q.Burst
		if burst == 0 {
			burst = q.Limit
		}
		args = append(args, int(q.Algorithm), q.Window, q.Limit, q.N, burst)
	}
	for _, q := range r.Leases {
		keys = append(keys, q.Key)
		args = append(args, q.packed())
	}
	return keys, args
}
