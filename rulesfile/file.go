package rulesfile

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// File is a parsed and validated rules file. It is immutable: Rules and
// Routes return copies.
type File struct {
	name   string
	rules  []ratelimit.Rule
	routes []Route
}

// Route binds a route pattern to rules, by their names.
type Route struct {
	// Pattern is a Go 1.22 http.ServeMux pattern, e.g.
	// "GET /v1/orders/{id}".
	Pattern string
	// Rules are the names of the route's rules, in the order they are
	// checked.
	Rules []string
	// Line is the line of the route in the file.
	Line int
}

// Parse decodes and validates the rules file data; name is the file's name
// in error messages. A bad file returns every mistake found (errors.Join
// of *Error, each wrapping ratelimit.ErrInvalidArgument, in file order).
func Parse(name string, data []byte) (*File, error) {
	d := &decoder{file: name}
	f := d.decode(data)
	if err := errors.Join(d.errs...); err != nil {
		return nil, err
	}
	return f, nil
}

// Load reads and parses the rules file at path, as Parse does.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rulesfile: %w", err)
	}
	return Parse(path, data)
}

// Name returns the file's name, as given to Parse or Load.
func (f *File) Name() string { return f.name }

// Rules returns the file's rules, in file order, ready for Config.Rules or
// Limiter.Reload. A rule without an id gets its name as ID; other fields
// left out of the file are zero, so that the Limiter's defaults apply.
func (f *File) Rules() []ratelimit.Rule {
	out := slices.Clone(f.rules)
	for i := range out {
		out[i].Classes = maps.Clone(out[i].Classes)
	}
	return out
}

// Routes returns the file's routes, in file order.
func (f *File) Routes() []Route {
	out := slices.Clone(f.routes)
	for i := range out {
		out[i].Rules = slices.Clone(out[i].Rules)
	}
	return out
}

// Apply makes the file's rules lim's, with lim.Reload: rules whose id did
// not change keep their counters, and the swap is atomic while requests
// flow. An error (the set is refused and nothing changes) is Reload's,
// prefixed with the file's name.
func (f *File) Apply(lim *ratelimit.Limiter) error {
	if err := lim.Reload(f.Rules()); err != nil {
		return fmt.Errorf("%s: %w", f.name, err)
	}
	return nil
}
