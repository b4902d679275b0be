// Package bench holds the benchmarks of github.com/drl-go/distributed-rate-limiter
// against its comparators (github.com/go-redis/redis_rate/v10,
// golang.org/x/time/rate) and against raw Redis round trips (EVALSHA, PING).
//
// It is a module of its own, so that the comparators never become
// dependencies of the library. Everything is in the _test.go files; run
//
//	go test -run '^$' -bench . -benchmem ./...
//
// with a Redis at REDIS_ADDR (default 127.0.0.1:6379). See RESULTS.md.
package bench
