package httplimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
	"github.com/drl-go/distributed-rate-limiter/newkeys"
)

// ErrNoKey is wrapped by the error of a request whose caller cannot be named
// (no identity header and an unparsable client address). It wraps
// ratelimit.ErrInvalidKey, so that the default OnError answers 400.
var ErrNoKey = fmt.Errorf("httplimit: no key: %w", ratelimit.ErrInvalidKey)

// Options configures a Middleware. The zero value of each field means its
// default; New does not modify the Options.
type Options struct {
	// KeyFunc names the caller of a request: the user key passed to the
	// Limiter. An error goes to OnError. Default: "user:" and the
	// IdentityHeader header when the request has one, else the client
	// address (ClientKey with TrustedProxies).
	KeyFunc func(*http.Request) (string, error)
	// IdentityHeader is the header the default KeyFunc reads the user from.
	// Default "X-User-ID".
	IdentityHeader string
	// TrustedProxies are the peers whose ForwardedHeader the default
	// KeyFunc believes. Default none: the client address is the TCP peer's.
	TrustedProxies []netip.Prefix
	// ForwardedHeader is the header the trusted proxies append the client
	// address to: "X-Forwarded-For" (the default) or "Forwarded" (RFC
	// 7239). The other one is ignored, since a caller can set it.
	ForwardedHeader string
	// PatternFunc returns the route pattern of a request, for Wrap. Default:
	// r.Pattern when the request was routed, else, when Wrap is given an
	// *http.ServeMux, the pattern ServeMux.Handler finds.
	PatternFunc func(*http.Request) string
	// OnError answers a request whose key or decision failed. Default:
	// WriteError (400 for ratelimit.ErrInvalidKey, else 503).
	OnError func(w http.ResponseWriter, r *http.Request, err error)
	// Now is the clock of the decisions. Default time.Now.
	Now func() time.Time
	// Logger receives a warning for a denied request that stays counted
	// under a rule it passed (ratelimit.Limiter.AllowAll could not roll it
	// back: Redis went away meanwhile, or a failure policy's admission was
	// already credited to Redis). The request is denied either way.
	// Default: no logging.
	Logger *slog.Logger

	// NewKeysPerSecond, when positive, limits the identities (KeyFunc's
	// keys) never seen before that one client network may bring per second
	// (a fixed window of one second): a request of a new identity beyond it
	// gets 429 with Retry-After, violating NewKeysPolicy, and never reaches
	// the Limiter, so a flood of fake ids creates no state there. Identities
	// seen lately pass the gate untouched. The client address is
	// ClientKey's (TrustedProxies, ForwardedHeader). Default 0: off.
	NewKeysPerSecond int
	// NewKeysPrefix4 and NewKeysPrefix6 are the prefix lengths of a client
	// network for NewKeysPerSecond. Default 24 and 48.
	NewKeysPrefix4, NewKeysPrefix6 int
	// NewKeysMemory is how many identities the gate remembers at least (an
	// approximate set of 16 bits an identity, local.Doorkeeper; about 1.4 %
	// of new identities pass for known ones when it is full). One forgotten
	// counts as new again. Default 1<<20 (2 MiB a generation).
	NewKeysMemory int64
	// NewKeysNetworks bounds the client networks the gate counts within one
	// second; a new identity from a network beyond it waits for the next
	// second. Default 1<<16.
	NewKeysNetworks int
}

// Middleware limits HTTP requests by route with a ratelimit.Limiter. Build
// it with New and bind rules to routes (Handle, Route) before it serves;
// it is then safe for concurrent use. It does not close the Limiter.
type Middleware struct {
	lim     *ratelimit.Limiter
	opts    Options
	newKeys *newkeys.Gate // nil unless Options.NewKeysPerSecond

	mu      sync.RWMutex
	routes  map[string]*route // by pattern, for Wrap
	methods []string          // the methods of the patterns with rules, in order of registration: the 405 probes
}

// route is the rules of one pattern, named by ID (which a Reload that
// renames a rule keeps), and the RateLimit-Policy value last written.
type route struct {
	pattern string
	checks  []ratelimit.Check
	policy  atomic.Pointer[policy]
}

// policy is a RateLimit-Policy value and the quotas it was built from:
// built again only when a request's quotas differ (another user class, a
// Reload).
type policy struct {
	quotas []ratelimit.Quota
	names  []string // each quota's policy name, "" when not advertised
	field  string
}

// New returns a Middleware deciding with lim. Each request's headers
// report the rules as lim applied them to the request's caller: the newest
// names and windows after a Reload, the caller's class's limits.
func New(lim *ratelimit.Limiter, opts Options) (*Middleware, error) {
	if lim == nil {
		return nil, errors.New("httplimit: nil Limiter")
	}
	if opts.IdentityHeader == "" {
		opts.IdentityHeader = "X-User-ID"
	}
	if opts.ForwardedHeader == "" {
		opts.ForwardedHeader = "X-Forwarded-For"
	}
	if opts.KeyFunc == nil {
		header, trusted, fwd := opts.IdentityHeader, slices.Clone(opts.TrustedProxies), opts.ForwardedHeader
		opts.KeyFunc = func(r *http.Request) (string, error) {
			if id := r.Header.Get(header); id != "" {
				return "user:" + id, nil
			}
			return ClientKey(r, trusted, fwd)
		}
	}
	if opts.OnError == nil {
		opts.OnError = WriteError
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	gate, err := newNewKeyGate(&opts)
	if err != nil {
		return nil, err
	}
	return &Middleware{lim: lim, opts: opts, newKeys: gate, routes: make(map[string]*route)}, nil
}

// newRoute resolves the named rules of pattern.
func (m *Middleware) newRoute(pattern string, ruleNames []string) (*route, error) {
	if len(ruleNames) == 0 {
		return nil, fmt.Errorf("httplimit: route %q: no rules", pattern)
	}
	rt := &route{pattern: pattern}
	for _, name := range ruleNames {
		rl, err := m.lim.Rule(name)
		if err != nil {
			return nil, fmt.Errorf("httplimit: route %q: %w", pattern, err)
		}
		if _, err := sfString(name); err != nil {
			return nil, fmt.Errorf("httplimit: route %q: rule %q: %w", pattern, name, err)
		}
		rt.checks = append(rt.checks, ratelimit.Check{ID: rl.ID(), N: 1})
	}
	return rt, nil
}

// Route binds rules to a route pattern for Wrap (and PatternFunc). A
// pattern bound twice keeps its last rules.
func (m *Middleware) Route(pattern string, ruleNames ...string) error {
	_, err := m.addRoute(pattern, ruleNames)
	return err
}

// addRoute binds ruleNames to pattern and returns the route.
func (m *Middleware) addRoute(pattern string, ruleNames []string) (*route, error) {
	rt, err := m.newRoute(pattern, ruleNames)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.routes[pattern] = rt
	if method, _, ok := strings.Cut(pattern, " "); ok && !slices.Contains(m.methods, method) {
		m.methods = append(m.methods, method)
	}
	return rt, nil
}

// Handle registers h on mux at pattern, limited by the named rules, and
// binds them to pattern as Route does. Only requests the mux hands to h are
// counted (see the package doc); a request already limited by Wrap is not
// counted again.
func (m *Middleware) Handle(mux *http.ServeMux, pattern string, h http.Handler, ruleNames ...string) error {
	rt, err := m.addRoute(pattern, ruleNames)
	if err != nil {
		return err
	}
	mux.Handle(pattern, m.limit(rt, h))
	return nil
}

// limitedKey marks, in a request's context, that Wrap has decided it.
type limitedKey struct{}

// limit admits each request under rt before h serves it, unless Wrap
// already decided it.
func (m *Middleware) limit(rt *route, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Context().Value(limitedKey{}) != nil {
			h.ServeHTTP(w, r)
			return
		}
		if m.serve(w, r, rt) {
			h.ServeHTTP(w, r)
		}
	})
}

// Wrap limits the requests next serves by the rules bound to their route
// pattern (Options.PatternFunc; or, when next is an *http.ServeMux, the
// pattern it would route to). A request whose pattern has no rules passes
// unlimited.
func (m *Middleware) Wrap(next http.Handler) http.Handler {
	mux, _ := next.(*http.ServeMux)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt := m.lookup(r, mux)
		if rt == nil {
			next.ServeHTTP(w, r)
			return
		}
		if m.serve(w, r, rt) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), limitedKey{}, true)))
		}
	})
}

// lookup returns the route of r, or nil.
func (m *Middleware) lookup(r *http.Request, mux *http.ServeMux) *route {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var pattern string
	switch {
	case m.opts.PatternFunc != nil:
		pattern = m.opts.PatternFunc(r)
	case r.Pattern != "":
		pattern = r.Pattern
	case mux != nil:
		_, pattern = mux.Handler(r)
		if pattern == "" {
			// 405 or 404: charge a route serving the path under another
			// method, so that no method passes unlimited.
			for _, method := range m.methods {
				if method == r.Method {
					continue
				}
				probe := *r
				probe.Method = method
				if _, p := mux.Handler(&probe); m.routes[p] != nil {
					return m.routes[p]
				}
			}
		}
	}
	return m.routes[pattern]
}

// serve decides r under rt and writes the headers; it answers a denied or
// failed request itself and reports whether r may proceed. It is the one
// place that calls the Limiter: one AllowAll over the route's rules, all or
// nothing (a request that one rule denies consumes nothing under the
// others).
func (m *Middleware) serve(w http.ResponseWriter, r *http.Request, rt *route) bool {
	key, err := m.opts.KeyFunc(r)
	if err != nil {
		m.opts.OnError(w, r, err)
		return false
	}
	now := m.opts.Now()
	if m.newKeys != nil && !m.gateNewKey(w, r, key, now) {
		return false
	}
	md, err := m.lim.AllowAll(r.Context(), key, now, rt.checks...)
	if err != nil {
		if md.Rule == "" || md.Allowed { // no decision
			m.opts.OnError(w, r, err)
			return false
		}
		// Denied, and a rule it passed keeps its count: denied either way.
		m.opts.Logger.Warn("httplimit: denied request left counted", "route", rt.pattern, "rule", md.Rule, "err", err)
	}
	h := w.Header()
	p := rt.policyOf(md.Quotas)
	if p.field != "" {
		h.Set("RateLimit-Policy", p.field)
	}
	q, name := p.find(md.Rule)
	if md.Allowed {
		if name != "" {
			h.Set("RateLimit", name+";r="+strconv.FormatInt(max(md.Remaining, 0), 10)+
				";t="+strconv.FormatInt(ceilSeconds(md.ResetAfter), 10))
		}
		return true
	}
	retry := strconv.Itoa(retryAfterSeconds(md.Decision))
	if name != "" {
		h.Set("RateLimit", name+";r=0;t="+retry)
	}
	h.Set("Retry-After", retry)
	writeProblem(w, Problem{
		Type:   QuotaExceededType,
		Title:  "Request cannot be satisfied as assigned quota has been exceeded",
		Status: http.StatusTooManyRequests,
		Detail: fmt.Sprintf("quota of policy %q (%d per %v) exceeded; retry in %s s",
			md.Rule, q.Limit, q.Window, retry),
		ViolatedPolicies: []string{md.Rule},
	})
	return false
}

// maxSFInteger is the largest Structured Field integer (RFC 8941, 3.3.1).
const maxSFInteger = 999_999_999_999_999

// advertised returns the policy name of q, or "" when the headers do not
// list q: a shadow rule's (it never denies) or an Unlimited class's (no
// quota, nor one a Structured Field integer can hold). A name that cannot
// be a Structured Field string (Route refuses those, but a Reload may
// rename a rule to one) is listed with its other bytes percent-encoded.
func advertised(q ratelimit.Quota) string {
	if q.Shadow || q.Limit > maxSFInteger {
		return ""
	}
	name, err := sfString(q.Rule)
	if err != nil {
		name, _ = sfString(percentEncode(q.Rule))
	}
	return name
}

// policyOf returns the policy of quotas: the one rt built last when they
// are the same.
func (rt *route) policyOf(quotas []ratelimit.Quota) *policy {
	if p := rt.policy.Load(); p != nil && slices.Equal(p.quotas, quotas) {
		return p
	}
	p := &policy{quotas: slices.Clone(quotas), names: make([]string, len(quotas))}
	var b strings.Builder
	for i, q := range quotas {
		name := advertised(q)
		if name == "" {
			continue
		}
		p.names[i] = name
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s;q=%d;w=%d", name, q.Limit, ceilSeconds(q.Window))
	}
	p.field = b.String()
	rt.policy.Store(p)
	return p
}

// find returns the quota of the named rule and its policy name ("" when
// the headers do not list it).
func (p *policy) find(rule string) (ratelimit.Quota, string) {
	for i, q := range p.quotas {
		if q.Rule == rule {
			return q, p.names[i]
		}
	}
	return ratelimit.Quota{}, ""
}

// retryAfterSeconds is d's Retry-After: whole seconds, rounded up, at
// least 1 (a 0 would invite an immediate retry that is denied again).
func retryAfterSeconds(d ratelimit.Decision) int { return max(d.RetryAfterSeconds(), 1) }

// ceilSeconds rounds d up to whole seconds.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}
