module github.com/drl-go/distributed-rate-limiter/bench

go 1.26.0

replace github.com/drl-go/distributed-rate-limiter => ../

require (
	github.com/dgraph-io/ristretto/v2 v2.4.2
	github.com/drl-go/distributed-rate-limiter v0.0.0-00010101000000-000000000000
	github.com/go-redis/redis_rate/v10 v10.0.1
	github.com/redis/go-redis/v9 v9.23.0
	go.uber.org/goleak v1.3.0
	golang.org/x/time v0.16.0
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	go.uber.org/atomic v1.12.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)
