package redistest_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ping sends one PING with a context of timeout d and returns its error and
// how long it took.
func ping(c *redis.Client, d time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	err := c.Ping(ctx).Err()
	return time.Since(start), err
}

// isTimeout reports whether err is a deadline or network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func TestProcKillRestart(t *testing.T) {
	p := redistest.StartProc(t)
	c := p.Client(t)
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after StartProc: %v", err)
	}
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := p.Addr()

	p.Kill()
	if _, err := ping(c, 2*time.Second); err == nil {
		t.Fatal("PING after Kill succeeded")
	}
	p.Kill() // idempotent

	p.Restart(t)
	if p.Addr() != addr {
		t.Fatalf("Addr after Restart = %s, want %s", p.Addr(), addr)
	}
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if err := c.Get(context.Background(), "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Restart: err = %v, want redis.Nil (data gone)", err)
	}
}

func TestProcRestartRunning(t *testing.T) {
	p := redistest.StartProc(t, "--maxclients", "100")
	c := p.Client(t, func(o *redis.Options) { o.MaxRetries = 5 })
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	p.Restart(t) // without Kill first
	if n, err := c.Exists(context.Background(), "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS k after Restart = %d, %v; want 0, nil", n, err)
	}
	got, err := c.ConfigGet(context.Background(), "maxclients").Result()
	if err != nil || got["maxclients"] != "100" {
		t.Fatalf("CONFIG GET maxclients after Restart = %v, %v; want 100 (args kept)", got, err)
	}
}

func TestProxyFaults(t *testing.T) {
	p := redistest.StartProc(t)
	px := redistest.StartProxy(t, p.Addr())
	c := redis.NewClient(&redis.Options{Addr: px.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })

	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING through the proxy: %v", err)
	}

	px.Latency(200 * time.Millisecond)
	if d, err := ping(c, 2*time.Second); err != nil || d < 200*time.Millisecond {
		t.Fatalf("PING with Latency(200ms) took %v, err %v; want >= 200ms, nil", d, err)
	}
	px.Latency(300 * time.Millisecond) // replaces the previous one
	if d, err := ping(c, 2*time.Second); err != nil || d < 300*time.Millisecond || d > 550*time.Millisecond {
		t.Fatalf("PING with Latency(300ms) took %v, err %v; want in [300ms, 550ms), nil", d, err)
	}
	px.Clear()
	if d, err := ping(c, 2*time.Second); err != nil || d >= 200*time.Millisecond {
		t.Fatalf("PING after Clear took %v, err %v; want < 200ms, nil", d, err)
	}

	px.BlackHole()
	if d, err := ping(c, 300*time.Millisecond); !isTimeout(err) || d > 2*time.Second {
		t.Fatalf("PING with BlackHole took %v, err %v; want a timeout after about 300ms", d, err)
	}
	px.Clear()
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Clear of BlackHole: %v", err)
	}

	px.ResetPeer()
	if _, err := ping(c, 2*time.Second); err == nil {
		t.Fatal("PING with ResetPeer succeeded")
	}
	px.Clear()
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Clear of ResetPeer: %v", err)
	}

	px.Disable()
	if _, err := ping(c, 2*time.Second); err == nil {
		t.Fatal("PING with the proxy disabled succeeded")
	}
	px.Enable(t)
	if _, err := ping(c, 2*time.Second); err != nil {
		t.Fatalf("PING after Enable: %v", err)
	}
}

// TestProxySlowClose uses a raw connection: Redis closes it after QUIT, and
// the proxy delays passing the close on.
func TestProxySlowClose(t *testing.T) {
	p := redistest.StartProc(t)
	px := redistest.StartProxy(t, p.Addr())
	quit := func() time.Duration {
		t.Helper()
		conn, err := net.DialTimeout("tcp", px.Addr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		if _, err := conn.Write([]byte("*1\r\n$4\r\nQUIT\r\n")); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		if line, err := r.ReadString('\n'); err != nil || line != "+OK\r\n" {
			t.Fatalf("QUIT answered %q, %v", line, err)
		}
		if _, err := r.ReadByte(); err != io.EOF {
			t.Fatalf("read after QUIT: %v, want EOF", err)
		}
		return time.Since(start)
	}
	if d := quit(); d >= 300*time.Millisecond {
		t.Fatalf("close after QUIT took %v without SlowClose", d)
	}
	px.SlowClose(300 * time.Millisecond)
	if d := quit(); d < 300*time.Millisecond {
		t.Fatalf("close after QUIT took %v with SlowClose(300ms), want >= 300ms", d)
	}
}

// TestProxyCleanupWithFaults leaves faults and open connections behind: the
// cleanup must still stop every goroutine (checked by it and by goleak).
func TestProxyCleanupWithFaults(t *testing.T) {
	p := redistest.StartProc(t)
	// Close the client only after the proxy's cleanup, so that the proxy
	// stops with connections open.
	var c *redis.Client
	t.Cleanup(func() { _ = c.Close() })
	px := redistest.StartProxy(t, p.Addr())
	c = redis.NewClient(&redis.Options{Addr: px.Addr(), ContextTimeoutEnabled: true, PoolSize: 4})
	for range 4 {
		if _, err := ping(c, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	px.SlowClose(10 * time.Second)
	px.Latency(50 * time.Millisecond)
	px.BlackHole()
}
