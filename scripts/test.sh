#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and integration tests over real sockets,
# including the cluster suites (real Redis, Consul, etcd, Nacos, Prometheus and due Go peers). It installs
# those first (scripts/install-deps.sh, idempotent; GATEHOUSE_NO_INSTALL=1 skips that step).
# Usage: scripts/test.sh   (from anywhere; needs cargo, and Go for the due peers)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GATEHOUSE_NO_INSTALL:-}" ]; then
    scripts/install-deps.sh
fi

# The Consul, etcd and Nacos clients' real-server tests run against servers of their own when
# installed.
work=$(mktemp -d)
started=()
nacos_starter=""
cleanup() {
    [ -n "$nacos_starter" ] && wait "$nacos_starter" 2>/dev/null
    for s in "${started[@]}"; do
        scripts/"${s%%:*}".sh stop "${s##*:}" "$work/${s%%:*}" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Nacos takes 20-40 s to start: it starts in the background while the lints run. It takes its
# HTTP port P and P+1000, P+1001, P-1000 (scripts/nacos.sh).
if [ -f .tools/nacos/nacos-standalone.jar ] && command -v java >/dev/null 2>&1; then
    nacos_port=$(python3 -c '
import socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
for p in range(21000, 29000, 7):
    if all(free(q) for q in (p, p + 1000, p + 1001, p - 1000)):
        print(p); break')
    started+=("nacos:$nacos_port")
    scripts/nacos.sh start "$nacos_port" "$work/nacos" >"$work/nacos.out" 2>&1 &
    nacos_starter=$!
elif [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ]; then
    echo "nacos is required (scripts/install-nacos.sh; needs java)" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
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
if [ -n "$nacos_starter" ]; then
    if wait "$nacos_starter"; then
        export GATEHOUSE_NACOS_ADDR="127.0.0.1:$nacos_port"
    else
        cat "$work/nacos.out" >&2
        [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ] && exit 1
    fi
    nacos_starter=""
fi

cargo test --workspace --all-targets -- --test-threads=2
