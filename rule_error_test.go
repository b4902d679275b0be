package ratelimit

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRuleValidate: Rule.Validate names the field at fault (and the class,
// for an override) in a *RuleError wrapping ErrInvalidArgument, with Index
// -1; New reports the same error with the rule's index. A good rule, with
// good classes, is nil.
func TestRuleValidate(t *testing.T) {
	good := Rule{Name: "r", Limit: 10, Window: time.Minute}
	require.NoError(t, good.Validate())
	withClasses := good
	withClasses.Classes = map[string]Override{"pro": {Limit: 100}, "vip": {Unlimited: true}, "bad": {Deny: true}}
	require.NoError(t, withClasses.Validate())

	for _, tc := range []struct {
		name                  string
		edit                  func(*Rule)
		class, field, message string
	}{
		{"no name", func(r *Rule) { r.Name = "" }, "", "Name", `rule "": field Name is empty`},
		{"zero limit", func(r *Rule) { r.Limit = 0 }, "", "Limit", `rule "r": field Limit 0 is not positive`},
		{"window in µs", func(r *Rule) { r.Window = 1500 * time.Microsecond }, "", "Window", `rule "r": field Window 1.5ms is not a whole number of milliseconds`},
		{"hybrid log", func(r *Rule) { r.Mode, r.Algorithm = Hybrid, SlidingLog }, "", "Mode", `rule "r": field Mode hybrid supports sliding_window and fixed_window, not sliding_log`},
		{"burst off bucket", func(r *Rule) { r.Burst = 3 }, "", "Burst", `rule "r": field Burst 3 is set, but only token_bucket has a burst, not sliding_window`},
		{"class limit", func(r *Rule) { r.Classes = map[string]Override{"pro": {Limit: -1}} }, "pro", "Limit", `rule "r": class "pro": field Limit -1 is not positive`},
		{"class two kinds", func(r *Rule) { r.Classes = map[string]Override{"x": {Limit: 5, Deny: true}} }, "x", "", `rule "r": class "x": set exactly one of fields Limit, Unlimited and Deny`},
		{"class log bound", func(r *Rule) {
			r.Algorithm = SlidingLog
			r.Classes = map[string]Override{"pro": {Limit: 5000}}
		}, "pro", "Limit", `rule "r": class "pro": field Limit 5000 exceeds 1000 for sliding_log`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.edit(&r)
			err := r.Validate()
			require.ErrorIs(t, err, ErrInvalidArgument)
			var e *RuleError
			require.True(t, errors.As(err, &e), "%T", err)
			require.Equal(t, -1, e.Index)
			require.Equal(t, r.Name, e.Rule)
			require.Equal(t, tc.class, e.Class)
			require.Equal(t, tc.field, e.Field)
			require.ErrorContains(t, err, "ratelimit: invalid argument: "+tc.message)

			r.Mode = Local
			if tc.field == "Mode" {
				r.Mode = Hybrid
			}
			_, nerr := New(Config{Rules: []Rule{good, r}})
			require.True(t, errors.As(nerr, &e), "New: %v", nerr)
			require.Equal(t, 1, e.Index, "New names the rule's index")
			require.Equal(t, tc.field, e.Field)
		})
	}
}
