package global

import (
	"context"
	_ "embed"
	"fmt"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed scripts/credit.lua
	creditLua    string
	creditScript = newScript(creditLua)
)

// Credit adds admissions that were decided without Redis to one key's
// counts: those of window index Idx (Cur) and of the window before it
// (Prev), the newest at Last (ms). The sliding and fixed windows add them
// to their counters; the token bucket fills by them, less what has drained
// since Last; the sliding log adds them as entries at Last. Admissions of a
// window that is over by then are dropped.
type Credit struct {
	Algorithm Algorithm
	Key       string // base key, from Key
	Window    int64  // ms
	Limit     int64
	Idx       int64 // window index of Cur: Last / Window
	Cur, Prev int64
	Last      int64
	// Hybrid bumps the key's version, so that hybrid instances adopt the
	// new counts at their next call.
	Hybrid bool
	// Known is a hybrid instance's last knowledge of the key: should Redis
	// have lost it, it starts again from there (see LeaseRequest.Known).
	Known Known
	// Op names the call, so that a re-sent copy changes nothing. Required,
	// from an Ops of credits alone. A credit older than the last of its
	// stream the key applied (stale) applies, perhaps a second time: too
	// many admissions counted rather than too few. Send a key's credits in
	// the order of their numbers, and only a late copy does that.
	Op Op
}

func (c Credit) script() *redis.Script { return creditScript }

func (c Credit) route() string { return c.Key }

func (c Credit) keysArgs() ([]string, []any) {
	kind, keys := "w", []string{c.Key}
	switch c.Algorithm {
	case TokenBucket:
		kind = "b"
	case SlidingLog:
		kind, keys = "l", []string{c.Key, c.Key + ":m"}
	}
	version := "0"
	if c.Hybrid {
		version = "1"
	}
	return keys, []any{kind, c.Window, c.Limit, c.Idx, c.Cur, c.Prev, c.Last, version,
		c.Known.Window, c.Known.Prev, c.Known.Cur, c.Known.Version, c.Op.Stream, c.Op.Seq}
}

// CreditBatch runs the credits in one pipeline (one per node on a cluster),
// in order, through the breaker and bounded by SyncTimeout like LeaseBatch.
// applied reports, per credit, whether Redis still had a live window for
// it.
func (s *Store) CreditBatch(ctx context.Context, cs []Credit) (applied []bool, errs []error) {
	applied = make([]bool, len(cs))
	errs = make([]error, len(cs))
	if len(cs) == 0 {
		return applied, errs
	}
	all := make([]op, len(cs))
	for i, c := range cs {
		all[i] = c
	}
	var (
		idx []int // of the credits sent
		ops []op
	)
	gates := s.admit(all, func(i int) { errs[i] = ErrBreakerOpen }, func(i int) {
		idx, ops = append(idx, i), append(ops, all[i])
	})
	if len(ops) == 0 {
		return applied, errs
	}
	for j, cmd := range s.bounded(ctx, gates, ops) {
		i := idx[j]
		n, err := cmd.Int64()
		if err != nil {
			if unavailable(cmd.Err()) {
				err = classify(cmd.Err())
			}
			errs[i] = fmt.Errorf("global: credit: %w", err)
			continue
		}
		applied[i] = n == 1
	}
	return applied, errs
}
