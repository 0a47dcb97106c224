#!/usr/bin/env bash
# Starts or stops a throw-away Redis server for tests: loopback only, given port, given data
# directory (pid file, log and an empty working dir live there), no persistence.
#   scripts/redis.sh start PORT DIR   -> returns once `redis-cli -p PORT ping` answers PONG (<= 10 s)
#   scripts/redis.sh stop  PORT DIR   -> stops the server started with that DIR (bounded, then KILL)
# Needs redis-server >= 6 on PATH (scripts/install-redis.sh).
set -euo pipefail

usage() { echo "usage: $0 start|stop PORT DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
cmd=$1 port=$2 dir=$3
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/redis.pid"
# shellcheck source=lib/daemon.sh
. "$(dirname "$0")/lib/daemon.sh"

case "$cmd" in
start)
    refuse_running redis "$pidfile"
    # --save '' / --appendonly no: tests want an empty, memory-only store every time.
    # --protected-mode no is harmless on 127.0.0.1 and avoids surprises with no password.
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
        --save '' --appendonly no --protected-mode no \
        --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    pong() { [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; }
    await_start redis "$pid" "$pidfile" "$dir/redis.log" "127.0.0.1:$port" pong
    ;;
stop) stop_pidfile "$pidfile" ;;
*) usage ;;
esac
