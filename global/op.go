package global

import (
	"math/rand/v2"
	"sync/atomic"
)

// Op names a call that must change a key at most once: a lease call that
// gives tokens back, or a credit. Clients send a call again when its answer
// is lost (go-redis retries a call whose answer timed out, and a pipeline
// abandoned at SyncTimeout may still reach Redis), so the key remembers,
// in a field of its own hash, the last two ops of each stream it applied
// and what they answered. Every op of the stream the key applied is one of
// them or older than both, so:
//
//   - an op newer than the older of the two (than none, while the key
//     holds one), and not one of them, was never applied: it applies, and
//     is remembered (two calls of a stream that race for a key both
//     apply);
//   - a copy of one of them answers what it did and changes nothing;
//   - an op older than both is stale: it may have been applied or not. A
//     stale lease call changes nothing and admits nothing: its returns
//     stay counted and unspent (stranded until their window is over),
//     which errs on the safe side, where applying them twice would not. A
//     stale credit applies, perhaps twice, for the same reason.
//
// A stream's field lives as long as the key (two windows after its last
// write), and a key of many fields drops the streams whose last op is
// older than the window before its current one.
//
// The zero Op names nothing.
type Op struct {
	Stream string // the field of the stream, from Ops: '~' and 8 characters
	Seq    uint64 // increasing within the stream, from 1
}

// IsZero reports whether o names nothing.
func (o Op) IsZero() bool { return o.Stream == "" }

// Ops issues the Ops of one stream: a name drawn at random (48 bits: two
// streams of a thousand instances share a name with odds of about one in
// a few hundred million) and increasing sequence numbers. A stream's ops
// for a key should reach Redis in the order of their numbers, but for the
// calls that race or are late: one Ops per Limiter and kind of call. A
// process that starts again draws a new stream, so its numbers may start
// again from 1. It is safe for concurrent use.
type Ops struct {
	stream string
	seq    atomic.Uint64
}

// opAlphabet spells a stream's name: 6 bits a character.
const opAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"

// NewOps returns a new stream of Ops.
func NewOps() *Ops {
	b := make([]byte, 9)
	b[0] = '~' // every op field starts so; no field of a key's layout does
	x := rand.Uint64()
	for i := 1; i < len(b); i++ {
		b[i] = opAlphabet[x&63]
		x >>= 6
	}
	return &Ops{stream: string(b)}
}

// Next returns the stream's next Op.
func (o *Ops) Next() Op { return Op{Stream: o.stream, Seq: o.seq.Add(1)} }
