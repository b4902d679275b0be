package global

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// MultiRequest is several strict decisions of one user, all or nothing
// (TakeAll): each Request's Key is the user's under another rule, so that
// all share a hash tag and, on a cluster, a slot. Their Now, ServerTime
// and Mode are the MultiRequest's (Take only).
type MultiRequest struct {
	Now        int64 // ms since the epoch; ignored with ServerTime
	ServerTime bool  // decide at the Redis server's clock instead of Now
	// Rules are the decisions; no two may name the same key.
	Rules []Request
}

// MultiResult is TakeAll's answer.
type MultiResult struct {
	// Denied is the index in Rules of the first rule that denied, or -1
	// when every rule admitted its N and all were counted.
	Denied int
	// Results are the rules' answers when all admitted; when one denied,
	// only Results[Denied] is set, and nothing was counted.
	Results []Result
}

// TakeAll decides req's rules in one script call: every rule's N is
// counted if every rule admits it, else none is. It goes through the
// coalescer as Take does, with Take's errors.
func (s *Store) TakeAll(ctx context.Context, req MultiRequest) (MultiResult, error) {
	if len(req.Rules) == 0 {
		return MultiResult{}, fmt.Errorf("global: TakeAll of no rule")
	}
	v, err := s.do(ctx, req)
	if err != nil {
		return MultiResult{}, err
	}
	out := MultiResult{Denied: -1, Results: make([]Result, len(req.Rules))}
	switch {
	case len(v) == 5 && v[0] >= 1 && v[0] <= int64(len(req.Rules)):
		out.Denied = int(v[0] - 1)
		out.Results[out.Denied] = Result{Remaining: v[2], RetryAfter: v[3], ResetAfter: v[4]}
	case len(v) == 1+4*len(req.Rules) && v[0] == 0:
		for i := range out.Results {
			r := v[1+4*i:]
			out.Results[i] = Result{Allowed: r[0] == 1, Remaining: r[1], RetryAfter: r[2], ResetAfter: r[3]}
		}
	default:
		return MultiResult{}, fmt.Errorf("global: multi script returned %d values for %d rules", len(v), len(req.Rules))
	}
	return out, nil
}

func (r MultiRequest) script() *redis.Script { return multiScript }

func (r MultiRequest) route() string { return r.Rules[0].Key }

func (r MultiRequest) ints(cmd *redis.Cmd) ([]int64, error) { return ints(cmd) }

func (r MultiRequest) keysArgs() ([]string, []any) {
	keys := make([]string, 0, len(r.Rules)+1)
	st := "0"
	if r.ServerTime {
		st = "1"
	}
	args := make([]any, 0, 2+5*len(r.Rules))
	args = append(args, r.Now, st)
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
	return keys, args
}
