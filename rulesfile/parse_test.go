package rulesfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestLoadSample: the commented sample decodes to exactly these rules and
// routes.
func TestLoadSample(t *testing.T) {
	f, err := Load(filepath.Join("testdata", "rules.yaml"))
	require.NoError(t, err)
	require.Equal(t, []ratelimit.Rule{
		{ID: "orders-read", Name: "GET /v1/orders", Limit: 100, Window: time.Minute,
			Algorithm: ratelimit.SlidingWindow, Mode: ratelimit.Hybrid, OnFailure: ratelimit.FailLocal,
			Classes: map[string]ratelimit.Override{"pro": {Limit: 1000}, "internal": {Unlimited: true}, "blocked": {Deny: true}}},
		{ID: "orders-write", Name: "POST /v1/orders", Limit: 10, Window: time.Second,
			Algorithm: ratelimit.TokenBucket, Mode: ratelimit.Strict, Burst: 20, OnFailure: ratelimit.FailClosed},
		{ID: "per-user-day", Name: "per-user-day", Limit: 10000, Window: 24 * time.Hour,
			Algorithm: ratelimit.FixedWindow, Shadow: true},
	}, f.Rules())
	require.Equal(t, []Route{
		{Pattern: "GET /v1/orders/{id}", Rules: []string{"GET /v1/orders", "per-user-day"}, Line: 28},
		{Pattern: "GET /v1/orders", Rules: []string{"GET /v1/orders", "per-user-day"}, Line: 30},
		{Pattern: "POST /v1/orders", Rules: []string{"POST /v1/orders", "per-user-day"}, Line: 32},
	}, f.Routes())
	require.Equal(t, filepath.Join("testdata", "rules.yaml"), f.Name())
}

// TestRulesAreCopies: changing what Rules and Routes return changes
// nothing in the File.
func TestRulesAreCopies(t *testing.T) {
	f, err := Parse("r.yaml", []byte("rules:\n- {name: a, limit: 1, window: 1s}\nroutes:\n- {pattern: /a, rules: [a]}\n"))
	require.NoError(t, err)
	f.Rules()[0].Limit = 9
	f.Routes()[0].Rules[0] = "x"
	require.Equal(t, int64(1), f.Rules()[0].Limit)
	require.Equal(t, "a", f.Routes()[0].Rules[0])
}

// TestMergeKeys: fields shared through an anchor and YAML merge keys; a
// rule's own fields win; a mistake in a shared field names the anchor's
// line.
func TestMergeKeys(t *testing.T) {
	f, err := Parse("r.yaml", []byte(`
rules:
  - &strict {name: a, limit: 1, window: 1m, mode: strict, on_failure: closed}
  - <<: *strict
    name: b
    limit: 2
  - <<: [{shadow: true}, *strict]
    name: c
`))
	require.NoError(t, err)
	rule := func(name string, limit int64, shadow bool) ratelimit.Rule {
		return ratelimit.Rule{ID: name, Name: name, Limit: limit, Window: time.Minute, Mode: ratelimit.Strict,
			OnFailure: ratelimit.FailClosed, Shadow: shadow}
	}
	require.Equal(t, []ratelimit.Rule{rule("a", 1, false), rule("b", 2, false), rule("c", 1, true)}, f.Rules())

	_, err = Parse("r.yaml", []byte("rules:\n  - &base {name: a, limit: 1, window: 1m}\n  - <<: *base\n    name: b\n    window: 1y\n"))
	require.EqualError(t, err, `r.yaml:5: rules[1].window: "1y" is not a duration (e.g. 1m, 1h, 500ms)`)
	_, err = Parse("r.yaml", []byte("rules:\n  - &base {name: a, limit: 1, window: 1m, windw: 1s}\n  - <<: *base\n    name: b\n"))
	require.EqualError(t, err, "r.yaml:2: rules[0].windw: unknown field (known: id, name, limit, window, algorithm, mode, on_failure, burst, shadow, classes)\n"+
		"r.yaml:2: rules[1].windw: unknown field (known: id, name, limit, window, algorithm, mode, on_failure, burst, shadow, classes)")
}

// TestLoadMissingFile: a file that cannot be read is an error naming it.
func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Contains(t, err.Error(), "none.yaml")
}

// TestParseErrors: each bad file gives exactly these messages, with the
// line and field of each mistake, as *Error wrapping ErrInvalidArgument.
func TestParseErrors(t *testing.T) {
	const ok = "  - {name: ok, limit: 1, window: 1s}\n"
	for _, c := range []struct {
		name, yaml string
		want       []string
	}{
		{"empty", "", []string{`r.yaml: empty file, want a mapping with rules:`}},
		{"only comments", "# nothing yet\n", []string{`r.yaml: empty file, want a mapping with rules:`}},
		{"null rules", "rules:\n", []string{`r.yaml:1: rules: want a list, got null`}},
		{"syntax", "rules:\n\t- name: a\n", []string{`r.yaml:2: YAML: found character that cannot start any token`}},
		{"not a mapping", "- a\n", []string{`r.yaml:1: want a mapping, got a list`}},
		{"no rules key", "routes: []\n", []string{`r.yaml:1: rules: required`}},
		{"no rules", "rules: []\n", []string{`r.yaml:1: rules: no rules`}},
		{"unknown top", "rules:\n" + ok + "rule: x\n", []string{`r.yaml:3: rule: unknown field (known: rules, routes)`}},
		{"two documents", "rules:\n" + ok + "---\nrules: []\n", []string{`r.yaml:3: a second YAML document; the file holds one`}},
		{"bad duration", "rules:\n" + ok + "  - {name: b, limit: 1, window: 1s}\n" + "  - name: c\n    limit: 3\n    window: 5x\n",
			[]string{`r.yaml:6: rules[2].window: "5x" is not a duration (e.g. 1m, 1h, 500ms)`}},
		{"duration without unit", "rules:\n  - {name: a, limit: 1, window: 60}\n",
			[]string{`r.yaml:2: rules[0].window: "60" is not a duration (e.g. 1m, 1h, 500ms)`}},
		{"window below 1ms", "rules:\n  - {name: a, limit: 1, window: 10us}\n", []string{`r.yaml:2: rules[0].window: 10µs is below 1ms`}},
		{"window not whole ms", "rules:\n  - {name: a, limit: 1, window: 1500us}\n", []string{`r.yaml:2: rules[0].window: 1.5ms is not a whole number of milliseconds`}},
		{"window too long", "rules:\n  - {name: a, limit: 1, window: 900000h}\n", []string{`r.yaml:2: rules[0].window: 900000h0m0s exceeds 100 years`}},
		{"zero limit", "rules:\n  - name: a\n    limit: 0\n    window: 1s\n", []string{`r.yaml:3: rules[0].limit: 0 is not positive`}},
		{"negative limit", "rules:\n  - name: a\n    limit: -4\n    window: 1s\n", []string{`r.yaml:3: rules[0].limit: -4 is not positive`}},
		{"limit not an integer", "rules:\n  - {name: a, limit: ten, window: 1s}\n", []string{`r.yaml:2: rules[0].limit: "ten" is not an integer`}},
		{"limit a float", "rules:\n  - {name: a, limit: 1.5, window: 1s}\n", []string{`r.yaml:2: rules[0].limit: "1.5" is not an integer`}},
		{"limit times window", "rules:\n  - {name: a, limit: 2000000000000, window: 1000h}\n", []string{`r.yaml:2: rules[0].limit: 2000000000000 × window 1000h0m0s exceeds 2^50 ms`}},
		{"missing fields", "rules:\n  - id: x\n", []string{
			`r.yaml:2: rules[0].name: required`, `r.yaml:2: rules[0].limit: required`, `r.yaml:2: rules[0].window: required`}},
		{"empty name", "rules:\n  - {name: '', limit: 1, window: 1s}\n", []string{`r.yaml:2: rules[0].name: empty`}},
		{"null name", "rules:\n  - {name: , limit: 1, window: 1s}\n", []string{`r.yaml:2: rules[0].name: want a string, got null`}},
		{"empty id", "rules:\n  - {id: '', name: a, limit: 1, window: 1s}\n", []string{`r.yaml:2: rules[0].id: empty (leave it out to default to the name)`}},
		{"unknown field", "rules:\n  - name: a\n    limit: 1\n    window: 1s\n    windw: 2s\n",
			[]string{`r.yaml:5: rules[0].windw: unknown field (known: id, name, limit, window, algorithm, mode, on_failure, burst, shadow, classes)`}},
		{"field twice", "rules:\n  - name: a\n    limit: 1\n    window: 1s\n    limit: 2\n", []string{`r.yaml:5: rules[0].limit: given twice (first at line 3)`}},
		{"rule not a mapping", "rules:\n  - a\n", []string{`r.yaml:2: rules[0]: want a mapping, got "a"`}},
		{"rules not a list", "rules: {a: 1}\n", []string{`r.yaml:1: rules: want a list, got a mapping`}},
		{"bad algorithm", "rules:\n  - {name: a, limit: 1, window: 1s, algorithm: leaky}\n",
			[]string{`r.yaml:2: rules[0].algorithm: "leaky" is not one of sliding_window, sliding_log, fixed_window, token_bucket`}},
		{"bad mode", "rules:\n  - {name: a, limit: 1, window: 1s, mode: fast}\n", []string{`r.yaml:2: rules[0].mode: "fast" is not one of hybrid, strict, local`}},
		{"bad on_failure", "rules:\n  - {name: a, limit: 1, window: 1s, on_failure: fail_open}\n",
			[]string{`r.yaml:2: rules[0].on_failure: "fail_open" is not one of local, open, closed, error`}},
		{"bad shadow", "rules:\n  - {name: a, limit: 1, window: 1s, shadow: maybe}\n", []string{`r.yaml:2: rules[0].shadow: "maybe" is not true or false`}},
		{"hybrid token bucket", "rules:\n  - name: a\n    limit: 1\n    window: 1s\n    algorithm: token_bucket\n    mode: hybrid\n",
			[]string{`r.yaml:6: rules[0].mode: hybrid supports sliding_window and fixed_window, not token_bucket`}},
		{"burst without bucket", "rules:\n  - name: a\n    limit: 1\n    window: 1s\n    burst: 2\n", []string{`r.yaml:5: rules[0].burst: 2 is set, but only token_bucket has a burst, not sliding_window`}},
		{"negative burst", "rules:\n  - {name: a, limit: 1, window: 1s, algorithm: token_bucket, burst: -1}\n", []string{`r.yaml:2: rules[0].burst: -1 is negative`}},
		{"burst too big", "rules:\n  - {name: a, limit: 2, window: 1s, algorithm: token_bucket, burst: 5}\n", []string{`r.yaml:2: rules[0].burst: 5 exceeds 2 × limit 2`}},
		{"sliding log limit", "rules:\n  - {name: a, limit: 1001, window: 1s, algorithm: sliding_log}\n",
			[]string{`r.yaml:2: rules[0].limit: 1001 exceeds 1000 for sliding_log, which keeps every admission (sliding_window has O(1) state)`}},
		{"duplicate name", "rules:\n  - {id: a, name: n, limit: 1, window: 1s}\n  - {id: b, name: n, limit: 1, window: 1s}\n",
			[]string{`r.yaml:3: rules[1].name: duplicate name "n" (first at line 2)`}},
		{"duplicate id", "rules:\n  - id: a\n    name: x\n    limit: 1\n    window: 1s\n  - id: a\n    name: y\n    limit: 1\n    window: 1s\n",
			[]string{`r.yaml:6: rules[1].id: duplicate id "a" (first at line 2)`}},
		{"duplicate name, no ids", "rules:\n" + ok + ok, []string{`r.yaml:3: rules[1].name: duplicate name "ok" (first at line 2)`}},
		{"conflicting patterns", "rules:\n" + ok + "routes:\n  - {pattern: 'GET /a/{x}', rules: [ok]}\n  - {pattern: 'GET /a/{y}', rules: [ok]}\n",
			[]string{`r.yaml:5: routes[1].pattern: conflicts with "GET /a/{x}" (line 4): GET /a/{y} matches the same requests as GET /a/{x}`}},
		{"id defaulted from a name", "rules:\n  - {id: a, name: x, limit: 1, window: 1s}\n  - {name: a, limit: 1, window: 1s}\n",
			[]string{`r.yaml:3: rules[1].name: duplicate id "a" (first at line 2)`}},
		{"unknown rule in route", "rules:\n" + ok + "routes:\n  - pattern: GET /a\n    rules: [ok, nope]\n",
			[]string{`r.yaml:5: routes[0].rules[1]: no rule is named "nope"`}},
		{"rule twice in route", "rules:\n" + ok + "routes:\n  - {pattern: GET /a, rules: [ok, ok]}\n", []string{`r.yaml:4: routes[0].rules[1]: rule "ok" listed twice`}},
		{"route without rules", "rules:\n" + ok + "routes:\n  - {pattern: GET /a, rules: []}\n", []string{`r.yaml:4: routes[0].rules: no rules`}},
		{"route missing fields", "rules:\n" + ok + "routes:\n  - {}\n", []string{`r.yaml:4: routes[0].pattern: required`, `r.yaml:4: routes[0].rules: required`}},
		{"duplicate pattern", "rules:\n" + ok + "routes:\n  - {pattern: GET /a, rules: [ok]}\n  - {pattern: GET /a, rules: [ok]}\n",
			[]string{`r.yaml:5: routes[1].pattern: duplicate pattern "GET /a" (first at line 4)`}},
		{"bad pattern", "rules:\n" + ok + "routes:\n  - {pattern: 'GET a/{id', rules: [ok]}\n",
			[]string{`r.yaml:4: routes[0].pattern: parsing "GET a/{id": at offset 6: bad wildcard segment (must end with '}')`}},
		{"several mistakes", "rules:\n  - {name: a, limit: 0, window: 1s}\n  - {name: b, limit: 1, window: 1x}\nroutes:\n  - {pattern: /b, rules: [c]}\n", []string{
			`r.yaml:2: rules[0].limit: 0 is not positive`,
			`r.yaml:3: rules[1].window: "1x" is not a duration (e.g. 1m, 1h, 500ms)`,
			`r.yaml:5: routes[0].rules[0]: no rule is named "c"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := Parse("r.yaml", []byte(c.yaml))
			require.Nil(t, f)
			require.ErrorIs(t, err, ratelimit.ErrInvalidArgument)
			require.Equal(t, strings.Join(c.want, "\n"), err.Error())
			var e *Error
			require.True(t, errors.As(err, &e))
			require.Equal(t, "r.yaml", e.File)
		})
	}
}
