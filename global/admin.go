package global

import (
	"context"
	"fmt"
)

// Delete removes the keys of one strict or hybrid base key: key itself,
// and the sliding log's member set (key+":m"). They share a hash tag, so
// one DEL serves a cluster too. It bypasses the coalescer and the breaker.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.rdb.Del(ctx, key, key+":m").Err(); err != nil {
		return fmt.Errorf("global: delete: %w", err)
	}
	return nil
}
