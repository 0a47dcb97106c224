#!/usr/bin/env bash
# Starts or stops a throw-away single-member etcd for tests, on loopback only, with the given
# client port (the peer port is picked free). Data, pid file and log go into DIR.
#   scripts/etcd.sh start CLIENT_PORT DIR  -> returns once GET /health says true (<= 10 s)
#   scripts/etcd.sh stop  CLIENT_PORT DIR  -> stops it (bounded, then KILL); data stays in DIR
# The binary: $ETCD if set, else etcd on PATH, else .tools/etcd (scripts/install-etcd.sh).
set -euo pipefail

usage() { echo "usage: $0 start|stop CLIENT_PORT DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
cmd=$1 port=$2 dir=$3
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/etcd.pid"
repo=$(cd "$(dirname "$0")/.." && pwd)

http_get() { # PORT PATH -> body on stdout
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "http://127.0.0.1:$1$2" 2>/dev/null
    else
        timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "'"$2"'" >&3
            sed "1,/^\r\{0,1\}$/d" <&3' 2>/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "etcd already running (pid $(cat "$pidfile"))" >&2
        exit 1
    fi
    etcd=${ETCD:-}
    if [ -z "$etcd" ]; then
        if command -v etcd >/dev/null 2>&1; then etcd=$(command -v etcd)
        elif [ -x "$repo/.tools/etcd/usr/bin/etcd" ]; then etcd="$repo/.tools/etcd/usr/bin/etcd"
        else echo "no etcd binary: run scripts/install-etcd.sh" >&2; exit 1
        fi
    fi
    peer=$(free_port)
    "$etcd" --name "test-$port" --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "test-$port=http://127.0.0.1:$peer" \
        >"$dir/etcd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 1 100); do # 100 x 0.1 s = 10 s bound
        if http_get "$port" /health | grep -q '"health":"true"'; then
            echo "etcd started on 127.0.0.1:$port (pid $pid)"
            exit 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "etcd exited during start-up; log:" >&2
            tail -20 "$dir/etcd.log" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.1
    done
    echo "etcd not healthy within 10 s; log:" >&2
    tail -20 "$dir/etcd.log" >&2 || true
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
