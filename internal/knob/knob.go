// Package knob holds switches of package ratelimit that are no part of its
// API, for the benchmarks of the bench module (a module of its own, which
// cannot reach ratelimit's unexported fields). Package ratelimit sets them
// as it initialises; its own tests set the fields directly.
package knob

// WithoutFront takes a *ratelimit.Config and makes a Limiter built from it
// keep its hybrid keys in a cache without the front table
// (local.NewCacheWithoutFront), so that a benchmark can weigh what the
// front table buys. It panics on anything but a *ratelimit.Config. (The
// parameter is an any because this package cannot import ratelimit, which
// imports it.)
var WithoutFront func(cfg any)
