#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for a share of a total time budget.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 120 s in total, every target)
#
# Installs cargo-fuzz if missing (into .tools/), builds all targets once (nightly, release with debug
# assertions, AddressSanitizer unless FUZZ_SANITIZER says otherwise), then runs the targets,
# FUZZ_JOBS at a time, so that the whole run takes SECONDS: each target gets
# SECONDS * FUZZ_JOBS / number-of-targets. New inputs go to a scratch corpus (FUZZ_WORK, default
# a temp dir), never into the committed seeds (fuzz/corpus/<target>/). Prints executions, exec/s
# and corpus size per target; exits non-zero at the end if any target crashed, naming the
# artifact (see docs/fuzzing.md to reproduce it).
#
# Environment: CARGO_TARGET_DIR (honoured), FUZZ_WORK (scratch dir, kept if set),
# FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (seconds per input, default 10), FUZZ_JOBS (targets
# run at the same time, default 1; one per CPU on an otherwise idle machine), FUZZ_SANITIZER
# (address, the default, or none: no shadow-memory check on every access, more executions; the
# gate's decoders are safe Rust, so a panic, an overflow or a debug assertion is what a run can
# find either way).
set -euo pipefail
cd "$(dirname "$0")/.."
total=${1:-120}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^gatehouse-fuzz$')
fi
rss=${FUZZ_RSS_MB:-2048}
per_input=${FUZZ_TIMEOUT:-10}
jobs=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
case "$sanitizer" in address | none) ;; *) echo "FUZZ_SANITIZER: address or none" >&2; exit 2 ;; esac
[ "$jobs" -ge 1 ] 2>/dev/null || { echo "FUZZ_JOBS: a positive number" >&2; exit 2; }

# A cargo-fuzz on PATH is used; otherwise one is installed under .tools/ (ignored by git, kept
# between runs like the other installed tools).
export PATH="$PWD/.tools/cargo-fuzz/bin:$PATH"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz into .tools/cargo-fuzz"
    cargo install cargo-fuzz --locked --root .tools/cargo-fuzz
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
build_start=$SECONDS
(cd fuzz && cargo +nightly fuzz build -O -a -s "$sanitizer")
echo "== built in $((SECONDS - build_start)) s"

target_dir=${CARGO_TARGET_DIR:-fuzz/target}
bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
if [ -n "${FUZZ_WORK:-}" ]; then
    work=$FUZZ_WORK
    mkdir -p "$work"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi

each=$((total * jobs / ${#targets[@]}))
[ "$each" -ge 1 ] || each=1

# One target: runs it, then writes its summary line to $work/<target>.result.
run_target() {
    local t=$1 log="$work/$1.log" start=$SECONDS rc=0 secs execs rate corpus result artifact
    mkdir -p "$work/$t" "$work/artifacts/$t"
    # The run corpus (first dir) receives new inputs; the seeds are read only.
    "$bin_dir/$t" "$work/$t" "fuzz/corpus/$t" \
        -max_total_time="$each" -rss_limit_mb="$rss" -timeout="$per_input" \
        -print_final_stats=1 -artifact_prefix="$work/artifacts/$t/" \
        >"$log" 2>&1 || rc=$?
    secs=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "$work/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        result="CRASH rc=$rc ${artifact:-(no artifact; see $log)}"
        grep -m1 -B2 -A25 "panicked\|ERROR: AddressSanitizer\|ERROR: libFuzzer" "$log" >&2 || tail -40 "$log" >&2
    fi
    printf '%-14s %12s %10s %8s %6s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$secs" "$result" \
        | tee "$work/$t.result"
}

printf '%-14s %12s %10s %8s %6s  %s\n' target execs exec/s corpus secs result
running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
wait || true
summary=()
failed=()
for t in "${targets[@]}"; do
    line=$(cat "$work/$t.result" 2>/dev/null || printf '%-14s (no result)' "$t")
    summary+=("$line")
    case "$line" in *" ok") ;; *) failed+=("$t") ;; esac
done

echo "== summary ($total s budget, $each s per target, $jobs at a time, sanitizer $sanitizer; logs in $work)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}" >&2
    if [ -z "${FUZZ_WORK:-}" ]; then
        # Keep the artifacts: they are the reproducers.
        keep=$(mktemp -d /tmp/gatehouse-fuzz-XXXXXX)
        cp -r "$work/artifacts" "$work"/*.log "$keep/"
        echo "artifacts and logs kept in $keep" >&2
    fi
    exit 1
fi
