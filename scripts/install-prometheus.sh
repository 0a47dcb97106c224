#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package ships both): the metrics tests
# check the exposition with `promtool check metrics` and scrape the gate with a real server.
# Idempotent: does nothing when both are on PATH. The tests start their own server on a free
# loopback port; a system instance the package may start is stopped and disabled again.
# Usage: scripts/install-prometheus.sh
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus already installed: $(prometheus --version 2>&1 | head -1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

ok=0
for attempt in 1 2 3; do
    if $SUDO apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
           prometheus >/dev/null; then
        ok=1
        break
    fi
    echo "apt-get install prometheus failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 5))
done
[ "$ok" -eq 1 ] || { echo "could not install prometheus" >&2; exit 1; }

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
elif [ -x /etc/init.d/prometheus ]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null 2>&1 || { echo "promtool missing after install" >&2; exit 1; }
echo "installed $(prometheus --version 2>&1 | head -1)"
