package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// buildGateway builds the gateway binary into a temporary directory.
func buildGateway(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// startGateway starts one gateway process and returns its base URL; the
// process is stopped (SIGTERM, then SIGKILL) in t.Cleanup.
func startGateway(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("gateway %d stderr:\n%s", cmd.Process.Pid, stderr.String())
		}
	})
	addr := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
				addr <- strings.Fields(rest)[0]
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
	}()
	select {
	case u := <-addr:
		return u
	case <-exited:
		t.Fatalf("gateway exited before listening: %s", stderr.String())
	case <-time.After(15 * time.Second):
		t.Fatalf("gateway did not listen within 15 s: %s", stderr.String())
	}
	return ""
}

// TestEndToEnd runs 3 gateway processes against one real Redis and drives
// 50 users' traffic round-robin over them: under the Strict sliding-log
// rule "orders-read" (20 a minute) each user gets exactly min(sent, 20)
// 200s and a 429 for every other request, whichever gateways served them,
// with RateLimit's r counting down to 0 and Retry-After ≥ 1 on every 429;
// the upstream sees exactly the admitted requests. Then 10 writers' POSTs
// go through a route of two rules (Strict and Hybrid, one AllowAll).
func TestEndToEnd(t *testing.T) {
	rdb := redistest.Client(t) // skips without a Redis, fails under CI
	prefix := fmt.Sprintf("e2e-gw-%d-%d", os.Getpid(), time.Now().UnixNano())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		iter := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for n := 0; iter.Next(ctx) && n < 100_000; n++ {
			_ = rdb.Del(ctx, iter.Val()).Err()
		}
	})

	var mu sync.Mutex
	upstreamSeen := map[string]int{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamSeen[r.Header.Get("X-User-ID")]++
		mu.Unlock()
		fmt.Fprintln(w, "upstream", r.URL.Path)
	}))
	t.Cleanup(upstream.Close)

	bin := buildGateway(t)
	var gateways []string
	for range 3 {
		gateways = append(gateways, startGateway(t, bin, "-upstream", upstream.URL, "-redis", redistest.Addr(), "-prefix", prefix,
			"-timeout", "10s")) // a loaded machine's slow call must not fall back to FailLocal's separate count
	}

	transport := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}

	const (
		users   = 50
		limit   = 20
		workers = 8
	)
	sent := func(u int) int { return 10 + 5*(u%5) } // 10 … 30: some under, some at, some over the limit
	type response struct {
		status            int
		rateLimit, policy string
		retryAfter        string
	}
	got := make([][]response, users)
	deadline := time.Now().Add(40 * time.Second) // well inside the rule's minute
	userCh := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for u := range userCh {
				user := "user-" + strconv.Itoa(u)
				for j := range sent(u) {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("traffic past its deadline")
						return
					}
					gw := gateways[(u+j)%len(gateways)]
					req, _ := http.NewRequest("GET", gw+"/v1/orders/"+strconv.Itoa(j), nil)
					req.Header.Set("X-User-ID", user)
					resp, err := client.Do(req)
					if err != nil {
						errs <- err
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					got[u] = append(got[u], response{resp.StatusCode, resp.Header.Get("RateLimit"),
						resp.Header.Get("RateLimit-Policy"), resp.Header.Get("Retry-After")})
				}
			}
		})
	}
	for u := range users {
		userCh <- u
	}
	close(userCh)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	total := 0
	for u := range users {
		n := sent(u)
		total += n
		rs := got[u]
		require.Len(t, rs, n, "user %d", u)
		admitted := min(n, limit)
		for j, r := range rs {
			require.Equal(t, `"orders-read";q=20;w=60`, r.policy, "user %d request %d", u, j)
			name, params, ok := strings.Cut(r.rateLimit, ";")
			require.True(t, ok, "user %d request %d: RateLimit %q", u, j, r.rateLimit)
			require.Equal(t, `"orders-read"`, name)
			var rem, reset int
			_, err := fmt.Sscanf(params, "r=%d;t=%d", &rem, &reset)
			require.NoError(t, err, "RateLimit %q", r.rateLimit)
			require.True(t, reset >= 1 && reset <= 60, "user %d request %d: t=%d", u, j, reset)
			if j < admitted {
				require.Equal(t, http.StatusOK, r.status, "user %d request %d", u, j)
				require.Equal(t, limit-1-j, rem, "user %d request %d: r counts down", u, j)
				require.Empty(t, r.retryAfter)
				continue
			}
			require.Equal(t, http.StatusTooManyRequests, r.status, "user %d request %d", u, j)
			require.Equal(t, 0, rem)
			ra, err := strconv.Atoi(r.retryAfter)
			require.NoError(t, err, "Retry-After %q", r.retryAfter)
			require.True(t, ra >= 1 && ra <= 60, "user %d request %d: Retry-After %d", u, j, ra)
			require.Equal(t, ra, reset, "t is the Retry-After of a denial")
		}
		mu.Lock()
		require.Equal(t, admitted, upstreamSeen["user-"+strconv.Itoa(u)], "user %d: upstream saw the admitted requests only", u)
		mu.Unlock()
	}
	t.Logf("%d requests over %d gateways, %d users", total, len(gateways), users)

	// POST /v1/orders: two rules in one AllowAll, the Strict token bucket
	// "orders-write" (5 a second) and the Hybrid "default" (1000 a minute).
	// Each writer sends 12 requests back to back: the bucket's 5 pass, then
	// one per 200 ms at most; each 429 names orders-write, with r=0 and t
	// equal to Retry-After; every response lists both policies.
	const writers, posts = 10, 12
	for w := range writers {
		user := "writer-" + strconv.Itoa(w)
		start := time.Now()
		ok := 0
		for j := range posts {
			req, _ := http.NewRequest("POST", gateways[(w+j)%len(gateways)]+"/v1/orders", nil)
			req.Header.Set("X-User-ID", user)
			resp, err := client.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			require.Equal(t, `"orders-write";q=5;w=1, "default";q=1000;w=60`, resp.Header.Get("RateLimit-Policy"), "writer %d request %d", w, j)
			name, params, found := strings.Cut(resp.Header.Get("RateLimit"), ";")
			require.True(t, found, "writer %d request %d: RateLimit %q", w, j, resp.Header.Get("RateLimit"))
			var rem, reset int
			_, err = fmt.Sscanf(params, "r=%d;t=%d", &rem, &reset)
			require.NoError(t, err)
			require.Equal(t, `"orders-write"`, name, "the most restrictive rule, allowed or denied")
			switch resp.StatusCode {
			case http.StatusOK:
				ok++
				require.Empty(t, resp.Header.Get("Retry-After"))
			case http.StatusTooManyRequests:
				require.Equal(t, 0, rem)
				require.Equal(t, "1", resp.Header.Get("Retry-After"), "a token of a 5/s bucket: within a second, rounded up")
				require.Equal(t, 1, reset)
			default:
				t.Fatalf("writer %d request %d: status %d", w, j, resp.StatusCode)
			}
		}
		refills := int(time.Since(start) / (200 * time.Millisecond))
		require.GreaterOrEqual(t, ok, 5, "writer %d: the bucket's burst", w)
		require.LessOrEqual(t, ok, 5+refills+1, "writer %d: the burst and the refills of %v", w, time.Since(start))
		mu.Lock()
		require.Equal(t, ok, upstreamSeen[user], "writer %d: upstream saw the admitted requests only", w)
		mu.Unlock()
	}
}
