# Sourced by bench/*.sh: starts a redis-server of the script's own on a free
# loopback port (nothing kept on disk), stopped and removed on exit, and
# sets port, dir and R (its redis-cli).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
	--pidfile "$dir/pid" --logfile "$dir/log" --dir "$dir"
trap 'kill "$(cat "$dir/pid")" 2>/dev/null; rm -rf "$dir"' EXIT
R="redis-cli -p $port"
until $R ping >/dev/null 2>&1; do sleep 0.1; done
redis-server --version
