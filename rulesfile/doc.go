// Package rulesfile reads a Limiter's rules, and the routes they limit,
// from a YAML file, and applies an edited file to a running Limiter.
//
// # Schema
//
//	rules:                         # required, at least one
//	  - id: orders-read            # stable identity; default: the name
//	    name: "GET /v1/orders"     # required, unique: what Allow takes
//	    limit: 100                 # required, > 0
//	    window: 1m                 # required: a Go duration, >= 1ms, whole ms
//	    algorithm: sliding_window  # sliding_window|sliding_log|fixed_window|token_bucket
//	    mode: hybrid               # hybrid|strict|local; default by algorithm
//	    on_failure: local          # local|open|closed|error; default local
//	    burst: 0                   # token_bucket only, <= 2 × limit; default limit
//	    shadow: false              # decide and count, never deny
//	    classes:                   # per user class (Rule.Classes); one of:
//	      pro: {limit: 1000}       #   another limit (and burst), same counters
//	      staff: {unlimited: true} #   every request admitted, nothing counted
//	      banned: {deny: true}     #   every request denied, nothing counted
//	routes:                        # optional
//	  - pattern: "GET /v1/orders/{id}"        # a Go 1.22 http.ServeMux pattern
//	    rules: ["GET /v1/orders", per-user-day]  # rule names, checked in order
//
// A user's class comes from Config.Classes or Config.ClassOf, which are
// code, not part of the file. The fields map one to one to ratelimit.Rule
// (classes to Rule.Classes, ratelimit.Override); a field left out keeps the
// Rule's zero value and so the Limiter's default. testdata/rules.yaml is a
// commented sample. Rules may share fields through YAML anchors and merge
// keys; a rule's own fields win:
//
//	rules:
//	  - &strict {name: a, limit: 10, window: 1m, mode: strict}
//	  - <<: *strict
//	    name: b
//
// # Errors
//
// Parse reports every mistake it finds, each as an *Error naming the file,
// the line and the field path:
//
//	rules.yaml:12: rules[2].window: "5x" is not a duration (e.g. 1m, 1h, 500ms)
//
// Unknown fields, fields given twice, missing required fields, values of
// the wrong type or out of range, duplicate ids or names (reported at the
// second), routes naming unknown rules and bad or conflicting patterns are
// all mistakes. The checks are the Limiter's own (Rule's documented
// bounds), so that a file Parse accepts is refused by the Limiter only for
// what depends on its state: a rule whose id it knows with another
// algorithm, mode or window (Limiter.Reload), a mode it was not built for.
//
// # Reloading
//
// File.Apply is Limiter.Reload with the file's rules: the swap is atomic
// while requests flow, and a rule keeps its counters (in Redis and in
// process) as long as its id stays, whatever happens to its name, limit,
// burst, failure policy or shadow flag. Renaming a rule without an id
// changes its id too, and so starts it afresh: give rules that may be
// renamed an explicit id.
//
// File.Bind binds the routes to an httplimit.Middleware at start-up; a
// Middleware cannot drop routes or learn new rules once built (see Bind).
package rulesfile
