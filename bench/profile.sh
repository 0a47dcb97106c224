#!/usr/bin/env bash
# Profiles (not a test): where a 2-shard gatehouse and the floor programs spend their CPU in the
# two figures whose floor targets they miss — a flood at c=1000 behind the Rust echo node
# (against floor-forward) and the 64-byte broadcast to N clients (against floor-broadcast).
# Each program runs alone with the Rust echo node; `perf record -g` samples it (every thread) for
# the whole timed run; the report prints the kernel/user split and the top symbols.
# Usage: bench/profile.sh [--conns-flood C] [--requests N] [--conns-fanout N] [--out DIR]
#   defaults: 1000, 200000, 19000, bench/work/profile-<UTC time>. Binaries: target/release.
# Needs perf. Ports: 3985x on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cflood=1000 requests=200000 cfan=19000 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --conns-flood) cflood=$2; shift ;;
    --requests) requests=$2; shift ;;
    --conns-fanout) cfan=$2; shift ;;
    --out) out=$2; shift ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
    esac
    shift
done
bin=${CARGO_TARGET_DIR:-target}/release
work=${out:-bench/work/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# profile NAME PID COMMAND...: samples PID while COMMAND runs; prints the split and the top.
profile() {
    local name=$1 pid=$2; shift 2
    perf record -q -F 499 -g -p "$pid" -o "$work/$name.data" 2>/dev/null &
    local rec=$!
    sleep 0.5
    "$@" > "$work/$name.loadgen.json" 2> "$work/$name.loadgen.err"
    kill -INT "$rec"; wait "$rec" || true
    echo "== $name: $(tail -1 "$work/$name.loadgen.json" | cut -c1-220)"
    perf report -i "$work/$name.data" --no-children --sort dso --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -5 | sed 's/^/   /' || true
    perf report -i "$work/$name.data" --no-children --sort sym --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -15 | sed 's/^/   /' || true
}

gate_etc() { # DIR TCP LINK NODE
    mkdir -p "$1"
    cat > "$1/etc.toml" <<TOML
[cluster.gate]
id = "gate-profile"
name = "gate"
addr = "127.0.0.1:$3"
[network.tcp.server]
addr = "127.0.0.1:$2"
maxConnNum = 19900
heartbeatInterval = "30s"
heartbeatMechanism = "resp"
[log]
level = "warn"
terminals = ["console"]
[gatehouse]
shards = 2
[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$4"
routes = [1, 20]
TOML
}

# 1. Flood at c=$cflood: gatehouse, then floor-forward, each with its own echo node.
for who in gatehouse floor; do
    port=$((39850 + ${#pids[@]} * 3))
    tcp=$port link=$((port + 1)) node=$((port + 2))
    "$bin/echo-node" --quiet --listen "127.0.0.1:$node" --gate "127.0.0.1:$link" > "$work/node-$who.out" 2>&1 &
    pids+=($!)
    wait_port "$node"
    if [ "$who" = gatehouse ]; then
        gate_etc "$work/etc" "$tcp" "$link" "$node"
        "$bin/gatehouse" --etc "$work/etc" > "$work/gate.out" 2>&1 &
    else
        "$bin/floor-forward" --listen "127.0.0.1:$tcp" --link "127.0.0.1:$link" --node "127.0.0.1:$node" > "$work/floor.out" 2>&1 &
    fi
    target=$!
    pids+=($target)
    wait_port "$tcp"
    sleep 2
    "$bin/loadgen" flood --addr "127.0.0.1:$tcp" --conns 50 --requests 20000 --json > /dev/null 2>&1 || true
    profile "flood-$who" "$target" "$bin/loadgen" flood --addr "127.0.0.1:$tcp" --conns "$cflood" \
        --requests "$requests" --size 1024 --json
done

# 2. Broadcast to $cfan clients: gatehouse (the echo node broadcasts on route 20), then
# floor-broadcast (2 sender threads).
for who in gatehouse floor; do
    port=$((39870 + ${#pids[@]} * 3))
    tcp=$port link=$((port + 1)) node=$((port + 2))
    if [ "$who" = gatehouse ]; then
        "$bin/echo-node" --quiet --listen "127.0.0.1:$node" --gate "127.0.0.1:$link" > "$work/node-fan.out" 2>&1 &
        pids+=($!)
        wait_port "$node"
        gate_etc "$work/etc-fan" "$tcp" "$link" "$node"
        "$bin/gatehouse" --etc "$work/etc-fan" > "$work/gate-fan.out" 2>&1 &
    else
        "$bin/floor-broadcast" --listen "127.0.0.1:$tcp" --senders 2 > "$work/floor-fan.out" 2>&1 &
    fi
    target=$!
    pids+=($target)
    wait_port "$tcp"
    sleep 2
    profile "fanout-$who" "$target" "$bin/loadgen" fanout --addr "127.0.0.1:$tcp" --conns "$cfan" \
        --rounds 10 --route 20 --rate 4000 --sources 16 --json
    kill -TERM "$target"
done
echo "perf data and loadgen output in $work"
