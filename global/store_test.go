package global

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testClient(t *testing.T) (*redis.Client, string) {
	c := redistest.Client(t)
	return c, redistest.Prefix(t, c)
}

// TestCoalescerUnderContention: with one pipeline slot and many callers,
// every call completes with its own answer, and the answers are exactly the
// limit's worth of admissions.
func TestCoalescerUnderContention(t *testing.T) {
	c, p := testClient(t)
	for _, opts := range []Options{{MaxInFlight: 1}, {MaxInFlight: 1, MaxBatch: 3}, {}} {
		t.Run(fmt.Sprintf("%+v", opts), func(t *testing.T) {
			s := NewStore(c, opts)
			defer s.Close()
			key := Key(p, fmt.Sprintf("%+v", opts), "u")
			var wg sync.WaitGroup
			var admitted atomic.Int64
			for range 300 {
				wg.Go(func() {
					r, err := s.Take(context.Background(), Request{Algorithm: FixedWindow, Key: key, Now: 1_700_000_000_000, Window: 60_000, Limit: 100, N: 1})
					if err != nil {
						t.Error(err)
					} else if r.Allowed {
						admitted.Add(1)
					}
				})
			}
			wg.Wait()
			if got := admitted.Load(); got != 100 {
				t.Fatalf("admitted %d, want 100", got)
			}
		})
	}
}

func TestClosedStore(t *testing.T) {
	c, p := testClient(t)
	s := NewStore(c, Options{})
	s.Close()
	s.Close()
	_, err := s.Take(context.Background(), Request{Key: Key(p, "r", "u"), Now: 1, Window: 1, Limit: 1, N: 1})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Take after Close = %v, want ErrClosed", err)
	}
}

// TestCancelledCaller: a caller whose context is already done returns its
// error; the store stays usable.
func TestCancelledCaller(t *testing.T) {
	c, p := testClient(t)
	s := NewStore(c, Options{})
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := Request{Key: Key(p, "r", "u"), Now: 1_700_000_000_000, Window: 1000, Limit: 5, N: 1}
	if _, err := s.Take(ctx, req); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Take(cancelled) = %v", err)
	}
	if _, err := s.Take(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

func TestMySlots(t *testing.T) {
	nodes := "07c3 127.0.0.1:7100@17100 myself,master - 0 0 1 connected 0-5460 6000 [5461->-e7d1]\n" +
		"e7d1 127.0.0.1:7101@17101 master - 0 0 2 connected 5461-10922\n"
	served, addr := mySlots(nodes)
	if served != 5462 || addr != "127.0.0.1:7100" {
		t.Fatalf("mySlots = %d, %q, want 5462, 127.0.0.1:7100", served, addr)
	}
}
