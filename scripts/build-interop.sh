#!/usr/bin/env bash
# Builds the interop suite's Go peers (due v2.4.1 node, client and reference gate; the due
# v2.5.8 node node25, from its own module tests/interop/due25) and the benchmark's (benchnode,
# benchclient) into tests/interop/bin/. Modules come from the Go module
# proxy and are checked against the committed tests/interop/go.sum (-mod=readonly: nothing is
# re-resolved). Each step is time-bounded so a
# stuck download fails the run instead of hanging it.
# Usage: scripts/build-interop.sh   (needs Go >= 1.23; tested with 1.26)
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"

command -v go >/dev/null 2>&1 || { echo "go is not installed" >&2; exit 1; }

# A fresh machine downloads ~45 modules (a few seconds here); 5 minutes is a generous bound.
timeout 300 go mod download
mkdir -p bin
for cmd in node client gate benchnode benchclient; do
    timeout 300 go build -mod=readonly -o "bin/$cmd" "./cmd/$cmd"
done
# The v2.5.8 node: its own module (due v2.5.8 needs go 1.25 and would lift the whole suite to
# due v2.5.8), sharing the suite's internal packages through a replace directive.
(cd due25 && timeout 300 go mod download && timeout 300 go build -mod=readonly -o ../bin/node25 ./cmd/node25)
# The Nacos probe (due's registry/nacos): its own module too, its binary beside it.
(cd nacos && timeout 300 go mod download && timeout 300 go build -mod=readonly -o bin/nacosprobe .)
echo "built: $(cd bin && ls | tr '\n' ' ') nacos/bin/nacosprobe"
