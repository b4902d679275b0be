package httplimit

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/drl-go/distributed-rate-limiter/newkeys"
)

// newNewKeyGate returns the gate of Options.NewKeysPerSecond, or nil when
// it is off.
func newNewKeyGate(opts *Options) (*newkeys.Gate, error) {
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
	return g, nil
}

// gateNewKey applies the gate to r of key: it answers a denied request
// with 429 and reports whether r may proceed.
func (m *Middleware) gateNewKey(w http.ResponseWriter, r *http.Request, key string, now time.Time) bool {
	a, fwd, err := clientAddr(r, m.opts.TrustedProxies, m.opts.ForwardedHeader)
	if err != nil {
		m.opts.OnError(w, r, err)
		return false
	}
	network := "fwd:" + fwd // a forwarded entry that is not an address
	if fwd == "" {
		network = m.newKeys.Network(a)
	}
	ok, wait := m.newKeys.Admit(key, network, now)
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
