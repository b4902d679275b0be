package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestExpiryFollowsTheServerClock pins the contract the README states
// under "Time": decisions are judged at the request's timestamp, but Redis
// expires a key two windows of its own clock after the last write. A
// timeline that stands still (a paused replay) while the server's clock
// moves on finds its keys gone after two windows, and the user's budget
// fresh at the same timestamp; a timeline that keeps pace with the server
// keeps them while they count.
func TestExpiryFollowsTheServerClock(t *testing.T) {
	c := testRedis(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	const w = 150 * time.Millisecond
	var rules []Rule
	for _, a := range allAlgorithms {
		rules = append(rules, Rule{Name: "clock-" + a.String(), Limit: 3, Window: w, Algorithm: a, Mode: Strict})
	}
	l, err := New(Config{Redis: c, Rules: rules, KeyPrefix: prefix})
	require.NoError(t, err)
	defer l.Close()
	admitted := func(rule string, at time.Time, tries int) int {
		t.Helper()
		n := 0
		for range tries {
			d, err := l.Allow(ctx, rule, "replay", at)
			require.NoError(t, err)
			if d.Allowed {
				n++
			}
		}
		return n
	}
	ts := time.Now() // the timeline stands still at ts
	for _, r := range rules {
		require.Equal(t, 3, admitted(r.Name, ts, 5), "%s: the first window admits the limit", r.Name)
	}
	time.Sleep(2*w + 50*time.Millisecond) // two windows of the server's clock
	for _, r := range rules {
		require.Equal(t, 3, admitted(r.Name, ts, 5),
			"%s: at the same timestamp, two windows of server time later, the key is gone and the budget fresh", r.Name)
	}
}
