# Shared by scripts/{redis,consul,etcd,nacos}.sh: the throw-away test servers' start check, stop
# and loopback HTTP probe. Source it; it defines functions only.

# Plain HTTP GET on loopback; curl when present, else bash's /dev/tcp (a fresh machine may lack curl).
http_get() { # PORT PATH -> body on stdout
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 "http://127.0.0.1:$1$2" 2>/dev/null
    else
        timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"' || exit 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "'"$2"'" >&3
            sed "1,/^\r\{0,1\}$/d" <&3' 2>/dev/null
    fi
}

# Refuses to start a second server on the same pid file.
refuse_running() { # NAME PIDFILE
    if [ -f "$2" ] && kill -0 "$(cat "$2")" 2>/dev/null; then
        echo "$1 already running (pid $(cat "$2"))" >&2
        exit 1
    fi
}

# Waits up to START_BOUND_S seconds (default 10; checks every 0.1 s) for CHECK... to succeed;
# prints the log tail and exits 1 when the server dies or the time is up (killing it then). CHECK
# may set `ready_note` for the message.
await_start() { # NAME PID PIDFILE LOG WHAT CHECK...
    local name=$1 pid=$2 pidfile=$3 log=$4 what=$5 bound=${START_BOUND_S:-10}
    shift 5
    for _ in $(seq 1 $((bound * 10))); do
        if "$@"; then
            echo "$name started on $what (pid $pid${ready_note:-})"
            exit 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited during start-up; log:" >&2
            tail -20 "$log" >&2 || true
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.1
    done
    echo "$name not ready within $bound s; log:" >&2
    tail -20 "$log" >&2 || true
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
}

# Stops the server of PIDFILE: TERM, up to SECONDS (default 5), then KILL.
stop_pidfile() { # PIDFILE [SECONDS]
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((${2:-5} * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}
