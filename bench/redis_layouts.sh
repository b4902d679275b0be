#!/usr/bin/env bash
# Measures, on a redis-server of its own (loopback, a free port, stopped on
# exit), the Redis memory and CPU per idle user-rule of three layouts of a
# sliding window's state, 100 000 user-rules each:
#   hash:   one hash per user-rule {w, c, p, t} (the strict layout today)
#   packed: one string per user-rule, the four counts packed (24 B)
#   bucket: one hash per 64 users, a field per user, the value packed
# Memory: INFO used_memory after, less before, over the user-rules.
# CPU: INFO commandstats usec of EVAL for one update of each user-rule
# (read, count one more, write, TTL), 10 000 a call, over the user-rules.
# Usage: bash bench/redis_layouts.sh
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/private_redis.sh"

key_hash="'rl:{user'..i..'}:api'"
key_bucket="'rl:{b'..math.floor(i/64)..'}:api'"
pack="struct.pack('<i8i4i4i8',29433541,1,0,1765939212345)"
declare -A setup update
setup[hash]="local k=$key_hash; redis.call('HSET',k,'w','29433541','c','1','p','0','t','1765939212345'); redis.call('PEXPIRE',k,120000)"
update[hash]="local k=$key_hash; local v=redis.call('HMGET',k,'w','c','p','t'); redis.call('HSET',k,'w',v[1],'c',tonumber(v[2])+1,'p',v[3],'t','1765939212399'); redis.call('PEXPIRE',k,120000)"
setup[packed]="local k=$key_hash; redis.call('SET',k,$pack,'PX',120000)"
update[packed]="local k=$key_hash; local w,c,p,t=struct.unpack('<i8i4i4i8',redis.call('GET',k)); redis.call('SET',k,struct.pack('<i8i4i4i8',w,c+1,p,1765939212399),'PX',120000)"
setup[bucket]="local k=$key_bucket; redis.call('HSET',k,'user'..i,$pack); redis.call('PEXPIRE',k,120000)"
update[bucket]="local k=$key_bucket; local f='user'..i; local w,c,p,t=struct.unpack('<i8i4i4i8',redis.call('HGET',k,f)); redis.call('HSET',k,f,struct.pack('<i8i4i4i8',w,c+1,p,1765939212399)); redis.call('PEXPIRE',k,120000)"

n=100000
each() { for s in $(seq 0 9); do $R eval "for i=ARGV[1],ARGV[1]+ARGV[2]-1 do $1 end" 0 $((s * n / 10)) $((n / 10)) >/dev/null; done; }
mem() { $R info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }
for layout in hash packed bucket; do
	$R flushall >/dev/null
	before=$(mem)
	each "${setup[$layout]}"
	after=$(mem)
	$R config resetstat >/dev/null
	each "${update[$layout]}"
	usec=$($R info commandstats | sed -n 's/^cmdstat_eval:.*,usec=\([0-9]*\),.*/\1/p')
	printf '%-7s %6.1f B per user-rule (%d keys)   %5.2f µs per update\n' "$layout" \
		"$(echo "($after - $before) / $n" | bc -l)" "$($R dbsize)" "$(echo "$usec / $n" | bc -l)"
done
