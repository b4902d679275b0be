package newkeys_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/newkeys"
)

var t0 = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// TestGate: 1000 identities never seen, from one /24 within one second:
// 10 pass and 990 wait for the next second (the exact wait); a known
// identity passes from the flooded /24; another /24 has its own budget; a
// refused identity was not remembered, so it is new (and counted) in the
// next second.
func TestGate(t *testing.T) {
	g, err := newkeys.New(newkeys.Config{PerSecond: 10})
	require.NoError(t, err)
	now := t0.Add(250 * time.Millisecond)
	ok, _ := g.Admit("known", g.Network(netip.MustParseAddr("10.0.0.1")), t0.Add(-time.Second))
	require.True(t, ok)
	passed := 0
	for i := range 1000 {
		a := netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i%250+1))
		ok, wait := g.Admit(fmt.Sprint("fake-", i), g.Network(a), now)
		if ok {
			passed++
			continue
		}
		require.Equal(t, 750*time.Millisecond, wait, "until the next second")
	}
	require.Equal(t, 10, passed)
	net := g.Network(netip.MustParseAddr("10.0.0.7"))
	require.Equal(t, "10.0.0.0/24", net)
	ok, _ = g.Admit("known", net, now)
	require.True(t, ok, "a known identity passes from the flooded /24")
	ok, _ = g.Admit("other", g.Network(netip.MustParseAddr("10.0.1.1")), now)
	require.True(t, ok, "another /24 has its budget")
	next := t0.Add(time.Second)
	for i := range 10 {
		ok, _ := g.Admit(fmt.Sprint("fake-", 999-i), net, next)
		require.True(t, ok, "refused ids are new again, within the new second's budget")
	}
	ok, _ = g.Admit("fake-0", net, next)
	require.True(t, ok, "fake-0 passed in the first second: remembered")
	ok, _ = g.Admit("fake-500", net, next)
	require.False(t, ok, "the new second's budget is spent")
}

// TestGateNetworks: IPv6 clients are grouped by /48, an IPv4-mapped IPv6
// address as its IPv4 address, and at most Networks networks are counted
// in a second: a new identity of a further network waits.
func TestGateNetworks(t *testing.T) {
	g, err := newkeys.New(newkeys.Config{PerSecond: 1, Networks: 2})
	require.NoError(t, err)
	require.Equal(t, "2001:db8:1::/48", g.Network(netip.MustParseAddr("2001:db8:1:2::5")))
	require.Equal(t, "192.0.2.0/24", g.Network(netip.MustParseAddr("::ffff:192.0.2.9")))
	for i, want := range []bool{true, true, false} {
		ok, _ := g.Admit(fmt.Sprint("id-", i), fmt.Sprint("net-", i), t0)
		require.Equal(t, want, ok, "network %d", i)
	}
}

// TestGateLateRequest: a request stamped in an earlier second, arriving
// after the gate moved on, counts in the current second: it neither
// resets the current second's budget nor gets a fresh one.
func TestGateLateRequest(t *testing.T) {
	g, err := newkeys.New(newkeys.Config{PerSecond: 1})
	require.NoError(t, err)
	ok, _ := g.Admit("a", "n", t0.Add(time.Second))
	require.True(t, ok)
	ok, wait := g.Admit("b", "n", t0.Add(900*time.Millisecond))
	require.False(t, ok, "the current second's budget is spent")
	require.Equal(t, 1100*time.Millisecond, wait, "until the end of the current second")
	ok, _ = g.Admit("c", "n", t0.Add(time.Second+time.Millisecond))
	require.False(t, ok, "the late request reset nothing")
}

// TestConfigErrors: out-of-range fields are errors that name them.
func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  newkeys.Config
		want string
	}{
		{newkeys.Config{}, "PerSecond 0"},
		{newkeys.Config{PerSecond: -1}, "PerSecond -1"},
		{newkeys.Config{PerSecond: 1, Prefix4: 33}, "Prefix4 33"},
		{newkeys.Config{PerSecond: 1, Prefix6: -1}, "Prefix6 -1"},
		{newkeys.Config{PerSecond: 1, Memory: -1}, "Memory -1"},
		{newkeys.Config{PerSecond: 1, Networks: -1}, "Networks -1"},
	} {
		_, err := newkeys.New(c.cfg)
		require.ErrorContains(t, err, c.want)
	}
}
