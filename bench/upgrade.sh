#!/usr/bin/env bash
# Benchmark (not a test): `gatehouse --upgrade` under steady traffic at 19,000 connections.
# Starts the Rust echo node, a 2-shard gatehouse (static node list, pid file, fixed ports) and
# `loadgen steady` (N connections with a heartbeat each every 5 s, K of them sending a numbered
# 64-byte request every 20 ms); once every connection is open and traffic has run for --before
# seconds, runs `gatehouse --upgrade` with the same etc, checks the old process exits 0 and the
# pid file names the new one, lets traffic run on for --after seconds, and prints the hand-off
# time, skim and freeze (the processes' own logs), the longest gap any client saw between two replies
# (before the upgrade as a baseline, and across it), and closed/missing/reordered counts.
#
# Usage: bench/upgrade.sh [--no-build] [--conns N] [--active K] [--interval SECS] [--size BYTES]
#                         [--heartbeat SECS] [--before SECS] [--after SECS]
#                         [--new-shards N] [--no-upgrade] [--keep DIR]
#   defaults: 19000 connections, 500 active every 0.02 s (25,000 requests/s), 64 B, heartbeat
#   5 s, 10 s before, 8 s after
#   --new-shards N  the new process reads a copy of the etc with only `shards = N` changed
#   --no-upgrade    same load, no upgrade: the baseline of the whole run
#   --keep DIR      keep the etc and every log in DIR (default: a temp dir, removed)
# Ports (fixed, so both processes read the same etc): TCP $PORT (39753), link $PORT+1, echo node
# $PORT+2. Binaries from ${CARGO_TARGET_DIR:-target}/release. Exit code 1 if the upgrade failed,
# the old process did not exit 0, or a client was closed or missed/reordered a reply.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1 conns=19000 active=500 interval=0.02 size=64 heartbeat=5 before=10 after=8
new_shards="" upgrade=1 keep=""
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) build=0 ;;
    --no-upgrade) upgrade=0 ;;
    --conns) conns=$2; shift ;;
    --active) active=$2; shift ;;
    --interval) interval=$2; shift ;;
    --size) size=$2; shift ;;
    --heartbeat) heartbeat=$2; shift ;;
    --before) before=$2; shift ;;
    --after) after=$2; shift ;;
    --new-shards) new_shards=$2; shift ;;
    --keep) keep=$2; shift ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
PORT=${PORT:-39753}
tcp=$PORT link=$((PORT + 1)) node=$((PORT + 2))
bin=${CARGO_TARGET_DIR:-target}/release
if [ "$build" = 1 ]; then
    cargo build --release -q -p gatehouse -p loadgen --bins
fi
for b in gatehouse loadgen echo-node; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b (build first)" >&2; exit 2; }
done

if [ -n "$keep" ]; then
    work=$keep
    mkdir -p "$work"
else
    work=$(mktemp -d)
fi
pids=()
cleanup() {
    # loadgen first (clients gone, the gates' shutdown has nothing to wait for), then the rest.
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $tcp $link $node; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use (set PORT=...)" >&2
        exit 2
    fi
done

etc() { # etc.toml with this shard count
    cat <<TOML
pid = "$work/gate.pid"

[cluster.gate]
id = "gate-upgrade-bench"
name = "gate"
addr = "127.0.0.1:$link"

[network.tcp.server]
addr = "127.0.0.1:$tcp"
maxConnNum = 19900
heartbeatInterval = "10s"
heartbeatMechanism = "resp"

[log]
level = "info"
terminals = ["console"]

[gatehouse]
shards = $1

[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$node"
routes = [1]
TOML
}
mkdir -p "$work/etc" "$work/etc-new"
etc 2 > "$work/etc/etc.toml"
etc "${new_shards:-2}" > "$work/etc-new/etc.toml"
new_etc=$work/etc
[ -n "$new_shards" ] && new_etc=$work/etc-new

# Bounded wait: until "$@" succeeds, at most $1 tenths of a second.
wait_for() {
    local n=$1; shift
    for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
    return 1
}
# A child has exited (gone, or a zombie not yet waited for).
exited() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 0; [[ $s == Z* ]]; }
progress_lines() { grep -c '^t=' "$work/load.err" 2>/dev/null || true; }

"$bin/echo-node" --quiet --listen "127.0.0.1:$node" --gate "127.0.0.1:$link" \
    > "$work/node.out" 2> "$work/node.err" &
node_pid=$!
pids+=($node_pid)
wait_for 100 grep -q listening "$work/node.out" || { echo "echo node did not start" >&2; exit 1; }
"$bin/gatehouse" --etc "$work/etc" > "$work/gate-old.out" 2> "$work/gate-old.err" &
old=$!
pids+=($old)
wait_for 100 grep -q 'Server: \[tcp\]' "$work/gate-old.out" "$work/gate-old.err" \
    || { echo "gate did not start"; tail "$work/gate-old.err"; exit 1; } >&2
# The echo node dials the link (pushes go back that way); wait for its handshake.
sleep 1

upgrade_at=$((before + 2))
duration=$((upgrade_at + 5 + after))
"$bin/loadgen" steady --addr "127.0.0.1:$tcp" --conns "$conns" --active "$active" \
    --interval "$interval" --heartbeat "$heartbeat" --size "$size" --duration "$duration" \
    --rate 4000 --sources 16 --json > "$work/load.out" 2> "$work/load.err" &
load=$!
pids=("$load" "${pids[@]}")
echo "gate pid $old, loadgen: $conns connections, $active active every ${interval}s, ${size} B"
# The ramp (~N/4000 s), then progress lines once per second.
wait_for $((conns / 400 + 300)) grep -q '^t=' "$work/load.err" \
    || { echo "loadgen never finished its ramp"; tail "$work/load.err"; exit 1; } >&2
head -n 1 "$work/load.err"
grep -q "open=$conns .*connect_errors=0" "$work/load.err" \
    || { echo "not every connection opened"; head -n 3 "$work/load.err"; exit 1; } >&2

# CPU seconds (utime + stime) of a process.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU seconds of every other process (with its reaped children: a compiler a build ran meanwhile).
others() {
    python3 - "$old" "$node_pid" "$load" <<'PY'
import os, sys
ours, total = set(sys.argv[1:]), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if pid not in ours:
        total += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
print(f"{total / os.sysconf('SC_CLK_TCK'):.2f}")
PY
}
sample() { echo "$(cpu "$old") $(cpu "$node_pid") $(cpu "$load") $(others) $(date +%s.%N)"; }
seconds_of_traffic() { [ "$(progress_lines)" -ge "$1" ]; }
code=0
# CPU use of each process over the steady window: from progress line 2 to the upgrade (or, with
# --no-upgrade, to 2 s before the end).
wait_for 100 seconds_of_traffic 2 || { echo "loadgen stopped reporting" >&2; exit 1; }
cpu0=$(sample)
if [ "$upgrade" = 1 ]; then
    wait_for $(((upgrade_at + 30) * 10)) seconds_of_traffic "$upgrade_at" \
        || { echo "loadgen stopped reporting" >&2; exit 1; }
    mark=$(progress_lines)
    echo "upgrade after $mark s of traffic: $(sed -n "${mark}p" "$work/load.err")"
    cpu1=$(sample)
    "$bin/gatehouse" --upgrade --etc "$new_etc" > "$work/gate-new.out" 2> "$work/gate-new.err" &
    new=$!
    pids+=($new)
    serving_or_gone() { grep -q 'upgrade: serving' "$work/gate-new.err" || exited "$new"; }
    wait_for 300 serving_or_gone || true
    if ! grep -q 'upgrade: serving' "$work/gate-new.err"; then
        echo "the new process is not serving (exited, or 30 s passed):" >&2
        tail "$work/gate-new.err" >&2
        exit 1
    fi
    if wait_for 300 exited "$old"; then
        wait "$old" && old_code=0 || old_code=$?
    else
        old_code="still running after 30 s"
    fi
    [ "$old_code" = 0 ] || code=1
    echo "old pid $old exit code: $old_code; pid file: $(cat "$work/gate.pid"), new pid $new"
    [ "$(cat "$work/gate.pid")" = "$new" ] || code=1
else
    wait_for $(((duration - 2) * 10)) seconds_of_traffic $((duration - 2)) || true
    cpu1=$(sample)
fi

wait_for $(((duration + 30) * 10)) exited "$load" || { echo "loadgen hangs" >&2; exit 1; }
wait "$load" && load_code=0 || load_code=$?
[ "$load_code" = 0 ] || code=1

summary=$(tail -n 1 "$work/load.out")
field() { python3 -c 'import functools,json,sys; print(functools.reduce(lambda d, k: d[k], sys.argv[2].split("."), json.loads(sys.argv[1])))' "$summary" "$1"; }
# The longest gap over progress lines FROM..TO (1-based; lines cover one second each).
window_gap() { sed -n "$1,$2p" "$work/load.err" | grep -o 'max_gap_ms=[0-9.]*' | cut -d= -f2 | sort -g | tail -n 1; }
took() { grep -o "$2.*" "$1" | grep -o 'took=[0-9.]*[µmn]*s' | head -n 1 | cut -d= -f2; }

echo "== loadgen (exit $load_code)"
echo "$summary"
echo "== result"
echo "connections held: $(field steady.active) active of $conns ($(field connect_errors) connect errors), $(field steady.replies) replies, $(field heartbeats) heartbeat answers"
echo "closed: $(field steady.closed), faulty clients: $(field steady.faulty) (missing $(field steady.missing), duplicated/reordered $(field steady.disordered))"
if [ "$upgrade" = 1 ]; then
    echo "baseline longest gap (seconds 2..$mark of traffic, before the upgrade): $(window_gap 2 "$mark") ms"
    echo "longest gap from the upgrade on (seconds $((mark + 1)).., any client): $(window_gap $((mark + 1)) '$') ms"
    echo "old process: $(grep -o 'upgrade: frozen.*' "$work/gate-old.err" | head -n 1)"
    echo "old process: $(grep -o 'upgrade: handed over.*' "$work/gate-old.err" | head -n 1)"
    echo "new process: $(grep -o 'upgrade: serving.*' "$work/gate-new.err" | head -n 1)"
    # The new shards start their connections after "serving" is logged, busy ones first: when
    # had the last shard started its busy ones, and when its idle ones?
    since_serving() {
        grep -E "upgrade: (serving|$1)" "$work/gate-new.err" \
            | sed -E 's/.*[0-9]{4}\/[0-9]{2}\/[0-9]{2} ([0-9]+):([0-9]+):([0-9.]+)\].*upgrade: ([a-z]+).*/\1 \2 \3 \4/' \
            | awk '{ t = $1 * 3600 + $2 * 60 + $3; if ($4 == "serving") s = t; else if (t > m) m = t }
                   END { if (m == 0) print "-"; else printf "%.1f", (m - s) * 1000 }'
    }
    echo "new process: busy connections started $(since_serving 'busy connections started') ms after 'serving', idle ones $(since_serving 'idle connections started') ms after"
    # The old process skims (quiet connections parked and sent while the busy ones serve),
    # then freezes the rest: the busy clients wait from the freeze to their new shard.
    skim=$(grep -o 'upgrade: frozen.*' "$work/gate-old.err" | grep -o 'skimmed_in=[0-9.]*[µmn]*s' | head -n 1 | cut -d= -f2)
    steps=$(grep -o 'upgrade: freeze steps.*' "$work/gate-old.err" | head -n 1 | sed 's/upgrade: freeze steps //')
    echo "skim: ${skim:--}, freeze steps: ${steps:--}, skim and freeze: $(took "$work/gate-old.err" 'upgrade: frozen'), request to commit (old): $(took "$work/gate-old.err" 'upgrade: handed over'), hand-off (new, go to shards started): $(took "$work/gate-new.err" 'upgrade: serving')"
else
    echo "baseline longest gap (seconds 2.. of traffic, no upgrade): $(window_gap 2 '$') ms"
fi
echo "$cpu0 $cpu1" | awk '{ w = $10 - $5; g = $6 - $1; n = $7 - $2; l = $8 - $3
    printf "CPU in the steady window (%.0f s before the upgrade or the end, %% of one core): gate %.0f%%, echo node %.0f%%, loadgen %.0f%%, all other processes (this script included) %.0f%%\n", w, g / w * 100, n / w * 100, l / w * 100, ($9 - $4) / w * 100 }'
echo "longest gap of the whole run (any client): $(field steady.max_gap_ms) ms; per-client longest gap p50 $(field steady.client_max_gap_ms.p50) ms, p99 $(field steady.client_max_gap_ms.p99) ms; round trip p50 $(field rtt_us.p50) µs, p99 $(field rtt_us.p99) µs, max $(field steady.max_rtt_ms) ms"
[ -n "$keep" ] && echo "logs in $work"
exit $code
