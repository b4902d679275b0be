package rulesfile

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// TestClasses: a rule's classes decode to Rule.Classes; Rules returns
// copies of the maps.
func TestClasses(t *testing.T) {
	f, err := Parse("r.yaml", []byte(`
rules:
  - name: api
    limit: 10
    window: 1m
    algorithm: token_bucket
    classes:
      pro: {limit: 100, burst: 150}
      free: {limit: 5}
      staff: {unlimited: true}
      banned: {deny: true}
  - name: plain
    limit: 1
    window: 1s
`))
	require.NoError(t, err)
	rules := f.Rules()
	require.Equal(t, map[string]ratelimit.Override{
		"pro": {Limit: 100, Burst: 150}, "free": {Limit: 5}, "staff": {Unlimited: true}, "banned": {Deny: true},
	}, rules[0].Classes)
	require.Nil(t, rules[1].Classes)
	rules[0].Classes["free"] = ratelimit.Override{Limit: 9}
	require.Equal(t, int64(5), f.Rules()[0].Classes["free"].Limit, "Rules returns copies")
}

// TestClassErrors: mistakes in classes name their line and field.
func TestClassErrors(t *testing.T) {
	const head = "rules:\n  - name: a\n    limit: 10\n    window: 1m\n    classes:\n"
	for _, c := range []struct{ name, yaml, want string }{
		{"not a mapping", "rules:\n  - {name: a, limit: 1, window: 1m, classes: [x]}\n",
			`r.yaml:2: rules[0].classes: want a mapping of class names to overrides, got a list`},
		{"none set", head + "      pro: {}\n", `r.yaml:6: rules[0].classes.pro: set exactly one of limit, unlimited: true and deny: true`},
		{"two set", head + "      pro: {limit: 5, deny: true}\n", `r.yaml:6: rules[0].classes.pro: set exactly one of limit, unlimited: true and deny: true`},
		{"zero limit", head + "      pro:\n        limit: 0\n", `r.yaml:7: rules[0].classes.pro.limit: 0 is not positive`},
		{"burst alone", head + "      pro: {burst: 3, unlimited: true}\n", `r.yaml:6: rules[0].classes.pro.burst: set without a limit`},
		{"burst not bucket", head + "      pro: {limit: 3, burst: 3}\n", `r.yaml:6: rules[0].classes.pro.burst: 3 is set, but only token_bucket has a burst, not sliding_window`},
		{"unknown field", head + "      pro: {limt: 3}\n", `r.yaml:6: rules[0].classes.pro.limt: unknown field (known: limit, burst, unlimited, deny)`},
		{"class twice", head + "      pro: {limit: 3}\n      pro: {limit: 4}\n", `r.yaml:7: rules[0].classes.pro: given twice (first at line 6)`},
		{"empty class", head + "      '': {limit: 3}\n", `r.yaml:6: rules[0].classes: empty class name`},
		{"class above sliding_log's bound", "rules:\n  - name: a\n    limit: 10\n    window: 1m\n    algorithm: sliding_log\n    classes:\n      pro: {limit: 1001}\n",
			`r.yaml:7: rules[0].classes.pro.limit: 1001 exceeds 1000 for sliding_log, which keeps every admission (sliding_window has O(1) state)`},
		{"class burst above 2 × its limit", "rules:\n  - name: a\n    limit: 10\n    window: 1m\n    algorithm: token_bucket\n    classes:\n      pro:\n        limit: 3\n        burst: 7\n",
			`r.yaml:9: rules[0].classes.pro.burst: 7 exceeds 2 × limit 3`},
		{"bad deny", head + "      pro: {deny: please}\n", `r.yaml:6: rules[0].classes.pro.deny: "please" is not true or false`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(c.yaml))
			require.ErrorIs(t, err, ratelimit.ErrInvalidArgument)
			require.EqualError(t, err, c.want)
		})
	}
}

// TestClassBoundsMatchTheLimiter: at the edges of a class's bounds, Parse
// accepts the file exactly when ratelimit.New accepts its rules.
func TestClassBoundsMatchTheLimiter(t *testing.T) {
	for _, class := range []string{
		"{limit: 1000}", "{limit: 1001}", "{limit: 3, burst: 6}", "{limit: 3, burst: 7}",
	} {
		for _, algorithm := range []string{"sliding_log", "token_bucket"} {
			src := "rules:\n  - {name: a, limit: 10, window: 1m, mode: local, algorithm: " + algorithm + ", classes: {pro: " + class + "}}\n"
			f, perr := Parse("r.yaml", []byte(src))
			var nerr error
			if perr == nil {
				var lim *ratelimit.Limiter
				if lim, nerr = ratelimit.New(ratelimit.Config{Rules: f.Rules()}); nerr == nil {
					_ = lim.Close()
				}
			} else { // the same rule, built by hand
				r := ratelimit.Rule{Name: "a", Limit: 10, Window: time.Minute, Mode: ratelimit.Local, Algorithm: ratelimit.SlidingLog}
				if algorithm == "token_bucket" {
					r.Algorithm = ratelimit.TokenBucket
				}
				o := map[string]ratelimit.Override{
					"{limit: 1000}": {Limit: 1000}, "{limit: 1001}": {Limit: 1001},
					"{limit: 3, burst: 6}": {Limit: 3, Burst: 6}, "{limit: 3, burst: 7}": {Limit: 3, Burst: 7},
				}[class]
				r.Classes = map[string]ratelimit.Override{"pro": o}
				var lim *ratelimit.Limiter
				if lim, nerr = ratelimit.New(ratelimit.Config{Rules: []ratelimit.Rule{r}}); nerr == nil {
					_ = lim.Close()
				}
			}
			if (perr == nil) != (nerr == nil) {
				t.Errorf("%s %s: Parse: %v; New: %v", algorithm, class, perr, nerr)
			}
		}
	}
}

// TestClassesApply: a Limiter built from a file with classes admits each
// class its own limit (Local rules, fixed clock); an edited file applied
// changes a class's limit on the same counters.
func TestClassesApply(t *testing.T) {
	v1 := mustParse(t, "rules:\n  - name: a\n    limit: 2\n    window: 1m\n    mode: local\n    classes:\n      pro: {limit: 4}\n      banned: {deny: true}\n")
	lim, err := ratelimit.New(ratelimit.Config{Rules: v1.Rules(), Now: func() time.Time { return base },
		Classes: map[string]string{"p": "pro", "b": "banned"}})
	require.NoError(t, err)
	defer func() { require.NoError(t, lim.Close()) }()
	count := func(user string, n int) int {
		got := 0
		for range n {
			d, err := lim.Allow(context.Background(), "a", user, base)
			require.NoError(t, err)
			if d.Allowed {
				got++
			}
		}
		return got
	}
	require.Equal(t, 2, count("u", 5))
	require.Equal(t, 4, count("p", 5))
	require.Equal(t, 0, count("b", 2))
	v2 := mustParse(t, "rules:\n  - name: a\n    limit: 2\n    window: 1m\n    mode: local\n    classes:\n      pro: {limit: 6}\n      banned: {deny: true}\n")
	require.NoError(t, v2.Apply(lim))
	require.Equal(t, 2, count("p", 5), "pro: 4 counted, 2 more of the new 6")
}
