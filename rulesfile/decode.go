package rulesfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// This file walks the YAML node tree, so that every mistake is reported
// with its line and field path (decoding into structs would lose both).

// decoder collects the mistakes of one file.
type decoder struct {
	file string
	errs []error
}

// fail records a mistake at node n (nil: no line) in field.
func (d *decoder) fail(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// decode decodes the whole file; the mistakes are in d.errs.
func (d *decoder) decode(data []byte) *File {
	f := &File{name: d.file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.fail(nil, "", "empty file, want a mapping with rules:")
		} else {
			d.syntax(err)
		}
		return f
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.fail(&extra, "", "a second YAML document; the file holds one")
	} else if !errors.Is(err, io.EOF) {
		d.syntax(err)
	}
	top := resolve(&doc)
	if top.Kind == yaml.DocumentNode && len(top.Content) == 1 {
		top = resolve(top.Content[0])
	}
	fields, ok := d.mapping(top, "", "rules", "routes")
	if !ok {
		return f
	}
	rules, ok := fields["rules"]
	if !ok {
		d.fail(top, "rules", "required")
		return f
	}
	names := d.rules(f, rules)
	if routes, ok := fields["routes"]; ok {
		d.routes(f, routes, names)
	}
	return f
}

// syntax records a YAML syntax error ("yaml: line 3: ...") at its line.
func (d *decoder) syntax(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, after, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				line, msg = n, after
			}
		}
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: line, Msg: "YAML: " + msg})
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// kind names a node's kind in messages.
func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// mapping returns the values of mapping n by key. Keys not in known, and
// keys given twice, are mistakes. ok is false when n is not a mapping.
func (d *decoder) mapping(n *yaml.Node, path string, known ...string) (fields map[string]*yaml.Node, ok bool) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping, got %s", kind(n))
		return nil, false
	}
	fields = make(map[string]*yaml.Node, len(n.Content)/2)
	lines := make(map[string]int, len(n.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		field := join(path, k.Value)
		switch {
		case k.Kind == yaml.ScalarNode && k.Tag == "!!merge":
			merges = append(merges, v)
		case k.Kind != yaml.ScalarNode:
			d.fail(k, path, "want a field name, got %s", kind(k))
		case !contains(known, k.Value):
			d.fail(k, field, "unknown field (known: %s)", strings.Join(known, ", "))
		case lines[k.Value] != 0:
			d.fail(k, field, "given twice (first at line %d)", lines[k.Value])
		default:
			fields[k.Value], lines[k.Value] = v, k.Line
		}
	}
	d.merge(fields, merges, path, known)
	return fields, true
}

// merge adds to fields the fields of the YAML merge keys' mappings
// ("<<: *defaults", or a list of them, the first winning) that fields does
// not set itself.
func (d *decoder) merge(fields map[string]*yaml.Node, merges []*yaml.Node, path string, known []string) {
	for _, m := range merges {
		sources := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			sources = m.Content
		}
		for _, src := range sources {
			from, ok := d.mapping(resolve(src), path, known...)
			if !ok {
				continue
			}
			for k, v := range from {
				if fields[k] == nil {
					fields[k] = v
				}
			}
		}
	}
}

// join returns the path of field under path.
func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// list returns the items of sequence n, or false when n is not one.
func (d *decoder) list(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "want a list, got %s", kind(n))
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		items[i] = resolve(c)
	}
	return items, true
}

// str returns scalar n as a string.
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.fail(n, path, "want a string, got %s", kind(n))
		return "", false
	}
	return n.Value, true
}

// integer returns scalar n as an int64.
func (d *decoder) integer(n *yaml.Node, path string) (int64, bool) {
	var v int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&v) != nil {
		d.fail(n, path, "%s is not an integer", kind(n))
		return 0, false
	}
	return v, true
}

// boolean returns scalar n as a bool.
func (d *decoder) boolean(n *yaml.Node, path string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&v) != nil {
		d.fail(n, path, "%s is not true or false", kind(n))
		return false, false
	}
	return v, true
}

// enum returns the value of choices that scalar n names.
func enum[T any](d *decoder, n *yaml.Node, path string, choices []string, values []T) (T, bool) {
	if n.Kind == yaml.ScalarNode {
		for i, c := range choices {
			if n.Value == c {
				return values[i], true
			}
		}
	}
	var zero T
	d.fail(n, path, "%s is not one of %s", kind(n), strings.Join(choices, ", "))
	return zero, false
}

// Spellings of the rule fields' values.
var (
	algorithmNames  = []string{"sliding_window", "sliding_log", "fixed_window", "token_bucket"}
	algorithmValues = []ratelimit.Algorithm{ratelimit.SlidingWindow, ratelimit.SlidingLog, ratelimit.FixedWindow, ratelimit.TokenBucket}
	modeNames       = []string{"hybrid", "strict", "local"}
	modeValues      = []ratelimit.Mode{ratelimit.Hybrid, ratelimit.Strict, ratelimit.Local}
	failureNames    = []string{"local", "open", "closed", "error"}
	failureValues   = []ratelimit.FailurePolicy{ratelimit.FailLocal, ratelimit.FailOpen, ratelimit.FailClosed, ratelimit.FailError}
)

// routes decodes the routes list into f; names are the rules' names with
// their lines.
func (d *decoder) routes(f *File, n *yaml.Node, names map[string]int) {
	items, ok := d.list(n, "routes")
	if !ok {
		return
	}
	patterns := make(map[string]int, len(items))
	mux := http.NewServeMux() // checks the patterns as the real one will
	for i, item := range items {
		path := fmt.Sprintf("routes[%d]", i)
		fields, ok := d.mapping(item, path, "pattern", "rules")
		if !ok {
			continue
		}
		rt := Route{Line: item.Line}
		good := true
		if p, ok := fields["pattern"]; !ok {
			d.fail(item, path+".pattern", "required")
			good = false
		} else if rt.Pattern, ok = d.str(p, path+".pattern"); ok {
			if first, dup := patterns[rt.Pattern]; dup {
				d.fail(p, path+".pattern", "duplicate pattern %q (first at line %d)", rt.Pattern, first)
				good = false
			} else if err := register(mux, rt.Pattern); err != nil {
				d.fail(p, path+".pattern", "%s", describe(err, patterns))
				good = false
			}
			patterns[rt.Pattern] = p.Line
		} else {
			good = false
		}
		if r, ok := fields["rules"]; !ok {
			d.fail(item, path+".rules", "required")
			good = false
		} else if !d.routeRules(&rt, r, path+".rules", names) {
			good = false
		}
		if good {
			f.routes = append(f.routes, rt)
		}
	}
}

// routeRules decodes a route's list of rule names into rt.
func (d *decoder) routeRules(rt *Route, n *yaml.Node, path string, names map[string]int) bool {
	items, ok := d.list(n, path)
	if !ok {
		return false
	}
	if len(items) == 0 {
		d.fail(n, path, "no rules")
		return false
	}
	good := true
	for j, item := range items {
		p := fmt.Sprintf("%s[%d]", path, j)
		name, ok := d.str(item, p)
		switch {
		case !ok:
			good = false
		case names[name] == 0:
			d.fail(item, p, "no rule is named %q", name)
			good = false
		case contains(rt.Rules, name):
			d.fail(item, p, "rule %q listed twice", name)
			good = false
		default:
			rt.Rules = append(rt.Rules, name)
		}
	}
	return good
}

// register registers pattern on mux, turning its panic on a bad or
// conflicting pattern into an error.
func register(mux *http.ServeMux, pattern string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	mux.Handle(pattern, http.NotFoundHandler())
	return nil
}

// registeredAt is the part of ServeMux's conflict message that names the
// source line of a registration: this package's, of no use to the reader.
var registeredAt = regexp.MustCompile(` \(registered at [^)]*\)`)

// describe rewrites ServeMux's panic on a conflicting pattern for the
// file: its line instead of the Go source line of the registration.
func describe(err error, patterns map[string]int) string {
	msg := registeredAt.ReplaceAllString(err.Error(), "")
	head, detail, ok := strings.Cut(msg, ":\n")
	if !ok {
		return msg
	}
	if _, other, ok := strings.Cut(head, " conflicts with pattern "); ok {
		if p, err := strconv.Unquote(other); err == nil && patterns[p] != 0 {
			return fmt.Sprintf("conflicts with %q (line %d): %s", p, patterns[p], detail)
		}
	}
	return head + ": " + detail
}
