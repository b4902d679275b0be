package redistest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// proxyLabel is the pprof label key put on every goroutine of a Proxy, so
// that its cleanup can wait until they have all ended.
const proxyLabel = "redistest.proxy"

// proxyStopTimeout bounds how long a Proxy's cleanup waits for its
// goroutines to end.
const proxyStopTimeout = 5 * time.Second

// Proxy is a TCP proxy in the test process, between the code under test
// and a Redis, that injects network faults: it is toxiproxy used as a
// library, with no toxiproxy-server and no HTTP API. Make one with
// StartProxy. Each fault method replaces the fault of its kind already set,
// and applies to connections already open as well as new ones; Clear
// removes them all. Its methods are safe for concurrent use.
type Proxy struct {
	mu     sync.Mutex
	proxy  *toxiproxy.Proxy
	addr   string
	labels pprof.LabelSet
	id     string
}

// StartProxy starts a proxy to upstream (host:port) listening on a free
// port of 127.0.0.1, with no fault set. The test's cleanup removes the
// faults, stops the proxy, closes its connections and waits (at most 5 s)
// until every goroutine it started has ended; it fails the test if some
// remain. The proxy logs nothing.
func StartProxy(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	id := fmt.Sprintf("%x", rand.Uint64())
	server := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := &Proxy{
		proxy:  toxiproxy.NewProxy(server, "redistest-"+id, "127.0.0.1:0", upstream),
		labels: pprof.Labels(proxyLabel, id),
		id:     id,
	}
	var err error
	p.do(func() { err = p.proxy.Start() })
	if err != nil {
		tb.Fatalf("toxiproxy to %s: %v", upstream, err)
	}
	p.addr = p.proxy.Listen // the bound address, set by Start
	tb.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.do(func() { p.proxy.Toxics.ResetToxics(context.Background()) })
		p.proxy.Stop()
		if left := p.waitGoroutines(time.Now().Add(proxyStopTimeout)); left != "" {
			tb.Errorf("goroutines of the toxiproxy to %s left after stop:\n%s", upstream, left)
		}
	})
	return p
}

// Addr returns the address the proxy listens on, 127.0.0.1:port. It stays
// the same across Disable and Enable.
func (p *Proxy) Addr() string { return p.addr }

// Latency delays every reply by d, rounded up to the millisecond: it is a
// "latency" toxic on the downstream (Redis to client) direction only, so
// each request-reply round trip takes at least d longer. Latency(0) removes
// it.
func (p *Proxy) Latency(d time.Duration) {
	if d <= 0 {
		p.remove("latency")
		return
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	p.set("latency", "latency", "downstream", map[string]int64{"latency": int64(ms)})
}

// BlackHole makes the proxy a black hole: it still accepts connections but
// forwards nothing in either direction, and never closes them ("timeout"
// toxics with timeout 0 on both directions). Requests then fail only by
// the client's own timeouts. Removing it (Clear) closes the connections
// that were open through it, as data was lost on them.
func (p *Proxy) BlackHole() {
	p.set("blackhole_up", "timeout", "upstream", map[string]int64{"timeout": 0})
	p.set("blackhole_down", "timeout", "downstream", map[string]int64{"timeout": 0})
}

// ResetPeer makes the proxy reset connections: the first reply from Redis
// on a connection is dropped and the connection to the client is closed at
// once, with a TCP RST for connections opened after the call (a
// "reset_peer" toxic with timeout 0 on the downstream direction). The
// request itself reaches Redis and runs there: the client cannot tell
// whether it did.
func (p *Proxy) ResetPeer() {
	p.set("reset_peer", "reset_peer", "downstream", map[string]int64{"timeout": 0})
}

// SlowClose delays by d, rounded up to the millisecond, the closing of the
// client's side of a connection after Redis closed its side (a
// "slow_close" toxic on the downstream direction). SlowClose(0) removes it.
func (p *Proxy) SlowClose(d time.Duration) {
	if d <= 0 {
		p.remove("slow_close")
		return
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	p.set("slow_close", "slow_close", "downstream", map[string]int64{"delay": int64(ms)})
}

// Clear removes every fault set on the proxy.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.do(func() { p.proxy.Toxics.ResetToxics(context.Background()) })
}

// Disable closes every connection through the proxy and stops accepting
// new ones: connecting to Addr is refused. It does nothing if the proxy is
// already disabled.
func (p *Proxy) Disable() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.proxy.Stop()
}

// Enable makes a disabled proxy accept connections again, on the same
// address, keeping the faults set. It does nothing if the proxy is enabled.
// It fails the test if the address cannot be bound again.
func (p *Proxy) Enable(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	p.do(func() { err = p.proxy.Start() })
	if err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
		tb.Fatalf("toxiproxy on %s: %v", p.addr, err)
	}
}

// set adds a toxic, replacing the toxic of that name if there is one.
// Attribute values are integers (milliseconds) for every toxic used here.
func (p *Proxy) set(name, typ, stream string, attrs map[string]int64) {
	body, err := json.Marshal(map[string]any{
		"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs,
	})
	if err != nil {
		panic(err) // cannot happen: the values are plain
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.do(func() {
		_ = p.proxy.Toxics.RemoveToxic(context.Background(), name) // ErrToxicNotFound is fine
		_, err = p.proxy.Toxics.AddToxicJson(bytes.NewReader(body))
	})
	if err != nil {
		panic(fmt.Sprintf("redistest: toxic %s: %v", body, err)) // a bug of this file
	}
}

// remove removes the toxic of that name, if there is one.
func (p *Proxy) remove(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.do(func() { _ = p.proxy.Toxics.RemoveToxic(context.Background(), name) })
}

// do runs f with the proxy's pprof label, so that the goroutines toxiproxy
// starts in f, and the goroutines those start, carry it.
func (p *Proxy) do(f func()) {
	pprof.Do(context.Background(), p.labels, func(context.Context) { f() })
}

// waitGoroutines waits until no goroutine carries the proxy's label, or
// until deadline; then it returns the stacks of those left, or "".
func (p *Proxy) waitGoroutines(deadline time.Time) string {
	mark := fmt.Sprintf("%q:%q", proxyLabel, p.id)
	for {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		var left []string
		for _, rec := range strings.Split(buf.String(), "\n\n") {
			if strings.Contains(rec, mark) {
				left = append(left, rec)
			}
		}
		if len(left) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(left, "\n\n")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
