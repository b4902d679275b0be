package global

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// TestLeaseBatchMatchesSingleCalls: the same passes sent key by key (one
// script call each) and as batches (many keys per call) leave the same
// answers, step by step, for random histories with admissions, grants,
// returns, attempts, fixed and sliding windows, old timestamps and named
// calls; and a named batch sent twice answers the same and changes nothing.
func TestLeaseBatchMatchesSingleCalls(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	single := NewStore(c, Options{LeaseKeysPerCall: 1})
	defer single.Close()
	batched := NewStore(c, Options{LeaseKeysPerCall: 5})
	defer batched.Close()
	const keys, passes, w = 12, 60, 1000
	rng := rand.New(rand.NewPCG(7, 8))
	now := int64(1_700_000_000_000)
	lastVersion := make(map[string]int64)
	ops := NewOps()
	for pass := range passes {
		now += rng.Int64N(400)
		var a, b []LeaseRequest
		for k := range keys {
			if rng.IntN(4) == 0 {
				continue // not every key in every pass
			}
			r := LeaseRequest{
				Now:      now - rng.Int64N(3)*rng.Int64N(600), // sometimes in the past
				Window:   w,
				Limit:    50,
				N:        rng.Int64N(4),
				Want:     rng.Int64N(12),
				Attempts: rng.Int64N(10),
				Fixed:    k%3 == 0,
			}
			idx := now / w
			r.Returns[0] = Return{Window: idx - 1, N: rng.Int64N(3)}
			r.Returns[1] = Return{Window: idx, N: rng.Int64N(5)}
			if rng.IntN(2) == 0 {
				r.Op = ops.Next()
			}
			ra, rb := r, r
			ra.Key = Key(p+"single", "r", fmt.Sprint("u", k))
			rb.Key = Key(p+"batched", "r", fmt.Sprint("u", k))
			a, b = append(a, ra), append(b, rb)
		}
		want := make([]LeaseResult, len(a))
		for i, r := range a {
			var err error
			if want[i], err = single.Lease(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		got, errs := batched.LeaseBatch(ctx, b)
		for i := range b {
			if errs[i] != nil {
				t.Fatalf("pass %d, request %d: %v", pass, i, errs[i])
			}
		}
		answered := slices.Clone(got)
		// A new key's versions start at the server's clock, which differs
		// between the two keys: compare the versions' steps instead.
		for i := range got {
			k := b[i].Key
			if v, ok := lastVersion[k]; ok && got[i].Version <= v {
				t.Fatalf("pass %d, %s: version %d after %d", pass, k, got[i].Version, v)
			}
			lastVersion[k] = got[i].Version
			got[i].Version, want[i].Version = 0, 0
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("pass %d: batched answers\n%+v\nwant (key by key)\n%+v", pass, got, want)
		}
		// A re-sent batch: the named requests answer the key as it is and
		// their own admission and grant (a grant only while the request's
		// Now is of the key's window), and apply nothing; the unnamed ones
		// apply again, so send only the named.
		var named []LeaseRequest
		var namedWant []LeaseResult
		for i, r := range b {
			if !r.Op.IsZero() {
				want := answered[i]
				want.Replayed, want.Restored = true, false
				if r.Now/w != want.Now/w {
					want.Granted = 0
				}
				named, namedWant = append(named, r), append(namedWant, want)
			}
		}
		again, errs := batched.LeaseBatch(ctx, named)
		for i := range named {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
		}
		if !reflect.DeepEqual(again, namedWant) {
			t.Fatalf("pass %d: a re-sent named batch answered\n%+v\nwant\n%+v", pass, again, namedWant)
		}
	}
}

// TestLeaseBatchGroups: on a single node any keys share a call, up to
// LeaseKeysPerCall; on a cluster only keys of one slot do (users whose
// hash tags share a slot, too); on a Ring only keys of one hash tag.
func TestLeaseBatchGroups(t *testing.T) {
	// A user whose tag has a's slot.
	twin := ""
	for i := 0; twin == ""; i++ {
		if u := fmt.Sprint("t", i); Slot("{"+u+"}") == Slot("{a}") {
			twin = u
		}
	}
	keys := []string{"p:{a}:r1", "p:{b}:r1", "p:{a}:r2", "p:{a}:r3", "p:{c}:r1", "p:{b}:r2", "p:{" + twin + "}:r1"}
	rs := make([]LeaseRequest, len(keys))
	for i, k := range keys {
		rs[i].Key = k
	}
	node := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer node.Close()
	cluster := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer cluster.Close()
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1", "b": "127.0.0.1:2"}})
	defer ring.Close()
	for _, tc := range []struct {
		rdb  redis.UniversalClient
		per  int
		want string
	}{
		{node, 4, "[[0 1 2 3] [4 5 6]]"},
		{node, 1, "[[0] [1] [2] [3] [4] [5] [6]]"},
		{cluster, 32, "[[0 2 3 6] [1 5] [4]]"},
		{cluster, 2, "[[0 2] [1 5] [3 6] [4]]"},
		{ring, 32, "[[0 2 3] [1 5] [4] [6]]"},
	} {
		s := NewStore(tc.rdb, Options{LeaseKeysPerCall: tc.per})
		if got := fmt.Sprint(s.groupLeases(rs, s.sharded.Load())); got != tc.want {
			t.Errorf("%T, %d per call: groups %s, want %s", tc.rdb, tc.per, got, tc.want)
		}
		s.Close()
	}
	for key, want := range map[string]string{"p:{u}:r": "u", "p:{}:r": "p:{}:r", "p:{u": "p:{u", "plain": "plain", "{a}{b}": "a"} {
		if got := hashTag(key); got != want {
			t.Errorf("hashTag(%q) = %q, want %q", key, got, want)
		}
	}
	// CLUSTER KEYSLOT's answers (the last two from Redis's documentation).
	for key, want := range map[string]int{"123456789": 0x31c3, "somekey": 11058, "foo{hash_tag}": 2515, "": 0} {
		if got := Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
}

// TestLeaseBatchIsolatesBadKey: a key whose commands fail (a foreign value
// under it) fails alone; the keys before and after it in the same call get
// their answers, applied once.
func TestLeaseBatchIsolatesBadKey(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	s := NewStore(c, Options{})
	defer s.Close()
	now := int64(1_700_000_000_000)
	var rs []LeaseRequest
	for _, u := range []string{"a", "bad", "c"} {
		rs = append(rs, LeaseRequest{Key: Key(p, "r", u), Now: now, Window: 60_000, Limit: 100, N: 1, Want: 5})
	}
	if err := c.Set(ctx, rs[1].Key, "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	res, errs := s.LeaseBatch(ctx, rs)
	if errs[1] == nil || !strings.Contains(errs[1].Error(), "WRONGTYPE") {
		t.Fatalf("the bad key's error = %v, want WRONGTYPE", errs[1])
	}
	for _, i := range []int{0, 2} {
		if errs[i] != nil {
			t.Fatalf("key %d failed with its neighbour: %v", i, errs[i])
		}
		if res[i].Cur != 6 || res[i].Granted != 5 || !res[i].Allowed {
			t.Fatalf("key %d: %+v, want 1 admitted and 5 leased", i, res[i])
		}
	}
	if got, err := c.HGet(ctx, rs[2].Key, "c").Int64(); err != nil || got != 6 {
		t.Fatalf("key after the bad one counts %d (%v) in Redis, want 6", got, err)
	}
}

// TestLeaseBatchOnClusterModeServer: a single-node client of a server in
// cluster mode (one node holding every slot) cannot mix slots in a call;
// the store learns it from the first CROSSSLOT and answers every request.
func TestLeaseBatchOnClusterModeServer(t *testing.T) {
	c := redistest.Server(t, "--cluster-enabled", "yes")
	ctx := context.Background()
	if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not ok: %v %q", err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := NewStore(c, Options{})
	defer s.Close()
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	now := int64(1_700_000_000_000)
	for pass := range 2 {
		var rs []LeaseRequest
		for _, u := range []string{"a", "b", "c"} {
			rs = append(rs, LeaseRequest{Key: Key("p", "r", u), Now: now, Window: 60_000, Limit: 100, N: 1})
		}
		res, errs := s.LeaseBatch(ctx, rs)
		for i := range rs {
			if errs[i] != nil || !res[i].Allowed || res[i].Cur != int64(pass+1) {
				t.Fatalf("pass %d, key %d: %+v, %v", pass, i, res[i], errs[i])
			}
		}
	}
	if !s.sharded.Load() {
		t.Fatal("the store did not learn that keys live on several slots")
	}
}

// TestKeysLiveWhileWritten: a key written again and again within one
// window of the caller's time outlives two windows of Redis' time. The TTL
// runs on Redis' clock and the windows on the caller's timestamps; a
// caller whose timestamps lag the wall clock (a simulator, requests
// stamped at arrival and decided late) must not see a key it keeps using
// expire under it and come back restored from a stale copy. So every write
// of every script (hybrid admit and lease, strict) renews the TTL to two
// windows: after each write PTTL is more than 2·W minus the write's own
// round trip and the tolerance, never the remainder of an older TTL.
func TestKeysLiveWhileWritten(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	s := NewStore(c, Options{})
	defer s.Close()
	const w = 100 // ms; 2·W of real time passes during the test
	now := int64(1_700_000_000_000) / w * w
	calls := []struct {
		name  string
		key   string
		write func(key string) error
	}{
		{"hybrid admit", Key(p, "admit", "u"), func(key string) error {
			_, err := s.Lease(ctx, LeaseRequest{Key: key, Now: now, Window: w, Limit: 1000, N: 1})
			return err
		}},
		{"hybrid lease", Key(p, "lease", "u"), func(key string) error {
			_, err := s.Lease(ctx, LeaseRequest{Key: key, Now: now, Window: w, Limit: 1000, Want: 1})
			return err
		}},
		{"strict", Key(p, "strict", "u"), func(key string) error {
			_, err := s.Take(ctx, Request{Algorithm: SlidingWindow, Key: key, Now: now, Window: w, Limit: 1000, N: 1})
			return err
		}},
	}
	if !(LeaseRequest{N: 1}).admitOnly() || (LeaseRequest{Want: 1}).admitOnly() {
		t.Fatal("the two hybrid calls no longer take the admit and the lease script")
	}
	start := time.Now()
	for i := 0; time.Since(start) < 3*w*time.Millisecond; i++ {
		for _, call := range calls {
			before := time.Now()
			if err := call.write(call.key); err != nil {
				t.Fatalf("%s, write %d: %v", call.name, i, err)
			}
			ttl, err := c.PTTL(ctx, call.key).Result()
			if err != nil {
				t.Fatal(err)
			}
			const tol = 3 * time.Millisecond
			if floor := 2*w*time.Millisecond - time.Since(before) - tol; ttl < floor {
				t.Fatalf("%s, write %d, %v after the first: PTTL %v, want ≥ %v (two windows from this write)",
					call.name, i, time.Since(start).Round(time.Millisecond), ttl, floor)
			}
		}
		time.Sleep(w / 4 * time.Millisecond)
	}
}

// TestLeaseRejectsLongStream: a request whose op stream is too long to pack
// (a length byte) fails with a clear error, alone: the others of its batch
// are answered, and Lease refuses it before Redis sees it.
func TestLeaseRejectsLongStream(t *testing.T) {
	c, p := testClient(t)
	ctx := context.Background()
	s := NewStore(c, Options{})
	defer s.Close()
	now := int64(1_700_000_000_000)
	long := LeaseRequest{Key: Key(p, "r", "long"), Now: now, Window: 1000, Limit: 10, N: 1,
		Op: Op{Stream: "~" + strings.Repeat("x", maxStream), Seq: 1}}
	if _, err := s.Lease(ctx, long); err == nil || !strings.Contains(err.Error(), "op stream of 256 bytes") {
		t.Fatalf("Lease of a 256-byte stream: %v, want the stream's error", err)
	}
	rs := []LeaseRequest{
		{Key: Key(p, "r", "a"), Now: now, Window: 1000, Limit: 10, N: 1, Want: 2},
		long,
		{Key: Key(p, "r", "b"), Now: now, Window: 1000, Limit: 10, N: 1, Op: Op{Stream: "~ok", Seq: 1}},
	}
	res, errs := s.LeaseBatch(ctx, rs)
	if errs[1] == nil || errs[0] != nil || errs[2] != nil {
		t.Fatalf("errors %v, want the long stream's only", errs)
	}
	if !res[0].Allowed || res[0].Granted != 2 || !res[2].Allowed || res[2].Cur != 1 {
		t.Fatalf("answers %+v, want a and b admitted (a granted 2)", res)
	}
	if n, err := c.Exists(ctx, long.Key).Result(); err != nil || n != 0 {
		t.Fatalf("the long stream's key: exists %d, %v", n, err)
	}
}
