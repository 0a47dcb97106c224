#!/usr/bin/env bash
# Benchmark entry point: builds gatehouse, loadgen, echo-node, the floors (bench/floor) and the Go
# peers, keeps bench/.venv (matplotlib for the chart), then runs bench/run.py with the same arguments.
# Usage: bench/run.sh [--quick] [--only flood,closed,latency,idle,fanout,shards,benchclient,metrics,kcp]
#                     [--only floor[,FIGURE…]] [--no-floor] [--repeats N]
#                     [--out DIR] [--report-only] [--no-build]      (details: bench/run.sh --help)
# Binaries come from $CARGO_TARGET_DIR/release (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
args=()
for a in "$@"; do
    case "$a" in
    --no-build) build=0; continue ;;
    --report-only | -h | --help) build=0 ;;
    esac
    args+=("$a")
done

if [ "$build" = 1 ]; then
    cargo build --release -p gatehouse -p loadgen -p floor --bins
    scripts/build-interop.sh
fi

venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install --quiet matplotlib
fi

BENCH_COMMAND="bench/run.sh${*:+ $*}"
export BENCH_COMMAND
exec "$venv/bin/python" bench/run.py "${args[@]}"
