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

case "$cmd" in
start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "redis already running (pid $(cat "$pidfile"))" >&2
        exit 1
    fi
    # --save '' / --appendonly no: tests want an empty, memory-only store every time.
    # --protected-mode no is harmless on 127.0.0.1 and avoids surprises with no password.
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
        --save '' --appendonly no --protected-mode no \
        --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 1 100); do # 100 x 0.1 s = 10 s bound
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
            echo "redis started on 127.0.0.1:$port (pid $pid)"
            exit 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "redis exited during start-up; log:" >&2
            tail -20 "$dir/redis.log" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.1
    done
    echo "redis did not answer within 10 s" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
    ;;
stop)
    [ -f "$pidfile" ] || exit 0
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do # 5 s bound, then KILL
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
*) usage ;;
esac
