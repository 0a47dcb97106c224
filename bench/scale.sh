#!/usr/bin/env bash
# Shard scaling (issue 13 §5): gatehouse with 1, 2, 4, … shards behind Rust echo nodes, flooded by
# loadgen; prints TPS and gate CPU per 1M request/response pairs per shard count.
#
# Needs only bash, coreutils, taskset and three release binaries (gatehouse, loadgen, echo-node):
# no cargo, no Python, no Redis or Consul (a static node list), no network beyond loopback, so it
# runs on a machine the binaries were carried to. Building those binaries, static and stripped,
# on the build machine (glibc linked statically; the musl target is not installed here):
#
#   RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=0 \
#   CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --target x86_64-unknown-linux-gnu \
#       -p gatehouse -p loadgen --bins
#   tar czf scale-kit.tgz bench/scale.sh -C target/x86_64-unknown-linux-gnu/release \
#       gatehouse loadgen echo-node
#
# and there: `tar xzf scale-kit.tgz && bench/scale.sh --bin .` (see docs in bench/RESULTS.md).
#
# Layout per shard count S: the gate is pinned to cores 0..S-1 (`taskset`; gatehouse pins one
# shard per core of its affinity mask); the cores left are split between loadgen processes (each
# on its own core, the flood's connections and requests split between them) and echo-node
# processes (each on its own core; the gate dispatches route 1 over them round-robin). With one
# core left, one loadgen and one node share it; with none, they run unpinned beside the gate (the
# note column says which).
# Each point: a fresh gate, an untimed warm-up flood, then --repeats timed floods (best kept).
# TPS = replies of all loadgens / the longest loadgen's time; CPU = gate utime+stime over the
# timed flood (/proc/PID/stat) per 1M replies; "cores" = gate CPU seconds / wall seconds.
#
# Usage: bench/scale.sh [--bin DIR] [--shards "1 2 4 8"] [--conns N] [--requests N]
#                       [--size BYTES] [--repeats N] [--port P] [--cpus LIST]
# --cpus: the CPUs to use, in order (e.g. "0-7" for one socket; default: this process's affinity).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CARGO_TARGET_DIR:-target}/release
SHARDS=""
CONNS=400
REQUESTS=400000
SIZE=1024
REPEATS=2
PORT=${PORT:-41553}
CPU_LIST=""
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) BIN=$2 ;;
    --shards) SHARDS=$2 ;;
    --conns) CONNS=$2 ;;
    --requests) REQUESTS=$2 ;;
    --size) SIZE=$2 ;;
    --repeats) REPEATS=$2 ;;
    --port) PORT=$2 ;;
    --cpus) CPU_LIST=$2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scale.sh: unknown flag $1 (--help)" >&2; exit 2 ;;
    esac
    shift 2
done
for b in gatehouse loadgen echo-node; do
    [ -x "$BIN/$b" ] || { echo "scale.sh: $BIN/$b missing (build: see the header of $0)" >&2; exit 2; }
done
command -v taskset > /dev/null || { echo "scale.sh: taskset (util-linux) is needed" >&2; exit 2; }

# The CPUs this process may use, in order (a cgroup or taskset may have narrowed them).
[ -n "$CPU_LIST" ] || CPU_LIST=$(taskset -pc $$ | sed 's/.*: //')
read -r -a CPUS <<< "$(echo "$CPU_LIST" | tr ',' '\n' | awk -F- '{ if (NF == 2) for (i = $1; i <= $2; i++) printf "%d ", i; else printf "%d ", $1 }')"
NCPU=${#CPUS[@]}
if [ -z "$SHARDS" ]; then
    # 1, 2, 4, … while half of the CPUs or more stay for load (at least 1 and 2 shards).
    s=1
    while [ "$s" -le 2 ] || [ $((s * 2)) -le "$NCPU" ]; do SHARDS="$SHARDS $s"; s=$((s * 2)); done
fi
CLK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2> /dev/null || echo 0; }
json_num() { grep -o "\"$2\":[0-9.e+-]*" "$1" | tail -1 | cut -d: -f2; }

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "# gatehouse shard scaling: $NCPU CPUs (${CPUS[*]}), $(uname -r), binaries from $BIN"
echo "# flood: $CONNS connections, $REQUESTS requests of $SIZE B per timed run, best of $REPEATS"
printf '%-7s %-9s %-8s %-6s %12s %14s %8s  %s\n' shards gate_cpus loadgens nodes "req/s" "CPU s/1M pairs" cores note
results=()
for S in $SHARDS; do
    if [ "$S" -gt "$NCPU" ]; then
        echo "# shards=$S: only $NCPU CPUs, skipped"
        continue
    fi
    gate_cpus=$(IFS=,; echo "${CPUS[*]:0:S}")
    left=("${CPUS[@]:S}")
    note=""
    if [ "${#left[@]}" -ge 2 ]; then
        nl=$(((${#left[@]} + 1) / 2))
        nn=$((${#left[@]} - nl))
        lg_cpus=("${left[@]:0:nl}")
        node_cpus=("${left[@]:nl}")
    elif [ "${#left[@]}" = 1 ]; then
        nl=1 nn=1
        lg_cpus=("${left[0]}")
        node_cpus=("${left[0]}")
        note="loadgen and node share CPU ${left[0]}"
    else
        # Too few CPUs to separate: everything shares them (this is what a 2-CPU box shows).
        nl=1 nn=1
        lg_cpus=("$(IFS=,; echo "${CPUS[*]}")")
        node_cpus=("$(IFS=,; echo "${CPUS[*]}")")
        note="load shares the gate's CPUs"
    fi
    link=$((PORT + 1))
    {
        cat << TOML
[cluster.gate]
id = "gate-scale"
name = "gate"
addr = "127.0.0.1:$link"
[network.tcp.server]
addr = "127.0.0.1:$PORT"
maxConnNum = 19900
heartbeatInterval = "60s"
heartbeatMechanism = "resp"
[log]
level = "error"
terminals = ["console"]
[gatehouse]
shards = $S
TOML
        for i in $(seq 0 $((nn - 1))); do
            printf '[[gatehouse.nodes]]\nid = "echo-%d"\naddr = "127.0.0.1:%d"\nroutes = [1, 20]\n' "$i" $((PORT + 10 + i))
        done
    } > "$work/etc.toml"
    run_pids=()
    for i in $(seq 0 $((nn - 1))); do
        taskset -c "${node_cpus[$i]}" "$BIN/echo-node" --listen "127.0.0.1:$((PORT + 10 + i))" \
            --gate "127.0.0.1:$link" --id "echo-$i" --quiet > "$work/node$i.out" 2>&1 &
        pids+=($!) run_pids+=($!)
    done
    taskset -c "$gate_cpus" "$BIN/gatehouse" --etc "$work/etc.toml" > "$work/gate.out" 2>&1 &
    gate=$!
    pids+=($gate) run_pids+=($gate)
    ready=0
    for _ in $(seq 60); do
        if "$BIN/loadgen" closed --addr "127.0.0.1:$PORT" --conns 1 --duration 0.5 --json > "$work/probe.json" 2> /dev/null &&
            [ "$(json_num "$work/probe.json" received)" -gt 0 ] 2> /dev/null; then
            ready=1
            break
        fi
        kill -0 "$gate" 2> /dev/null || break
        sleep 0.3
    done
    if [ "$ready" != 1 ]; then
        echo "# shards=$S: the gate never answered a probe; its output:" >&2
        tail -20 "$work/gate.out" >&2
        exit 1
    fi
    flood() { # flood TOTAL_REQUESTS TAG: every loadgen at once, its share (rounded up); prints
        # "received seconds failed", failed = 1 when a loadgen failed or a reply is missing
        local per_conns=$(((CONNS + nl - 1) / nl)) per_req=$((($1 + nl - 1) / nl)) i lp=()
        for i in $(seq 0 $((nl - 1))); do
            taskset -c "${lg_cpus[$i]}" "$BIN/loadgen" flood --addr "127.0.0.1:$PORT" --conns "$per_conns" \
                --requests "$per_req" --size "$SIZE" --duration 120 --sources 8 --json > "$work/$2.$i.json" 2> "$work/$2.$i.err" &
            lp+=($!)
        done
        local failed=0
        for p in "${lp[@]}"; do wait "$p" || failed=1; done
        local got=0 secs=0 r s
        for i in $(seq 0 $((nl - 1))); do
            r=$(json_num "$work/$2.$i.json" received)
            s=$(json_num "$work/$2.$i.json" seconds)
            got=$((got + ${r:-0}))
            secs=$(awk -v a="$secs" -v b="${s:-0}" 'BEGIN { print (b > a) ? b : a }')
        done
        [ "$got" -ge $((per_req * nl)) ] || failed=1
        echo "$got $secs $failed"
    }
    flood $((REQUESTS / 5)) warm > /dev/null
    best=""
    for rep in $(seq "$REPEATS"); do
        t0=$(cpu_ticks "$gate")
        read -r got secs failed <<< "$(flood "$REQUESTS" "s$S.r$rep")"
        t1=$(cpu_ticks "$gate")
        line=$(awk -v got="$got" -v secs="$secs" -v dt=$((t1 - t0)) -v clk="$CLK" 'BEGIN {
            cpu = dt / clk; tps = (secs > 0) ? got / secs : 0
            printf "%.0f %.2f %.2f", tps, (got > 0) ? cpu / got * 1e6 : 0, (secs > 0) ? cpu / secs : 0 }')
        echo "#   shards=$S run $rep: $got replies in ${secs} s -> $line (req/s, CPU s/1M, cores)$([ "$failed" = 1 ] && echo ", loadgen reported failures")"
        if [ "$failed" = 0 ]; then
            if [ -z "$best" ] || [ "${line%% *}" -gt "${best%% *}" ]; then best=$line; fi
        fi
    done
    for p in "${run_pids[@]}"; do kill "$p" 2> /dev/null || true; done
    for p in "${run_pids[@]}"; do wait "$p" 2> /dev/null || true; done
    read -r tps cpu cores <<< "${best:-0 0 0}"
    [ -n "$best" ] || note="${note:+$note; }every run failed"
    lg_shown=$nl nodes_shown=$nn
    printf '%-7s %-9s %-8s %-6s %12s %14s %8s  %s\n' "$S" "$gate_cpus" "$lg_shown" "$nodes_shown" "$tps" "$cpu" "$cores" "$note"
    results+=("$S $tps $cpu")
done
base=$(echo "${results[0]:-}" | awk '{ print $2 }')
echo
echo "| shards | req/s | × 1 shard | gate CPU s/1M pairs |"
echo "|---|---|---|---|"
for r in "${results[@]}"; do
    read -r s t c <<< "$r"
    awk -v s="$s" -v t="$t" -v c="$c" -v b="$base" 'BEGIN { printf "| %s | %\047d | %s | %s |\n", s, t, (b > 0) ? sprintf("%.2f×", t / b) : "—", c }'
done
