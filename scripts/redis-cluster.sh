#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback for the cluster test suite: 3 masters
# with one replica each, nothing kept on disk.
#
#   scripts/redis-cluster.sh start    start it (or reuse the one running), print
#                                     REDIS_CLUSTER_ADDRS=host:port,... on stdout
#   scripts/redis-cluster.sh stop     stop exactly the processes start started
#                                     (by the pids in the state file), remove
#                                     the directory; a no-op when none runs
#   scripts/redis-cluster.sh status   print the state and each node's health
#
# Environment:
#   RL_CLUSTER_PORT   first port to try (default 7100); ports in use, or whose
#                     cluster bus port (port+10000) is in use, are skipped
#   RL_CLUSTER_DIR    the cluster's directory: state file, node dirs and logs
#                     (default ${TMPDIR:-/tmp}/rl-cluster)
#   RL_CLUSTER_WAIT   seconds to wait for the cluster to become ok (default 30)
#
# The state file ($RL_CLUSTER_DIR/state) holds one "node <pid> <port>" line
# per process and an "addrs <host:port,...>" line. Only 127.0.0.1 is used.
set -euo pipefail

HOST=127.0.0.1
BASE_PORT="${RL_CLUSTER_PORT:-7100}"
DIR="${RL_CLUSTER_DIR:-${TMPDIR:-/tmp}/rl-cluster}"
WAIT_SECONDS="${RL_CLUSTER_WAIT:-30}"
STATE="$DIR/state"
NODES=6
NODE_TIMEOUT_MS=2000
PORT_SCAN=200 # how many ports above the base to try

log() { echo "redis-cluster: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found (make redis installs redis-server and redis-cli)"
}

# port_busy PORT: true if something listens on 127.0.0.1:PORT.
port_busy() {
	(exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# cli PORT ARGS...: redis-cli against one node, bounded in time.
cli() {
	local port=$1
	shift
	timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null
}

# alive PID PORT: true if PID is still a running (not zombie) redis-server
# listening on PORT as started by this script.
alive() {
	local pid=$1 port=$2 stat cmd
	[ -r "/proc/$pid/stat" ] || return 1
	stat=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || return 1
	[ "$stat" != "Z" ] || return 1
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	case "$cmd" in
	*redis-server*":$port "* | *redis-server*":$port" | *redis-server*"--port $port "*) return 0 ;;
	*) return 1 ;;
	esac
}

# read_state: fills PIDS, PORTS and ADDRS from the state file.
read_state() {
	PIDS=()
	PORTS=()
	ADDRS=""
	local kind a b
	while read -r kind a b; do
		case "$kind" in
		node)
			PIDS+=("$a")
			PORTS+=("$b")
			;;
		addrs) ADDRS=$a ;;
		esac
	done <"$STATE"
}

# all_alive: true if the state file names $NODES processes, all running.
all_alive() {
	[ -f "$STATE" ] || return 1
	read_state
	[ "${#PIDS[@]}" -eq "$NODES" ] || return 1
	local i
	for i in "${!PIDS[@]}"; do
		alive "${PIDS[$i]}" "${PORTS[$i]}" || return 1
	done
}

# kill_pids PID:PORT...: SIGTERM each one still ours, wait (at most 5 s) for
# them to exit, SIGKILL the ones left and wait again (at most 5 s).
kill_pids() {
	local entry pid port left sig deadline
	for sig in TERM KILL; do
		left=()
		for entry in "$@"; do
			pid=${entry%%:*} port=${entry##*:}
			if alive "$pid" "$port"; then
				kill -s "$sig" "$pid" 2>/dev/null || true
				left+=("$entry")
			fi
		done
		[ "${#left[@]}" -gt 0 ] || return 0
		deadline=$((SECONDS + 5))
		while [ "$SECONDS" -le "$deadline" ]; do
			local still=()
			for entry in "${left[@]}"; do
				pid=${entry%%:*} port=${entry##*:}
				if alive "$pid" "$port"; then still+=("$entry"); fi
			done
			if [ "${#still[@]}" -eq 0 ]; then
				reaped "$@"
				return 0
			fi
			left=("${still[@]}")
			sleep 0.1
		done
		log "still running after SIG$sig: ${left[*]}"
		set -- "${left[@]}"
	done
	return 1
}

# reaped PID:PORT...: wait (at most 3 s) until the exited processes are
# reaped by their parent (the init process, since start has exited), so
# that they are gone from the process table, not only dead.
reaped() {
	local entry deadline=$((SECONDS + 3))
	for entry in "$@"; do
		while [ -e "/proc/${entry%%:*}" ] && [ "$SECONDS" -le "$deadline" ]; do sleep 0.05; done
	done
}

cmd_stop() {
	if [ ! -f "$STATE" ]; then
		if [ -d "$DIR" ] && [ -z "$(ls -A "$DIR" 2>/dev/null)" ]; then rmdir "$DIR" 2>/dev/null || true; fi
		log "no cluster running (no $STATE)"
		return 0
	fi
	read_state
	local entries=() i
	for i in "${!PIDS[@]}"; do entries+=("${PIDS[$i]}:${PORTS[$i]}"); done
	if [ "${#entries[@]}" -gt 0 ] && ! kill_pids "${entries[@]}"; then
		die "could not stop every node; state kept in $STATE"
	fi
	rm -rf "$DIR"
	log "stopped ${#entries[@]} nodes; removed $DIR"
}

# cluster_ready: true when every node reports cluster_state:ok, all 16384
# slots assigned and ok, and every node known, and every replica's link to
# its master is up. Sets WHY to what is missing.
cluster_ready() {
	local port info repl
	for port in "${PORTS[@]}"; do
		info=$(cli "$port" cluster info | tr -d '\r') || {
			WHY="node $port does not answer"
			return 1
		}
		grep -q '^cluster_state:ok$' <<<"$info" || {
			WHY="node $port: $(grep '^cluster_state:' <<<"$info")"
			return 1
		}
		grep -q '^cluster_slots_ok:16384$' <<<"$info" || {
			WHY="node $port: $(grep '^cluster_slots_ok:' <<<"$info")"
			return 1
		}
		grep -q "^cluster_known_nodes:$NODES\$" <<<"$info" || {
			WHY="node $port: $(grep '^cluster_known_nodes:' <<<"$info")"
			return 1
		}
		repl=$(cli "$port" info replication | tr -d '\r') || {
			WHY="node $port does not answer INFO"
			return 1
		}
		if grep -q '^role:slave$' <<<"$repl" && ! grep -q '^master_link_status:up$' <<<"$repl"; then
			WHY="replica $port: link to its master not up"
			return 1
		fi
	done
}

cmd_start() {
	need redis-server
	need redis-cli
	need timeout
	if all_alive; then
		log "cluster already running (state $STATE)"
		echo "REDIS_CLUSTER_ADDRS=$ADDRS"
		return 0
	fi
	if [ -f "$STATE" ]; then
		log "stale state in $STATE: stopping what is left of it"
		cmd_stop
	fi
	mkdir -p "$DIR"
	[ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty and holds no cluster state; remove it or set RL_CLUSTER_DIR"

	# Pick free ports: the node's and its cluster bus port (+10000).
	PORTS=()
	local port=$BASE_PORT
	while [ "${#PORTS[@]}" -lt "$NODES" ]; do
		[ "$port" -lt $((BASE_PORT + PORT_SCAN)) ] && [ $((port + 10000)) -le 65535 ] ||
			die "fewer than $NODES free ports in $BASE_PORT..$((BASE_PORT + PORT_SCAN - 1)) (set RL_CLUSTER_PORT)"
		if ! port_busy "$port" && ! port_busy $((port + 10000)); then PORTS+=("$port"); fi
		port=$((port + 1))
	done

	local t0=$SECONDS
	PIDS=()
	# On any failure from here, stop what was started and remove the dir.
	trap 'fail_start' EXIT
	local p nd
	: >"$STATE"
	for p in "${PORTS[@]}"; do
		nd="$DIR/node-$p"
		mkdir -p "$nd"
		redis-server --bind "$HOST" --port "$p" --dir "$nd" \
			--save '' --appendonly no \
			--cluster-enabled yes --cluster-config-file "$nd/nodes.conf" \
			--cluster-node-timeout "$NODE_TIMEOUT_MS" --repl-diskless-sync-delay 0 \
			--logfile "$nd/redis.log" </dev/null >/dev/null 2>&1 &
		PIDS+=("$!")
		echo "node $! $p" >>"$STATE"
	done

	# Every node answers PING (at most 10 s).
	local deadline=$((SECONDS + 10)) i
	for i in "${!PORTS[@]}"; do
		until [ "$(cli "${PORTS[$i]}" ping)" = "PONG" ]; do
			alive "${PIDS[$i]}" "${PORTS[$i]}" || die "redis-server on port ${PORTS[$i]} exited: $(tail -n 5 "$DIR/node-${PORTS[$i]}/redis.log" 2>/dev/null)"
			[ "$SECONDS" -le "$deadline" ] || die "redis-server on port ${PORTS[$i]} did not answer PING within 10 s"
			sleep 0.05
		done
	done

	local seeds=() addrs
	for p in "${PORTS[@]}"; do seeds+=("$HOST:$p"); done
	addrs=$(
		IFS=,
		echo "${seeds[*]}"
	)
	local t1=$SECONDS out
	if ! out=$(timeout 60 redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes 2>&1); then
		die "redis-cli --cluster create failed: $(tail -n 5 <<<"$out")"
	fi

	local t2=$SECONDS
	deadline=$((SECONDS + WAIT_SECONDS))
	WHY=""
	until cluster_ready; do
		[ "$SECONDS" -le "$deadline" ] || die "cluster not ok within ${WAIT_SECONDS} s: $WHY"
		sleep 0.1
	done
	echo "addrs $addrs" >>"$STATE"
	trap - EXIT
	log "cluster ok in $((SECONDS - t0)) s (processes $((t1 - t0)) s, cluster create $((t2 - t1)) s, slots ok and replicas linked $((SECONDS - t2)) s): ${#PORTS[@]} nodes (3 masters, 3 replicas), pids ${PIDS[*]}, state $STATE"
	echo "REDIS_CLUSTER_ADDRS=$addrs"
}

# fail_start runs on exit from a failed start: stop its processes, keep no
# state. (A successful start clears the trap.)
fail_start() {
	local rc=$?
	trap - EXIT
	local entries=() i
	for i in "${!PIDS[@]}"; do entries+=("${PIDS[$i]}:${PORTS[$i]}"); done
	if [ "${#entries[@]}" -gt 0 ]; then kill_pids "${entries[@]}" || true; fi
	rm -rf "$DIR"
	log "start failed; stopped the ${#entries[@]} nodes it started"
	exit "$rc"
}

cmd_status() {
	if [ ! -f "$STATE" ]; then
		echo "no cluster (no $STATE)"
		return 1
	fi
	read_state
	echo "state $STATE"
	[ -z "$ADDRS" ] || echo "REDIS_CLUSTER_ADDRS=$ADDRS"
	local i rc=0 role st
	for i in "${!PIDS[@]}"; do
		if alive "${PIDS[$i]}" "${PORTS[$i]}"; then
			role=$(cli "${PORTS[$i]}" info replication | tr -d '\r' | sed -n 's/^role://p')
			st=$(cli "${PORTS[$i]}" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')
			echo "  pid ${PIDS[$i]} port ${PORTS[$i]}: running, role ${role:-?}, cluster_state ${st:-?}"
		else
			echo "  pid ${PIDS[$i]} port ${PORTS[$i]}: not running"
			rc=1
		fi
	done
	return "$rc"
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
	echo "usage: $0 start|stop|status" >&2
	exit 2
	;;
esac
