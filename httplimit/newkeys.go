package httplimit

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/drl-go/distributed-rate-limiter/newkeys"
)

// newKeyGate is the gate of Options.NewKeysPerSecond: a newkeys.Gate,
// whose networks are the client's address prefix, or the forwarded entry
// that is not an address.
type newKeyGate struct {
	*newkeys.Gate
}

// newNewKeyGate returns the gate of opts, or nil when it is off.
func newNewKeyGate(opts *Options) (*newKeyGate, error) {
	switch {
	case opts.NewKeysPerSecond == 0:
		return nil, nil
	case opts.NewKeysPerSecond < 0:
		return nil, fmt.Errorf("httplimit: Options.NewKeysPerSecond %d is negative", opts.NewKeysPerSecond)
	}
	g, err := newkeys.New(newkeys.Config{PerSecond: opts.NewKeysPerSecond, Prefix4: opts.NewKeysPrefix4,
		Prefix6: opts.NewKeysPrefix6, Memory: opts.NewKeysMemory, Networks: opts.NewKeysNetworks})
	if err != nil {
		return nil, fmt.Errorf("httplimit: Options.NewKeys* (as newkeys.Config): %w", err)
	}
	return &newKeyGate{g}, nil
}

// network is the client network of a, or the forwarded entry fwd that is
// not an address.
func (g *newKeyGate) network(a netip.Addr, fwd string) string {
	if fwd != "" {
		return "fwd:" + fwd
	}
	return g.Network(a)
}

// gateNewKey applies the gate to r of key: it answers a denied request
// with 429 and reports whether r may proceed.
func (m *Middleware) gateNewKey(w http.ResponseWriter, r *http.Request, key string, now time.Time) bool {
	a, fwd, err := clientAddr(r, m.opts.TrustedProxies, m.opts.ForwardedHeader)
	if err != nil {
		m.opts.OnError(w, r, err)
		return false
	}
	ok, wait := m.newKeys.Admit(key, m.newKeys.network(a, fwd), now)
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
			m.newKeys.PerSecond(), retry),
		ViolatedPolicies: []string{NewKeysPolicy},
	})
	return false
}

// NewKeysPolicy is the policy a request denied by Options.NewKeysPerSecond
// violates, in its problem's "violated-policies".
const NewKeysPolicy = "new-keys"
