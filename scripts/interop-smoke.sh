#!/usr/bin/env bash
# End-to-end smoke run of the interop setup against the REFERENCE Go gate (due v2.4.1):
#   Redis + Consul (our scripts) -> Go gate over WebSocket (due's server) and Go gate over TCP
#   (internal/tcpnet) -> Go node -> Go client on each: connect, send route 1 "hello", expect the
#   echo, and expect the node's connect event carrying that gate's gid.
# Installs what is missing (Redis, Consul, Go modules) first. Every wait is bounded; every
# process started here is stopped on exit (trap). Logs are kept in $WORK (printed on failure).
# Usage: scripts/interop-smoke.sh     (exit 0 = pass; KEEP_LOGS=1 keeps $WORK after a pass too)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BIN="$REPO/tests/interop/bin"

# Timings from bash's own clock (no bc/date arithmetic needed): milliseconds since a mark.
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
t0=$(now_ms)
elapsed() { local d=$(($(now_ms) - $1)); printf '%d.%01d' $((d / 1000)) $((d % 1000 / 100)); }
say() { echo "[smoke $(elapsed "$t0")s] $*"; }

WORK=$(mktemp -d /tmp/interop-smoke.XXXXXX)
PIDS=()
REDIS_PORT="" CONSUL_PORT=""
cleanup() {
    rc=$?
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do # bounded wait for a graceful exit, then KILL
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ -n "$REDIS_PORT" ] && "$REPO/scripts/redis.sh" stop "$REDIS_PORT" "$WORK/redis" || true
    [ -n "$CONSUL_PORT" ] && "$REPO/scripts/consul.sh" stop "$CONSUL_PORT" "$WORK/consul" || true
    if [ "$rc" -ne 0 ]; then
        echo "smoke FAILED (rc $rc); logs in $WORK:" >&2
        for f in "$WORK"/*.out; do [ -f "$f" ] && { echo "== $f" >&2; tail -40 "$f" >&2; }; done
    else
        [ -n "${KEEP_LOGS:-}" ] || rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_for FILE REGEX SECONDS: until a line of FILE matches (grep -E), bounded.
wait_for() {
    local deadline=$((SECONDS + $3))
    until grep -qE "$2" "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "timed out after $3 s waiting for /$2/ in $1" >&2; return 1; }
        sleep 0.1
    done
}

# ---- prerequisites ----
s=$(now_ms); timeout 600 scripts/install-redis.sh >/dev/null; say "redis-server ready ($(elapsed "$s")s)"
s=$(now_ms); CONSUL=$(timeout 600 scripts/install-consul.sh | tail -1); export CONSUL
say "consul ready: $CONSUL ($(elapsed "$s")s)"
s=$(now_ms); timeout 900 scripts/build-interop.sh >/dev/null; say "Go peers built ($(elapsed "$s")s)"

# ---- services ----
REDIS_PORT=$(free_port)
scripts/redis.sh start "$REDIS_PORT" "$WORK/redis" >/dev/null
CONSUL_PORT=$(free_port)
scripts/consul.sh start "$CONSUL_PORT" "$WORK/consul" >/dev/null
say "redis on $REDIS_PORT, consul on $CONSUL_PORT"

WS_PORT=$(free_port) TCP_PORT=$(free_port)
for k in gate node client; do
    mkdir -p "$WORK/etc-$k"
    sed -e "s/127\.0\.0\.1:6379/127.0.0.1:$REDIS_PORT/" \
        -e "s/127\.0\.0\.1:8500/127.0.0.1:$CONSUL_PORT/" \
        -e "s/127\.0\.0\.1:3553/127.0.0.1:$TCP_PORT/" \
        -e "s/127\.0\.0\.1:3554/127.0.0.1:$WS_PORT/" \
        "tests/interop/etc/$k/etc.toml" >"$WORK/etc-$k/etc.toml"
done

# ---- cluster: two reference gates (ws, tcp) and one node ----
"$BIN/gate" --etc="$WORK/etc-gate" --proto=ws >"$WORK/gate-ws.out" 2>&1 &
PIDS+=($!)
"$BIN/gate" --etc="$WORK/etc-gate" --proto=tcp >"$WORK/gate-tcp.out" 2>&1 &
PIDS+=($!)
"$BIN/node" --etc="$WORK/etc-node" >"$WORK/node.out" 2>&1 &
PIDS+=($!)
wait_for "$WORK/gate-ws.out" '^\{"event":"ready"' 15
wait_for "$WORK/gate-tcp.out" '^\{"event":"ready"' 15
wait_for "$WORK/node.out" '^\{"event":"ready"' 15
gid_of() { grep -o '^{"event":"ready".*' "$1" | sed -n 's/.*"gid":"\([^"]*\)".*/\1/p' | head -1; }
GID_WS=$(gid_of "$WORK/gate-ws.out") GID_TCP=$(gid_of "$WORK/gate-tcp.out")
say "gates ready: ws $GID_WS on $WS_PORT, tcp $GID_TCP on $TCP_PORT; node ready"

# The gates route to the node once Consul reports it passing (its TCP check must have run) and
# their blocking watch returned: wait for passing, bounded.
deadline=$((SECONDS + 20))
# (The body is read into a variable first: `curl | grep -q` can fail on SIGPIPE under pipefail.)
until body=$(curl -fsS -m 2 "http://127.0.0.1:$CONSUL_PORT/v1/health/service/node?passing=1" 2>/dev/null) &&
    grep -Eq '"Service": *"node"' <<<"$body"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "node never became passing in Consul" >&2; exit 1; }
    sleep 0.2
done
say "node passing in Consul"

# Replies travel node -> gate: the node must see each gate (passing in Consul, then its own watch).
CTL=$(grep -o '^{"event":"ready".*' "$WORK/node.out" | sed -n 's/.*"ctl":"\([^"]*\)".*/\1/p' | head -1)
for gid in "$GID_WS" "$GID_TCP"; do
    deadline=$((SECONDS + 20))
    until [ "$(curl -fsS -m 2 "http://$CTL/hasgate?gid=$gid" 2>/dev/null)" = '{"ok":true,"result":true}' ]; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "node never saw gate $gid" >&2; exit 1; }
        sleep 0.2
    done
done
say "node sees both gates"

# ---- clients ----
# The gates learn the node from a blocking query about a second later: retry the client a few
# times (each try bounded by --timeout) instead of sleeping a fixed time.
run_client() { # NAME ARGS... : send route 1 "hello", expect the echo
    local name=$1; shift
    for try in 1 2 3 4 5; do
        if timeout 15 "$BIN/client" --etc="$WORK/etc-client" "$@" --send="1 1 hello" --timeout=3s \
            >"$WORK/client-$name-$try.out" 2>&1 &&
            grep -q '^{"event":"message","hex":"68656c6c6f","payload":"hello","route":1,"seq":1}$' "$WORK/client-$name-$try.out"; then
            say "client over $name got the echo (try $try)"
            return 0
        fi
        sleep 1
    done
    echo "client over $name never got the echo" >&2
    return 1
}
run_client ws --proto=ws --url="ws://127.0.0.1:$WS_PORT"
run_client tcp --proto=tcp --addr="127.0.0.1:$TCP_PORT"

# ---- node side: connect events with each gate's gid, uid 0, and the delivered message ----
for gid in "$GID_WS" "$GID_TCP"; do
    wait_for "$WORK/node.out" "^\\{\"event\":\"connect\",\"cid\":[1-9][0-9]*,\"gid\":\"$gid\",\"uid\":0\\}$" 5
    wait_for "$WORK/node.out" "^\\{\"event\":\"message\",\"cid\":[1-9][0-9]*,\"gid\":\"$gid\",\"payload\":\"hello\",\"route\":1,\"seq\":1,\"uid\":0\\}$" 5
done
say "node saw connect + message from both gates"
say "PASS"
