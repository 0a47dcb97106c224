#!/usr/bin/env bash
# Soak (not a test): a 2-shard gatehouse holds N connections for M minutes with churn, behind the
# Rust echo node, and is sampled every 10 s. `loadgen soak` keeps N connections (heartbeat every
# 5 s, an echo every 10 s, a bind or unbind of its own uid through the node every 30 s) and closes
# and reopens about PCT % of them per second; one more connection triggers a broadcast every 5 s
# that every connection counts. bench/soak.py samples the gate (RSS and fds from /proc, open
# connections, users bound, queued packets, armed deadline timers and closes by reason from its
# /metrics) into samples.csv, then plots samples.png and prints the figures and PASS/FAIL:
#   RSS growth after warm-up (the ramp + 20 % of the run) under 5 %; the gate's fd count back to
#   its value before the clients once they left; zero unexpected closes (loadgen's, and gate
#   closes for any reason but `peer`); nothing lost or unanswered (echoes, bind acks, broadcasts,
#   connects: a client waits 10 s for what is due before it closes).
#
# Usage: bench/soak.sh [--minutes M] [--conns N] [--churn PCT] [--shards S] [--every SECS]
#                      [--rate R] [--no-build] [--out DIR]
#   defaults: 30 minutes, 19000 connections, 1 % churn per second, 2 shards, a sample every 10 s,
#   2000 connects/s in the ramp, output in bench/soak/<UTC time>-<commit>/
# Ports: TCP $PORT (39853), link $PORT+1, echo node $PORT+2, /metrics $PORT+3. Binaries from
# ${CARGO_TARGET_DIR:-target}/release. Exit code 1 on FAIL or when a process failed to start.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30 conns=19000 churn=1 shards=2 every=10 rate=2000 build=1 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes) minutes=$2; shift ;;
    --conns) conns=$2; shift ;;
    --churn) churn=$2; shift ;;
    --shards) shards=$2; shift ;;
    --every) every=$2; shift ;;
    --rate) rate=$2; shift ;;
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$conns" -gt 19800 ]; then
    echo "--conns $conns: one loadgen process holds at most ~19,800 (20,000 fds per process)" >&2
    exit 2
fi
PORT=${PORT:-39853}
tcp=$PORT link=$((PORT + 1)) node=$((PORT + 2)) metrics=$((PORT + 3))
bin=${CARGO_TARGET_DIR:-target}/release
if [ "$build" = 1 ]; then
    cargo build --release -q -p gatehouse -p loadgen --bins
fi
for b in gatehouse loadgen echo-node; do
    [ -x "$bin/$b" ] || { echo "missing $bin/$b (build first)" >&2; exit 2; }
done
venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install --quiet matplotlib
fi

commit=$(git rev-parse --short HEAD)
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo "-dirty" || true)
work=${out:-bench/soak/$(date -u +%Y%m%dT%H%M%SZ)-$commit$dirty}
mkdir -p "$work/etc"
echo "soak: $minutes min, $conns connections, $churn %/s churn, $shards shards; output in $work"

pids=()
sampler=""
cleanup() {
    # loadgen first (clients gone), then the gate and the node; the sampler last.
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [ -n "$sampler" ]; then kill -TERM "$sampler" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $tcp $link $node $metrics; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use (set PORT=...)" >&2
        exit 2
    fi
done

cat > "$work/etc/etc.toml" <<TOML
[cluster.gate]
id = "gate-soak"
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
shards = $shards
metricsAddr = "127.0.0.1:$metrics"

[[gatehouse.nodes]]
id = "echo-1"
addr = "127.0.0.1:$node"
routes = [1, 20, 21, 22]
TOML

# Bounded wait: until "$@" succeeds, at most $1 tenths of a second.
wait_for() {
    local n=$1; shift
    for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
    return 1
}
exited() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) || return 0; [[ $s == Z* ]]; }
metric() { # the sum of a family's samples in the gate's /metrics
    curl -s --max-time 2 "http://127.0.0.1:$metrics/metrics" \
        | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }'
}
ready() { curl -sf --max-time 2 "http://127.0.0.1:$metrics/readyz" > /dev/null; }

"$bin/echo-node" --quiet --listen "127.0.0.1:$node" --gate "127.0.0.1:$link" \
    > "$work/node.out" 2> "$work/node.err" &
node_pid=$!
pids+=($node_pid)
wait_for 100 grep -q listening "$work/node.out" || { echo "echo node did not start" >&2; exit 1; }
"$bin/gatehouse" --etc "$work/etc" > "$work/gate.out" 2> "$work/gate.err" &
gate=$!
pids+=($gate)
wait_for 300 ready || { echo "gate not ready in 30 s"; tail "$work/gate.err"; exit 1; } >&2
# The echo node dials the link (pushes go back that way): let it finish its handshake.
sleep 2

"$venv/bin/python" bench/soak.py sample --gate "$gate" --node "$node_pid" \
    --loadgen-pid-file "$work/loadgen.pid" --metrics "127.0.0.1:$metrics" \
    --loadgen-log "$work/loadgen.err" --csv "$work/samples.csv" --every "$every" \
    2> "$work/sampler.err" &
sampler=$!
# Two samples before any client: the baseline.
sleep $((every * 2))

seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
"$bin/loadgen" soak --addr "127.0.0.1:$tcp" --conns "$conns" --churn "$churn" \
    --duration "$seconds" --rate "$rate" --sources 32 --heartbeat 5 --echo-every 10 \
    --bind-every 30 --broadcast-every 5 --json > "$work/loadgen.out" 2> "$work/loadgen.err" &
load=$!
pids=("$load" "${pids[@]}")
echo "$load" > "$work/loadgen.pid"
echo "gate pid $gate, echo node pid $node_pid, loadgen pid $load; /metrics on 127.0.0.1:$metrics"

# Bounded: the ramp, the run, loadgen's drain, and a minute to spare.
limit=$((conns / rate + seconds + 90))
waited=0
while ! exited "$load"; do
    if [ "$waited" -ge "$limit" ]; then echo "loadgen still running after $limit s" >&2; exit 1; fi
    sleep 10
    waited=$((waited + 10))
    echo "  $(tail -n 1 "$work/loadgen.err" 2>/dev/null | cut -c1-200)"
done
wait "$load" && load_code=0 || load_code=$?
echo "loadgen exit code: $load_code"
# The clients left: wait (bounded) for the gate to count none, then two more samples.
no_conns() { [ "$(metric gatehouse_connections_open)" = 0 ]; }
wait_for 600 no_conns \
    || echo "the gate still counts $(metric gatehouse_connections_open) connections after 60 s" >&2
sleep $((every * 2 + 1))
kill -TERM "$sampler" 2>/dev/null || true
wait "$sampler" || true
sampler=""

code=0
"$venv/bin/python" bench/soak.py report --csv "$work/samples.csv" --summary "$work/loadgen.out" \
    --png "$work/samples.png" --minutes "$minutes" | tee "$work/report.txt" || code=1
echo "command: bench/soak.sh --minutes $minutes --conns $conns --churn $churn --shards $shards" \
    "(commit $commit$dirty)" | tee -a "$work/report.txt"
exit $code
