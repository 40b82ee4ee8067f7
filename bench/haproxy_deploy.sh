#!/usr/bin/env bash
# Many hosts: two hello_cluster instances behind HAProxy, and a rolling
# deploy of both (one zero-downtime upgrade at a time) under a wrk load.
#
#   bench/haproxy_deploy.sh                 # 20 s of load, 2 deploy rounds
#   bench/haproxy_deploy.sh -d 30 -r 3 -c 64
#
# Options: -d SECONDS (wrk duration, default 20), -c CONNECTIONS (wrk,
#          default 32), -t THREADS (wrk, default 2), -w WORKERS (per
#          instance, default 2), -r ROUNDS (rolling deploys of both
#          instances during the load, default 2), -p POLICY (rr, shared or
#          reuseport, default rr), --no-install.
#
# What it does:
#   1. Installs haproxy and wrk with apt-get if they are missing, and
#      builds hello_cluster (release).
#   2. Copies the binary to a work directory (the "installed" program) and
#      starts two instances, one per "host": 127.0.0.2:8080 and
#      127.0.0.3:8080, each with its admin endpoint on port 9100 of its
#      address (--admin) and a pid file (--pid-file).
#   3. Starts HAProxy on 127.0.0.1:8090 in front of them: round robin,
#      health checks on each instance's admin /health (every 200 ms, down
#      after 2 failures), `option redispatch` and
#      `retry-on conn-failure empty-response response-timeout` with 3
#      retries, so a connection refused or closed mid-deploy is retried on
#      the other instance.
#   4. Runs wrk against HAProxy and, meanwhile, deploys: for each round, for
#      each instance in turn, installs the program anew (copy, then an
#      atomic rename over the old file, as a package manager does), sends
#      its primary SIGUSR2, waits until the new primary has written its pid
#      file, the old primary has exited and /health answers 200, then moves
#      on to the next instance.
#   5. Prints wrk's report and the deploy log; the last line is
#      `failed requests: N` (non-2xx responses plus wrk's socket errors:
#      connect, read, write, timeout).
#
# Everything runs on loopback; the script stops everything it started on
# exit. Logs stay in the work directory it prints.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"

DURATION=20
CONNS=32
THREADS=2
WORKERS=2
ROUNDS=2
POLICY=rr
INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        -d) DURATION="$2"; shift ;;
        -c) CONNS="$2"; shift ;;
        -t) THREADS="$2"; shift ;;
        -w) WORKERS="$2"; shift ;;
        -r) ROUNDS="$2"; shift ;;
        -p) POLICY="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

HOSTS=(127.0.0.2 127.0.0.3)
APP_PORT=8080
ADMIN_PORT=9100
FRONT=127.0.0.1:8090

need() {
    command -v "$1" >/dev/null && return 0
    if [ "$INSTALL" = 0 ]; then
        echo "$1 is missing (run without --no-install to apt-get it)" >&2
        exit 1
    fi
    echo "== installing $2"
    (apt-get update -qq && apt-get install -y -qq "$2") >/dev/null || sudo apt-get install -y -qq "$2" >/dev/null
}
need haproxy haproxy
need wrk wrk
need curl curl

echo "== building hello_cluster (release)"
(cd "$ROOT" && cargo build --release -q -p uvring-cluster --example hello_cluster)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BUILT="$TARGET/release/examples/hello_cluster"

WORK="$(mktemp -d /tmp/uvring-haproxy.XXXXXX)"
mkdir -p "$WORK/bin"
PROGRAM="$WORK/bin/hello_cluster"
cp "$BUILT" "$PROGRAM"
echo "== work directory $WORK"

HAPROXY_PID=""
WRK_PID=""
cleanup() {
    set +e
    [ -n "$WRK_PID" ] && kill "$WRK_PID" 2>/dev/null
    [ -n "$HAPROXY_PID" ] && kill "$HAPROXY_PID" 2>/dev/null
    for h in "${HOSTS[@]}"; do
        pid="$(cat "$WORK/$h.pid" 2>/dev/null)"
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    for _ in $(seq 1 100); do
        alive=0
        for h in "${HOSTS[@]}"; do
            pid="$(cat "$WORK/$h.pid" 2>/dev/null)"
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    wait 2>/dev/null
}
trap cleanup EXIT

health() { # host -> HTTP status of its admin /health
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1:$ADMIN_PORT/health" || true
}

wait_until() { # seconds, description, command...
    local limit="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "timed out waiting for $what" >&2
            exit 1
        fi
        sleep 0.05
    done
}

healthy() { [ "$(health "$1")" = 200 ]; }

for h in "${HOSTS[@]}"; do
    "$PROGRAM" --workers "$WORKERS" --policy "$POLICY" --host "$h" --port "$APP_PORT" \
        --admin "$h:$ADMIN_PORT" --pid-file "$WORK/$h.pid" >>"$WORK/$h.log" 2>&1 &
done
for h in "${HOSTS[@]}"; do
    wait_until 30 "$h to be healthy" healthy "$h"
done
echo "== instances: ${HOSTS[0]} (pid $(cat "$WORK/${HOSTS[0]}.pid")), ${HOSTS[1]} (pid $(cat "$WORK/${HOSTS[1]}.pid"))"

cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch
    retry-on conn-failure empty-response response-timeout

frontend front
    bind $FRONT
    default_backend hello

backend hello
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server check port $ADMIN_PORT inter 200ms fall 2 rise 2
    server a ${HOSTS[0]}:$APP_PORT
    server b ${HOSTS[1]}:$APP_PORT
EOF
haproxy -f "$WORK/haproxy.cfg" -db >>"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
wait_until 10 "HAProxy to answer" curl -sf -o /dev/null --max-time 2 "http://$FRONT/"
echo "== HAProxy on $FRONT (pid $HAPROXY_PID)"

echo "== wrk -t$THREADS -c$CONNS -d${DURATION}s http://$FRONT/ with $ROUNDS rolling deploy round(s)"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://$FRONT/" >"$WORK/wrk.txt" 2>&1 &
WRK_PID=$!
sleep 2

upgrade() { # host
    local h="$1" old new
    old="$(cat "$WORK/$h.pid")"
    # Install the program anew: the running processes keep the old file.
    cp "$BUILT" "$PROGRAM.new" && mv -f "$PROGRAM.new" "$PROGRAM"
    local t0=$SECONDS
    kill -USR2 "$old"
    wait_until 60 "a new primary on $h" sh -c "[ \"\$(cat '$WORK/$h.pid' 2>/dev/null)\" != '$old' ]"
    new="$(cat "$WORK/$h.pid")"
    wait_until 60 "the old primary $old on $h to exit" sh -c "! kill -0 $old 2>/dev/null"
    wait_until 30 "$h to be healthy" healthy "$h"
    echo "   $h: primary $old -> $new in $((SECONDS - t0)) s" | tee -a "$WORK/deploy.log"
}

for r in $(seq 1 "$ROUNDS"); do
    echo "-- round $r" | tee -a "$WORK/deploy.log"
    for h in "${HOSTS[@]}"; do
        upgrade "$h"
        sleep 1
    done
done

wait "$WRK_PID" || true
WRK_PID=""
cat "$WORK/wrk.txt"

non2xx="$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$WORK/wrk.txt")"
socket="$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$WORK/wrk.txt")"
requests="$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$WORK/wrk.txt")"
failed=$(( ${non2xx:-0} ))
for n in $socket; do
    failed=$((failed + n))
done
if [ -z "$requests" ]; then
    echo "wrk did not report (see $WORK/wrk.txt)" >&2
    exit 1
fi
echo "== deploys"
cat "$WORK/deploy.log"
echo "== logs in $WORK"
echo "requests: $requests"
echo "failed requests: $failed"
