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

# shellcheck source=lib/daemon.sh
. "$repo/scripts/lib/daemon.sh"

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
    refuse_running consul "$pidfile"
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
    has_leader() {
        leader=$(http_get "$http_port" /v1/status/leader || true)
        ready_note=", leader $leader"
        [ -n "$leader" ] && [ "$leader" != '""' ]
    }
    await_start consul "$pid" "$pidfile" "$dir/consul.log" "127.0.0.1:$http_port" has_leader
    ;;
stop) stop_pidfile "$pidfile" ;;
*) usage ;;
esac
