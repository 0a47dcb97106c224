#!/usr/bin/env bash
# Starts or stops a throw-away Consul agent (dev mode: one in-memory server, elected at once) for
# tests, on loopback only, with the given HTTP port; every other port it opens is picked free
# (DNS and gRPC are disabled). Pid file and log go into DIR.
#   scripts/consul.sh start HTTP_PORT DIR  -> returns once GET /v1/status/leader is non-empty (<= 10 s)
#   scripts/consul.sh stop  HTTP_PORT DIR  -> stops it (bounded, then KILL)
# The binary: $CONSUL if set, else consul on PATH, else .tools/consul (scripts/install-consul.sh).
set -euo pipefail

usage() { echo "usage: $0 start|stop HTTP_PORT DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
cmd=$1 http_port=$2 dir=$3
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/consul.pid"
repo=$(cd "$(dirname "$0")/.." && pwd)

# Plain HTTP GET on loopback; curl when present, else bash's /dev/tcp (a fresh machine may lack curl).
http_get() { # PORT PATH -> body on stdout
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "http://127.0.0.1:$1$2" 2>/dev/null
    else
        timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "'"$2"'" >&3
            sed "1,/^\r\{0,1\}$/d" <&3' 2>/dev/null
    fi
}

# A port nobody listens on, for both TCP and UDP (serf uses both). Asking the kernel for an
# ephemeral port and releasing it is racy in theory, fine for a test machine.
free_port() {
    python3 - <<'PY'
import socket
while True:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); u.close(); continue
    t.close(); u.close()
    print(port)
    break
PY
}

case "$cmd" in
start)
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "consul already running (pid $(cat "$pidfile"))" >&2
        exit 1
    fi
    consul=${CONSUL:-}
    if [ -z "$consul" ]; then
        if command -v consul >/dev/null 2>&1; then consul=$(command -v consul)
        elif [ -x "$repo/.tools/consul/usr/bin/consul" ]; then consul="$repo/.tools/consul/usr/bin/consul"
        else echo "no consul binary: run scripts/install-consul.sh" >&2; exit 1
        fi
    fi
    serf_lan=$(free_port) serf_wan=$(free_port) server=$(free_port)
    # CHECKPOINT_DISABLE and disable_update_check: otherwise the agent phones the vendor's update
    # service, which is unreachable here (and must not be contacted from tests anyway).
    CHECKPOINT_DISABLE=1 "$consul" agent -dev \
        -bind 127.0.0.1 -client 127.0.0.1 -advertise 127.0.0.1 \
        -http-port "$http_port" -dns-port -1 -grpc-port -1 \
        -serf-lan-port "$serf_lan" -serf-wan-port "$serf_wan" -server-port "$server" \
        -node "test-$http_port" \
        -hcl 'disable_update_check = true' \
        >"$dir/consul.log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 1 100); do # 100 x 0.1 s = 10 s bound
        leader=$(http_get "$http_port" /v1/status/leader || true)
        if [ -n "$leader" ] && [ "$leader" != '""' ]; then
            echo "consul started on 127.0.0.1:$http_port (pid $pid, leader $leader)"
            exit 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "consul exited during start-up; log:" >&2
            tail -20 "$dir/consul.log" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.1
    done
    echo "consul had no leader within 10 s; log:" >&2
    tail -20 "$dir/consul.log" >&2 || true
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
