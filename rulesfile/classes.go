package rulesfile

import (
	"go.yaml.in/yaml/v3"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// classFields are the fields of a class's override.
var classFields = []string{"limit", "burst", "unlimited", "deny"}

// classes decodes a rule's classes: mapping (class name -> override) into
// r.Classes, checking each override against r as the Limiter will.
func (d *decoder) classes(r *ratelimit.Rule, n *yaml.Node, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping of class names to overrides, got %s", kind(n))
		return
	}
	lines := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		class, ok := d.str(k, path)
		if !ok {
			continue
		}
		p := path + "." + class
		switch {
		case class == "":
			d.fail(k, path, "empty class name")
			continue
		case lines[class] != 0:
			d.fail(k, p, "given twice (first at line %d)", lines[class])
			continue
		}
		lines[class] = k.Line
		if o, ok := d.override(*r, v, p); ok {
			if r.Classes == nil {
				r.Classes = make(map[string]ratelimit.Override)
			}
			r.Classes[class] = o
		}
	}
}

// override decodes one class's override of rule r.
func (d *decoder) override(r ratelimit.Rule, n *yaml.Node, path string) (o ratelimit.Override, ok bool) {
	errs := len(d.errs)
	fields, ok := d.mapping(n, path, classFields...)
	if !ok {
		return o, false
	}
	if v := fields["limit"]; v != nil {
		if o.Limit, ok = d.integer(v, path+".limit"); ok && o.Limit <= 0 {
			d.fail(v, path+".limit", "%d is not positive", o.Limit)
		}
	}
	if v := fields["burst"]; v != nil {
		o.Burst, _ = d.integer(v, path+".burst")
	}
	if v := fields["unlimited"]; v != nil {
		o.Unlimited, _ = d.boolean(v, path+".unlimited")
	}
	if v := fields["deny"]; v != nil {
		o.Deny, _ = d.boolean(v, path+".deny")
	}
	if len(d.errs) > errs {
		return o, false
	}
	set := 0
	for _, b := range []bool{o.Limit != 0, o.Unlimited, o.Deny} {
		if b {
			set++
		}
	}
	switch {
	case set != 1:
		d.fail(n, path, "set exactly one of limit, unlimited: true and deny: true")
	case o.Burst != 0 && o.Limit == 0:
		d.fail(fields["burst"], path+".burst", "set without a limit")
	case o.Limit != 0:
		// The class is the rule with another limit and burst: the rule's
		// bounds apply.
		r.Limit, r.Burst = o.Limit, o.Burst
		d.check(r, n, fields, path)
	}
	return o, len(d.errs) == errs
}
