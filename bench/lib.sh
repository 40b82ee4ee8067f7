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
