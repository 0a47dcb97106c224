#!/usr/bin/env bash
# Installs what the wire-fault suite (tests/wire_faults.rs) needs: Toxiproxy's server
# (github.com/Shopify/toxiproxy/v2, from the Go module proxy, checked against the Go checksum
# database) built into tests/interop/bin/toxiproxy-server, and `ip` (Debian's iproute2) for the
# network namespace of the partition tests. The kernel here has no netem qdisc, so latency,
# bandwidth caps, black holes, resets and slow closes are injected by this proxy in the path.
# Idempotent: a binary built from the pinned version (recorded beside it, since `go install`
# leaves the binary's own version string as "git") is kept.
# Usage: scripts/install-toxiproxy.sh   (needs Go >= 1.22)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ip >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iproute2 >/dev/null
    echo "installed iproute2"
fi

VERSION=v2.5.0
BIN=tests/interop/bin/toxiproxy-server
STAMP=tests/interop/bin/.toxiproxy-server.version
if [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    echo "toxiproxy-server $VERSION already built"
    exit 0
fi
command -v go >/dev/null 2>&1 || { echo "go is not installed" >&2; exit 1; }
mkdir -p tests/interop/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# `go install pkg@version` builds outside any module, with the module's own go.sum.
GOBIN="$tmp" timeout 300 go install "github.com/Shopify/toxiproxy/v2/cmd/server@$VERSION"
mv "$tmp/server" "$BIN"
echo "$VERSION" >"$STAMP"
echo "built $BIN ($VERSION)"
