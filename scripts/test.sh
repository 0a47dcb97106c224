#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and integration tests over real sockets,
# including the cluster suites (real Redis, Consul, etcd, Prometheus and due Go peers). It installs
# those first (scripts/install-deps.sh, idempotent; GATEHOUSE_NO_INSTALL=1 skips that step).
# Usage: scripts/test.sh   (from anywhere; needs cargo, and Go for the due peers)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GATEHOUSE_NO_INSTALL:-}" ]; then
    scripts/install-deps.sh
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

# The Consul and etcd clients' real-server tests run against servers of their own when installed.
work=$(mktemp -d)
started=()
cleanup() {
    for s in "${started[@]}"; do
        scripts/"${s%%:*}".sh stop "${s##*:}" "$work/${s%%:*}" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
# Starts scripts/NAME.sh on a free loopback port when its binary is installed (.tools or PATH) and
# exports VAR=127.0.0.1:PORT; with GATEHOUSE_REQUIRE_SERVICES a missing binary is an error.
start_server() { # NAME VAR
    local name=$1 var=$2 port
    if [ -x ".tools/$name/usr/bin/$name" ] || command -v "$name" >/dev/null 2>&1; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        scripts/"$name".sh start "$port" "$work/$name" >/dev/null
        started+=("$name:$port")
        export "$var=127.0.0.1:$port"
    elif [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ]; then
        echo "$name is required (scripts/install-$name.sh)" >&2
        exit 1
    fi
}
start_server consul GATEHOUSE_CONSUL_ADDR
start_server etcd GATEHOUSE_ETCD_ADDR

cargo test --workspace --all-targets -- --test-threads=2
