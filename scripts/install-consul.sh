#!/usr/bin/env bash
# Installs the Consul agent 1.8.7 into .tools/consul/ inside the repository and prints the path
# of the binary. Debian bookworm has no consul package; bullseye ships 1.8.7 (MPL-2.0, a static
# Go binary linking only libc). We fetch that .deb with apt-get using a PRIVATE sources list,
# lists directory and cache under .tools/consul/apt/, so the machine's apt configuration is never
# touched, and unpack it with dpkg-deb -x (no dpkg database change, nothing runs as a service).
# Idempotent: if the binary is already there and reports 1.8.7, only its path is printed.
# Usage: scripts/install-consul.sh          (prints e.g. /repo/.tools/consul/usr/bin/consul)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEST="$ROOT/.tools/consul"
BIN="$DEST/usr/bin/consul"
VERSION="1.8.7"

# The version is read into a variable first: with pipefail, `consul version | head -1` fails
# whenever head exits before consul wrote its second line (SIGPIPE), a race seen on a fresh machine.
installed_version() { local v; v=$("$BIN" version 2>/dev/null) || true; echo "${v%%$'\n'*}"; }
if [ -x "$BIN" ] && [[ "$(installed_version)" == *"v$VERSION"* ]]; then
    echo "$BIN"
    exit 0
fi

# Reuse the mirror the machine's own apt sources point at (deb822 "URIs:" or one-line "deb URL").
mirror=""
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    case "$f" in
    *.sources) cand=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' "$f") ;;
    *) cand=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; break}}' "$f") ;;
    esac
    for u in $cand; do
        # The main archive, not the security one (consul is in bullseye main).
        case "$u" in
        *debian-security*) ;;
        */debian | */debian/) mirror=${u%/}; break 2 ;;
        esac
    done
done
[ -n "$mirror" ] || mirror="http://deb.debian.org/debian"

APTDIR="$DEST/apt"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/etc" "$APTDIR/debs"

# Signature verification: Debian's archive keyring (package debian-archive-keyring, present on
# every Debian system) also holds the bullseye signing keys, so the bullseye Release file is
# verified normally; [trusted=yes] is not needed. If the keyring is missing we fail, rather than
# download unverified.
KEYRING=""
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-bullseye-stable.gpg; do
    if [ -f "$k" ]; then KEYRING="$k"; break; fi
done
[ -n "$KEYRING" ] || { echo "no Debian archive keyring found (install debian-archive-keyring)" >&2; exit 1; }

echo "deb [signed-by=$KEYRING] $mirror bullseye main" >"$APTDIR/etc/sources.list"

APT_OPTS=(
    -o "Dir::Etc::sourcelist=$APTDIR/etc/sources.list"
    -o "Dir::Etc::sourceparts=/dev/null"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
)

# As root, apt hands downloads to the unprivileged _apt user, which cannot write into a work tree
# under /root or /work: keep the download as the calling user (avoids a warning, same result).
if [ "$(id -u)" -eq 0 ]; then APT_OPTS+=(-o "APT::Sandbox::User=root"); fi

# apt-get download writes into the current directory; it needs no root with these private
# directories. Retry: registries can be briefly unavailable.
ok=0
for attempt in 1 2 3; do
    if apt-get "${APT_OPTS[@]}" update -qq >&2 &&
        (cd "$APTDIR/debs" && apt-get "${APT_OPTS[@]}" download "consul=$VERSION*" >&2); then
        ok=1
        break
    fi
    echo "fetching consul from bullseye failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 5))
done
[ "$ok" -eq 1 ] || { echo "could not download consul $VERSION" >&2; exit 1; }

deb=$(ls "$APTDIR"/debs/consul_*.deb | head -1)
dpkg-deb -x "$deb" "$DEST"
[[ "$(installed_version)" == *"v$VERSION"* ]] || { echo "unexpected consul version: $(installed_version)" >&2; exit 1; }
# The lists and the .deb are only needed for installing: keep the tree small.
rm -rf "$APTDIR/lists" "$APTDIR/cache" "$APTDIR/debs"
echo "$BIN"
