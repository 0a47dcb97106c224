#!/usr/bin/env bash
# Benchmark (not a test): slow consumers at full size. N TCP clients never read (loadgen `slow`
# mode: 4 KiB receive buffer, MSS 88 so the gate's kernel send buffer for them stays small,
# heartbeats every 5 s) while the Rust echo node broadcasts 64 B, triggered by a second loadgen
# process whose READERS clients read and check every broadcast's number (at most RATE per second,
# and never more than 512 ahead of what the trigger's own connection received) for SECONDS.
# Prints the gate's peak RSS (VmHWM) against the bound of docs/ops/slow-consumers.md, the
# queue_full closes and the readers' figures.
# Usage: bench/slow_consumers.sh [N] [RATE] [SECONDS] [READERS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-19000}
RATE=${2:-5000}
SECS=${3:-90}
READERS=${4:-100}
Q=4096
PORT=${PORT:-39653}
LINK=$((PORT + 1)) NODE=$((PORT + 2)) METRICS=$((PORT + 3))
T=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p gatehouse -p loadgen --bins
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
cat > "$work/etc.toml" <<TOML
[cluster.gate]
id = "gate-slow-bench"
name = "gate"
addr = "127.0.0.1:$LINK"
[network.tcp.server]
addr = "127.0.0.1:$PORT"
maxConnNum = 19900
heartbeatInterval = "10s"
heartbeatMechanism = "resp"
writeQueueSize = $Q
[log]
level = "error"
terminals = ["console"]
[gatehouse]
shards = 2
metricsAddr = "127.0.0.1:$METRICS"
[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$NODE"
routes = [1, 20]
TOML
"$T/release/echo-node" --listen "127.0.0.1:$NODE" --gate "127.0.0.1:$LINK" --quiet > "$work/node.out" 2>&1 &
pids+=($!)
"$T/release/gatehouse" --etc "$work/etc.toml" > "$work/gate.out" 2>&1 &
gate=$!
pids+=($gate)
for _ in $(seq 200); do grep -q "Server: \[tcp\]" "$work/gate.out" && break; sleep 0.05; done
metric() { # metric SERIES: its value on /metrics (0 when absent)
    exec 3<>"/dev/tcp/127.0.0.1/$METRICS"
    printf 'GET /metrics HTTP/1.1\r\nHost: gate\r\n\r\n' >&3
    awk -v s="$1" '$1 == s { v = $2 } END { print v + 0 }' <&3
    exec 3<&-
}
status() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$gate/status"; }
echo "gate pid $gate, RSS at start: $(status VmRSS) KiB"
"$T/release/loadgen" slow --addr "127.0.0.1:$PORT" --conns "$N" --readers 0 --rate 4000 \
    --mss 88 --heartbeat 5 --duration $((SECS + 120)) --sources 16 > "$work/slow.out" 2> "$work/slow.err" &
slow=$!
pids+=($slow)
open='gatehouse_connections_open{transport="tcp"}'
for _ in $(seq 600); do [ "$(metric "$open")" -ge "$N" ] && break; sleep 0.1; done
base=$(status VmRSS)
echo "$(metric "$open") slow clients open; gate RSS baseline ${base} KiB (peak so far $(status VmHWM) KiB)"
"$T/release/loadgen" slow --addr "127.0.0.1:$PORT" --conns 0 --readers "$READERS" --rate 1000 \
    --target-rate "$RATE" --duration "$SECS" --heartbeat 1 --sources 1 --json \
    > "$work/readers.out" 2> "$work/readers.err" &
readers=$!
pids+=($readers)
qf='gatehouse_connections_closed_total{reason="queue_full"}'
start=$(date +%s.%N)
filled=""
while kill -0 "$readers" 2>/dev/null; do
    if [ -z "$filled" ] && [ "$(metric "$qf")" -ge "$N" ]; then
        filled=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
        echo "all $N slow clients closed as queue_full after ${filled} s"
    fi
    sleep 0.5
done
wait "$readers" || echo "readers: loadgen reported failures"
peak=$(status VmHWM)
echo "readers: $(cat "$work/readers.out")"
echo "closed as queue_full: $(metric "$qf") of $N; other closes:" \
    "heartbeat_timeout=$(metric 'gatehouse_connections_closed_total{reason="heartbeat_timeout"}')" \
    "peer=$(metric 'gatehouse_connections_closed_total{reason="peer"}')" \
    "io=$(metric 'gatehouse_connections_closed_total{reason="io"}')"
total=$((N + READERS + 1))
awk -v p="$peak" -v b="$base" -v n="$total" -v q="$Q" 'BEGIN {
    cap = 4; while (cap < q) cap *= 2
    per = 32 * cap + 65536                        # bytes per connection above its idle cost
    shared = 2 * (q + 1) * 88 + 65536 + 16 * 1048576 # shared broadcasts + allocator allowance
    bound = n * per + shared
    grew = (p - b) * 1024
    printf "gate RSS: baseline %.1f MB, peak %.1f MB, grew %.1f MB = %.1f KiB per connection (%d connections)\n", b * 1024 / 1e6, p * 1024 / 1e6, grew / 1e6, grew / n / 1024, n
    printf "bound above baseline: %.1f MB (%.1f KiB per connection + %.1f MB shared): %s\n", bound / 1e6, per / 1024, shared / 1e6, (grew <= bound ? "met" : "EXCEEDED")
}'
grep -c "write queue full" "$work/gate.out" | xargs echo "WARN lines (log level error: expected 0):"
