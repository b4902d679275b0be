#!/usr/bin/env bash
# Ensure a Redis server answers on $REDIS_HOST:$REDIS_PORT (default 127.0.0.1:6379).
# If none answers, start a throwaway, non-persistent local redis-server,
# installing it with apt-get first if necessary. Never stops an existing server.
set -euo pipefail

REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
WAIT_SECONDS="${REDIS_WAIT_SECONDS:-10}"
LOGFILE="${REDIS_LOGFILE:-/tmp/drl-redis.log}"

log() { echo "ensure-redis: $*" >&2; }

ping_ok() {
	command -v redis-cli >/dev/null 2>&1 || return 1
	[ "$(timeout 2 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null || true)" = "PONG" ]
}

if ping_ok; then
	log "redis already answering on ${REDIS_HOST}:${REDIS_PORT}"
	exit 0
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
	log "redis-server/redis-cli not found; installing via apt-get"
	SUDO=""
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			SUDO="sudo"
		else
			log "ERROR: not root and sudo unavailable; cannot install redis-server"
			exit 1
		fi
	fi
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update
	$SUDO apt-get install -y redis-server
	# Debian's package may auto-start a service on 127.0.0.1:6379; check again.
	if ping_ok; then
		log "redis answering on ${REDIS_HOST}:${REDIS_PORT} after install"
		exit 0
	fi
fi

log "starting throwaway redis-server on ${REDIS_HOST}:${REDIS_PORT} (log: ${LOGFILE})"
redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
	--save "" --appendonly no --dir /tmp --logfile "$LOGFILE"

# Wait (bounded) until it answers.
tries=$((WAIT_SECONDS * 5))
for ((i = 0; i < tries; i++)); do
	if ping_ok; then
		log "redis is up on ${REDIS_HOST}:${REDIS_PORT}"
		exit 0
	fi
	sleep 0.2
done

log "ERROR: redis did not answer PONG on ${REDIS_HOST}:${REDIS_PORT} within ${WAIT_SECONDS}s"
if [ -f "$LOGFILE" ]; then
	log "last lines of ${LOGFILE}:"
	tail -n 20 "$LOGFILE" >&2 || true
fi
exit 1
