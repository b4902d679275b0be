package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
	"github.com/drl-go/distributed-rate-limiter/rulesfile"
)

// TestRulesYAMLIsTheBuiltInSet: rules.yaml says what the built-in rules
// and routes are, so that -rules rules.yaml changes nothing.
func TestRulesYAMLIsTheBuiltInSet(t *testing.T) {
	f, err := rulesfile.Load("rules.yaml")
	require.NoError(t, err)
	want := append(rules[:0:0], rules...)
	for i := range want {
		want[i].ID = want[i].Name
	}
	require.Equal(t, want, f.Rules())
	got := f.Routes()
	require.Len(t, got, len(routes))
	for i := range got {
		require.Equal(t, routes[i].Pattern, got[i].Pattern)
		require.Equal(t, routes[i].Rules, got[i].Rules)
	}
}

// TestRunReloadsOnSIGHUP runs the gateway in process on the test Redis
// with -rules: a strict rule of 2 a minute admits 2 of alice's requests;
// the file is edited (renamed, limit 3, same id) and SIGHUP reloads it:
// alice gets exactly 1 more, under the new name and limit in
// RateLimit-Policy; a file with a mistake is reported with its line and
// changes nothing.
func TestRunReloadsOnSIGHUP(t *testing.T) {
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	upstream := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer upstream.Close()
	up := upstream.URL
	path := filepath.Join(t.TempDir(), "rules.yaml")
	write := func(name string, limit, window string) {
		src := "rules:\n  - id: orders\n    name: " + name + "\n    limit: " + limit + "\n    window: " + window + "\n    mode: strict\n" +
			"routes:\n  - pattern: \"GET /v1/orders/{id}\"\n    rules: [" + name + "]\n"
		require.NoError(t, os.WriteFile(path, []byte(src), 0o600))
	}
	write("orders-v1", "2", "1m")

	ctx, cancel := context.WithCancel(context.Background())
	out, stdout := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-upstream", up, "-redis", redistest.Addr(),
			"-prefix", prefix, "-timeout", "10s", "-rules", path}, stdout)
		_ = stdout.Close()
	}()
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
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
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no line from the gateway")
			return ""
		}
	}
	base := strings.Fields(strings.TrimPrefix(next(), "listening on "))[0]

	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	get := func() (int, string) {
		req, _ := http.NewRequest("GET", base+"/v1/orders/1", nil)
		req.Header.Set("X-User-ID", "alice")
		resp, err := client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("RateLimit-Policy")
	}
	codes := func(n int) []int {
		var got []int
		for range n {
			code, _ := get()
			got = append(got, code)
		}
		return got
	}
	require.Equal(t, []int{200, 200, 429}, codes(3))

	hup := func() string {
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		return next()
	}
	write("orders-v2", "3", "1m")
	require.Equal(t, "reloaded "+path, hup())
	code, policy := get()
	require.Equal(t, 200, code, "2 counted under v1, 1 more of the new limit 3")
	require.Equal(t, `"orders-v2";q=3;w=60`, policy)
	require.Equal(t, []int{429}, codes(1))

	write("orders-v3", "4", "5x")
	require.Equal(t, "reload: "+path+`:5: rules[0].window: "5x" is not a duration (e.g. 1m, 1h, 500ms)`, hup())
	code, policy = get()
	require.Equal(t, 429, code)
	require.Equal(t, `"orders-v2";q=3;w=60`, policy)
}
