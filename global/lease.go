package global

import (
	"context"
	_ "embed"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

var (
	//go:embed scripts/lease.lua
	leaseLua    string
	leaseScript = newScript(leaseLua + leaseMain)

	//go:embed scripts/admit.lua
	admitLua    string
	admitScript = newScript(admitLua)

	//go:embed scripts/heartbeat.lua
	heartbeatLua    string
	heartbeatScript = newScript(heartbeatLua)
)

// leaseMain is the line that makes lease.lua a script of its own (multi.lua
// calls its lease function too).
const leaseMain = "\nreturn lease_main()\n"

// LeaseRequest is one hybrid-mode exchange for one key: give back unspent
// leases, admit N now, reserve up to Want more, and report Attempts. Any
// part may be zero.
type LeaseRequest struct {
	Key     string // base key, from Key; same layout as SlidingWindow's
	Now     int64  // ms
	Window  int64  // ms
	Limit   int64
	N       int64
	Want    int64
	Returns [2]Return // unspent leases given back
	// Attempts are requests seen since the last report, N not among them:
	// Redis counts N as one more attempt, so that a decision reports its
	// own request in the call that decides it.
	Attempts int64
	Fixed    bool // fixed window: the previous window carries no weight
	// Known is what the caller last learned of the key's counts. If the
	// key is missing while Known names a window that is still live, Redis
	// lost it, and the key starts again from Known.
	Known Known
	// Op, when not zero, names this call so that a re-sent copy (go-redis
	// retries a call whose answer timed out) changes nothing: required
	// whenever Returns gives tokens back, since applying a return twice
	// would count fewer tokens than are admitted. See Op for what a copy
	// and a stale op answer.
	Op Op
}

// Known is a caller's last knowledge of a key: its counts of window index
// Window and the one before, its own unspent leases included, as of
// Version (0: it knows nothing).
type Known struct{ Window, Prev, Cur, Version int64 }

// Return gives back N tokens leased in window index Window and not spent.
// Tokens of a window that no longer counts are ignored.
type Return struct{ Window, N int64 }

// LeaseResult is the key's state after a LeaseRequest. Prev and Cur count
// admissions and unreturned leases of every instance.
type LeaseResult struct {
	Allowed      bool  // N was admitted (always true for N = 0)
	Granted      int64 // tokens leased, ≤ Want
	Prev, Cur    int64 // counts of the previous and current window
	PrevAttempts int64 // requests reported by all instances, previous window
	CurAttempts  int64 // and current window
	Now          int64 // the time the counts are as of: Now, or the newest time the key has seen
	Version      int64 // the key's version after this call: later calls answer higher versions (within a window)
	// Restored: the key was missing (Redis lost it) and started again
	// from the request's Known counts. Its versions start again too.
	Restored bool
	// Replayed: the request's Op was applied before (this is a copy).
	// Nothing changed: Allowed is the op's, and so is Granted while the
	// request's Now is of the key's window (else 0: the grant stays
	// counted, unspent); the counts and Version are the key's as they are.
	Replayed bool
	// Stale: the request's Op is older than the last two ops of its stream
	// the key applied. Nothing changed: nothing is admitted nor granted,
	// and the tokens it gave back stay counted, unspent (if an earlier
	// copy applied, it did so once).
	Stale bool
}

func (r LeaseRequest) script() *redis.Script {
	if r.admitOnly() {
		return admitScript
	}
	return leaseScript
}

// admitOnly reports whether r only asks for N, reports attempts and knows
// the key's counts: the admit script's share of the lease script, which
// costs Redis about what a strict decision does (a sparse user's
// decisions, which give nothing back and lease nothing).
func (r LeaseRequest) admitOnly() bool {
	return r.N > 0 && r.Want == 0 && r.Returns[0].N == 0 && r.Returns[1].N == 0 && r.Op.Stream == ""
}

func (r LeaseRequest) route() string { return r.Key }

// keysArgs returns the request's one key and its arguments in its script's
// layout.
func (r LeaseRequest) keysArgs() ([]string, []any) {
	if r.admitOnly() {
		args := []any{r.Now, r.Window, r.Limit, r.N, r.Attempts, r.fixed()}
		if r.Known.Version > 0 { // else the script reads the Known counts as 0
			args = append(args, r.Known.Window, r.Known.Prev, r.Known.Cur, r.Known.Version)
		}
		return []string{r.Key}, args
	}
	return []string{r.Key}, r.args()
}

func (r LeaseRequest) fixed() string {
	if r.Fixed {
		return "1"
	}
	return "0"
}

// args returns the request's arguments in the lease script's layout: one
// string (packed).
func (r LeaseRequest) args() []any { return []any{r.packed()} }

// packedSize is the length of a request packed without an op stream: 15
// int64s and two bytes (lease.lua's lease_args).
const packedSize = 15*8 + 2

// packed returns the request's arguments packed in one string, as
// lease.lua's lease_args unpacks them: the time, window, limit, n, want,
// the two returns' window and n, attempts (little-endian int64s), fixed (a
// byte), the known window, prev, cur and version, the op's seq (int64s),
// and the op stream (a length byte, then its bytes; Ops.Next names streams
// of a few bytes). Redis unpacks it in one call instead of parsing 17
// arguments.
func (r LeaseRequest) packed() string {
	var sb strings.Builder // one allocation: String does not copy
	sb.Grow(packedSize + len(r.Op.Stream))
	var w [8]byte
	put := func(x uint64) {
		binary.LittleEndian.PutUint64(w[:], x)
		sb.Write(w[:])
	}
	for _, x := range [...]int64{r.Now, r.Window, r.Limit, r.N, r.Want,
		r.Returns[0].Window, r.Returns[0].N, r.Returns[1].Window, r.Returns[1].N, r.Attempts} {
		put(uint64(x))
	}
	sb.WriteByte(byte(b2i(r.Fixed)))
	for _, x := range [...]int64{r.Known.Window, r.Known.Prev, r.Known.Cur, r.Known.Version} {
		put(uint64(x))
	}
	put(r.Op.Seq) // below 2^53: Lua reads a double
	sb.WriteByte(byte(len(r.Op.Stream)))
	sb.WriteString(r.Op.Stream)
	return sb.String()
}

// b2i is 1 for true, 0 for false.
func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ints returns the answer to a call of one key: its 10 integers in the
// lease script's layout, or its error.
func (r LeaseRequest) ints(cmd *redis.Cmd) ([]int64, error) {
	if r.admitOnly() {
		return admitInts(cmd)
	}
	replies, err := leaseReplies(cmd, 1)
	if err != nil {
		return nil, err
	}
	return replies[0].v, replies[0].err
}

// admitInts returns the admit script's answer, {allowed, prev, cur,
// prev_attempts, cur_attempts, now, version, restored}, in the lease
// script's layout: granted 0 and op 0 put in.
func admitInts(cmd *redis.Cmd) ([]int64, error) {
	v, err := ints(cmd)
	if err != nil {
		return nil, err
	}
	if len(v) != 8 {
		return nil, fmt.Errorf("global: admit script returned %d values, want 8", len(v))
	}
	return []int64{v[0], 0, v[1], v[2], v[3], v[4], v[5], v[6], v[7], 0}, nil
}

// leaseBatch is several LeaseRequests sent as one call of the lease script.
// Its keys must share a cluster slot.
type leaseBatch []LeaseRequest

func (b leaseBatch) script() *redis.Script { return leaseScript }

func (b leaseBatch) route() string { return b[0].Key }

// leaseReply is the lease script's answer for one key: 10 integers, or the
// error of that key alone.
type leaseReply struct {
	v   []int64
	err error
}

// leaseReplies splits the lease script's answer to a call of want keys. The
// error is the call's own (every key failed); a key's error is in its
// reply.
func leaseReplies(cmd *redis.Cmd, want int) ([]leaseReply, error) {
	all, err := cmd.Slice()
	if err != nil {
		return nil, fmt.Errorf("global: script: %w", err)
	}
	if len(all) != want {
		return nil, fmt.Errorf("global: lease script answered %d keys, want %d", len(all), want)
	}
	out := make([]leaseReply, want)
	ints := make([]int64, 10*want) // every key's, in one allocation
	for i, x := range all {
		switch x := x.(type) {
		case string: // 10 int64s, packed (lease.lua's lease_reply)
			if len(x) != 80 {
				return nil, fmt.Errorf("global: lease script answered %d bytes for a key, want 80", len(x))
			}
			v := ints[10*i : 10*i+10 : 10*i+10]
			for j := range v {
				v[j] = int64(binary.LittleEndian.Uint64([]byte(x[8*j:])))
			}
			out[i].v = v
		case []any: // {the key's error}
			if len(x) != 1 {
				return nil, fmt.Errorf("global: lease script answered %d values for a key's error, want 1", len(x))
			}
			out[i].err = fmt.Errorf("global: lease script: %v", x[0])
		default:
			return nil, fmt.Errorf("global: lease script answered %T for a key", x)
		}
	}
	return out, nil
}

// keysArgs names one key per request: a call for one request names one
// key, so that a cluster never sees a call of several keys but for a batch
// of one hash tag.
func (b leaseBatch) keysArgs() ([]string, []any) {
	keys := make([]string, 0, len(b))
	args := make([]any, 0, len(b))
	for _, r := range b {
		keys = append(keys, r.Key)
		args = append(args, r.packed())
	}
	return keys, args
}

// leaseResult decodes one key's 10 integers.
func leaseResult(v []int64, err error) (LeaseResult, error) {
	if err != nil {
		return LeaseResult{}, err
	}
	if len(v) != 10 {
		return LeaseResult{}, fmt.Errorf("global: lease script returned %d values for a key, want 10", len(v))
	}
	return LeaseResult{Allowed: v[0] == 1, Granted: v[1], Prev: v[2], Cur: v[3], PrevAttempts: v[4], CurAttempts: v[5],
		Now: v[6], Version: v[7], Restored: v[8] == 1, Replayed: v[9] == 1, Stale: v[9] == 2}, nil
}

// Lease runs one LeaseRequest through the coalescer, like Take.
func (s *Store) Lease(ctx context.Context, r LeaseRequest) (LeaseResult, error) {
	if err := r.check(); err != nil {
		return LeaseResult{}, err
	}
	return leaseResult(s.do(ctx, r))
}

// maxStream is the longest op stream a packed request can carry (a length
// byte); Ops names streams of 9 bytes.
const maxStream = 255

// check reports a request that cannot be sent: an op stream too long to
// pack.
func (r LeaseRequest) check() error {
	if len(r.Op.Stream) > maxStream {
		return fmt.Errorf("global: lease of %q: op stream of %d bytes, at most %d", r.Key, len(r.Op.Stream), maxStream)
	}
	return nil
}

// LeaseBatch runs many LeaseRequests in one pipeline (one per node on a
// cluster) and returns their results and errors, index by index. Requests
// whose keys may share a script call (any keys on a single Redis; keys with
// the same hash tag, that is the same user, on a cluster or ring) go
// together, up to Options.LeaseKeysPerCall per call: Redis then pays its
// per-call cost once per call rather than once per key. A key whose
// commands fail fails alone; a call that fails as a whole (a timeout, a
// lost connection) fails every request in it.
//
// Like every call to Redis, it goes through the circuit breaker of the
// key's master: the requests of a master whose breaker is open fail at
// once with ErrBreakerOpen. Each pipeline is bounded by the Store's
// SyncTimeout.
func (s *Store) LeaseBatch(ctx context.Context, rs []LeaseRequest) ([]LeaseResult, []error) {
	res := make([]LeaseResult, len(rs))
	errs := make([]error, len(rs))
	if len(rs) == 0 {
		return res, errs
	}
	bad := false // some request cannot be sent: send the others
	for i, r := range rs {
		if errs[i] = r.check(); errs[i] != nil {
			bad = true
		}
	}
	if bad {
		var good []int
		for i := range rs {
			if errs[i] == nil {
				good = append(good, i)
			}
		}
		s.leaseSome(ctx, rs, good, res, errs)
		return res, errs
	}
	sharded := s.sharded.Load()
	var (
		groups [][]int
		ops    []op
	)
	allGroups := s.groupLeases(rs, sharded)
	all := make([]op, len(allGroups))
	for i, g := range allGroups {
		b := make(leaseBatch, len(g))
		for j, k := range g {
			b[j] = rs[k]
		}
		all[i] = b
	}
	gates := s.admit(all, func(i int) {
		for _, k := range allGroups[i] {
			errs[k] = ErrBreakerOpen
		}
	}, func(i int) {
		groups, ops = append(groups, allGroups[i]), append(ops, all[i])
	})
	if len(ops) == 0 {
		return res, errs
	}
	var again []int // requests of calls that mixed slots on a cluster-mode server
	for i, cmd := range s.bounded(ctx, gates, ops) {
		if !sharded && isCrossSlot(cmd.Err()) {
			again = append(again, groups[i]...)
			continue
		}
		replies, err := leaseReplies(cmd, len(groups[i]))
		if unavailable(cmd.Err()) {
			err = fmt.Errorf("global: script: %w", classify(cmd.Err()))
		}
		for j, k := range groups[i] {
			if err != nil {
				errs[k] = err
			} else {
				res[k], errs[k] = leaseResult(replies[j].v, replies[j].err)
			}
		}
	}
	if len(again) > 0 {
		// Redis refused those calls before running them: send them again,
		// grouped by hash tag from now on.
		s.sharded.Store(true)
		s.leaseSome(ctx, rs, again, res, errs)
	}
	return res, errs
}

// leaseSome runs the requests rs[k] for k in which as a LeaseBatch of
// their own, and puts their results and errors at their places in res and
// errs.
func (s *Store) leaseSome(ctx context.Context, rs []LeaseRequest, which []int, res []LeaseResult, errs []error) {
	sub := make([]LeaseRequest, len(which))
	for j, k := range which {
		sub[j] = rs[k]
	}
	subRes, subErrs := s.LeaseBatch(ctx, sub)
	for j, k := range which {
		res[k], errs[k] = subRes[j], subErrs[j]
	}
}

// admit passes each of ops through the breaker of its master, once per
// breaker (the calls of one master share its ticket: a half-open breaker's
// probe is every call of the pass to it). It calls refused(i) for each op
// i that an open breaker refused and sent(i) for the others, in order, and
// returns the gates of the ops sent.
func (s *Store) admit(ops []op, refused, sent func(i int)) []gate {
	var gates []gate
	seen := make(map[*breaker]gate, 4)
	for i, o := range ops {
		b := s.breakers.forKey(o.route())
		g, ok := seen[b]
		if !ok {
			var allowed bool
			var t ticket
			if allowed, t = b.allow(); allowed {
				g = gate{b, t}
			}
			seen[b] = g
		}
		if g.b == nil {
			refused(i)
			continue
		}
		gates = append(gates, g)
		sent(i)
	}
	return gates
}

// groupLeases splits the indexes of rs into groups that may share a script
// call, in order of first appearance, each of at most LeaseKeysPerCall: any
// keys, or with sharded only keys of one slot (of one hash tag, on a client
// that does not shard by slots). On a cluster, keys of many users share a
// slot once there are more active users than slots' worth: 100k users
// over 16 384 slots, about six a slot.
func (s *Store) groupLeases(rs []LeaseRequest, sharded bool) [][]int {
	per := s.opts.LeaseKeysPerCall
	var groups [][]int
	if !sharded {
		for i := 0; i < len(rs); i += per {
			g := make([]int, 0, min(per, len(rs)-i))
			for k := i; k < min(i+per, len(rs)); k++ {
				g = append(g, k)
			}
			groups = append(groups, g)
		}
		return groups
	}
	open := make(map[string]int) // slot (or hash tag) → its group still open
	var buf [2]byte
	for i, r := range rs {
		tag := hashTag(r.Key)
		if s.bySlot {
			slot := Slot(r.Key)
			buf[0], buf[1] = byte(slot>>8), byte(slot)
			tag = string(buf[:])
		}
		if g, ok := open[tag]; ok && len(groups[g]) < per {
			groups[g] = append(groups[g], i)
			continue
		}
		open[tag] = len(groups)
		groups = append(groups, []int{i})
	}
	return groups
}

// Slot returns the Redis Cluster slot of key: CRC16 (XMODEM) of its hash
// tag, modulo 16 384, as CLUSTER KEYSLOT answers.
func Slot(key string) int {
	var crc uint16
	for _, b := range []byte(hashTag(key)) {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^b]
	}
	return int(crc) & (1<<14 - 1)
}

// crc16Table is the table of CRC16-CCITT (XMODEM: polynomial 0x1021, no
// reflection, initial value 0), the CRC Redis Cluster hashes keys with.
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

func isCrossSlot(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "CROSSSLOT")
}

// hashTag returns the part of key that Redis Cluster hashes: the text
// between the first '{' and the next '}' when not empty, else the key.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// Heartbeat records instance id as alive at now (ms) in the registry at key
// and returns how many instances were seen within ttl ms, this one included.
// It goes through the circuit breaker, and is the probe of a half-open
// one when it comes first.
func (s *Store) Heartbeat(ctx context.Context, key, id string, now, ttl int64) (int64, error) {
	b := s.breakers.forKey(key)
	ok, t := b.allow()
	if !ok {
		return 0, ErrBreakerOpen
	}
	cmd := s.bounded(ctx, []gate{{b, t}}, []op{heartbeat{key: key, id: id, now: now, ttl: ttl}})[0]
	n, err := cmd.Int64()
	if err != nil {
		if unavailable(cmd.Err()) {
			err = classify(cmd.Err())
		}
		return 0, fmt.Errorf("global: heartbeat: %w", err)
	}
	return n, nil
}

// heartbeat is one call of the heartbeat script.
type heartbeat struct {
	key, id  string
	now, ttl int64
}

func (h heartbeat) script() *redis.Script { return heartbeatScript }

func (h heartbeat) route() string { return h.key }

func (h heartbeat) keysArgs() ([]string, []any) { return []string{h.key}, []any{h.now, h.ttl, h.id} }

// Leave removes instance id from the registry at key.
func (s *Store) Leave(ctx context.Context, key, id string) error {
	b := s.breakers.forKey(key)
	ok, t := b.allow()
	if !ok {
		return ErrBreakerOpen
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.SyncTimeout)
	defer cancel()
	err := classify(s.rdb.ZRem(ctx, key, id).Err())
	s.report(outcome{gate{b, t}, err})
	return err
}
