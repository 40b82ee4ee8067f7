#!/usr/bin/env bash
# Memory per idle keep-alive connection: for each server, the resident
# memory (RSS) of its whole process tree (primary and workers) before and
# while it holds N idle keep-alive connections, each of which has made one
# request; the figure is (RSS with N - RSS before) / N.
#
#   bench/idle_memory.sh              # N = 5,000 (~1 minute)
#   bench/idle_memory.sh --large      # N = 50,000
#   bench/idle_memory.sh -n 20000 --repeats 3
#
# Options: -n N, --large (N = 50,000), --repeats R (median of R rounds,
#          default 1), --only REGEX (servers whose name matches),
#          --workers W (worker processes of every cluster server, uvring
#          and nginx alike; default 2, or as many as the fd limit needs,
#          see below), --no-install, --baseline PATH (an A/B: another
#          hello_cluster binary, e.g. one built from an older commit, is
#          measured too, as uvring-base-{rr,shared,reuseport}-{epoll,io_uring},
#          interleaved with the others in every round).
#
# Servers, measured one at a time (nothing else of ours running), each
# started fresh for every measurement:
#   uvring-{rr,shared,reuseport}-{epoll,io_uring}
#       hello_cluster --workers W --policy P --backend B (release build)
#   nginx   worker_processes W, worker_connections N + 1024
#   hyper   bench/peers/hyper_hello, tokio multi-thread with 2 worker threads
#
# The client is bench/src/bin/idle_client.rs (a uvring loop): it opens its
# share of the N connections, at most 256 being set up at a time, sends one
# GET on each, reads the response and keeps the connection open; the script
# runs one client process per 15,000 connections. One source address has
# only ~28,000 ephemeral ports towards one server port, so the connections
# are spread over several source addresses 127.0.S.2, 127.0.S.3, ...
# (S changes for every client process and every server, so that ports left
# in TIME_WAIT by the last run are not needed again). The script raises the
# fd limit (ulimit -n) to N + 10,000 for the servers; where it cannot (no
# CAP_SYS_RESOURCE: the hard limit stays), it gives every cluster server
# (uvring and nginx alike) enough workers that each holds at most 60 % of
# the limit (50,000 under a limit of 20,000: 5 workers, 10,000 each on
# average, room for an uneven spread), says so, and measures hyper (one
# process) at what one process can hold (the limit less 1,000).
#
# RSS is the sum of the processes' resident sets (from /proc/<pid>/stat),
# read 1 s after the server answered its first request (before) and 1 s
# after the last connection got its response (with N). Kernel socket memory
# (buffers, the socket structures) is not in RSS and not counted: the
# figure is what the server process itself keeps per connection.
#
# Output: the table on stdout, bench/results/idle-memory-N.md and .csv.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/.." && pwd)"
RESULTS="$HERE/results"

N=5000
REPEATS=1
ONLY=""
WORKERS=""
INSTALL=1
BASELINE=""
CMDLINE="bench/idle_memory.sh $*"
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N="$2"; shift ;;
        --large) N=50000 ;;
        --repeats) REPEATS="$2"; shift ;;
        --workers) WORKERS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --baseline) BASELINE="$2"; shift ;;
        -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
        *) echo "idle_memory.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "idle-memory: $*" >&2; }

# ---- limits -----------------------------------------------------------------

FDS=$((N + 10000))
LIMIT_NOTE=""
HYPER_N=$N
if [ "$(ulimit -n)" -lt "$FDS" ]; then
    ulimit -n "$FDS" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
fi
if [ "$(ulimit -n)" -lt "$FDS" ]; then
    # No process may hold all N: a cluster gets enough workers that each
    # holds at most 60 % of the limit on average; hyper (one process)
    # holds what one process can.
    CAP=$(( $(ulimit -n) - 1000 ))
    LIMIT_NOTE="the fd limit could not be raised to $FDS (soft $(ulimit -n), hard $(ulimit -Hn); raising the hard limit needs CAP_SYS_RESOURCE, which this machine does not give)"
    if [ "$N" -gt "$CAP" ]; then
        NEED=$(( (N * 10 + $(ulimit -n) * 6 - 1) / ($(ulimit -n) * 6) ))
        [ -n "$WORKERS" ] || WORKERS=$(( NEED > 2 ? NEED : 2 ))
        HYPER_N=$CAP
        LIMIT_NOTE="$LIMIT_NOTE: every cluster server (uvring and nginx alike) runs $WORKERS workers so that no process holds more than the limit; hyper (one process) is measured at N = $CAP"
    fi
    log "warning: $LIMIT_NOTE"
fi
WORKERS="${WORKERS:-2}"
FDS="$(ulimit -n)"
CHUNK=15000
NCLIENTS=$(( (N + CHUNK - 1) / CHUNK ))

# ---- tools and builds -------------------------------------------------------

need_apt=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
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

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
log "building hello_cluster, idle_client, proc_tree (release)"
(cd "$ROOT" && cargo build -q --release -p uvring-cluster --example hello_cluster)
(cd "$ROOT" && cargo build -q --release -p uvring-bench --bin idle_client --bin proc_tree)
HELLO="$BIN/examples/hello_cluster"
HYPER=""
log "building hyper_hello (release, bench/peers)"
if cargo build -q --release --target-dir "$TARGET_DIR" --manifest-path "$HERE/peers/Cargo.toml" -p hyper_hello; then
    HYPER="$BIN/hyper_hello"
else
    log "hyper_hello did not build: the hyper row is skipped"
fi

# ---- one measurement ----------------------------------------------------------

TMP="$(mktemp -d /tmp/uvring-idle-mem.XXXXXX)"
SERVER=""
CLIENTS=()
stop_all() {
    local c
    for c in "${CLIENTS[@]}"; do kill -TERM "$c" 2>/dev/null || true; done
    for c in "${CLIENTS[@]}"; do wait "$c" 2>/dev/null || true; done
    CLIENTS=()
    if [ -n "$SERVER" ]; then
        kill -TERM -- "-$SERVER" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
cleanup() {
    local rc=$?
    stop_all
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NEXT_PORT=$(first_port)
SUBNET=0

nginx_conf() {
    nginx_hello_conf "$TMP/nginx" "$1" "$WORKERS" $((N + 1024)) "worker_rlimit_nofile $FDS;" \
        "keepalive_requests 100000000; keepalive_timeout 600s;"
}

rss_of() { "$BIN/proc_tree" "$1" | sed -E 's/.*rss_bytes=([0-9]+).*/\1/'; }
procs_of() { "$BIN/proc_tree" "$1" | sed -E 's/.*processes=([0-9]+).*/\1/'; }

# measure NAME REPEAT CMD...: starts the server (the word PORT in CMD is its
# port), reads its RSS, holds N idle connections, reads it again, stops
# everything; appends a row to $RUNS.
measure() {
    local name="$1" rep="$2"; shift 2
    local N=$N NCLIENTS=$NCLIENTS
    if [ "$name" = hyper ]; then N=$HYPER_N; NCLIENTS=$(( (N + CHUNK - 1) / CHUNK )); fi
    local port=$NEXT_PORT a cmd=() body=""
    NEXT_PORT=$((NEXT_PORT + 1))
    for a in "$@"; do cmd+=("${a//PORT/$port}"); done
    [ "$name" = nginx ] && nginx_conf "$port"
    setsid "${cmd[@]}" >"$TMP/$name.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 100); do
        body="$(curl -s -m 1 "http://127.0.0.1:$port/" 2>/dev/null || true)"
        [ "$body" = "hello world" ] && break
        kill -0 "$SERVER" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$body" != "hello world" ]; then
        log "$name did not come up on port $port; its log:"
        tail -n 5 "$TMP/$name.log" | sed 's/^/    /' >&2
        stop_all
        return 0
    fi
    sleep 1
    local before after procs ok=0 failed=0 k share left=$N line lines closed=0
    before="$(rss_of "$SERVER")"
    # One client process per CHUNK connections, each on fresh source
    # addresses.
    for k in $(seq 1 "$NCLIENTS"); do
        share=$(( left < CHUNK ? left : CHUNK ))
        left=$(( left - share ))
        SUBNET=$(( SUBNET % 250 + 1 ))
        "$BIN/idle_client" --addr "127.0.0.1:$port" -n "$share" --sources $(( 2 + share / 10000 )) --subnet "$SUBNET" \
            >"$TMP/client$k.out" 2>"$TMP/client$k.err" &
        CLIENTS+=($!)
    done
    for _ in $(seq 1 1200); do
        lines="$(cat "$TMP"/client*.out | grep -c '^ready ' || true)"
        [ "$lines" = "$NCLIENTS" ] && break
        for k in "${CLIENTS[@]}"; do kill -0 "$k" 2>/dev/null || break 2; done
        sleep 0.1
    done
    if [ "$lines" != "$NCLIENTS" ]; then
        log "$name: a client did not get ready: $(cat "$TMP"/client*.err | tail -n 3 | tr '\n' ' ')"
        stop_all
        return 0
    fi
    while read -r _ k share; do ok=$((ok + k)); failed=$((failed + share)); done < <(cat "$TMP"/client*.out | grep '^ready ')
    sleep 1
    after="$(rss_of "$SERVER")"
    procs="$(procs_of "$SERVER")"
    closed="$(cat "$TMP"/client*.out | grep -c '^closed-by-server' || true)"
    echo "$name,$rep,$N,$WORKERS,$ok,$failed,${closed:-0},$procs,$before,$after" >>"$RUNS"
    printf 'idle-memory: %-26s run %d: %6.1f MiB -> %6.1f MiB with %d idle connections (%d failed): %6.0f B per connection\n' \
        "$name" "$rep" "$(awk -v b="$before" 'BEGIN {print b / 1048576}')" "$(awk -v b="$after" 'BEGIN {print b / 1048576}')" \
        "$ok" "$failed" "$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN {print (n > 0 ? (a - b) / n : 0)}')" >&2
    [ "$failed" = 0 ] || log "$name: first client error: $(cat "$TMP"/client*.err | head -n 1)"
    rm -f "$TMP"/client*.out "$TMP"/client*.err
    stop_all
}

# ---- runs -------------------------------------------------------------------

mkdir -p "$RESULTS"
PREFIX="$RESULTS/idle-memory-$N"
RUNS="$PREFIX-runs.csv"
echo "server,repeat,n,workers,ok,failed,closed_by_server,processes,rss_before,rss_after" >"$RUNS"
SERVERS=()
for policy in rr shared reuseport; do
    for backend in epoll io_uring; do
        SERVERS+=("uvring-$policy-$backend")
        [ -n "$BASELINE" ] && SERVERS+=("uvring-base-$policy-$backend")
    done
done
SERVERS+=(nginx)
[ -n "$HYPER" ] && SERVERS+=(hyper)
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq 1 "$REPEATS"); do
    for name in "${SERVERS[@]}"; do
        if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then continue; fi
        case "$name" in
            uvring-base-*)
                IFS=- read -r _ _ policy backend <<<"$name"
                measure "$name" "$rep" "$BASELINE" --workers "$WORKERS" --policy "$policy" --backend "$backend" --port PORT ;;
            uvring-*)
                IFS=- read -r _ policy backend <<<"$name"
                measure "$name" "$rep" "$HELLO" --workers "$WORKERS" --policy "$policy" --backend "$backend" --port PORT ;;
            nginx)
                measure nginx "$rep" "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" -g "daemon off;" ;;
            hyper)
                measure hyper "$rep" "$HYPER" --threads 2 --port PORT ;;
        esac
    done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- report -----------------------------------------------------------------

MACHINE="$(nproc) cores, $(uname -sr), $(free -g | awk '/Mem:/ {print $2}') GiB"
python3 - "$RUNS" "$PREFIX" "$MACHINE" "$CMDLINE" "$N" "$NCLIENTS" "$WORKERS" "$LOAD_BEFORE" "$LOAD_AFTER" "$("$NGINX" -v 2>&1 | sed 's/.*: //')" "$LIMIT_NOTE" <<'PY'
import csv, datetime, statistics, sys
from collections import defaultdict

runs_path, prefix, machine, command, n, nclients, workers, load_before, load_after, nginx_version, limit_note = sys.argv[1:12]
runs, order = defaultdict(list), []
with open(runs_path, newline="") as f:
    for r in csv.DictReader(f):
        if r["server"] not in order:
            order.append(r["server"])
        runs[r["server"]].append(r)

def per_conn(r):
    ok = int(r["ok"])
    return (int(r["rss_after"]) - int(r["rss_before"])) / ok if ok else float("nan")

rows = []
for s in order:
    rs = runs[s]
    rows.append((s, statistics.median(int(r["rss_before"]) for r in rs) / 2**20,
                 statistics.median(int(r["rss_after"]) for r in rs) / 2**20,
                 statistics.median(per_conn(r) for r in rs), min(int(r["ok"]) for r in rs),
                 sum(int(r["failed"]) for r in rs), sum(int(r["closed_by_server"]) for r in rs),
                 rs[0]["processes"], len(rs)))
nginx = next((r[3] for r in rows if r[0] == "nginx"), None)
stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
md = [f"# Memory per idle keep-alive connection, N = {int(n):,} ({stamp})", "",
      f"Machine: {machine}", "", f"Command: `{command}`", "",
      f"- mode: external client (idle_client, its own process); each server alone on the machine's loopback, {workers} workers (nginx and uvring alike; hyper: one process); "
      f"every connection made one request (keep-alive) and then stays idle; {nclients} client process(es), "
      "each over 2 or more source addresses 127.0.S.x",
      "- RSS = sum of the resident sets of the server's process tree (primary and workers) from /proc; "
      "per connection = (RSS with N - RSS before) / connections up; kernel socket memory is not in RSS",
      f"- nginx {nginx_version}; load average before: {load_before}, after: {load_after}"]
if limit_note:
    md.append(f"- **{limit_note}**")
md += ["",
      "| server | bytes per idle connection | vs nginx | RSS before (MiB) | RSS with N (MiB) | connections up | failed | closed by server | processes | runs |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for s, before, after, pc, ok, failed, closed, procs, k in rows:
    vs = f"{pc / nginx:.2f}x" if nginx else "-"
    md.append(f"| {s} | **{pc:,.0f}** | {vs} | {before:.1f} | {after:.1f} | {ok:,} | {failed} | {closed} | {procs} | {k} |")
md += ["", "### design bar (issue 13): growth per idle connection <= 1.0x nginx's, every policy, both backends", ""]
for s, _, _, pc, *_ in rows:
    if s.startswith("uvring-") and not s.startswith("uvring-base-") and nginx:
        r = pc / nginx
        md.append(f"- {s}: {r:.2f}x: " + ("**met**" if r <= 1.0 else "**missed**"))
md.append("")
text = "\n".join(md)
open(f"{prefix}.md", "w").write(text)
with open(f"{prefix}.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["n", "server", "bytes_per_conn_median", "vs_nginx", "rss_before_mib", "rss_after_mib", "ok", "failed", "closed_by_server", "runs"])
    for s, before, after, pc, ok, failed, closed, procs, k in rows:
        w.writerow([n, s, f"{pc:.0f}", f"{pc / nginx:.3f}" if nginx else "", f"{before:.2f}", f"{after:.2f}", ok, failed, closed, k])
print(text)
PY
log "saved $PREFIX.md, $PREFIX.csv, $RUNS"
