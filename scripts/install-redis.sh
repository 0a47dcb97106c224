#!/usr/bin/env bash
# Installs a Redis server (>= 6, needed by due's locator: SET ... KEEPTTL) from Debian's archive.
# Idempotent: does nothing when a redis-server >= 6 is already on PATH.
# The interop tests start their own Redis instances (scripts/redis.sh) on free loopback ports,
# so the Debian service the package may start is stopped and disabled again.
# Usage: scripts/install-redis.sh
set -euo pipefail

redis_major() {
    # "Redis server v=7.0.15 sha=..." -> 7
    redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9]*\)\..*/\1/p'
}

if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    major=$(redis_major)
    if [ -n "$major" ] && [ "$major" -ge 6 ]; then
        echo "redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p') already installed"
        exit 0
    fi
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Registries can be briefly unavailable: retry the whole update+install a few times.
ok=0
for attempt in 1 2 3; do
    if $SUDO apt-get update -qq && \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null; then
        ok=1
        break
    fi
    echo "apt-get install redis-server failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 5))
done
[ "$ok" -eq 1 ] || { echo "could not install redis-server" >&2; exit 1; }

# The package's postinst starts a system instance on :6379 where an init system exists. Tests
# must not depend on it (and it would hold port 6379): stop and disable it, whatever the init.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
elif [ -x /etc/init.d/redis-server ]; then
    $SUDO /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    $SUDO update-rc.d redis-server disable >/dev/null 2>&1 || true
fi

major=$(redis_major)
if [ -z "$major" ] || [ "$major" -lt 6 ]; then
    echo "installed redis-server is older than 6: $(redis-server --version)" >&2
    exit 1
fi
echo "installed $(redis-server --version)"
