// Package newkeys limits the identities never seen before that one client
// network may bring per second, in front of a Limiter: a flood of fake ids
// then creates no state in the Limiter (nor keys in Redis) beyond the
// budget, whatever the ids, and identities seen lately are never affected.
//
// The httplimit middleware uses it (Options.NewKeysPerSecond); a gateway
// that is not net/http (gRPC, a proxy of its own) calls it before the
// Limiter:
//
//	gate, err := newkeys.New(newkeys.Config{PerSecond: 10})
//	...
//	if ok, wait := gate.Admit(userID, gate.Network(clientAddr), now); !ok {
//		// deny: retry after wait, without asking the Limiter
//	}
package newkeys

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/drl-go/distributed-rate-limiter/local"
)

// Config configures a Gate. Only PerSecond is required.
type Config struct {
	// PerSecond is how many identities never seen before one client
	// network may bring per second (a fixed window of one second). It
	// must be positive.
	PerSecond int
	// Prefix4 and Prefix6 are the prefix lengths of a client network
	// (Network). Default 24 and 48.
	Prefix4, Prefix6 int
	// Memory is how many identities the gate remembers at least (an
	// approximate set of 16 bits an identity, local.Doorkeeper; about 1.4 %
	// of new identities pass for known ones when it is full). One forgotten
	// counts as new again. Default 1<<20 (2 MiB a generation).
	Memory int64
	// Networks bounds the client networks counted within one second; a new
	// identity from a network beyond it waits for the next second. Default
	// 1<<16.
	Networks int
}

// Gate admits or refuses identities never seen before, per client network
// and second. It is safe for concurrent use.
type Gate struct {
	seen      *local.Doorkeeper
	perSecond int
	bits4     int
	bits6     int
	maxNets   int

	mu     sync.Mutex
	second int64          // the Unix second counts holds
	counts map[string]int // new identities admitted this second, by network
}

// New returns the Gate of cfg, or an error naming the field that is out
// of range.
func New(cfg Config) (*Gate, error) {
	if cfg.Prefix4 == 0 {
		cfg.Prefix4 = 24
	}
	if cfg.Prefix6 == 0 {
		cfg.Prefix6 = 48
	}
	if cfg.Memory == 0 {
		cfg.Memory = 1 << 20
	}
	if cfg.Networks == 0 {
		cfg.Networks = 1 << 16
	}
	switch {
	case cfg.PerSecond <= 0:
		return nil, fmt.Errorf("newkeys: Config.PerSecond %d is not positive", cfg.PerSecond)
	case cfg.Prefix4 < 0 || cfg.Prefix4 > 32:
		return nil, fmt.Errorf("newkeys: Config.Prefix4 %d is not in 1..32", cfg.Prefix4)
	case cfg.Prefix6 < 0 || cfg.Prefix6 > 128:
		return nil, fmt.Errorf("newkeys: Config.Prefix6 %d is not in 1..128", cfg.Prefix6)
	case cfg.Memory < 0 || cfg.Networks < 0:
		return nil, fmt.Errorf("newkeys: Config.Memory %d or Config.Networks %d is negative", cfg.Memory, cfg.Networks)
	}
	return &Gate{
		seen: local.NewDoorkeeper(cfg.Memory), perSecond: cfg.PerSecond,
		bits4: cfg.Prefix4, bits6: cfg.Prefix6, maxNets: cfg.Networks,
		counts: make(map[string]int),
	}, nil
}

// PerSecond returns the new identities one network may bring per second.
func (g *Gate) PerSecond() int { return g.perSecond }

// Network returns the client network of a: its /Prefix4 or /Prefix6.
func (g *Gate) Network(a netip.Addr) string {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, g.bits4).Masked().String()
	}
	return netip.PrefixFrom(a, g.bits6).Masked().String()
}

// Admit reports whether key, from network (Network's, or any name the
// caller groups clients by), may go on to the Limiter at now: a key seen
// lately always may; a new one if its network has budget left in now's
// second, and it is then remembered. A new key refused is not remembered,
// so that sending it again does not pass it. Refused, it returns the wait
// until the next second. Two concurrent first requests of one key may both
// take budget: a gate errs towards refusing.
func (g *Gate) Admit(key, network string, now time.Time) (ok bool, wait time.Duration) {
	if g.seen.Seen(key) {
		return true, 0
	}
	sec := now.Unix()
	g.mu.Lock()
	if sec > g.second {
		g.second = sec
		clear(g.counts)
	}
	sec = g.second // a request stamped in an earlier second, late, counts in the current one
	n, tracked := g.counts[network]
	ok = n < g.perSecond && (tracked || len(g.counts) < g.maxNets)
	if ok {
		g.counts[network] = n + 1
	}
	g.mu.Unlock()
	if !ok {
		return false, time.Unix(sec+1, 0).Sub(now)
	}
	g.seen.Add(key)
	return true, 0
}
