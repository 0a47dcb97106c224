#!/usr/bin/env bash
# Starts or stops a throw-away standalone Nacos 2.3.1 server (embedded Derby storage, no auth) for
# tests, from .tools/nacos (scripts/install-nacos.sh). Nacos derives its other ports from the HTTP
# port P: gRPC for clients P+1000 (what nacos-sdk-go v2 and due's registry use), gRPC between
# servers P+1001, and JRaft P-1000; all four must be free. Data, logs and the pid file go into DIR.
#   scripts/nacos.sh start HTTP_PORT DIR  -> returns once /nacos/v1/ns/operator/metrics says UP
#                                            and the gRPC port accepts (<= 180 s); pid in DIR/nacos.pid
#   scripts/nacos.sh stop  HTTP_PORT DIR  -> stops it (bounded, then KILL)
# NACOS_JAVA_OPTS adds JVM options; NACOS_ARGS adds Spring arguments (e.g.
# --logging.level.com.alibaba.nacos.naming.push=debug).
set -euo pipefail

usage() { echo "usage: $0 start|stop HTTP_PORT DIR" >&2; exit 2; }
[ $# -eq 3 ] || usage
cmd=$1 port=$2 dir=$3
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/nacos.pid"
repo=$(cd "$(dirname "$0")/.." && pwd)
home="$repo/.tools/nacos"

# shellcheck source=lib/daemon.sh
. "$repo/scripts/lib/daemon.sh"

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# Ready: the naming module says UP and the clients' gRPC port accepts.
ready() { [ "$(http_get "$port" /nacos/v1/ns/operator/metrics)" = '{"status":"UP"}' ] && port_open $((port + 1000)); }

case "$cmd" in
start)
    refuse_running nacos "$pidfile"
    [ -f "$home/nacos-standalone.jar" ] || { echo "no nacos: run scripts/install-nacos.sh" >&2; exit 1; }
    command -v java >/dev/null 2>&1 || { echo "java is not installed" >&2; exit 1; }
    for p in "$port" $((port + 1000)) $((port + 1001)) $((port - 1000)); do
        if port_open "$p"; then echo "port $p is in use (nacos needs $port and +1000, +1001, -1000)" >&2; exit 1; fi
    done
    # Both hessian jars are needed, com.caucho 4.0.x first (scripts/nacos/pom.xml says why).
    cp="$home/nacos-standalone.jar:$(ls "$home"/lib/hessian-4.*.jar):$home/lib/*"
    # Run from DIR: Nacos writes derby.log, work/ and (nacos.home) data/ and logs/ relative to it.
    # shellcheck disable=SC2086 # NACOS_JAVA_OPTS and NACOS_ARGS are word lists
    (cd "$dir" && exec java -Xms128m -Xmx256m -XX:+UseSerialGC ${NACOS_JAVA_OPTS:-} \
        -Dnacos.standalone=true -Dnacos.home="$dir" -Dnacos.server.ip=127.0.0.1 \
        -Dnacos.logs.path="$dir/logs" -cp "$cp" gatehouse.nacos.Standalone \
        --server.port="$port" --server.address=127.0.0.1 --server.servlet.contextPath=/nacos \
        --server.tomcat.basedir="$dir/tomcat" ${NACOS_ARGS:-} \
        >"$dir/nacos.log" 2>&1) &
    pid=$!
    echo "$pid" >"$pidfile"
    # About 35 s on a loaded 2-core machine; 180 s bound.
    START_BOUND_S=180 await_start nacos "$pid" "$pidfile" "$dir/nacos.log" \
        "127.0.0.1:$port (gRPC $((port + 1000)))" ready
    ;;
stop)
    stop_pidfile "$pidfile" 10
    ;;
*) usage ;;
esac
