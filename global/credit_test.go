package global

import (
	"context"
	"maps"
	"strings"
	"testing"
)

// TestCreditOps: for every kind of key, a credit applies once; a copy of
// it (the same op) answers the same and changes nothing; a newer op
// applies; an op older than the stream's last two recorded is stale and
// applies again (too many admissions counted rather than too few). The
// record lives in the key's own hash: no other key appears.
func TestCreditOps(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	s := NewStore(c, Options{})
	defer s.Close()
	const w, limit = 60_000, 1000
	now := int64(1_700_000_000_000)
	for _, tc := range []struct {
		name   string
		algo   Algorithm
		hybrid bool
		hash   string // the hash that holds the record: "" for the key itself
		count  func(map[string]string) string
	}{
		{"sliding window", SlidingWindow, false, "", func(h map[string]string) string { return h["c"] }},
		{"hybrid", SlidingWindow, true, "", func(h map[string]string) string { return h["c"] }},
		{"token bucket", TokenBucket, false, "", func(h map[string]string) string { return h["l"] }},
		{"sliding log", SlidingLog, false, ":m", func(h map[string]string) string { return h["s"] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := Key(p, "credit", strings.ReplaceAll(tc.name, " ", "-"))
			hash := key + tc.hash
			ops := NewOps()
			credit := func(op Op) bool {
				t.Helper()
				applied, errs := s.CreditBatch(ctx, []Credit{{Algorithm: tc.algo, Key: key, Window: w, Limit: limit,
					Idx: now / w, Cur: 3, Last: now, Hybrid: tc.hybrid, Op: op}})
				if errs[0] != nil {
					t.Fatal(errs[0])
				}
				return applied[0]
			}
			state := func() map[string]string {
				t.Helper()
				h, err := c.HGetAll(ctx, hash).Result()
				if err != nil {
					t.Fatal(err)
				}
				return h
			}
			first := ops.Next()
			if !credit(first) {
				t.Fatal("the first credit did not apply")
			}
			once := state()
			if !credit(first) {
				t.Fatal("a copy answered 0, want the first's 1")
			}
			if got := state(); !maps.Equal(got, once) {
				t.Fatalf("a copy changed the key: %v, was %v", got, once)
			}
			credit(ops.Next())
			twice := tc.count(state())
			credit(ops.Next())
			thrice := tc.count(state())
			credit(first) // older than both recorded: stale, applies again
			if got := tc.count(state()); got == thrice || twice == thrice {
				t.Fatalf("counts %s, %s, then %s after a stale credit: want each to grow", twice, thrice, got)
			}
			if rec := state()[first.Stream]; strings.Count(rec, ":") != 3 {
				t.Fatalf("the stream's record %q, want two ops", rec)
			}
			keys, err := c.Keys(ctx, key+"*").Result()
			if err != nil {
				t.Fatal(err)
			}
			want := 1
			if tc.hash != "" {
				want = 2
			}
			if len(keys) != want {
				t.Fatalf("keys %v, want the key's own only", keys)
			}
		})
	}
}
