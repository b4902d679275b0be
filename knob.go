package ratelimit

import "github.com/drl-go/distributed-rate-limiter/internal/knob"

func init() {
	knob.WithoutFront = func(cfg any) { cfg.(*Config).noFront = true }
}
