#!/usr/bin/env bash
# Measures, on a redis-server of its own (loopback, a free port, stopped on
# exit), the Redis CPU of the scripts a decision and a sync pass run, as Go
# builds them (global/scripts.go: the prelude, then the file), for two
# revisions of the repository side by side:
#   strict: sliding_window.lua, one call per new key (a sparse user's
#           strict decision)
#   admit:  admit.lua, one call per new key (a sparse user's hybrid
#           decision), knowing nothing of the key
#   lease:  lease.lua, 32 keys per call, each in its own window with a
#           lease to top up and requests to report (a sync pass's call)
# Each figure is INFO commandstats usec of EVALSHA (inner commands
# included) per key, the median of ROUNDS rounds run alternately.
# Usage: bash bench/script_costs.sh [OLD_REV [NEW_REV]]  (default HEAD and
# the working tree; ROUNDS=7 by default)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
old=${1:-HEAD}
new=${2:-}
rounds=${ROUNDS:-7}
source bench/private_redis.sh

# file REV NAME: global/scripts/NAME at REV ("" is the working tree).
file() {
	if [ -z "$1" ]; then cat "global/scripts/$2"; else git show "$1:global/scripts/$2"; fi
}
declare -A sha packed
for side in old new; do
	rev=$old
	[ "$side" = new ] && rev=$new
	sha[$side.strict]=$($R script load "$(file "$rev" prelude.lua; file "$rev" sliding_window.lua; printf '\nreturn strict_main(sliding_window)\n')")
	sha[$side.admit]=$($R script load "$(file "$rev" prelude.lua; file "$rev" admit.lua)")
	sha[$side.lease]=$($R script load "$(file "$rev" prelude.lua; file "$rev" lease.lua; printf '\nreturn lease_main()\n')")
	# lease.lua reads its arguments packed, one string a key, since the
	# revision that defines lease_args
	packed[$side]=0
	if file "$rev" lease.lua | grep -q '^local lease_args'; then packed[$side]=1; fi
done

now=1764860000000
# usec_per_key KEYS: EVALSHA's usec per call over KEYS keys a call.
usec_per_key() {
	$R info commandstats | tr -d '\r' |
		awk -F'[:,=]' -v k="$1" '$1 == "cmdstat_evalsha" {
			if ($9 + $11 > 0) { print "script_costs: " $9 + $11 " calls failed: " $0 > "/dev/stderr"; exit 1 }
			printf "%.3f\n", $5 / $3 / k }'
}
# sparse SHA ARGS...: 100 000 calls, each on a new key.
sparse() {
	local s=$1
	shift
	$R flushall >/dev/null
	$R config resetstat >/dev/null
	redis-benchmark -p "$port" -n 100000 -r 100000000 -c 4 -q evalsha "$s" 1 'k:__rand_int__' "$@" >/dev/null
	usec_per_key 1
}
# resp SHA PACKED CALLS: CALLS lease calls of 32 keys (each in its own
# window with a lease to top up and requests to report) in Redis's protocol,
# for redis-cli --pipe (binary-safe): the arguments packed in one string a
# key when PACKED is 1 (lease.lua's lease_args), else 17 a key.
resp() {
	python3 - "$1" "$2" "$3" "$now" <<'PY'
import struct, sys
sha, packed, calls, now = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
def bulk(b):
    b = b if isinstance(b, bytes) else str(b).encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)
keys = ["lk%d" % i for i in range(1, 33)]
if packed:
    # now, window, limit, n, want, 2 returns, attempts; fixed; known x4, seq; stream ""
    one = struct.pack("<10qB5qB", now, 10000, 1 << 30, 0, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0)
    args = [one] * 32
else:
    args = [a for _ in keys for a in (now, 10000, 1 << 30, 0, 4, 0, 0, 0, 0, 4, 0, "", 0, 0, 0, 0, 0)]
parts = [b"EVALSHA", sha, 32] + keys + args
cmd = b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)
sys.stdout.buffer.write(cmd * calls)
PY
}
# pass SHA PACKED: 32 keys a call, 5000 calls, after one call that creates
# them.
pass() {
	$R flushall >/dev/null
	resp "$1" "$2" 1 | $R --pipe >/dev/null
	$R config resetstat >/dev/null
	resp "$1" "$2" 5000 | $R --pipe >/dev/null
	usec_per_key 32
}

declare -A runs
# med LIST: the median of a space-separated list.
med() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for r in $(seq "$rounds"); do
	for side in old new; do
		runs[$side.strict]+=" $(sparse "${sha[$side.strict]}" "$now" 10000 1073741824 1 0 0)"
		# the old admit.lua reads ten arguments, the new one six when the
		# caller knows nothing; four zeros more change neither
		runs[$side.admit]+=" $(sparse "${sha[$side.admit]}" "$now" 10000 1073741824 1 0 0 0 0 0 0)"
		runs[$side.lease]+=" $(pass "${sha[$side.lease]}" "${packed[$side]}")"
	done
done
printf '%-6s %-12s %s\n' script "${old}" "${new:-working tree}  (µs per key, median of $rounds)"
for s in strict admit lease; do
	printf '%-6s %-12s %s   [old:%s] [new:%s]\n' "$s" "$(med "${runs[old.$s]}")" "$(med "${runs[new.$s]}")" "${runs[old.$s]}" "${runs[new.$s]}"
done
