#!/usr/bin/env bash
# End-to-end check of due's registry/nacos against a real Nacos server (docs/ops/nacos.md): starts
# Nacos (scripts/nacos.sh) on HTTP_PORT, builds and runs tests/interop/nacos (register, metadata,
# Services, Watch, state change, deregister), then registers a gate from a second process, kills it
# with SIGKILL and measures how long its ephemeral instance outlives it on the open API. Stops Nacos.
# Usage: scripts/nacos-interop.sh [HTTP_PORT]   (default 18848; needs scripts/install-nacos.sh, go)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
port=${1:-18848}
work=$(mktemp -d /tmp/gatehouse-nacos.XXXXXX)
cleanup() {
    [ -n "${holder:-}" ] && kill -KILL "$holder" 2>/dev/null || true
    "$repo/scripts/nacos.sh" stop "$port" "$work/nacos" || true
}
trap cleanup EXIT

(cd "$repo/tests/interop/nacos" && timeout 300 go build -mod=readonly -o bin/nacosprobe .)
probe="$repo/tests/interop/nacos/bin/nacosprobe"

start=$(date +%s%N)
"$repo/scripts/nacos.sh" start "$port" "$work/nacos" >/dev/null
pid=$(cat "$work/nacos/nacos.pid")
echo "nacos ready after $(( ($(date +%s%N) - start) / 1000000 )) ms, RSS $(ps -o rss= -p "$pid") KiB"

"$probe" -addr "127.0.0.1:$port" -dir "$work/probe" 2>/dev/null

count() { # instances of service gate on the open API
    curl -fsS -m 2 "http://127.0.0.1:$port/nacos/v1/ns/instance/list?serviceName=gate" |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hosts"]))'
}
"$probe" -addr "127.0.0.1:$port" -dir "$work/hold" -mode hold >"$work/hold.out" 2>&1 &
holder=$!
for _ in $(seq 1 100); do [ "$(count)" = 1 ] && break; sleep 0.1; done # 10 s bound
[ "$(count)" = 1 ] || { echo "FAIL: held gate not registered" >&2; cat "$work/hold.out" >&2; exit 1; }
kill -KILL "$holder"
start=$(date +%s%N)
for _ in $(seq 1 600); do [ "$(count)" = 0 ] && break; sleep 0.1; done # 60 s bound
[ "$(count)" = 0 ] || { echo "FAIL: killed gate still listed after 60 s" >&2; exit 1; }
echo "killed holder's ephemeral instance gone after $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "nacos RSS after the checks $(ps -o rss= -p "$pid") KiB"
echo "PASS: nacos interop"
