package rulesfile

import (
	"fmt"

	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// Bind binds the file's routes to m with Middleware.Route, for
// Middleware.Wrap: m must have been built (httplimit.New) with the
// Limiter and the rules of this file. An error names the route's line.
//
// Bind is for start-up. A Middleware keeps the rules given to New and its
// routes for good: Route can re-bind a pattern to other rules among those,
// but no pattern can be removed and no rule added. After Apply of a file
// whose routes or rule names changed, build a new Middleware (httplimit.New
// with the new rules, then Bind) and switch the server's handler to it, as
// examples/gateway does on SIGHUP.
func (f *File) Bind(m *httplimit.Middleware) error {
	for i, rt := range f.routes {
		if err := m.Route(rt.Pattern, rt.Rules...); err != nil {
			return fmt.Errorf("%s:%d: routes[%d]: %w", f.name, rt.Line, i, err)
		}
	}
	return nil
}
