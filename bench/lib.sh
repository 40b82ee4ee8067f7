# Helpers shared by the bench scripts (sourced, not run).

# nginx_hello_conf DIR PORT WORKERS CONNECTIONS [MAIN [HTTP [SERVER]]]:
# writes DIR/nginx.conf for an nginx that answers "hello world" on
# 127.0.0.1:PORT with WORKERS worker processes of CONNECTIONS connections
# each, access log off, its pid, error log and temp paths in DIR. MAIN,
# HTTP and SERVER are directives added to the main, http and server blocks.
nginx_hello_conf() {
    local dir="$1" port="$2" workers="$3" conns="$4" main="${5:-}" http="${6:-}" server="${7:-}"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<NGX
worker_processes $workers;
$main
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    $http
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port;
        default_type text/plain;
        location / { return 200 "hello world"; }
        $server
    }
}
NGX
}

# kill_groups PID...: TERM to each process group, half a second, then KILL
# and reap (the servers are started with setsid, so the group is the tree).
kill_groups() {
    local p
    for p in "$@"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "$@"; do kill -KILL -- "-$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# start_hello_server NAME POLICY BACKEND PORT DIR HELLO [ENV=VALUE]: starts,
# in its own session, nginx (NAME "nginx", 2 workers, config in DIR/nginx)
# or `HELLO --workers 2 --policy POLICY --backend BACKEND --port PORT` with
# ENV=VALUE set, output in DIR/NAME.log; sets SERVER_PID and waits (up to
# 10 s) for "hello world" on PORT; fails, with the end of the server's log,
# if it never answers.
start_hello_server() {
    local name="$1" policy="$2" backend="$3" port="$4" dir="$5" hello="$6" envset=("${@:7}")
    if [ "$name" = nginx ]; then
        nginx_hello_conf "$dir/nginx" "$port" 2 4096
        setsid "${NGINX:-nginx}" -p "$dir/nginx" -e "$dir/nginx/error.log" -c "$dir/nginx/nginx.conf" -g "daemon off;" >"$dir/$name.log" 2>&1 &
    else
        setsid env "${envset[@]}" "$hello" --workers 2 --policy "$policy" --backend "$backend" --port "$port" >"$dir/$name.log" 2>&1 &
    fi
    SERVER_PID=$!
    wait_hello "$port" || {
        echo "$name did not answer on port $port; the end of its output:" >&2
        tail -n 5 "$dir/$name.log" >&2
        return 1
    }
}

# wait_hello PORT: waits (up to 10 s) until PORT answers "hello world";
# fails if it never does.
wait_hello() {
    local _
    for _ in $(seq 1 100); do
        [ "$(curl -s -m 1 "http://127.0.0.1:$1/" 2>/dev/null || true)" = "hello world" ] && return 0
        sleep 0.1
    done
    return 1
}

# first_port: a random port below the kernel's ephemeral range, with about
# 1,000 free above it, so that no client socket (wrk's, a churn run's
# TIME_WAIT ones, any other program's) holds a port a script listens on: a
# listener cannot bind a port that a connection without SO_REUSEADDR holds,
# even in TIME_WAIT.
first_port() {
    local low span
    low="$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    span=$(( low > 12000 ? low - 11000 : 1000 ))
    echo $(( 10000 + RANDOM % span ))
}

# split_setup ROOT: what keepalive_split.sh and churn_split.sh set up alike
# (each defines `log` first): wrk, curl and python3 present; release builds
# of hello_cluster and proc_tree (HELLO, PT; also NGINX and TARGET_DIR); a
# temp dir (TMP); and the servers' process groups (PIDS) killed, with TMP
# removed, on exit.
split_setup() {
    local t
    for t in wrk curl python3; do command -v "$t" >/dev/null || { log "needs $t"; exit 1; }; done
    NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
    TARGET_DIR="${CARGO_TARGET_DIR:-$1/target}"
    (cd "$1" && cargo build -q --release -p uvring-cluster --example hello_cluster && cargo build -q --release -p uvring-bench --bin proc_tree)
    HELLO="$TARGET_DIR/release/examples/hello_cluster"
    PT="$TARGET_DIR/release/proc_tree"
    TMP="$(mktemp -d)"
    PIDS=()
    trap split_cleanup EXIT
}

split_cleanup() {
    kill_groups "${PIDS[@]}"
    rm -rf "$TMP"
}
