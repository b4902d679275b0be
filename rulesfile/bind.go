package rulesfile

import (
	"fmt"

	"github.com/drl-go/distributed-rate-limiter/httplimit"
)

// Bind binds the file's routes to m with Middleware.Route, for
// Middleware.Wrap: m must decide with the Limiter this file was applied to.
// An error names the route's line.
//
// A Middleware follows its rules across Apply (by id: the headers report
// the newest names, limits and windows) but keeps its routes: Route can
// re-bind a pattern, but no pattern can be removed. After Apply of a file
// whose routes changed, build a new Middleware (httplimit.New, then Bind)
// and switch the server's handler to it, as examples/gateway does on
// SIGHUP.
func (f *File) Bind(m *httplimit.Middleware) error {
	for i, rt := range f.routes {
		if err := m.Route(rt.Pattern, rt.Rules...); err != nil {
			return fmt.Errorf("%s:%d: routes[%d]: %w", f.name, rt.Line, i, err)
		}
	}
	return nil
}
