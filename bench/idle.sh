#!/usr/bin/env bash
# Benchmark (not a test): hold N idle connections (TCP, WebSocket or KCP sessions) on a 2-shard
# gatehouse with heartbeats on, and print the gate's RSS per connection.
# Usage: bench/idle.sh [N] [HOLD_SECONDS] [tcp|ws|kcp]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-19000}
HOLD=${2:-25}
TRANSPORT=${3:-tcp}
PORT=${PORT:-39553}
cargo build --release -q -p gatehouse -p loadgen
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
trap 'kill $gate 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/etc.toml" <<TOML
[network.$TRANSPORT.server]
addr = "127.0.0.1:$PORT"
maxConnNum = 19900
heartbeatInterval = "10s"
heartbeatMechanism = "resp"
[log]
level = "warn"
terminals = ["console"]
[gatehouse]
shards = 2
TOML
"$bin/gatehouse" --etc "$work/etc.toml" > "$work/gate.out" 2>&1 &
gate=$!
for _ in $(seq 100); do grep -q "Server: \[$TRANSPORT\]" "$work/gate.out" && break; sleep 0.05; done
rss() { awk '/^VmRSS/ {print $2}' /proc/$gate/status; }
base=$(rss)
echo "gate pid $gate, RSS before: ${base} KiB"
flag=()
case "$TRANSPORT" in ws) flag=(--ws /) ;; kcp) flag=(--kcp) ;; esac
"$bin/loadgen" idle --addr "127.0.0.1:$PORT" --conns "$N" --rate 4000 --heartbeat 5 --duration "$HOLD" --sources 16 "${flag[@]}" > "$work/load.out" 2> "$work/load.err" &
load=$!
sleep $(( HOLD - 3 ))
peak=$(rss)
tail -n 1 "$work/load.out"
wait $load || true
tail -n 1 "$work/load.out"
echo "gate RSS with $N connections: ${peak} KiB (baseline ${base} KiB)"
awk -v p="$peak" -v b="$base" -v n="$N" -v t="$TRANSPORT" 'BEGIN { printf "RSS per idle %s connection: %.2f KiB ((peak - baseline) / N)\n", t, (p - b) / n }'
