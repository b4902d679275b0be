package httplimit

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/drl-go/distributed-rate-limiter/local"
)

// newKeyGate limits the identities never seen before that one client
// network may bring per second (Options.NewKeysPerSecond): a flood of fake
// ids creates no state in the Limiter beyond the budget, and known
// identities are never affected.
type newKeyGate struct {
	seen      *local.Doorkeeper
	perSecond int
	bits4     int
	bits6     int
	maxNets   int

	mu     sync.Mutex
	second int64          // the Unix second counts holds
	counts map[string]int // new identities admitted this second, by network
}

// newNewKeyGate returns the gate of opts, or nil when it is off.
func newNewKeyGate(opts *Options) (*newKeyGate, error) {
	if opts.NewKeysPerSecond == 0 {
		return nil, nil
	}
	if opts.NewKeysPrefix4 == 0 {
		opts.NewKeysPrefix4 = 24
	}
	if opts.NewKeysPrefix6 == 0 {
		opts.NewKeysPrefix6 = 48
	}
	if opts.NewKeysMemory == 0 {
		opts.NewKeysMemory = 1 << 20
	}
	if opts.NewKeysNetworks == 0 {
		opts.NewKeysNetworks = 1 << 16
	}
	switch {
	case opts.NewKeysPerSecond < 0:
		return nil, fmt.Errorf("httplimit: Options.NewKeysPerSecond %d is negative", opts.NewKeysPerSecond)
	case opts.NewKeysPrefix4 < 0 || opts.NewKeysPrefix4 > 32:
		return nil, fmt.Errorf("httplimit: Options.NewKeysPrefix4 %d is not in 1..32", opts.NewKeysPrefix4)
	case opts.NewKeysPrefix6 < 0 || opts.NewKeysPrefix6 > 128:
		return nil, fmt.Errorf("httplimit: Options.NewKeysPrefix6 %d is not in 1..128", opts.NewKeysPrefix6)
	case opts.NewKeysMemory < 0 || opts.NewKeysNetworks < 0:
		return nil, fmt.Errorf("httplimit: Options.NewKeysMemory %d or NewKeysNetworks %d is negative", opts.NewKeysMemory, opts.NewKeysNetworks)
	}
	return &newKeyGate{
		seen: local.NewDoorkeeper(opts.NewKeysMemory), perSecond: opts.NewKeysPerSecond,
		bits4: opts.NewKeysPrefix4, bits6: opts.NewKeysPrefix6, maxNets: opts.NewKeysNetworks,
		counts: make(map[string]int),
	}, nil
}

// network is the client network of a (its /NewKeysPrefix4 or
// /NewKeysPrefix6), or the forwarded entry fwd that is not an address.
func (g *newKeyGate) network(a netip.Addr, fwd string) string {
	switch {
	case fwd != "":
		return "fwd:" + fwd
	case a.Is4():
		return netip.PrefixFrom(a, g.bits4).Masked().String()
	}
	return netip.PrefixFrom(a, g.bits6).Masked().String()
}

// admit reports whether key may go on to the Limiter at now: a key seen
// lately always may; a new one if its network has budget left this second,
// and it is then remembered. A new key denied is not remembered, so that
// sending it again does not pass it. It returns the wait until the next
// second otherwise.
func (g *newKeyGate) admit(key, network string, now time.Time) (bool, time.Duration) {
	if g.seen.Seen(key) {
		return true, 0
	}
	sec := now.Unix()
	g.mu.Lock()
	if sec != g.second {
		g.second = sec
		clear(g.counts)
	}
	n, tracked := g.counts[network]
	ok := n < g.perSecond && (tracked || len(g.counts) < g.maxNets)
	if ok {
		g.counts[network] = n + 1
	}
	g.mu.Unlock()
	if !ok {
		return false, time.Unix(sec+1, 0).Sub(now)
	}
	g.seen.Add(key)
	return true, 0
}

// gateNewKey applies the gate to r of key: it answers a denied request
// with 429 and reports whether r may proceed.
func (m *Middleware) gateNewKey(w http.ResponseWriter, r *http.Request, key string, now time.Time) bool {
	a, fwd, err := clientAddr(r, m.opts.TrustedProxies, m.opts.ForwardedHeader)
	if err != nil {
		m.opts.OnError(w, r, err)
		return false
	}
	ok, wait := m.newKeys.admit(key, m.newKeys.network(a, fwd), now)
	if ok {
		return true
	}
	retry := strconv.FormatInt(max(ceilSeconds(wait), 1), 10)
	w.Header().Set("Retry-After", retry)
	writeProblem(w, Problem{
		Type:   QuotaExceededType,
		Title:  "Request cannot be satisfied as assigned quota has been exceeded",
		Status: http.StatusTooManyRequests,
		Detail: fmt.Sprintf("quota of new identities from the client network (%d per second) exceeded; retry in %s s",
			m.newKeys.perSecond, retry),
		ViolatedPolicies: []string{NewKeysPolicy},
	})
	return false
}

// NewKeysPolicy is the policy a request denied by Options.NewKeysPerSecond
// violates, in its problem's "violated-policies".
const NewKeysPolicy = "new-keys"
