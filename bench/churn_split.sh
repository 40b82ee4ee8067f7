#!/usr/bin/env bash
# Where a `Connection: close` request's CPU goes, per process: the cluster
# primary against each worker (and nginx's master against its workers).
#
#   bench/churn_split.sh                 # rr epoll, rr io_uring, reuseport epoll, nginx; 5 s x 3 rounds
#   bench/churn_split.sh --strace        # also syscalls per connection per process (strace -c, 3 s)
#   bench/churn_split.sh --duration 5 --repeats 5 --only 'rr-epoll|nginx'
#   bench/churn_split.sh --servers "node-rr node-under-uvring node-shared" --warmup 10 --repeats 5
#                                        # Node's own rr/shared against unchanged Node
#                                        # workers under uvring's primary (uvring-node)
#
# Mode: external load generator (wrk -t2 -c64 -H "Connection: close", its
# own process, sharing the 2 cores, unpinned), as bench/compare.sh. Every
# server is started once on its own port (hello_cluster --workers 2, nginx
# with 2 workers); rounds are interleaved. For each run, utime+stime of
# every process of the server's tree is read from /proc before and after
# (bench/src/bin/proc_tree.rs --each) and divided by the requests wrk
# completed (one connection each). The report gives the median per role
# (primary = the tree's root, workers = the sum of its children).
#
# A/B: a server named NAME=ENV=VALUE in --servers starts hello_cluster with
# that variable set (e.g. `rr-epoll-old=UVRING_RR_CLOSE=inline`), so old and
# new run interleaved in one invocation.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
DURATION=5; REPEATS=3; ONLY=""; STRACE=0; WARMUP=1
SERVERS="rr-epoll rr-io_uring reuseport-epoll nginx"
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift ;;
        --repeats) REPEATS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --servers) SERVERS="$2"; shift ;;
        --strace) STRACE=1 ;;
        --warmup) WARMUP="$2"; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "churn_split.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "churn_split: $*" >&2; }
[ "$STRACE" = 0 ] || command -v strace >/dev/null || { log "--strace needs strace"; exit 1; }
split_setup "$ROOT"
if [[ " $SERVERS " == *" node-under-uvring"* ]]; then (cd "$ROOT" && cargo build -q --release -p uvring-cluster --bin uvring-node); fi
PORT=${CHURN_SPLIT_BASE_PORT:-$(first_port)}
declare -A PORT_OF PID_OF
NAMES=()
for spec in $SERVERS; do
    name="${spec%%=*}"
    if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then continue; fi
    envset=()
    [ "$spec" = "$name" ] || envset=("${spec#*=}")
    base="${name%%-old}"; base="${base%%-new}"; base="${base%%-ab*}"
    PORT=$((PORT + 1))
    if [ "$base" = node-rr ] || [ "$base" = node-shared ]; then
        # Node's own cluster (bench/compare/node_cluster.js), 2 workers.
        pol=rr; [ "$base" = node-shared ] && pol=none
        setsid env "${envset[@]}" NODE_CLUSTER_SCHED_POLICY="$pol" node "$HERE/compare/node_cluster.js" --workers 2 --port "$PORT" >"$TMP/$name.log" 2>&1 &
        SERVER_PID=$!; wait_hello "$PORT"
    elif [ "$base" = node-under-uvring ]; then
        # The same unchanged Node workers under uvring's primary (rr).
        setsid env "${envset[@]}" "$TARGET_DIR/release/uvring-node" --workers 2 "$HERE/compare/node_cluster.js" --port "$PORT" >"$TMP/$name.log" 2>&1 &
        SERVER_PID=$!; wait_hello "$PORT"
    else
        policy="${base%%-*}"; backend="${base#*-}"; backend="${backend%%-*}"
        start_hello_server "$name" "$policy" "$backend" "$PORT" "$TMP" "$HELLO" "${envset[@]}"
    fi
    pid=$SERVER_PID; PIDS+=("$pid")
    NAMES+=("$name"); PORT_OF[$name]=$PORT; PID_OF[$name]=$pid
    log "$name up on port $PORT (pid $pid${envset:+, ${envset[*]}})"
done
log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
RUNS="$TMP/runs.txt"; : >"$RUNS"
# warm-up: WARMUP s of the load each (Node's JIT needs ~10 s of churn)
for n in "${NAMES[@]}"; do wrk -t2 -c64 -d"$WARMUP" -H 'Connection: close' "http://127.0.0.1:${PORT_OF[$n]}/" >/dev/null; done
for r in $(seq 1 "$REPEATS"); do
    k=${#NAMES[@]}
    for i in $(seq 0 $((k - 1))); do
        n="${NAMES[$(((i + r) % k))]}"
        pid="${PID_OF[$n]}"
        "$PT" --each "$pid" >"$TMP/before"
        out="$(wrk -t2 -c64 -d"$DURATION" -H 'Connection: close' "http://127.0.0.1:${PORT_OF[$n]}/")"
        "$PT" --each "$pid" >"$TMP/after"
        reqs="$(echo "$out" | awk '/requests in/ {print $1}')"
        python3 - "$n" "$pid" "$reqs" "$TMP/before" "$TMP/after" >>"$RUNS" <<'PY'
import sys
name, root, reqs, b, a = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def rd(p):
    d = {}
    for line in open(p):
        f = dict(kv.split('=') for kv in line.split())
        d[f['pid']] = int(f['cpu_ns'])
    return d
B, A = rd(b), rd(a)
prim = (A.get(root, 0) - B.get(root, 0)) / 1e3 / reqs
work = sum(A[p] - B.get(p, 0) for p in A if p != root) / 1e3 / reqs
print(name, reqs, f"{prim:.2f}", f"{work:.2f}", f"{prim + work:.2f}")
PY
        log "round $r: $(tail -n1 "$RUNS")"
    done
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| server | req/s | root (primary / nginx master) us/conn | workers us/conn | total us/conn |"
echo "|---|---:|---:|---:|---:|"
for n in "${NAMES[@]}"; do
    python3 - "$n" "$DURATION" "$RUNS" <<'PY'
import sys, statistics as st
n, dur, f = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = [l.split() for l in open(f) if l.split()[0] == n]
med = lambda i: st.median(float(r[i]) for r in rows)
print(f"| {n} | {med(1)/dur:,.0f} | {med(2):.2f} | {med(3):.2f} | {med(4):.2f} |")
PY
done
[ "$STRACE" = 1 ] || exit 0
echo
echo "syscalls per connection (strace -c -f of each process, 3 s of wrk; strace slows the server, the counts are what matter):"
for n in "${NAMES[@]}"; do
    pid="${PID_OF[$n]}"
    procs="$("$PT" --each "$pid" | sed 's/pid=\([0-9]*\).*/\1/')"
    spids=()
    for p in $procs; do strace -c -f -p "$p" -o "$TMP/st-$n-$p" 2>/dev/null & spids+=($!); done
    sleep 0.5
    out="$(wrk -t2 -c64 -d3 -H 'Connection: close' "http://127.0.0.1:${PORT_OF[$n]}/")"
    sleep 0.2
    for s in "${spids[@]}"; do kill -INT "$s" 2>/dev/null || true; done
    for s in "${spids[@]}"; do wait "$s" 2>/dev/null || true; done
    reqs="$(echo "$out" | awk '/requests in/ {print $1}')"
    for p in $procs; do
        role=worker; [ "$p" = "$pid" ] && role=root
        python3 - "$n" "$role" "$p" "$reqs" "$TMP/st-$n-$p" <<'PY'
import sys
n, role, p, reqs, f = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
calls = {}
for line in open(f):
    w = line.split()
    if len(w) >= 5 and w[0][0].isdigit() and w[-1] != 'total':
        calls[w[-1]] = int(w[3])
tot = sum(calls.values())
parts = ", ".join(f"{k} {v/reqs:.2f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / reqs >= 0.01)
print(f"{n} {role} {p}: {tot/reqs:.2f} per request of the whole run ({parts})")
PY
    done
done
