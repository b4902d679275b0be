package rulesfile

import (
	"errors"
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// ruleFields are the fields of a rule, in the order the docs list them.
var ruleFields = []string{"id", "name", "limit", "window", "algorithm", "mode", "on_failure", "burst", "shadow", "classes"}

// rules decodes the rules list into f and returns the rules' names with
// their lines (also of rules with other mistakes, so that routes naming
// them are not reported too).
func (d *decoder) rules(f *File, n *yaml.Node) map[string]int {
	names := make(map[string]int)
	items, ok := d.list(n, "rules")
	if !ok {
		return names
	}
	if len(items) == 0 {
		d.fail(n, "rules", "no rules")
		return names
	}
	ids := make(map[string]int)
	for i, item := range items {
		path := fmt.Sprintf("rules[%d]", i)
		r, fields, ok := d.rule(item, path)
		dupName := false
		if r.Name != "" {
			if first, dup := names[r.Name]; dup {
				d.fail(fields["name"], path+".name", "duplicate name %q (first at line %d)", r.Name, first)
				ok, dupName = false, true
			} else {
				names[r.Name] = fields["name"].Line
			}
		}
		if r.ID != "" && !(dupName && fields["id"] == nil) { // a defaulted id repeats the name's mistake
			idNode, field := fields["id"], path+".id"
			if idNode == nil { // defaulted from the name
				idNode, field = fields["name"], path+".name"
			}
			if first, dup := ids[r.ID]; dup {
				d.fail(idNode, field, "duplicate id %q (first at line %d)", r.ID, first)
				ok = false
			} else {
				ids[r.ID] = idNode.Line
			}
		}
		if ok {
			f.rules = append(f.rules, r)
		}
	}
	return names
}

// rule decodes and checks one rule. ok is false after any mistake.
func (d *decoder) rule(n *yaml.Node, path string) (r ratelimit.Rule, fields map[string]*yaml.Node, ok bool) {
	fields, ok = d.mapping(n, path, ruleFields...)
	if !ok {
		return r, nil, false
	}
	at := func(field string) (*yaml.Node, string) { return fields[field], path + "." + field }
	errs := len(d.errs)
	for _, field := range []string{"name", "limit", "window"} {
		if fields[field] == nil {
			d.fail(n, path+"."+field, "required")
		}
	}
	if v, p := at("name"); v != nil {
		if r.Name, ok = d.str(v, p); ok && r.Name == "" {
			d.fail(v, p, "empty")
		}
	}
	if v, p := at("id"); v != nil {
		if r.ID, ok = d.str(v, p); ok && r.ID == "" {
			d.fail(v, p, "empty (leave it out to default to the name)")
		}
	}
	if r.ID == "" {
		r.ID = r.Name
	}
	if v, p := at("limit"); v != nil {
		if r.Limit, ok = d.integer(v, p); ok && r.Limit <= 0 {
			d.fail(v, p, "%d is not positive", r.Limit)
		}
	}
	if v, p := at("window"); v != nil {
		r.Window = d.window(v, p)
	}
	if v, p := at("algorithm"); v != nil {
		r.Algorithm, _ = enum(d, v, p, algorithmNames, algorithmValues)
	}
	if v, p := at("mode"); v != nil {
		r.Mode, _ = enum(d, v, p, modeNames, modeValues)
	}
	if v, p := at("on_failure"); v != nil {
		r.OnFailure, _ = enum(d, v, p, failureNames, failureValues)
	}
	if v, p := at("burst"); v != nil {
		r.Burst, _ = d.integer(v, p)
	}
	if v, p := at("shadow"); v != nil {
		r.Shadow, _ = d.boolean(v, p)
	}
	if len(d.errs) == errs {
		d.check(r, n, fields, path)
	}
	if v, p := at("classes"); v != nil && len(d.errs) == errs { // checked against a good rule
		d.classes(&r, v, p)
	}
	return r, fields, len(d.errs) == errs
}

// window decodes a rule's window: a Go duration ("1m", "1h30m"). Its
// bounds are the Limiter's (check).
func (d *decoder) window(n *yaml.Node, path string) time.Duration {
	w, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		d.fail(n, path, "%s is not a duration (e.g. 1m, 1h, 500ms)", kind(n))
	}
	return w
}

// check checks a decoded rule as the Limiter will (ratelimit.Rule.Validate,
// its classes apart: see override), and reports its mistake at the field
// at fault, or at the rule (n) for a field the file left out.
func (d *decoder) check(r ratelimit.Rule, n *yaml.Node, fields map[string]*yaml.Node, path string) {
	r.Classes = nil
	var e *ratelimit.RuleError
	if !errors.As(r.Validate(), &e) {
		return
	}
	field := yamlField[e.Field]
	if v := fields[field]; v != nil {
		n = v
	}
	d.fail(n, join(path, field), "%s", e.Reason)
}

// yamlField is the file's name of each field of a ratelimit.Rule.
var yamlField = map[string]string{
	"Name": "name", "Limit": "limit", "Window": "window", "Algorithm": "algorithm",
	"Mode": "mode", "OnFailure": "on_failure", "Burst": "burst",
}
