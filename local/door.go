package local

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// doorkeeper remembers, approximately, the keys seen lately, so that a
// key's first request needs no State: a sparse user (one request, or one
// now and then) costs no State, no ristretto Set and no place in the sync
// pass, and a flood of one-off ids cannot fill the cache whatever
// ristretto's buffers drop under a saturated CPU.
//
// It is a Bloom filter with two hashes (the Cache's two independent hashes
// of the key), in two generations: a key is seen if the current or the
// previous generation holds it; after capacity first sightings, or (when
// the caller gives a span) once a request's time is span ms past the
// current generation's start, the current generation becomes the previous
// one and a cleared one takes its place. So a key is remembered for at
// least capacity first sightings of other keys and, with a span, for at
// least span ms of request time; and with a span it is forgotten once two
// spans have passed, so that a user whose requests come further apart than
// that (one every few seconds, at a sync interval of 100 ms) never costs a
// State: it would hold a lease no request spends and cost a place in every
// sync pass until evicted. A false positive (a new key taken for one seen)
// only costs that key a State a request early; a key forgotten only costs
// it one more request without State. Time moves a generation's start
// forward only: a request stamped ahead (a caller's MaxSkew allows minutes)
// holds the time rotation back until the stamps reach it, and for so long
// keys are forgotten on counts only, as before there was a span; costlier,
// never wrong. It is safe for concurrent use, and lock-free but for the
// rotation.
type doorkeeper struct {
	gens     atomic.Pointer[doorGens]
	sighted  atomic.Int64 // first sightings in the current generation
	capacity int64
	mu       sync.Mutex // rotation
}

type doorGens struct {
	cur, prev []atomic.Uint64
	mask      uint64 // of bit indexes
	start     int64  // request time (ms) at which cur became current
}

// Sizing: bits per key of capacity (16 bits and two hashes: about 1.4 %
// false positives at capacity), and the bounds of a generation's bits.
const (
	doorBitsPerKey = 16
	doorMinBits    = 1 << 16
	doorMaxBits    = 1 << 26 // 8 MiB a generation
)

// newDoorkeeper returns a doorkeeper that remembers at least capacity keys.
func newDoorkeeper(capacity int64) *doorkeeper {
	bits := int64(doorMinBits)
	for bits < doorBitsPerKey*capacity && bits < doorMaxBits {
		bits *= 2
	}
	d := &doorkeeper{capacity: min(max(capacity, 1), bits/doorBitsPerKey)}
	d.gens.Store(&doorGens{cur: make([]atomic.Uint64, bits/64), prev: make([]atomic.Uint64, bits/64), mask: uint64(bits - 1)})
	return d
}

// has reports whether both bits of (a, b) are set in g.
func has(g []atomic.Uint64, a, b uint64) bool {
	return g[a/64].Load()&(1<<(a%64)) != 0 && g[b/64].Load()&(1<<(b%64)) != 0
}

// seen reports whether the key of hashes (key, check) was seen lately; if
// not, it records it. ms is the request's time and span (> 0) how long a
// generation lasts in request time; span 0 rotates on counts only.
func (d *doorkeeper) seen(key, check uint64, ms, span int64) bool {
	g := d.gens.Load()
	if span > 0 && ms-g.start >= span {
		g = d.rotate(g, ms)
	}
	a, b := key&g.mask, (check>>1)&g.mask
	if has(g.cur, a, b) || has(g.prev, a, b) {
		return true
	}
	g.cur[a/64].Or(1 << (a % 64))
	g.cur[b/64].Or(1 << (b % 64))
	if d.sighted.Add(1) >= d.capacity {
		d.rotate(g, g.start)
	}
	return false
}

// rotate makes g's current generation the previous one, starting the new
// one at request time start, unless another call already rotated g; it
// returns the generations now current. The new generation reuses the
// bits of the one dropped, cleared before it is published: a reader still
// holding g may miss a key there, which only takes it for a new one.
func (d *doorkeeper) rotate(g *doorGens, start int64) *doorGens {
	d.mu.Lock()
	defer d.mu.Unlock()
	if now := d.gens.Load(); now != g {
		return now
	}
	for i := range g.prev {
		g.prev[i].Store(0)
	}
	next := &doorGens{cur: g.prev, prev: g.cur, mask: g.mask, start: start}
	d.gens.Store(next)
	d.sighted.Store(0)
	return next
}

// contains reports whether the key of hashes (key, check) was seen lately,
// recording nothing.
func (d *doorkeeper) contains(key, check uint64) bool {
	g := d.gens.Load()
	a, b := key&g.mask, (check>>1)&g.mask
	return has(g.cur, a, b) || has(g.prev, a, b)
}

// record records the key of hashes (key, check) in the current generation
// as a sighting.
func (d *doorkeeper) record(key, check uint64) {
	g := d.gens.Load()
	a, b := key&g.mask, (check>>1)&g.mask
	if has(g.cur, a, b) {
		return
	}
	g.cur[a/64].Or(1 << (a % 64))
	g.cur[b/64].Or(1 << (b % 64))
	if d.sighted.Add(1) >= d.capacity {
		d.rotate(g, g.start)
	}
}

// Doorkeeper is an approximate set of the string keys seen lately, in
// bounded memory (16 bits a key of capacity, at most 16 MiB): the
// doorkeeper of the Cache, for callers outside it (httplimit's new-identity
// budget). A key added is remembered for at least capacity additions of
// other keys; about 1.4 % of keys never added are taken for added ones at
// capacity. It is safe for concurrent use.
type Doorkeeper struct {
	d            *doorkeeper
	seed1, seed2 maphash.Seed
}

// NewDoorkeeper returns a Doorkeeper that remembers at least capacity keys
// (at most 1<<22).
func NewDoorkeeper(capacity int64) *Doorkeeper {
	return &Doorkeeper{d: newDoorkeeper(capacity), seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed()}
}

// Seen reports whether key was added lately. It records nothing.
func (k *Doorkeeper) Seen(key string) bool {
	return k.d.contains(maphash.String(k.seed1, key), maphash.String(k.seed2, key))
}

// Add records key; adding a key already in the current generation changes
// nothing.
func (k *Doorkeeper) Add(key string) {
	k.d.record(maphash.String(k.seed1, key), maphash.String(k.seed2, key))
}
