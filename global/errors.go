package global

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrUnavailable wraps every error that means Redis could not answer: a
// refused or lost connection, a call past its deadline, a server that is
// loading, read-only or down, or an open circuit breaker. Errors that Redis
// answered (a script error, a foreign value under a key) do not wrap it.
var ErrUnavailable = errors.New("global: redis unavailable")

// ErrBreakerOpen is returned, wrapping ErrUnavailable, for a call that the
// circuit breaker refused without sending it.
var ErrBreakerOpen = fmt.Errorf("%w: circuit breaker open", ErrUnavailable)

var errProbeTimeout = errors.New("global: breaker probe unanswered")

// errTimeout is a call that the Store's Timeout ended.
var errTimeout = fmt.Errorf("%w: no answer within the timeout", ErrUnavailable)

// unavailable reports whether err means Redis could not answer, as opposed
// to an answer that is an error. Replies that are errors say Redis is up,
// but for the few that say it cannot serve now.
func unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		for _, p := range unavailablePrefixes {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// Not a reply: a dial, read or write error, a pool timeout, EOF.
	return !errors.Is(err, context.Canceled)
}

// unavailablePrefixes are the error replies of a server that cannot serve
// for now: still loading its data, a replica promoted too late, a cluster
// without quorum, a script running too long, a slot in migration (and
// redirects that go-redis gave up following).
var unavailablePrefixes = []string{"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "ASK ", "MOVED ", "BUSY", "NOREPLICAS"}

// NotApplied reports whether err, an error of a call to Redis, means that
// the call certainly did not run: the circuit breaker refused it, so it was
// never written to a connection. Any other failure may follow an attempt
// that ran: go-redis re-sends a call whose reply was lost (MaxRetries), and
// the last attempt's error (a refused dial, a LOADING reply) says nothing
// of the first one's.
func NotApplied(err error) bool { return errors.Is(err, ErrBreakerOpen) }

// slotBusy reports whether err is a cluster node's answer that a slot is
// moving (TRYAGAIN: a call of several keys while they are split between
// two nodes; ASK or MOVED once go-redis's redirects are used up). The node
// is up, and the call did not run: it may be sent again.
func slotBusy(err error) bool {
	var re redis.Error
	if err == nil || !errors.As(err, &re) {
		return false
	}
	msg := re.Error()
	return strings.HasPrefix(msg, "TRYAGAIN") || strings.HasPrefix(msg, "ASK ") || strings.HasPrefix(msg, "MOVED ")
}

// countsAsFailure reports whether err tells a breaker that its node is
// unavailable. A slot in migration does not, nor a cluster that reports
// itself down (a master failed and no replica has taken over yet): the node
// answered, and will serve again as soon as the cluster does, which an open
// breaker would delay by its backoff. Their callers get ErrUnavailable.
func countsAsFailure(err error) bool {
	return unavailable(err) && !slotBusy(err) && !clusterDown(err)
}

// clusterDown reports whether err is a node's CLUSTERDOWN answer.
func clusterDown(err error) bool {
	var re redis.Error
	return err != nil && errors.As(err, &re) && strings.HasPrefix(re.Error(), "CLUSTERDOWN")
}

// classify wraps err in ErrUnavailable when it means Redis could not
// answer. err must come from the client (a command's Err), not from
// decoding an answer.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !unavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
