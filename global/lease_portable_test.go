package global

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestLeasePortablePacking: lease.lua's plain-Lua packing (portable_*,
// for an embedded store without Redis's struct library) reads and writes
// exactly what struct does, on a real Redis: random requests packed by Go
// unpack to the same 17 values both ways, and random answers (negative
// ones, zeros and values up to 2^53-1 among them) pack to the same 80
// bytes, which Go reads back as the integers packed.
func TestLeasePortablePacking(t *testing.T) {
	c, _ := testClient(t)
	ctx := context.Background()
	script := newScript(leaseLua + `
local a = {unpack_args(lease_args, ARGV[1])}
local b = {portable_unpack_args(lease_args, ARGV[1])}
table.remove(a) -- struct.unpack's next position
if #a ~= #b then return 'lengths ' .. #a .. ' and ' .. #b end
for i = 1, #a do
  if a[i] ~= b[i] then return 'value ' .. i .. ': ' .. tostring(a[i]) .. ' and ' .. tostring(b[i]) end
end
local r = {}
for i = 2, 11 do r[#r + 1] = tonumber(ARGV[i]) end
local x, y = pack_reply(lease_reply, unpack(r)), portable_pack_reply(lease_reply, unpack(r))
if x ~= y then return 'packed answers differ' end
return {struct ~= nil and 1 or 0, x}
`)
	rng := rand.New(rand.NewPCG(3, 4))
	num := func() int64 {
		switch rng.IntN(5) {
		case 0:
			return 0
		case 1:
			return -rng.Int64N(1 << 40)
		case 2:
			return 1<<53 - 1 - rng.Int64N(2)
		case 3:
			return -(1<<53 - 1)
		}
		return rng.Int64N(1 << 53)
	}
	for i := range 300 {
		r := LeaseRequest{Now: num(), Window: num(), Limit: num(), N: num(), Want: num(),
			Returns:  [2]Return{{Window: num(), N: num()}, {Window: num(), N: num()}},
			Attempts: num(), Fixed: i%2 == 0,
			Known: Known{Window: num(), Prev: num(), Cur: num(), Version: num()},
			Op:    Op{Stream: "~abcdefgh"[:i%10], Seq: uint64(rng.Int64N(1 << 53))}}
		answer := make([]int64, 10)
		args := []any{r.packed()}
		for j := range answer {
			answer[j] = num()
			args = append(args, answer[j])
		}
		out, err := script.Run(ctx, c, nil, args...).Result()
		if err != nil {
			t.Fatalf("request %d: %v (%+v)", i, err, r)
		}
		v, ok := out.([]any)
		if !ok || len(v) != 2 || v[0] != int64(1) {
			t.Fatalf("request %d: the script answered %v, want struct present and the packed answer (%+v)", i, out, r)
		}
		cmd := redis.NewCmd(ctx)
		cmd.SetVal([]any{v[1]})
		got, err := leaseReplies(cmd, 1)
		if err != nil || got[0].err != nil {
			t.Fatalf("request %d: %v %v", i, err, got[0].err)
		}
		for j := range answer {
			if got[0].v[j] != answer[j] {
				t.Fatalf("request %d: answer %d read back as %d, packed %d", i, j, got[0].v[j], answer[j])
			}
		}
	}
}
