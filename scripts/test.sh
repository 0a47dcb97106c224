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

# The Consul client's real-agent tests run against an agent of their own when one is installed.
work=$(mktemp -d)
consul_port=""
cleanup() {
    [ -n "$consul_port" ] && scripts/consul.sh stop "$consul_port" "$work/consul" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
if [ -x .tools/consul/usr/bin/consul ] || command -v consul >/dev/null 2>&1; then
    consul_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    scripts/consul.sh start "$consul_port" "$work/consul" >/dev/null
    export GATEHOUSE_CONSUL_ADDR="127.0.0.1:$consul_port"
elif [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ]; then
    echo "consul is required (scripts/install-consul.sh)" >&2
    exit 1
fi

cargo test --workspace --all-targets -- --test-threads=2
