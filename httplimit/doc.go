// Package httplimit is a net/http middleware that rate-limits requests with
// a ratelimit.Limiter, by route and by caller.
//
// # Routes
//
// Each route pattern gets one or more of the Limiter's rules. A request is
// matched on its route pattern, not on its path, so that every id under
// "/v1/orders/{id}" shares one limit. Three ways give the pattern:
//
//   - Middleware.Handle registers a handler on an http.ServeMux together
//     with its rules; the rules are bound to the handler, nothing is looked
//     up per request. Requests the mux answers itself (405 for a method the
//     pattern does not serve, 404) never reach the handler and are not
//     counted: use Wrap in front of the mux for those.
//   - Middleware.Wrap in front of an *http.ServeMux looks the pattern up
//     with ServeMux.Handler before the mux runs. A request the mux would
//     answer with 405 (OPTIONS, DELETE, ... on a GET route) is charged to
//     the rules of a route that serves its path under another method, so no
//     method passes unlimited where its path has a rule. Wrap around a
//     handler registered on a mux reads the pattern from r.Pattern, which
//     the mux has set by then.
//   - Options.PatternFunc gives the pattern for other routers (chi's
//     RouteContext(ctx).RoutePattern(), known once chi has routed: wrap the
//     route's handler, not the router).
//
// A route's rules are decided together by one Limiter.AllowAll, all or
// nothing: a request that one rule denies consumes nothing under the others
// (the Strict rules, and the Hybrid ones that need Redis, in one script; see
// AllowAll). The most restrictive decision is the one reported. A route
// names its rules by ID, so it follows them across Limiter.Reload: a
// renamed rule keeps its counts, and the headers show its newest name,
// limit and window.
//
// # Keys
//
// Options.KeyFunc names the caller. The default is the Options.IdentityHeader
// header (X-User-ID), else the client address: an IPv4 address as is, an
// IPv6 address masked to its /64. X-Forwarded-For (or Forwarded, per
// Options.ForwardedHeader) is believed only when the immediate peer is in
// Options.TrustedProxies; the client is then the right-most address of the
// chain that is not a trusted proxy.
// The identity header is believed as sent: put the middleware behind an
// authenticating layer that sets it, or strip it from untrusted callers.
//
// # Responses
//
// Responses carry the fields of draft-ietf-httpapi-ratelimit-headers-11
// (https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/11/,
// sections 3 and 4, the newest revision whose text was available; the
// datatracker lists a -12 of 20 November 2026 whose text was not read):
//
//	RateLimit-Policy: "orders";q=100;w=60
//	RateLimit: "orders";r=0;t=12
//
// RateLimit-Policy lists the route's policies as they apply to the caller:
// q the caller's quota (the rule's Limit, or its user class's: Rule.Classes),
// w the rule's Window in seconds, rounded up. RateLimit reports the most
// restrictive decision: r the remaining quota, t the seconds until the
// quota resets (allowed) or until a retry is admitted (denied), rounded up.
// Policy names are the rules' names, serialized as Structured Field strings
// (RFC 8941). Shadow rules (Rule.Shadow) and an Unlimited class's rules are
// not listed: they never deny the caller. A route whose every rule is such
// gets neither field.
//
// A denied request gets 429 with Retry-After (whole seconds, rounded up, at
// least 1, equal to t: the draft's section 6 wants Retry-After no earlier
// than the end of the effective window) and an application/problem+json body (RFC 9457) of
// the draft's problem type (section 5.1)
// "https://iana.org/assignments/http-problem-types#quota-exceeded", with
// the extension member "violated-policies".
//
// # Errors
//
// The rule's FailurePolicy decides in the Limiter while Redis is down. A
// denial that leaves a rule counted (AllowAll could not roll back a rule
// the request passed) is still a 429, logged at Warn on Options.Logger. The
// errors left (a key the Limiter rejects, a closed Limiter, a FailError
// rule, a canceled request) go to Options.OnError; by default an error
// wrapping ratelimit.ErrInvalidKey is a 400 and any other a 503 with
// Retry-After: 1, both with a problem+json body.
package httplimit
