#!/usr/bin/env bash
# Engine echo with an external client: the server is one process pinned to
# CPU 1, the load generator (bench/src/bin/echo_client.rs, a uvring loop)
# its own process pinned to CPU 0. Unlike the in-process rig of
# `cargo bench` (server and clients in one loop, where io_uring batches both
# sides' syscalls into one io_uring_enter), only the server's work is
# measured here: round trips/s, and the server's CPU time (utime + stime
# from /proc, over the client's measuring window) per round trip.
#
#   bench/echo_external.sh            # ~2 minutes: 2 s windows, 5 repeats, median
#   bench/echo_external.sh --quick    # ~40 s:      1 s windows, 3 repeats, median
#
# Options: --quick, --duration S, --repeats N, --warmup S,
#          --client-backend epoll|io_uring|auto (default auto),
#          --only REGEX (servers whose name matches), --no-build,
#          --shapes CxS,... (connections x message bytes; default 1x64,64x64).
#
# Servers (each one thread, started once, pinned with taskset -c 1):
#   uvring-epoll, uvring-io_uring   bench/src/bin/echo_server.rs --backend B
#   uvring-io_uring-noringfd (registered ring fd off), -fixed (registered
#   files on), -zc (SEND_ZC on)     the same with UVRING_IO_URING_FEATURES set
#   tokio-ct                        bench/peers/tokio_echo (current-thread runtime)
#   monoio                          bench/peers/monoio_echo (io_uring driver);
#                                   skipped, with the reason, if it cannot build or start
#
# Shapes: 1 connection x 64 B and 64 connections x 64 B (ping-pong: each
# connection sends a message and waits for all of it to come back).
# Every (shape, server) runs --repeats times, interleaved round by round
# (each round starts one server further down the list), so a busy moment of
# the shared machine hits every server alike; the report takes medians.
#
# Output: the table on stdout, bench/results/echo-external.md, .csv
# (medians and ratios) and -runs.csv (every run); --quick writes
# quick-echo-external.* instead (not committed).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

DURATION=2
REPEATS=5
WARMUP=0.5
QUICK=0
BUILD=1
ONLY=""
CLIENT_BACKEND=auto
SHAPES_ARG="1x64,64x64"
CMDLINE="bench/echo_external.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=1; REPEATS=3; WARMUP=0.3; QUICK=1 ;;
        --duration) DURATION="$2"; shift ;;
        --repeats) REPEATS="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --client-backend) CLIENT_BACKEND="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --shapes) SHAPES_ARG="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "echo_external.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "echo-external: $*" >&2; }

[ "$(nproc)" -ge 2 ] || { log "needs 2 CPUs (client on CPU 0, server on CPU 1)"; exit 1; }
command -v taskset >/dev/null || { log "taskset (util-linux) is missing"; exit 1; }

# ---- set-up -----------------------------------------------------------------

TMP="$(mktemp -d /tmp/uvring-echo-ext.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build ------------------------------------------------------------------

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
SKIPPED=()
if [ "$BUILD" = 1 ]; then
    log "building echo_server, echo_client (release)"
    (cd "$ROOT" && cargo build -q --release -p uvring-bench --bin echo_server --bin echo_client)
    log "building tokio_echo (release, bench/peers)"
    cargo build -q --release --target-dir "$TARGET_DIR" --manifest-path "$HERE/peers/Cargo.toml" -p tokio_echo
    log "building monoio_echo (release, bench/peers)"
    if ! cargo build -q --release --target-dir "$TARGET_DIR" --manifest-path "$HERE/peers/Cargo.toml" -p monoio_echo 2>"$TMP/monoio-build.log"; then
        SKIPPED+=("monoio: did not build ($(grep -m1 error "$TMP/monoio-build.log" || tail -n 1 "$TMP/monoio-build.log"))")
        rm -f "$BIN/monoio_echo"
    fi
fi

# ---- servers ----------------------------------------------------------------

NAMES=()
declare -A ADDR_OF PID_OF

# start NAME CMD...: starts a server pinned to CPU 1 in its own session and
# waits for its `listening ADDR` line; a server that does not come up is
# skipped, with its log.
start() {
    local name="$1"; shift
    if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then return 0; fi
    if [ ! -x "$1" ]; then
        log "$name skipped: $1 is missing"
        return 0
    fi
    setsid taskset -c 1 "$@" >"$TMP/$name.log" 2>&1 &
    local pid=$! addr=""
    PIDS+=("$pid")
    for _ in $(seq 1 50); do
        addr="$(awk '/^listening / {print $2; exit}' "$TMP/$name.log")"
        [ -n "$addr" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        local why
        why="$(tail -n 3 "$TMP/$name.log" | tr '\n' ' ')"
        log "$name skipped: it did not start: $why"
        SKIPPED+=("$name: did not start: ${why:-no output}")
        { kill -KILL -- "-$pid"; wait "$pid"; } 2>/dev/null || true
        return 0
    fi
    NAMES+=("$name")
    ADDR_OF[$name]=$addr
    PID_OF[$name]=$pid
    log "$name up on $addr (pid $pid, CPU 1)"
}

start uvring-epoll "$BIN/echo_server" --backend epoll
start uvring-io_uring "$BIN/echo_server" --backend io_uring
# io_uring with optional features switched off (UVRING_IO_URING_FEATURES,
# see bench/RESULTS.md "io_uring to the floor"): each step's A/B in one run.
start uvring-io_uring-noringfd /usr/bin/env UVRING_IO_URING_FEATURES=no_ring_fd "$BIN/echo_server" --backend io_uring
start uvring-io_uring-fixed /usr/bin/env UVRING_IO_URING_FEATURES=fixed_files "$BIN/echo_server" --backend io_uring
start uvring-io_uring-zc /usr/bin/env UVRING_IO_URING_FEATURES=send_zc "$BIN/echo_server" --backend io_uring
start tokio-ct "$BIN/tokio_echo"
start monoio "$BIN/monoio_echo"
[ ${#NAMES[@]} -gt 0 ] || { log "no server came up"; exit 1; }

# ---- runs -------------------------------------------------------------------

mkdir -p "$RESULTS"
if [ "$QUICK" = 1 ]; then PREFIX="$RESULTS/quick-echo-external"; else PREFIX="$RESULTS/echo-external"; fi
RUNS="$PREFIX-runs.csv"
echo "shape,server,repeat,secs,round_trips,rate,server_cpu_s,server_cpu_us_per_rt,client_cpu_share,client_backend" >"$RUNS"
IFS=, read -r -a SHAPES <<<"${SHAPES_ARG//x/ }"
n=${#NAMES[@]}
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq 1 "$REPEATS"); do
    for shape in "${SHAPES[@]}"; do
        read -r conns size <<<"$shape"
        for i in $(seq 0 $((n - 1))); do
            name="${NAMES[$(( (i + rep - 1) % n ))]}"
            if ! row="$("$BIN/echo_client" --addr "${ADDR_OF[$name]}" -c "$conns" -s "$size" -d "$DURATION" \
                --warmup "$WARMUP" --cpu 0 --server-pid "${PID_OF[$name]}" --backend "$CLIENT_BACKEND" --csv \
                2>"$TMP/client.err")"; then
                log "client failed against $name (${conns}c): $(cat "$TMP/client.err")"
                continue
            fi
            echo "${conns}c/${size}B,$name,$rep,${row#*,*,}" >>"$RUNS"
            printf 'echo-external: %-16s %3sc/%sB run %d: %9.0f rt/s  %6.2f us server CPU per rt\n' \
                "$name" "$conns" "$size" "$rep" "$(echo "$row" | cut -d, -f5)" "$(echo "$row" | cut -d, -f7)" >&2
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- report -----------------------------------------------------------------

CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
MACHINE="$(nproc) cores ($CPU), $(uname -sr)"
NOTES=("mode: external client: echo_client (uvring loop, backend $CLIENT_BACKEND) pinned to CPU 0, each server one process pinned to CPU 1; ${DURATION}s windows after ${WARMUP}s warm-up, $REPEATS repeats interleaved, median (min..max)"
       "server CPU = utime+stime of the server's process tree from /proc over the client's window; loopback TCP, TCP_NODELAY"
       "load average before: $LOAD_BEFORE, after: $LOAD_AFTER (other work on the 2 cores moves absolute figures; compare ratios)")
for s in "${SKIPPED[@]}"; do NOTES+=("skipped: $s"); done
python3 "$HERE/compare/echo_report.py" "$RUNS" "$PREFIX" "$MACHINE" "$CMDLINE" "${NOTES[@]}"
log "saved $PREFIX.md, $PREFIX.csv, $RUNS"
