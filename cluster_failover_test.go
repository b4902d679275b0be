package ratelimit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/drl-go/distributed-rate-limiter/global"
	"github.com/drl-go/distributed-rate-limiter/internal/redistest"
)

// ownCluster starts a Redis Cluster of its own (scripts/redis-cluster.sh,
// from port base), for a test that kills its nodes, and stops it when the
// test ends. It returns the seed addresses and the pid of each node by
// address. It runs with the cluster suite (REDIS_CLUSTER_ADDRS set), which
// has the binaries and the time for it.
func ownCluster(t *testing.T, base int) (addrs []string, pids map[string]int) {
	t.Helper()
	if len(redistest.ClusterAddrs()) == 0 {
		redistest.ClusterClient(t) // the suite's gate: skips, or fails under CI
	}
	dir := t.TempDir()
	env := append(os.Environ(), "RL_CLUSTER_DIR="+dir, "RL_CLUSTER_PORT="+strconv.Itoa(base))
	start := exec.Command("bash", "scripts/redis-cluster.sh", "start")
	start.Env = env
	out, err := start.Output()
	t.Cleanup(func() {
		stop := exec.Command("bash", "scripts/redis-cluster.sh", "stop")
		stop.Env = env
		if b, err := stop.CombinedOutput(); err != nil {
			t.Errorf("stopping the cluster: %v: %s", err, b)
		}
	})
	require.NoError(t, err, "starting a cluster: %s", out)
	f, err := os.Open(filepath.Join(dir, "state"))
	require.NoError(t, err)
	defer f.Close()
	pids = map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 3 && fields[0] == "node":
			pid, _ := strconv.Atoi(fields[1])
			pids["127.0.0.1:"+fields[2]] = pid
		case len(fields) == 2 && fields[0] == "addrs":
			addrs = strings.Split(fields[1], ",")
		}
	}
	require.Len(t, pids, 6, "state file")
	require.NotEmpty(t, addrs)
	return addrs, pids
}

// TestClusterMasterKilled: a master is SIGKILLed under load from three
// strict Limiters (default cluster client options, FailError so that every
// failure reaches the caller) and its replica is promoted. Callers' errors
// stop within 2 s of the promotion (go-redis alone reloads its slot map on a
// 60 s timer: the Store asks it to reload at the first failures), and
// afterwards Redis counts, for every user, no more than was admitted (a
// write the dead master acknowledged but had not replicated is lost: the
// test reports how many), and no more than was admitted plus the calls
// that failed after they were sent (Redis may have counted those: a lost
// answer is not a lost write).
func TestClusterMasterKilled(t *testing.T) {
	addrs, pids := ownCluster(t, 7300)
	ctx := context.Background()
	admin := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer admin.Close()
	prefix := fmt.Sprintf("fo%x", rand.Uint32())
	rule := Rule{Name: "fo", Limit: 1 << 30, Window: time.Minute, Mode: Strict, OnFailure: FailError}
	users := clusterUsers(90)

	const instances, goroutines = 3, 4
	lims := clusterLimiters(t, addrs, instances, Config{Rules: []Rule{rule}, KeyPrefix: prefix, Timeout: 500 * time.Millisecond})

	// The victim: the master of the instance registry's slot (the sync
	// passes go on without it), and of a third of the users.
	victim, err := admin.MasterForKey(ctx, prefix+":instances")
	require.NoError(t, err)
	victimAddr := victim.Options().Addr
	onVictim := map[string]bool{}
	for _, u := range users {
		m, err := admin.MasterForKey(ctx, global.Key(prefix, rule.Name, u))
		require.NoError(t, err)
		onVictim[u] = m.Options().Addr == victimAddr
	}
	victimPid := pids[victimAddr]
	require.NotZero(t, victimPid, "pid of %s", victimAddr)

	ts := time.Now() // one instant: the counts stay in one window
	var (
		mu        sync.Mutex
		admitted  = map[string]int64{}
		maybe     = map[string]int64{} // errors of calls that were sent: Redis may have counted them
		errTimes  []time.Time
		errTexts  = map[string]int{}
		othersErr = map[string]int{} // errors for users of the other masters, by text
		decisions int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, l := range lims {
		for g := range goroutines {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(i), uint64(g)))
				for {
					select {
					case <-stop:
						return
					default:
					}
					u := users[rng.IntN(len(users))]
					d, err := l.Allow(ctx, rule.Name, u, ts)
					mu.Lock()
					decisions++
					if err != nil {
						errTimes = append(errTimes, time.Now())
						if !errors.Is(err, global.ErrBreakerOpen) {
							maybe[u]++
						}
						text := err.Error()
						if len(text) > 120 {
							text = text[:120]
						}
						errTexts[text]++
						if !onVictim[u] {
							othersErr[text]++
						}
					} else if d.Allowed {
						admitted[u]++
					}
					mu.Unlock()
					if err != nil {
						time.Sleep(time.Millisecond) // an error comes fast: keep the loop from spinning
					}
				}
			})
		}
	}
	stopLoad := func() {
		close(stop)
		wg.Wait()
	}

	time.Sleep(time.Second)
	killed := time.Now()
	require.NoError(t, syscall.Kill(victimPid, syscall.SIGKILL))

	// The promotion: another node names a new master for the victim's
	// slots (cluster-node-timeout is 2 s in the script).
	var promoted time.Time
	seed := redis.NewClient(&redis.Options{Addr: otherThan(addrs, victimAddr)})
	defer seed.Close()
	slot64, err := admin.ClusterKeySlot(ctx, prefix+":instances").Result()
	require.NoError(t, err)
	slot := int(slot64)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if owner := slotOwner(ctx, seed, slot); owner != "" && owner != victimAddr {
			promoted = time.Now()
			break
		}
	}
	if promoted.IsZero() {
		stopLoad()
		t.Fatalf("no replica promoted for slot %d within 30 s of the kill", slot)
	}
	time.Sleep(6 * time.Second) // load goes on after the promotion
	stopLoad()

	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	for _, e := range errTimes {
		if e.After(last) {
			last = e
		}
	}
	texts := make([]string, 0, len(errTexts))
	for s, n := range errTexts {
		texts = append(texts, fmt.Sprintf("%6d× %s", n, s))
	}
	sort.Strings(texts)
	t.Logf("%d decisions; master %s killed; promoted %v after the kill; %d caller errors, the last %v after the promotion:\n%s",
		decisions, victimAddr, promoted.Sub(killed).Round(time.Millisecond), len(errTimes),
		last.Sub(promoted).Round(time.Millisecond), strings.Join(texts, "\n"))
	require.True(t, last.Before(promoted.Add(2*time.Second)),
		"caller errors went on %v after the promotion", last.Sub(promoted))
	// Each master has its breaker: the users of the masters that stayed up
	// are never refused by one. They may see the cluster's own CLUSTERDOWN
	// (with cluster-require-full-coverage, Redis's default, every node
	// answers it from the master's failure to the promotion), and a
	// timeout when the coalescer put their call in a pipeline with a call
	// to the dead master.
	for text := range othersErr {
		require.NotContains(t, text, "circuit breaker open", "users of the masters that stayed up: %v", othersErr)
	}
	t.Logf("errors of users of the masters that stayed up: %v", othersErr)
	var passes, failed int64
	for _, l := range lims {
		st := l.Stats()
		passes, failed = passes+st.SyncPasses, failed+st.SyncFailures
	}
	t.Logf("sync passes %d, of which %d failed (the registry's master was the victim)", passes, failed)

	// A client made now learns the new slot map (admin's would still name
	// the dead master: go-redis reloads it on a 60 s timer).
	after := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{seed.Options().Addr}})
	defer after.Close()
	var lost, counted, total int64
	for _, u := range users {
		got := windowCount(t, after, global.Key(prefix, rule.Name, u), ts, rule.Window)
		require.LessOrEqual(t, got, admitted[u]+maybe[u],
			"user %s: Redis counts more than was admitted and than the calls that failed after being sent", u)
		lost += max(admitted[u]-got, 0)
		counted += max(got-admitted[u], 0)
		total += admitted[u]
	}
	t.Logf("admitted %d; Redis lost %d with the master (acknowledged, not replicated) and counted %d whose callers got an error",
		total, lost, counted)
}

// clusterLimiters returns n Limiters of cfg, each with a cluster client of
// its own (the client's default options) of the cluster at addrs, closed
// when the test ends.
func clusterLimiters(t *testing.T, addrs []string, n int, cfg Config) []*Limiter {
	t.Helper()
	var lims []*Limiter
	for range n {
		c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		t.Cleanup(func() { _ = c.Close() })
		cfg.Redis = c
		l, err := New(cfg)
		require.NoError(t, err)
		t.Cleanup(func() { _ = l.Close() })
		lims = append(lims, l)
	}
	return lims
}

// otherThan returns an address of addrs that is not skip.
func otherThan(addrs []string, skip string) string {
	for _, a := range addrs {
		if a != skip {
			return a
		}
	}
	return ""
}

// slotOwner returns the address of the master that c's CLUSTER SLOTS view
// gives slot, or "" if it cannot tell.
func slotOwner(ctx context.Context, c *redis.Client, slot int) string {
	slots, err := c.ClusterSlots(ctx).Result()
	if err != nil {
		return ""
	}
	for _, s := range slots {
		if int(s.Start) <= slot && slot <= int(s.End) && len(s.Nodes) > 0 {
			return s.Nodes[0].Addr
		}
	}
	return ""
}

// TestClusterReshardUnderLoad: slots move from one master to another
// (redis-cli --cluster reshard) while hybrid and strict Limiters decide
// and sync. Callers see no error, and once every Limiter has closed
// (returning its leases) Redis counts exactly what each user was admitted:
// no token stranded by a call that met a slot in migration.
func TestClusterReshardUnderLoad(t *testing.T) {
	addrs, _ := ownCluster(t, 7400)
	ctx := context.Background()
	admin := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer admin.Close()
	prefix := fmt.Sprintf("rs%x", rand.Uint32())
	rules := []Rule{
		{Name: "h", Limit: 1 << 20, Window: time.Minute, Mode: Hybrid, OnFailure: FailError},
		{Name: "s", Limit: 1 << 20, Window: time.Minute, Mode: Strict, OnFailure: FailError},
	}
	users := clusterUsers(300)

	const instances, goroutines = 3, 3
	lims := clusterLimiters(t, addrs, instances,
		Config{Rules: rules, KeyPrefix: prefix, SyncInterval: 50 * time.Millisecond, Timeout: 5 * time.Second})
	ts := time.Now() // one instant: the counts stay in one window
	var (
		mu       sync.Mutex
		admitted = map[string]int64{}
		errTexts = map[string]int{}
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, l := range lims {
		for g := range goroutines {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(i), uint64(g)))
				for n := 0; n < 200_000; n++ {
					select {
					case <-stop:
						return
					default:
					}
					r, u := rules[rng.IntN(2)].Name, users[rng.IntN(len(users))]
					d, err := l.Allow(ctx, r, u, ts)
					mu.Lock()
					if err != nil {
						errTexts[err.Error()]++
					} else if d.Allowed {
						admitted[r+"/"+u]++
					}
					mu.Unlock()
				}
			})
		}
	}

	// Move 300 slots from the first master to the second.
	var masters []string
	require.NoError(t, admin.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		masters = append(masters, m.Options().Addr)
		return nil
	}))
	sort.Strings(masters)
	id := func(addr string) string {
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		v, err := c.Do(ctx, "CLUSTER", "MYID").Text()
		require.NoError(t, err)
		return v
	}
	time.Sleep(500 * time.Millisecond)
	reshard := exec.Command("redis-cli", "--cluster", "reshard", masters[0],
		"--cluster-from", id(masters[0]), "--cluster-to", id(masters[1]), "--cluster-slots", "300", "--cluster-yes")
	out, err := reshard.CombinedOutput()
	require.NoError(t, err, "reshard: %s", lastLines(string(out), 5))
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var st Stats
	for _, l := range lims {
		require.NoError(t, l.Close())
		s := l.Stats()
		st.SyncPasses += s.SyncPasses
		st.SyncFailures += s.SyncFailures
		st.RedisErrors += s.RedisErrors
	}
	var total int64
	for _, r := range rules {
		for _, u := range users {
			got := countedSince(t, admin, global.Key(prefix, r.Name, u), ts, r.Window)
			require.Equal(t, admitted[r.Name+"/"+u], got, "%s/%s: Redis counts what was admitted", r.Name, u)
			total += got
		}
	}
	t.Logf("admitted %d; %d caller errors %v; %d sync passes, %d failed; %d decisions failed on Redis",
		total, len(errTexts), errTexts, st.SyncPasses, st.SyncFailures, st.RedisErrors)
	require.Empty(t, errTexts, "callers saw errors while slots moved")
}

// countedSince returns what Redis counts for key from the window of ts on:
// that window's count, and, if a sync pass on the clock rolled the key into
// the next window meanwhile (the minute turned during the test), that
// window's too, where the requests stamped ts after the roll were counted
// (a script judges a request older than the key's newest at the newest).
func countedSince(t *testing.T, c redis.UniversalClient, key string, ts time.Time, w time.Duration) int64 {
	t.Helper()
	cur, prev, rolled := keyWindows(t, c, key, ts, w)
	if rolled {
		return prev + cur
	}
	return cur
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
