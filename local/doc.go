// Package local holds per-key limiter state in this process: the expiring
// sharded table behind the local mode, and the ristretto-backed state of the
// hybrid mode's leased budgets.
//
// It does no I/O and reads no clock: every call takes its time as a
// parameter.
package local
