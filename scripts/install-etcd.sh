#!/usr/bin/env bash
# Installs etcd (server and etcdctl) from Debian's archive into .tools/etcd/ inside the repository
# and prints the path of the server binary. bookworm ships etcd-server/etcd-client 3.4.23 (static
# Go binaries linking only libc). The .debs are fetched with `apt-get download` from the machine's
# own apt sources and unpacked with dpkg-deb -x: no dpkg database change, no system service
# started (the package's postinst would run one on :2379), tests start their own members
# (scripts/etcd.sh, tests/interop_support).
# Idempotent: if the binary is already there and runs, only its path is printed.
# Usage: scripts/install-etcd.sh          (prints e.g. /repo/.tools/etcd/usr/bin/etcd)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEST="$ROOT/.tools/etcd"
BIN="$DEST/usr/bin/etcd"

if [ -x "$BIN" ] && [ -x "$DEST/usr/bin/etcdctl" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
DEBS="$DEST/debs"
mkdir -p "$DEBS"
APT_OPTS=()
# As root, apt hands downloads to the unprivileged _apt user, which cannot write into a work tree
# under /root or /work: keep the download as the calling user (avoids a warning, same result).
if [ "$(id -u)" -eq 0 ]; then APT_OPTS+=(-o "APT::Sandbox::User=root"); fi

# Registries can be briefly unavailable: retry; refresh the package lists after a failure.
ok=0
for attempt in 1 2 3; do
    if (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download etcd-server etcd-client >&2); then
        ok=1
        break
    fi
    echo "apt-get download etcd-server etcd-client failed (attempt $attempt), updating lists" >&2
    $SUDO apt-get update -qq >&2 || true
    sleep $((attempt * 2))
done
[ "$ok" -eq 1 ] || { echo "could not download etcd-server/etcd-client" >&2; exit 1; }

for deb in "$DEBS"/etcd-server_*.deb "$DEBS"/etcd-client_*.deb; do
    dpkg-deb -x "$deb" "$DEST"
done
rm -rf "$DEBS"
"$BIN" --version >&2 || { echo "unpacked etcd does not run" >&2; exit 1; }
echo "$BIN"
