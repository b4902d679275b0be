package global

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestReportOneOutcomePerBreaker: a pipeline tells each breaker one
// outcome: a failure if any of its calls failed (however many did), else a
// success, and another breaker's failure is not its own.
func TestReportOneOutcomePerBreaker(t *testing.T) {
	now := func() time.Time { return time.Unix(0, 0) }
	b1 := newBreaker(BreakerOptions{Failures: 2}, now, nil)
	b2 := newBreaker(BreakerOptions{Failures: 2}, now, nil)
	down := errors.New("dial tcp: connection refused")
	report([]outcome{{gate{b1, 0}, down}, {gate{b1, 0}, down}, {gate{b1, 0}, nil}, {gate{b2, 0}, nil}})
	require.Equal(t, int64(1), b1.failures.Load(), "one failure for the pipeline")
	require.Equal(t, Closed, b1.get().State)
	require.Zero(t, b2.failures.Load())
	report([]outcome{{gate{b2, 0}, down}, {gate{b1, 0}, down}})
	require.Equal(t, Open, b1.get().State, "second failure in a row")
	require.Equal(t, Closed, b2.get().State, "b2's first failure")
}

// TestWhatOpensABreaker: a slot in migration and a cluster that reports
// itself down are answers of a live node: they wrap ErrUnavailable for the
// caller but do not count against the breaker.
func TestWhatOpensABreaker(t *testing.T) {
	for _, tc := range []struct {
		err                error
		unavailable, fails bool
	}{
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), true, true},
		{proto("LOADING Redis is loading the dataset in memory"), true, true},
		{proto("TRYAGAIN Multiple keys request during rehashing of slot"), true, false},
		{proto("ASK 3999 127.0.0.1:6381"), true, false},
		{proto("MOVED 3999 127.0.0.1:6381"), true, false},
		{proto("CLUSTERDOWN The cluster is down"), true, false},
		{proto("ERR user_script:1: bad"), false, false},
		{nil, false, false},
	} {
		require.Equal(t, tc.unavailable, unavailable(tc.err), "%v", tc.err)
		require.Equal(t, tc.fails, countsAsFailure(tc.err), "%v", tc.err)
		if tc.unavailable {
			require.ErrorIs(t, classify(tc.err), ErrUnavailable)
		}
	}
}

// proto is an error reply of a server.
type proto string

func (p proto) Error() string { return string(p) }
func (proto) RedisError()     {}

var _ redis.Error = proto("")

// TestNotApplied: a call certainly not run (refused by the breaker)
// against those that may have run: no answer in time, a connection lost,
// and also a refused dial or a LOADING reply, which may be a retry's
// (go-redis re-sends a call whose reply was lost), and an error reply.
func TestNotApplied(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, dialErr := net.Dial("tcp", addr) // nothing listens there now
	require.Error(t, dialErr)
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("take: %w", ErrBreakerOpen), true},
		{classify(dialErr), false},
		{classify(proto("LOADING Redis is loading the dataset in memory")), false},
		{errTimeout, false},
		{classify(context.DeadlineExceeded), false},
		{classify(io.EOF), false},
		{proto("ERR user_script:1: bad"), false},
		{nil, false},
	} {
		require.Equal(t, tc.want, NotApplied(tc.err), "%v", tc.err)
	}
}
