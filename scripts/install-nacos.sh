#!/usr/bin/env bash
# Builds the standalone Nacos 2.3.1 server of scripts/nacos/ (Maven Central modules, see its pom.xml
# and docs/ops/nacos.md) into .tools/nacos/: nacos-standalone.jar plus lib/*.jar. Needs java (17)
# and mvn. Idempotent: does nothing when .tools/nacos/STAMP matches the sources' hash.
# A cold install downloads ~120 jars (~117 MB) from Maven Central; see docs/ops/nacos.md for times.
# Usage: scripts/install-nacos.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src="$repo/scripts/nacos"
dest="$repo/.tools/nacos"

for tool in java mvn; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not installed" >&2; exit 1; }
done

stamp=$(cat "$src/pom.xml" "$src"/src/main/java/gatehouse/nacos/*.java | sha256sum | cut -c1-16)
if [ -f "$dest/STAMP" ] && [ "$(cat "$dest/STAMP")" = "$stamp" ] && [ -f "$dest/nacos-standalone.jar" ]; then
    echo "nacos already installed in $dest ($(ls "$dest/lib" | wc -l) jars)"
    exit 0
fi

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
ok=0
for attempt in 1 2 3; do
    # -B: no colours or progress; the build output goes to its own folder, not the source tree.
    # shellcheck disable=SC2086 # NACOS_MVN_FLAGS: extra mvn flags, e.g. -Dmaven.repo.local=DIR
    if timeout 600 mvn -B -q -f "$src/pom.xml" -DbuildDirectory="$build/target" ${NACOS_MVN_FLAGS:-} \
        package dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$build/target/lib"; then
        ok=1
        break
    fi
    echo "mvn build of scripts/nacos failed (attempt $attempt), retrying" >&2
    sleep $((attempt * 5))
done
[ "$ok" -eq 1 ] || { echo "could not build the Nacos server" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest"
cp "$build"/target/nacos-standalone-1.jar "$dest/nacos-standalone.jar"
cp -r "$build/target/lib" "$dest/lib"
echo "$stamp" >"$dest/STAMP"
echo "installed nacos 2.3.1 standalone in $dest ($(ls "$dest/lib" | wc -l) jars, $(du -sh "$dest" | cut -f1))"
