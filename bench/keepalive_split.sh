#!/usr/bin/env bash
# Where a keep-alive request's CPU goes, per worker, and why one cluster
# policy costs more than another: CPU per request per process, connections
# per worker, voluntary context switches per request, wrk's p50/p99.
#
#   bench/keepalive_split.sh             # rr, shared, reuseport on io_uring, nginx; 5 s x 3 rounds
#   bench/keepalive_split.sh --servers "rr-io_uring rr-io_uring-batch=HELLO_WORKER_SCHED=batch" --repeats 5
#                                        # A/B: workers under SCHED_BATCH or not, interleaved
#
# Mode: external load generator (wrk -t2 -c64, keep-alive, its own process,
# sharing the 2 cores, unpinned), as bench/compare.sh. Every server is
# started once on its own port (hello_cluster --workers 2, nginx with 2
# workers); rounds are interleaved, each starting one server further down
# the list. For each run, utime+stime of every process of the server's tree
# is read from /proc before and after (bench/src/bin/proc_tree.rs --each),
# with the sum of the children's voluntary context switches
# (/proc/PID/status), and divided by the requests wrk completed; one second
# into the run the sockets each worker holds are counted (its connections,
# plus the listening socket and channel). The report gives medians.
#
# A/B: a server named NAME=ENV=VALUE starts hello_cluster with that
# variable set (the policy and backend come from NAME up to a "-" suffix
# after the backend, e.g. `rr-io_uring-batch`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
DURATION=5; REPEATS=3; WARMUP=2; ONLY=""
SERVERS="rr-io_uring shared-io_uring reuseport-io_uring nginx"
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift ;;
        --repeats) REPEATS="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --servers) SERVERS="$2"; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "keepalive_split.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "keepalive_split: $*" >&2; }
split_setup "$ROOT"
PORT=${KEEPALIVE_SPLIT_BASE_PORT:-$(first_port)}
declare -A PORT_OF PID_OF
NAMES=()
for spec in $SERVERS; do
    name="${spec%%=*}"
    if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then continue; fi
    envset=()
    [ "$spec" = "$name" ] || envset=("${spec#*=}")
    PORT=$((PORT + 1))
    policy="${name%%-*}"; backend="${name#*-}"; backend="${backend%%-*}"
    start_hello_server "$name" "$policy" "$backend" "$PORT" "$TMP" "$HELLO" "${envset[@]}"
    pid=$SERVER_PID; PIDS+=("$pid")
    NAMES+=("$name"); PORT_OF[$name]=$PORT; PID_OF[$name]=$pid
    log "$name up on port $PORT (pid $pid${envset:+, ${envset[*]}})"
done
vcs() { # the voluntary context switches of the children of $1
    local sum=0 c v
    for c in $(pgrep -P "$1"); do
        v="$(awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$c/status" 2>/dev/null || echo 0)"
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "load average before: $LOAD_BEFORE"
RUNS="$TMP/runs.txt"; : >"$RUNS"
for n in "${NAMES[@]}"; do wrk -t2 -c64 -d"$WARMUP" "http://127.0.0.1:${PORT_OF[$n]}/" >/dev/null; done
for r in $(seq 1 "$REPEATS"); do
    k=${#NAMES[@]}
    for i in $(seq 0 $((k - 1))); do
        n="${NAMES[$(((i + r) % k))]}"
        pid="${PID_OF[$n]}"
        "$PT" --each "$pid" >"$TMP/before"
        v0="$(vcs "$pid")"
        wrk --latency -t2 -c64 -d"$DURATION" "http://127.0.0.1:${PORT_OF[$n]}/" >"$TMP/wrk" &
        wpid=$!
        sleep 1
        socks=""
        for c in $(pgrep -P "$pid"); do
            socks="$socks$(find "/proc/$c/fd" -lname 'socket:*' 2>/dev/null | wc -l)/"
        done
        wait "$wpid"
        "$PT" --each "$pid" >"$TMP/after"
        v1="$(vcs "$pid")"
        reqs="$(awk '/requests in/ {print $1}' "$TMP/wrk")"
        p50="$(awk '$1 == "50%" {print $2}' "$TMP/wrk")"
        p99="$(awk '$1 == "99%" {print $2}' "$TMP/wrk")"
        python3 - "$n" "$pid" "$reqs" "$TMP/before" "$TMP/after" "$((v1 - v0))" "${socks%/}" "$p50" "$p99" >>"$RUNS" <<'PY'
import sys
name, root, reqs, b, a, vcs, socks, p50, p99 = sys.argv[1:10]
reqs = int(reqs)
def rd(p):
    d = {}
    for line in open(p):
        f = dict(kv.split('=') for kv in line.split())
        d[f['pid']] = int(f['cpu_ns'])
    return d
def ms(s):
    for unit, k in (('us', 1e-3), ('ms', 1.0), ('s', 1e3)):
        if s.endswith(unit):
            return float(s[:-len(unit)]) * k
    return float('nan')
B, A = rd(b), rd(a)
kids = sorted((A[p] - B.get(p, 0)) / 1e3 / reqs for p in A if p != root)
prim = (A.get(root, 0) - B.get(root, 0)) / 1e3 / reqs
tot = prim + sum(kids)
print(name, reqs, f"{prim:.2f}", f"{tot:.2f}", f"{int(vcs) / reqs:.3f}", f"{ms(p50):.3f}", f"{ms(p99):.3f}",
      socks or '-', "/".join(f"{k:.2f}" for k in kids) or '-')
PY
        log "round $r: $(tail -n1 "$RUNS")"
    done
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t2 -c64 keep-alive, ${DURATION} s x ${REPEATS} rounds; load average before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | req/s | CPU us/req (whole tree) | root us/req | vol. ctx switches / req (workers) | p50 ms | p99 ms | sockets per worker (run 1) |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for n in "${NAMES[@]}"; do
    python3 - "$n" "$DURATION" "$RUNS" <<'PY'
import sys, statistics as st
n, dur, f = sys.argv[1], float(sys.argv[2]), sys.argv[3]
rows = [l.split() for l in open(f) if l.split()[0] == n]
med = lambda i: st.median(float(r[i]) for r in rows)
print(f"| {n} | {med(1)/dur:,.0f} | {med(3):.2f} | {med(2):.2f} | {med(4):.3f} | {med(5):.2f} | {med(6):.2f} | {rows[0][7]} |")
PY
done
echo
echo "per round (CPU us/req): $(awk '{a[$1] = a[$1] " " $4} END {for (k in a) printf "%s:%s; ", k, a[k]}' "$RUNS")"
