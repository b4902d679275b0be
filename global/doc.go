// Package global is the limiter's Redis side: the atomic Lua scripts of the
// strict algorithms, the key layout (every key of one user in one cluster
// slot), and a coalescer that sends concurrent calls as one pipeline.
//
// It knows nothing of rules or modes; package ratelimit maps its rules onto
// the Requests defined here.
package global
