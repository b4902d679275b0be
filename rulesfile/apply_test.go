package rulesfile

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/httplimit"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

var base = time.UnixMilli(1_700_000_010_000)

// mustParse parses a file the test knows to be good.
func mustParse(t *testing.T, src string) *File {
	t.Helper()
	f, err := Parse("rules.yaml", []byte(src))
	require.NoError(t, err)
	return f
}

const strictV1 = `
rules:
  - id: orders
    name: "GET /v1/orders"
    limit: 3
    window: 1m
    mode: strict
`

// strictV2 is strictV1 edited: renamed and a higher limit, same id.
const strictV2 = `
rules:
  - id: orders
    name: "GET /orders"
    limit: 5
    window: 1m
    mode: strict
`

// TestApplyKeepsCounts: against real Redis, a strict rule counts 3 of user
// u; applying the edited file (name and limit changed, same id) while 8
// goroutines decide for user w under either name keeps the counts: u gets
// exactly 2 more, w exactly 5 in all (3 before the swap at most, the
// limit 5 across it), the old name is unknown once Apply returns.
func TestApplyKeepsCounts(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	v1, v2 := mustParse(t, strictV1), mustParse(t, strictV2)
	lim, err := ratelimit.New(ratelimit.Config{Redis: c, Rules: v1.Rules(), KeyPrefix: prefix, Now: func() time.Time { return base }})
	require.NoError(t, err)
	defer func() { require.NoError(t, lim.Close()) }()
	ctx := context.Background()
	count := func(name, user string, n int) int {
		got := 0
		for range n {
			d, err := lim.Allow(ctx, name, user, base)
			require.NoError(t, err)
			if d.Allowed {
				got++
			}
		}
		return got
	}
	require.Equal(t, 3, count("GET /v1/orders", "u", 4))

	const workers, perWorker = 8, 200 // bounded: 1600 decisions in all
	const oldName, newName = "GET /v1/orders", "GET /orders"
	var applied atomic.Bool
	var admitted, wrongAfter, started atomic.Int64
	quarter := make(chan struct{}) // closed once a quarter of the decisions started, under v1
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				name := oldName
				if (g+i)%2 == 0 {
					name = newName
				}
				after := applied.Load()
				if started.Add(1) == workers*perWorker/4 {
					close(quarter)
				}
				d, err := lim.Allow(ctx, name, "w", base)
				switch {
				case errors.Is(err, ratelimit.ErrUnknownRule):
					if after && name == newName {
						wrongAfter.Add(1) // the new name must be known once Apply returned
					}
				case err != nil:
					t.Errorf("Allow(%q): %v", name, err)
					return
				case after && name == oldName:
					wrongAfter.Add(1) // the old name must be unknown once Apply returned
				case d.Allowed:
					admitted.Add(1)
				}
			}
		}()
	}
	<-quarter
	require.NoError(t, v2.Apply(lim))
	applied.Store(true)
	wg.Wait()

	require.Equal(t, int64(5), admitted.Load(), "w: limit 5 across the swap, counted once")
	require.Zero(t, wrongAfter.Load(), "decisions that started after Apply returned used the new set")
	_, err = lim.Allow(ctx, "GET /v1/orders", "u", base)
	require.ErrorIs(t, err, ratelimit.ErrUnknownRule)
	require.Equal(t, 2, count("GET /orders", "u", 4), "u: 3 counted under v1, 2 more of the new limit 5")
}

// TestApplyRefusedNamesTheFile: a file the Limiter refuses (the id's
// window changed) is an error naming the file, and changes nothing.
func TestApplyRefusedNamesTheFile(t *testing.T) {
	v1 := mustParse(t, "rules:\n  - {id: r, name: a, limit: 2, window: 1m, mode: local}\n")
	lim, err := ratelimit.New(ratelimit.Config{Rules: v1.Rules(), Now: func() time.Time { return base }})
	require.NoError(t, err)
	defer func() { require.NoError(t, lim.Close()) }()
	bad := mustParse(t, "rules:\n  - {id: r, name: a, limit: 2, window: 1h, mode: local}\n")
	err = bad.Apply(lim)
	require.ErrorIs(t, err, ratelimit.ErrInvalidArgument)
	require.Equal(t, `rules.yaml: ratelimit: invalid argument: rule 0 ("a"): ID "r" counted with sliding_window, mode local, window 1m0s; `+
		`its counters would be misread as sliding_window, mode local, window 1h0m0s: give the rule a new ID`, err.Error())
	rl, err := lim.Rule("a")
	require.NoError(t, err)
	require.Equal(t, int64(2), rl.Limit())
}

// TestBind: the file's routes limit the requests of their patterns through
// a Middleware's Wrap: a route's two rules, checked in order.
func TestBind(t *testing.T) {
	f := mustParse(t, `
rules:
  - {name: orders, limit: 2, window: 1m, mode: local, algorithm: fixed_window}
  - {name: all, limit: 3, window: 1m, mode: local, algorithm: fixed_window}
routes:
  - {pattern: "GET /orders/{id}", rules: [orders, all]}
  - {pattern: "GET /items", rules: [all]}
`)
	now := func() time.Time { return base }
	lim, err := ratelimit.New(ratelimit.Config{Rules: f.Rules(), Now: now})
	require.NoError(t, err)
	defer func() { require.NoError(t, lim.Close()) }()
	m, err := httplimit.New(lim, httplimit.Options{Now: now})
	require.NoError(t, err)
	require.NoError(t, f.Bind(m))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /orders/{id}", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /items", func(http.ResponseWriter, *http.Request) {})
	h := m.Wrap(mux)
	var codes []int
	for _, path := range []string{"/orders/1", "/orders/2", "/orders/3", "/items", "/items"} {
		req := httptest.NewRequest("GET", path, nil)
		req.Header.Set("X-User-ID", "alice")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		codes = append(codes, rec.Code)
	}
	require.Equal(t, []int{200, 200, 429, 200, 429}, codes, "orders: 2; all: 3 across both routes")
}

// TestBindErrorNamesTheLine: a route the Middleware refuses (its rule's
// name cannot be a header's policy name) is an error naming the route's
// line.
func TestBindErrorNamesTheLine(t *testing.T) {
	f := mustParse(t, "rules:\n  - {name: a, limit: 1, window: 1m, mode: local}\n  - {name: caf\u00e9, limit: 1, window: 1m, mode: local}\nroutes:\n  - {pattern: /b, rules: [caf\u00e9]}\n")
	lim, err := ratelimit.New(ratelimit.Config{Rules: f.Rules()})
	require.NoError(t, err)
	defer func() { require.NoError(t, lim.Close()) }()
	m, err := httplimit.New(lim, httplimit.Options{})
	require.NoError(t, err)
	require.Equal(t, `rules.yaml:5: routes[0]: httplimit: route "/b": rule "café": byte 0xc3 at 3 cannot be in a structured field string`, f.Bind(m).Error())
}
