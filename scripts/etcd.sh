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

# shellcheck source=lib/daemon.sh
. "$repo/scripts/lib/daemon.sh"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
    refuse_running etcd "$pidfile"
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
    healthy() { http_get "$port" /health | grep -q '"health":"true"'; }
    await_start etcd "$pid" "$pidfile" "$dir/etcd.log" "127.0.0.1:$port" healthy
    ;;
stop) stop_pidfile "$pidfile" ;;
*) usage ;;
esac
