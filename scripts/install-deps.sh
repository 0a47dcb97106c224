#!/usr/bin/env bash
# Installs everything the test suites use, each step idempotent: Redis (Debian), Consul 1.8.7
# (Debian bullseye, into .tools/), etcd 3.4 (Debian bookworm, into .tools/), Nacos 2.3.1 (Maven
# Central, into .tools/; needs java and mvn), Prometheus and
# promtool (Debian), the due v2.4.1 Go peers (tests/interop/bin/) and Toxiproxy for the wire-fault
# suite (tests/interop/bin/toxiproxy-server). scripts/test.sh runs it first; .ci/run too.
# A step that fails is reported; with GATEHOUSE_REQUIRE_SERVICES=1 that fails the run, otherwise
# the suites that need it skip with a message.
# Usage: scripts/install-deps.sh
set -uo pipefail
cd "$(dirname "$0")/.."

failed=()
for step in install-redis install-consul install-etcd install-nacos install-prometheus build-interop install-toxiproxy; do
    if ! "scripts/$step.sh"; then
        echo "scripts/$step.sh failed" >&2
        failed+=("$step")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "not installed: ${failed[*]} (the suites that need them will skip)" >&2
    [ -n "${GATEHOUSE_REQUIRE_SERVICES:-}" ] && exit 1
fi
exit 0
