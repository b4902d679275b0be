package global

import (
	_ "embed"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Algorithm selects a strict script.
type Algorithm uint8

// The strict algorithms, one Lua script each.
const (
	SlidingWindow Algorithm = iota // two-window weighted counter
	SlidingLog                     // sorted set of timestamps, exact
	FixedWindow                    // counter per aligned window
	TokenBucket                    // GCRA, burst ≤ 2·limit (Request.Burst)
	numAlgorithms
)

var (
	// preludeLua holds the helpers the scripts share; newScript prepends
	// it to every script's body, so that each helper exists once.
	//go:embed scripts/prelude.lua
	preludeLua string

	//go:embed scripts/sliding_window.lua
	slidingWindowLua string
	//go:embed scripts/sliding_log.lua
	slidingLogLua string
	//go:embed scripts/fixed_window.lua
	fixedWindowLua string
	//go:embed scripts/token_bucket.lua
	tokenBucketLua string
	//go:embed scripts/multi.lua
	multiLua string
)

// newScript returns the script of body, one of scripts/*.lua, run after
// the shared prelude (one chunk: the prelude's locals are the body's).
func newScript(body string) *redis.Script { return redis.NewScript(preludeLua + body) }

// The strict files define one function each, their algorithm's decision
// (called by strict_main of the prelude, or by multi.lua), named after the
// file.
var strictBodies = [numAlgorithms]string{
	SlidingWindow: slidingWindowLua,
	SlidingLog:    slidingLogLua,
	FixedWindow:   fixedWindowLua,
	TokenBucket:   tokenBucketLua,
}

// strictMain is the line that makes a strict file a script of its own.
func strictMain(a Algorithm) string { return "\nreturn strict_main(" + a.String() + ")\n" }

// scripts is indexed by Algorithm.
var scripts = func() (s [numAlgorithms]*redis.Script) {
	for a, body := range strictBodies {
		s[a] = newScript(body + strictMain(Algorithm(a)))
	}
	return s
}()

// multiScript decides several rules of one user at once (TakeAll): the
// four strict files' functions, lease.lua's, then multi.lua.
var multiScript = newScript(strings.Join(strictBodies[:], "\n") + "\n" + leaseLua + "\n" + multiLua)

// keyCount is how many KEYS each script takes; all derive from one base key.
var keyCount = [numAlgorithms]int{SlidingWindow: 1, SlidingLog: 2, FixedWindow: 1, TokenBucket: 1}

// String returns the algorithm's name.
func (a Algorithm) String() string {
	switch a {
	case SlidingWindow:
		return "sliding_window"
	case SlidingLog:
		return "sliding_log"
	case FixedWindow:
		return "fixed_window"
	case TokenBucket:
		return "token_bucket"
	}
	return "unknown"
}
