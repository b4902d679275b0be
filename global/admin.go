package global

import (
	"context"
	"fmt"
)

// Delete removes the keys of one strict or hybrid base key: key itself,
// and the sliding log's member set (key+":m"). They share a hash tag, so
// one DEL serves a cluster too. It waits at most Timeout; errors that mean
// Redis could not answer wrap ErrUnavailable. It bypasses the coalescer
// and the breaker.
func (s *Store) Delete(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	if err := s.rdb.Del(ctx, key, key+":m").Err(); err != nil {
		return classify(fmt.Errorf("global: delete: %w", err))
	}
	return nil
}

// Counts are a sliding or fixed window key's fields as Redis holds them
// (a hybrid key's too): the window index w and its count c, the previous
// window's count p, the newest time t. A missing key or field reads 0,
// Found false.
type Counts struct {
	Window, Cur, Prev, Last int64
	Found                   bool
}

// Counts reads key's counts, without writing anything (a hybrid peek).
// The call waits at most Timeout; errors that mean Redis could not answer
// wrap ErrUnavailable. It bypasses the coalescer and the breaker (the
// caller asks Refuses first).
func (s *Store) Counts(ctx context.Context, key string) (Counts, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	v, err := s.rdb.HMGet(ctx, key, "w", "c", "p", "t").Result()
	if err != nil {
		return Counts{}, classify(fmt.Errorf("global: counts: %w", err))
	}
	var out [4]int64
	for i, x := range v {
		if x == nil {
			continue
		}
		str, ok := x.(string)
		if !ok {
			return Counts{}, fmt.Errorf("global: counts: field %d is %T", i, x)
		}
		if _, err := fmt.Sscan(str, &out[i]); err != nil {
			return Counts{}, fmt.Errorf("global: counts: field %d: %w", i, err)
		}
	}
	return Counts{Window: out[0], Cur: out[1], Prev: out[2], Last: out[3], Found: v[0] != nil}, nil
}
