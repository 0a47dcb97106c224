#!/usr/bin/env bash
# Try gatehouse in one command: builds the release binaries, starts the gate on its embedded
# defaults (in-memory locator, a static node list: no Redis, no Consul) with the Rust echo node
# behind it, drives a short loadgen run through it, and prints where to look.
# Usage: scripts/demo.sh [SECONDS]   (loadgen run length, default 5)
#        DEMO_HOLD=0 scripts/demo.sh  stops everything after the run instead of waiting for Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(free_port); link=$(free_port); node=$(free_port); metrics=$(free_port)

echo "== building (release)"
cargo build --release --quiet --bin gatehouse --bin echo-node -p gatehouse
cargo build --release --quiet -p loadgen

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat > "$work/etc.toml" <<TOML
mode = "release"
[cluster.gate]
name = "demo"
addr = "127.0.0.1:$link"
[network.tcp.server]
addr = "127.0.0.1:$tcp"
[log]
level = "warn"
terminals = ["console"]
[gatehouse]
shards = 2
pin = false
metricsAddr = "127.0.0.1:$metrics"
[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$node"
routes = [1, 20]
events = ["connect", "disconnect"]
TOML

./target/release/gatehouse --etc "$work/etc.toml" > "$work/gate.log" 2>&1 &
pids+=($!)
./target/release/echo-node --gate "127.0.0.1:$link" --listen "127.0.0.1:$node" --quiet \
    > "$work/node.log" 2>&1 &
pids+=($!)

# Ready when /readyz answers 200 (bounded).
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$metrics/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$metrics/readyz" >/dev/null || {
    echo "the gate did not become ready:" >&2; cat "$work/gate.log" >&2; exit 1; }

echo "== loadgen: 200 connections, requests for ${secs}s through the gate to the echo node"
./target/release/loadgen closed --addr "127.0.0.1:$tcp" --conns 200 --duration "$secs" \
    --size 64 --target-rate 20000

echo
echo "== a few of the gate's numbers (http://127.0.0.1:$metrics/metrics)"
curl -fsS "http://127.0.0.1:$metrics/metrics" | grep -E \
    '^gatehouse_(connections_accepted_total|connections_closed_total\{reason="peer"\}|client_packets_received_total|node_deliveries_total|node_link_connections)' || true
cat <<INFO

Where to look:
  metrics   http://127.0.0.1:$metrics/metrics   (Prometheus text; dashboard: etc/grafana/)
  health    http://127.0.0.1:$metrics/healthz  and  /readyz
  clients   127.0.0.1:$tcp (due TCP protocol; route 1 echoes, route 20 broadcasts)
  gate log  $work/gate.log
INFO
if [ "${DEMO_HOLD:-1}" != "0" ]; then
    echo "The gate keeps running; Ctrl-C stops it."
    wait "${pids[0]}"
fi
