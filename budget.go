package ratelimit

import "math/bits"

// This file sizes the hybrid mode's leases: how many tokens of a key's
// global budget an instance reserves in Redis to spend locally until its
// next sync. Leases are reserved before they are spent, so their size never
// affects correctness (the global count includes them); it decides how
// often an instance must ask Redis, and how many tokens can sit unused in
// one instance while another is refused (returned at the next sync).
//
// All functions are pure; FuzzLeaseInvariants checks their invariants.

// leaseHorizon is how many sync intervals of demand a lease should cover:
// one to reach the next sync, one of slack for bursts.
const leaseHorizon = 2

// minLeaseDemand is the demand (requests per sync interval, on this
// instance) below which a key gets no lease: it is decided by Redis, one
// call a request, as in strict mode. A lease costs a call to give back what
// is left of it, and to renew it; it pays only for a key that would
// otherwise make several calls an interval. So a sparse user (a few
// requests, or one now and then) costs what a strict decision costs, and
// leaves nothing to hand back.
const minLeaseDemand = 4

// leaseView is what one instance knows of one key when it sizes a lease.
type leaseView struct {
	fit       int64 // tokens that still fit under the limit, in the last global view
	held      int64 // this instance's unspent lease
	demand    int64 // requests this instance saw for the key over the last sync interval
	mine      int64 // this instance's recent requests (weighted like the window estimate)
	total     int64 // all instances' recent requests, as reported to Redis
	instances int64 // live instances, ≥ 1
}

// topUp returns how many tokens to add to the lease: enough to cover
// leaseHorizon intervals of demand, but never more than this instance's
// share of what fits, so that instances whose views agree never ask for
// more than fits between them. The share is mine/total: an instance that
// sees 90 % of a key's requests may take up to 90 % of what is left. With no
// demand data it is 1/instances. A demand under minLeaseDemand gets nothing.
func (v leaseView) topUp() int64 {
	want := leaseHorizon*max(v.demand, 0) - max(v.held, 0)
	if want <= 0 || v.fit <= 0 || v.demand < minLeaseDemand {
		return 0
	}
	var share int64
	switch {
	case v.total <= 0: // no demand reported yet: an equal split
		share = v.fit / max(v.instances, 1)
	case v.mine > 0:
		share = mulDiv(v.fit, min(v.mine, v.total), v.total)
	}
	return min(want, share)
}

// excess returns how much of the held lease to give back: all of it when
// the key saw no demand, the part above the horizon when the lease holds
// more than twice what the horizon needs, else nothing (hysteresis, so a
// steady key does not return and re-reserve every interval).
func (v leaseView) excess() int64 {
	held := max(v.held, 0)
	need := leaseHorizon * max(v.demand, 0)
	switch {
	case v.demand <= 0:
		return held
	case held > 2*need:
		return held - need
	}
	return 0
}

// mulDiv returns ⌊a·b/c⌋ for a, b ≥ 0, c > 0 and b ≤ c, without overflow.
func mulDiv(a, b, c int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	q, _ := bits.Div64(hi, lo, uint64(c)) // hi < c because b ≤ c
	return int64(q)
}
