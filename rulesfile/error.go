package rulesfile

import (
	"fmt"

	ratelimit "github.com/drl-go/distributed-rate-limiter"
)

// Error is one mistake in a rules file: where it is and what is wrong. It
// wraps ratelimit.ErrInvalidArgument.
type Error struct {
	// File is the name given to Parse (the path given to Load).
	File string
	// Line is the 1-based line of the offending key or value; 0 when the
	// mistake has no line (an empty file).
	Line int
	// Field is the path of the offending field, e.g. "rules[2].window";
	// empty for the file as a whole.
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error returns "file:line: field: msg", e.g.
// `rules.yaml:12: rules[2].window: "5x" is not a duration`.
func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += fmt.Sprintf(":%d", e.Line)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Msg
}

// Unwrap returns ratelimit.ErrInvalidArgument.
func (e *Error) Unwrap() error { return ratelimit.ErrInvalidArgument }
