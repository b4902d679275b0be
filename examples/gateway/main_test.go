package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRunEmbedded runs the gateway in process on its embedded miniredis:
// requests are proxied with the RateLimit fields until the read rule's
// quota is spent, then answered 429 (HEAD too) without reaching the
// upstream; a bad flag is an error; the gateway stops when its context
// ends.
func TestRunEmbedded(t *testing.T) {
	var hits atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		fmt.Fprintln(w, "upstream", r.Method, r.URL.Path)
	}))
	defer upstream.Close()

	require.Error(t, run(context.Background(), []string{"-upstream", "not a url"}, io.Discard))

	ctx, cancel := context.WithCancel(context.Background())
	out, stdout := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-upstream", upstream.URL, "-timeout", "10s"}, stdout)
		_ = stdout.Close()
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("gateway did not stop")
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	base := strings.Fields(strings.TrimPrefix(line, "listening on "))[0]

	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	send := func(method, path string) *http.Response {
		req, _ := http.NewRequest(method, base+path, nil)
		req.Header.Set("X-User-ID", "alice")
		resp, err := client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp
	}
	resp := send("POST", "/v1/orders") // a route of two rules
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, `"orders-write";q=5;w=1, "default";q=1000;w=60`, resp.Header.Get("RateLimit-Policy"))

	// orders-read: strict sliding log, exactly 20 a minute, whatever the
	// machine's speed (-timeout keeps a slow call from being decided by the
	// FailLocal fallback, which counts apart).
	for i := range 20 {
		resp := send("GET", "/v1/orders/"+strconv.Itoa(i))
		require.Equal(t, http.StatusOK, resp.StatusCode, "request %d", i)
		require.Equal(t, `"orders-read";q=20;w=60`, resp.Header.Get("RateLimit-Policy"))
		require.True(t, strings.HasPrefix(resp.Header.Get("RateLimit"), `"orders-read";r=`+strconv.Itoa(19-i)+";t="),
			"request %d: RateLimit %q", i, resp.Header.Get("RateLimit"))
	}
	resp = send("HEAD", "/v1/orders/20")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err)
	require.True(t, ra >= 1 && ra <= 60, "Retry-After %d", ra)
	require.Equal(t, `"orders-read";r=0;t=`+strconv.Itoa(ra), resp.Header.Get("RateLimit"))
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	require.Equal(t, int64(21), hits.Load(), "the denied request did not reach the upstream")
}
