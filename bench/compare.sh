#!/usr/bin/env bash
# Peer comparison: uvring cluster vs nginx vs hyper vs Node's own `cluster`,
# HTTP "hello world", 2 workers each, on loopback, measured with wrk.
#
# The headline figure is COST: the server's CPU time per request, that is
# utime+stime of the server's whole process tree (primary and workers, all
# threads) read from /proc just before and just after each wrk run
# (bench/src/bin/proc_tree.rs), divided by the requests wrk completed in
# that run. On 2 cores shared with wrk, req/s mostly measures the load
# generator; CPU per request is what tells good servers apart. req/s and
# wrk's p50/p99 latency are reported beside it.
#
#   bench/compare.sh            # ~5 minutes: 5 s runs, 3 repeats, median
#   bench/compare.sh --quick    # ~1 minute:  1 s runs, 3 repeats, median
#   bench/compare.sh --duration 10 --repeats 3   # the design's 10 s runs (~9 min)
#   bench/compare.sh --scenarios static4k,static1m   # static files only (~1 minute)
#
# Options: --quick, --duration S, --repeats N, --connections C,
#          --warmup S (seconds of each scenario's load per server before
#          the measured rounds; default 5, --quick 1, 0 for none),
#          COMPARE_BASE_PORT=P in the environment fixes the first port,
#          --only REGEX (servers whose name matches), --no-install,
#          --scenarios LIST (comma-separated, of keepalive, close,
#          static4k, static1m; default all; output files named after them).
#
# Servers (each started once on its own port, all kept idle while another
# is measured, all killed on exit, even on failure):
#   uvring-{rr,shared,reuseport}-{epoll,io_uring}
#       cargo's release build of cluster/examples/hello_cluster
#       --workers 2 --policy P --backend B --port PORT
#   nginx      worker_processes 2; `return 200 "hello world"`; config, pid
#              and logs in a temp dir; not a daemon
#   node-rr    bench/compare/node_cluster.js, 2 workers, Node's default
#              round-robin policy
#   node-shared  the same with NODE_CLUSTER_SCHED_POLICY=none (workers
#              accept on the shared listening socket)
#   node-under-uvring  the same app, 2 unchanged Node workers, under
#              uvring's primary speaking Node's cluster protocol (the
#              uvring-node binary, release build), policy rr (several
#              connections in flight per worker); node-under-uvring-shared
#              the same with --policy shared
#   hyper      bench/peers/hyper_hello: hyper 1.x on tokio's multi-thread
#              runtime with 2 worker threads (one process), built in release
#   uvring-static-{epoll,io_uring}  (static-file scenarios only)
#       cargo's release build of cluster/examples/static_files
#       --workers 2 --backend B --root SITE --port PORT (policy rr)
#   nginx serves the same SITE for the static scenarios: the same server
#       block, `location ~ \.bin$ { root SITE; }` with sendfile and
#       tcp_nopush on (nginx's static-file setup; no open_file_cache)
#
# Scenarios: keep-alive (wrk -t2 -c64 -dS) and connection churn (the same
# with -H "Connection: close": one request per connection); static files:
# keep-alive GETs of a 4 KiB file (static4k) and of a 1 MiB file
# (static1m), both in the page cache, nginx against uvring-static-* only. Each (scenario,
# server) runs --repeats times, interleaved round by round (each round starts
# one server further down the list) so that a slow moment of the machine
# hits every peer alike; the report takes the median.
#
# CPU: the machine has 2 cores, and wrk (2 threads) shares them with the 2
# workers (and a primary) of the server under test. Nothing is pinned: every
# peer gets the same treatment, and pinning wrk to one core and the server
# to the other would leave one core for 2 workers. So absolute numbers are
# low and the ratios are what counts.
#
# Output: the table on stdout (led by CPU us per request and its ratio to
# nginx), bench/results/latest.md, latest.csv (medians and ratios),
# latest-runs.csv (every single run, with its CPU) and latest.png (chart:
# CPU per request above, req/s below);
# --quick writes quick.* instead (not committed), so a smoke run never
# replaces the last full one.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

DURATION=5
REPEATS=3
CONNS=64
ONLY=""
SCENARIOS="keepalive close static4k static1m"
SCEN_GIVEN=0
WARMUP=5
WARMUP_GIVEN=0
INSTALL=1
QUICK=0
CMDLINE="bench/compare.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=1; REPEATS=3; QUICK=1; [ "$WARMUP_GIVEN" = 1 ] || WARMUP=1 ;;
        --warmup) WARMUP="$2"; WARMUP_GIVEN=1; shift ;;
        --duration) DURATION="$2"; shift ;;
        --repeats) REPEATS="$2"; shift ;;
        --connections) CONNS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --scenarios) SCENARIOS="${2//,/ }"; SCEN_GIVEN=1; shift ;;
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,70p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "compare: $*" >&2; }

# ---- tools ------------------------------------------------------------------

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v node >/dev/null || need_apt+=(nodejs)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$INSTALL" = 1 ]; then
        log "installing ${need_apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        log "missing ${need_apt[*]} (and --no-install given)"; exit 1
    fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    if [ "$INSTALL" = 1 ]; then
        log "installing matplotlib (pip)"
        python3 -m pip install -q matplotlib >/dev/null 2>&1 || log "matplotlib unavailable: no chart"
    fi
fi

# ---- builds -----------------------------------------------------------------

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
log "building proc_tree (release)"
(cd "$ROOT" && cargo build -q --release -p uvring-bench --bin proc_tree)
PROC_TREE="$TARGET_DIR/release/proc_tree"
HELLO_SCENARIOS=0
[[ " $SCENARIOS " == *" keepalive "* || " $SCENARIOS " == *" close "* ]] && HELLO_SCENARIOS=1
HYPER=""
if [ "$HELLO_SCENARIOS" = 0 ]; then
    log "no hello scenario: hyper_hello, hello_cluster and node are left out"
elif log "building hyper_hello (release, bench/peers)"; cargo build -q --release --target-dir "$TARGET_DIR" --manifest-path "$HERE/peers/Cargo.toml" -p hyper_hello; then
    HYPER="$TARGET_DIR/release/hyper_hello"
else
    log "hyper_hello did not build: the hyper row is skipped"
fi

HELLO=""
if [ "$HELLO_SCENARIOS" = 0 ]; then
    :
elif [ -f "$ROOT/cluster/examples/hello_cluster.rs" ] || [ -d "$ROOT/cluster/examples/hello_cluster" ]; then
    log "building hello_cluster (release)"
    (cd "$ROOT" && cargo build -q --release -p uvring-cluster --example hello_cluster)
    HELLO="$TARGET_DIR/release/examples/hello_cluster"
    [ -x "$HELLO" ] || { log "hello_cluster was built but $HELLO is missing"; HELLO=""; }
else
    log "cluster/examples/hello_cluster is not there yet: uvring rows are skipped"
fi

UVNODE=""
if [ -f "$ROOT/cluster/src/bin/uvring-node.rs" ]; then
    log "building uvring-node (release)"
    (cd "$ROOT" && cargo build -q --release -p uvring-cluster --bin uvring-node)
    UVNODE="$TARGET_DIR/release/uvring-node"
fi
STATIC_FILES=""
if [[ " $SCENARIOS " == *" static"* ]] && [ -f "$ROOT/cluster/examples/static_files.rs" ]; then
    log "building static_files (release)"
    (cd "$ROOT" && cargo build -q --release -p uvring-cluster --example static_files)
    STATIC_FILES="$TARGET_DIR/release/examples/static_files"
    [ -x "$STATIC_FILES" ] || { log "static_files was built but $STATIC_FILES is missing"; STATIC_FILES=""; }
fi

# ---- servers ----------------------------------------------------------------

TMP="$(mktemp -d /tmp/uvring-compare.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        # Each server runs in its own session (setsid): its process group id
        # is the pid we started, and the group holds its workers too.
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${PIDS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The static site: the two files, and an index.html that answers the
# readiness check like the hello servers do. Read once so that every
# server finds them in the page cache.
SITE="$TMP/site"
mkdir -p "$SITE"
printf 'hello world' >"$SITE/index.html"
head -c 4096 /dev/urandom >"$SITE/4k.bin"
head -c 1048576 /dev/urandom >"$SITE/1m.bin"
cat "$SITE"/*.bin >/dev/null
# nginx's workers run as an unprivileged user: let them read the site.
chmod 755 "$TMP" "$SITE"
chmod 644 "$SITE"/*

# Listening ports below the kernel's ephemeral range (see first_port).
NEXT_PORT=${COMPARE_BASE_PORT:-$(first_port)}
NAMES=()
declare -A PORT_OF PID_OF

# nginx_conf PORT: (re)writes nginx's config for that port.
nginx_conf() {
    nginx_hello_conf "$TMP/nginx" "$1" 2 4096 "" "keepalive_requests 100000000;" \
        "location ~ \.bin\$ { root $SITE; sendfile on; tcp_nopush on; }"
}

# start NAME CMD...: starts a server in its own session with its output in
# the temp dir, waits until it answers "hello world", records its port. The
# word PORT in CMD stands for the port. A server that does not come up (say,
# EADDRINUSE) is tried twice more on other ports, then skipped.
start() {
    local name="$1"; shift
    if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then return 0; fi
    local attempt port pid body a
    for attempt in 1 2 3; do
        port=$NEXT_PORT
        NEXT_PORT=$((NEXT_PORT + 1))
        local cmd=()
        for a in "$@"; do cmd+=("${a//PORT/$port}"); done
        [ "$name" = nginx ] && nginx_conf "$port"
        setsid "${cmd[@]}" >"$TMP/$name.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        body=""
        for _ in $(seq 1 100); do
            body="$(curl -s -m 1 "http://127.0.0.1:$port/" 2>/dev/null || true)"
            [ "$body" = "hello world" ] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ "$body" = "hello world" ]; then
            NAMES+=("$name")
            PORT_OF[$name]=$port
            PID_OF[$name]=$pid
            log "$name up on port $port (pid $pid)"
            return 0
        fi
        log "$name did not come up on port $port (attempt $attempt, got '${body:0:40}'); its log:"
        sed 's/^/    /' "$TMP/$name.log" | tail -n 6 >&2
        { kill -KILL -- "-$pid"; wait "$pid"; } 2>/dev/null || true
    done
    log "$name skipped"
}

if [ -n "$HELLO" ]; then
    for policy in rr shared reuseport; do
        for backend in epoll io_uring; do
            start "uvring-$policy-$backend" "$HELLO" --workers 2 --policy "$policy" --backend "$backend" --port PORT
        done
    done
fi
start nginx "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g "daemon off;"
[ "$HELLO_SCENARIOS" = 1 ] && start node-rr env NODE_CLUSTER_SCHED_POLICY=rr node "$HERE/compare/node_cluster.js" --workers 2 --port PORT
[ "$HELLO_SCENARIOS" = 1 ] && start node-shared env NODE_CLUSTER_SCHED_POLICY=none node "$HERE/compare/node_cluster.js" --workers 2 --port PORT
if [ "$HELLO_SCENARIOS" = 1 ] && [ -n "$UVNODE" ]; then
    start node-under-uvring "$UVNODE" --workers 2 --policy rr "$HERE/compare/node_cluster.js" --workers 2 --port PORT
    start node-under-uvring-shared "$UVNODE" --workers 2 --policy shared "$HERE/compare/node_cluster.js" --workers 2 --port PORT
fi
if [ -n "$HYPER" ]; then start hyper "$HYPER" --threads 2 --port PORT; fi
if [ -n "$STATIC_FILES" ]; then
    for backend in epoll io_uring; do
        start "uvring-static-$backend" "$STATIC_FILES" --workers 2 --backend "$backend" --root "$SITE" --host 127.0.0.1 --port PORT
    done
fi

if [ ${#NAMES[@]} -eq 0 ]; then
    log "no server came up"; exit 1
fi

# ---- runs -------------------------------------------------------------------

mkdir -p "$RESULTS"
if [ "$QUICK" = 1 ]; then PREFIX="$RESULTS/quick"
elif [ "$SCEN_GIVEN" = 1 ]; then PREFIX="$RESULTS/$(echo $SCENARIOS | tr ' ' '-')"
else PREFIX="$RESULTS/latest"; fi
RUNS="$PREFIX-runs.csv"
echo "scenario,server,repeat,rps,p50_ms,p99_ms,errors,non2xx,requests,server_cpu_s,cpu_us_per_req" >"$RUNS"

# wrk's latency with its unit (us, ms, s) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000; else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

# measure SCENARIO NAME REPEAT
measure() {
    local scen="$1" name="$2" rep="$3"
    local port="${PORT_OF[$name]}"
    local extra=() path=/
    [ "$scen" = close ] && extra=(-H "Connection: close")
    [ "$scen" = static4k ] && path=/4k.bin
    [ "$scen" = static1m ] && path=/1m.bin
    local out="$TMP/wrk-$scen-$name-$rep.txt"
    # The server's CPU so far (its whole process tree), before and after.
    local cpu0 cpu1
    cpu0="$("$PROC_TREE" "${PID_OF[$name]}" 2>/dev/null | sed -E 's/^cpu_ns=([0-9]+).*/\1/' || true)"
    if ! timeout $((DURATION + 15)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" \
        "http://127.0.0.1:$port$path" >"$out" 2>&1; then
        log "wrk failed for $name ($scen):"; sed 's/^/    /' "$out" >&2
        return 0
    fi
    cpu1="$("$PROC_TREE" "${PID_OF[$name]}" 2>/dev/null | sed -E 's/^cpu_ns=([0-9]+).*/\1/' || true)"
    local rps p50 p99 errs non2xx reqs cpu_s per_req
    reqs="$(awk '/ requests in / {print $1; exit}' "$out")"
    cpu_s="" per_req=""
    if [ -n "$cpu0" ] && [ -n "$cpu1" ]; then
        cpu_s="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.3f", (b - a) / 1e9}')"
        per_req="$(awk -v a="$cpu0" -v b="$cpu1" -v n="${reqs:-0}" 'BEGIN {if (n > 0) printf "%.3f", (b - a) / 1e3 / n}')"
    fi
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    p50="$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
    errs="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")"
    echo "$scen,$name,$rep,${rps:-0},${p50:-0},${p99:-0},${errs:-0},${non2xx:-0},${reqs:-0},$cpu_s,$per_req" >>"$RUNS"
    printf 'compare: %-26s %-9s run %d: %6s us CPU/req  %10.0f req/s  p99 %s ms  errors %s\n' \
        "$name" "$scen" "$rep" "${per_req:-?}" "${rps:-0}" "${p99:-?}" "$((${errs:-0} + ${non2xx:-0}))" >&2
}

# takes SCENARIO NAME: whether that server runs in that scenario (the
# static servers in the static ones only, nginx in all, the rest in the
# hello ones).
takes() {
    case "$1:$2" in
        static*:nginx) return 0 ;;
        static*:uvring-static-*) return 0 ;;
        static*:*) return 1 ;;
        *:uvring-static-*) return 1 ;;
        *) return 0 ;;
    esac
}
runs_per_rep=0
for scen in $SCENARIOS; do
    for name in "${NAMES[@]}"; do
        if takes "$scen" "$name"; then runs_per_rep=$((runs_per_rep + 1)); fi
    done
done
total=$(( runs_per_rep * (REPEATS * DURATION + WARMUP) ))
log "${#NAMES[@]} servers, scenarios: $SCENARIOS; $runs_per_rep runs x $REPEATS repeats x ${DURATION}s = ~${total}s of load"
# Warm-up: every server gets each of its scenarios' own load (the same wrk
# shape, churn included) for WARMUP seconds before the measured rounds, so
# that a JIT (Node's V8), page faults, pools and buffers are at steady
# state for every peer alike. Node workers that receive handles from a
# primary need tens of thousands of connections for that (the churn
# req/s of one fresh node-under-uvring rose 6.9k -> 7.6k -> ~9-10k over
# three 3 s runs); an unwarmed run measures the JIT, not the server.
if [ "$WARMUP" != 0 ]; then
    log "warm-up: ${WARMUP}s per server and scenario"
    for scen in $SCENARIOS; do
        for name in "${NAMES[@]}"; do
            takes "$scen" "$name" || continue
            warm=()
            [ "$scen" = close ] && warm=(-H "Connection: close")
            path=/
            [ "$scen" = static4k ] && path=/4k.bin
            [ "$scen" = static1m ] && path=/1m.bin
            timeout $((WARMUP + 15)) wrk -t2 -c"$CONNS" -d"${WARMUP}s" "${warm[@]}" \
                "http://127.0.0.1:${PORT_OF[$name]}$path" >/dev/null 2>&1 || true
            [ "$scen" = close ] && sleep 0.5
        done
    done
fi
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
n=${#NAMES[@]}
for rep in $(seq 1 "$REPEATS"); do
    for scen in $SCENARIOS; do
        # Each round starts one server further down the list, so a machine
        # that gets busier (or a TIME_WAIT pile that grows) during a round
        # does not always hit the same peers last.
        for i in $(seq 0 $((n - 1))); do
            name="${NAMES[$(( (i + rep - 1) % n ))]}"
            takes "$scen" "$name" || continue
            measure "$scen" "$name" "$rep"
            # Let the accept queues settle between churn runs.
            [ "$scen" = close ] && sleep "$( [ "$QUICK" = 1 ] && echo 0.1 || echo 0.5 )"
        done
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- report -----------------------------------------------------------------

PEER_VERSIONS=""
if [ "$HELLO_SCENARIOS" = 1 ]; then
    PEER_VERSIONS=", node $(node --version), hyper $(awk '/^name = "hyper"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "$HERE/peers/Cargo.lock") (tokio multi-thread, 2 worker threads)"
fi
CPU="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
MACHINE="$(nproc) cores ($CPU), $(uname -sr), $(free -g | awk '/Mem:/ {print $2}') GiB"
NOTES=("mode: external load generator (wrk, its own process); wrk -t2 -c$CONNS -d${DURATION}s --latency; churn adds -H 'Connection: close'; $REPEATS repeats interleaved, median; wrk and the servers share the 2 cores, unpinned"
       "CPU per request: utime+stime of the server's whole process tree (primary and workers, all threads) from /proc before and after each wrk run, over the requests wrk completed in it"
       "versions: $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $("$NGINX" -v 2>&1 | sed 's/.*: //')$PEER_VERSIONS"
       "load average before the runs: $LOAD_BEFORE, after: $LOAD_AFTER (above 2 means other work shared the 2 cores; compare ratios, not absolute numbers)")
if [ -z "$HELLO" ] && [ "$HELLO_SCENARIOS" = 1 ]; then
    NOTES+=("uvring rows missing: cluster/examples/hello_cluster did not exist at run time")
fi
[ -z "$STATIC_FILES" ] || NOTES+=("static files: a 4 KiB and a 1 MiB file in the page cache, GET with keep-alive; uvring-static-* is cluster/examples/static_files (2 workers, rr), nginx serves the same directory with sendfile on and tcp_nopush on")
python3 "$HERE/compare/report.py" "$RUNS" "$PREFIX" "$MACHINE" "$CMDLINE" "${NOTES[@]}"
log "saved $PREFIX.md, $PREFIX.csv, $RUNS$( [ -f "$PREFIX.png" ] && echo ", $PREFIX.png")"
