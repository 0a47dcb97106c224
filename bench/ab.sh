#!/usr/bin/env bash
# A/B of two gatehouse binaries on the flood: the same Rust echo node behind both, the same
# loadgen flood, gates alternated A B A B ... in one invocation (this machine is noisy: compare
# within one run). Prints req/s and gate CPU seconds per million requests for every run.
# Usage: bench/ab.sh BIN_A BIN_B [CONNS] [REQUESTS] [ROUNDS] [EXTRA_GATEHOUSE_TOML_LINE]
#   e.g. bench/ab.sh /work/target-base/release/gatehouse target/release/gatehouse 100 400000 3
# Needs target/release/{echo-node,loadgen} (cargo build --release -p gatehouse -p loadgen --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
a="$1"; b="$2"; conns="${3:-100}"; requests="${4:-400000}"; rounds="${5:-3}"; extra="${6:-}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

link=$(free_port); node=$(free_port)
./target/release/echo-node --gate "127.0.0.1:$link" --listen "127.0.0.1:$node" --quiet \
    > "$work/node.log" 2>&1 &
pids+=($!)

run_one() {
    local label="$1" bin="$2" tcp
    tcp=$(free_port)
    cat > "$work/etc.toml" <<TOML
[cluster.gate]
addr = "127.0.0.1:$link"
[network.tcp.server]
addr = "127.0.0.1:$tcp"
maxConnNum = 19900
[log]
level = "warn"
terminals = ["console"]
[gatehouse]
shards = 2
$extra
[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$node"
routes = [1]
TOML
    "$bin" --etc "$work/etc.toml" > "$work/gate-$label.log" 2>&1 &
    local gate=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break
        sleep 0.05
    done
    # Warm-up (links dialled, caches warm), then the timed run.
    ./target/release/loadgen flood --addr "127.0.0.1:$tcp" --conns "$conns" --requests 20000 \
        --size 64 >/dev/null 2>&1 || true
    local c0 c1 out
    c0=$(cpu_s "$gate")
    out=$(./target/release/loadgen flood --addr "127.0.0.1:$tcp" --conns "$conns" \
        --requests "$requests" --size 64 2>/dev/null | grep '^summary')
    c1=$(cpu_s "$gate")
    kill "$gate"; wait "$gate" 2>/dev/null || true
    local tps received
    tps=$(sed -n 's/.* tps=\([0-9.]*\).*/\1/p' <<<"$out")
    received=$(sed -n 's/.* received=\([0-9]*\).*/\1/p' <<<"$out")
    awk -v l="$label" -v t="$tps" -v c0="$c0" -v c1="$c1" -v r="$received" \
        'BEGIN { printf "%-2s req/s %9.0f   gate CPU %.2f s/1M   (%d received)\n", l, t, (c1 - c0) * 1e6 / r, r }'
}

echo "flood c=$conns, $requests requests of 64 B, Rust echo node; A=$a B=$b${extra:+ (gatehouse: $extra)}"
for i in $(seq 1 "$rounds"); do
    run_one A "$a"
    run_one B "$b"
done
