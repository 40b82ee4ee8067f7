//! The admin endpoint of the real `hello_cluster` (built as the
//! `cluster-hello` helper), as an operator and a load balancer use it:
//! `--admin 127.0.0.1:PORT` serves `/health`, `/stats` (JSON, one object
//! per worker with real figures) and `/metrics` (Prometheus text), and
//! `/health` turns 503 as soon as a shutdown drains the workers.

mod cluster_support;

use cluster_support::hello::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` on the admin port: (status, body).
fn admin_get(port: u16, path: &str) -> (u16, String) {
    let mut s = connect(port);
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{out:?}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The worker objects of a `/stats` document (the text of each).
fn workers_of(stats: &str) -> Vec<String> {
    let list = stats.split_once("\"workers\":[").map(|(_, l)| l).unwrap_or_else(|| panic!("{stats}"));
    list.split("{\"id\":").skip(1).map(|w| format!("{{\"id\":{w}")).collect()
}

/// The raw value of `name` in a flat JSON object's text.
fn field<'a>(obj: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":");
    let at = obj.find(&key).unwrap_or_else(|| panic!("no {name} in {obj}")) + key.len();
    obj[at..].split([',', '}']).next().unwrap().trim_matches('"')
}

fn num(obj: &str, name: &str) -> i64 {
    field(obj, name).parse().unwrap_or_else(|_| panic!("{name} not a number in {obj}"))
}

/// Polls `/stats` until `ok(workers)` holds; returns that document.
fn stats_until(port: u16, what: &str, ok: impl Fn(&[String]) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = admin_get(port, "/stats");
        assert_eq!(status, 200, "{body}");
        if ok(&workers_of(&body)) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: last /stats {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scenario(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let (port, admin) = (free_port(), free_port());
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut ex = Example::start_with_args(backend, policy, port, 2, &["--admin", &admin_addr]);
    ex.wait_log(&["admin on http://", &admin_addr]);
    let mut pids =
        vec![pid_of(&ex.wait_log(&["worker 1", "listening on"])), pid_of(&ex.wait_log(&["worker 2", "listening on"]))];
    pids.sort();

    let (status, body) = admin_get(admin, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Three keep-alive connections held open, each served once (so a
    // worker has it).
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect(port);
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            assert!(read_response(&mut s).ends_with("hello world"));
            s
        })
        .collect();
    // Open connections come with each worker's heartbeat answer (1 s).
    let sum = |ws: &[String], name: &str| ws.iter().map(|w| num(w, name)).sum::<i64>();
    let reported = |ws: &[String]| ws.iter().all(|w| field(w, "connections") != "null");
    let stats = stats_until(admin, "3 open connections", |ws| reported(ws) && sum(ws, "connections") == 3);
    let ws = workers_of(&stats);
    let mut seen: Vec<i32> = ws.iter().map(|w| num(w, "pid") as i32).collect();
    seen.sort();
    assert_eq!(seen, pids, "/stats names the workers' real pids: {stats}");
    for w in &ws {
        assert_eq!(field(w, "state"), "listening", "{w}");
        assert_eq!(num(w, "restarts"), 0, "{w}");
        assert!(num(w, "rss_anon_bytes") > 0 && num(w, "vm_rss_bytes") >= num(w, "rss_anon_bytes"), "{w}");
        let u: f64 = field(w, "loop_utilisation").parse().unwrap();
        assert!((0.0..=1.0).contains(&u), "{w}");
        assert!(num(w, "uptime_ms") >= 0 && num(w, "loop_count") > 0, "{w}");
    }
    if policy == "rr" {
        // The primary handed off every connection and saw it acknowledged.
        assert!(sum(&ws, "handed_off") >= 3 && sum(&ws, "acked") >= 3, "{stats}");
    }
    assert!(stats.contains("\"healthy\":true") && stats.contains("\"shutting_down\":false"), "{stats}");

    let (status, metrics) = admin_get(admin, "/metrics");
    assert_eq!(status, 200);
    for family in ["uvring_worker_connections", "uvring_worker_rss_anon_bytes", "uvring_worker_loop_utilisation"] {
        assert!(metrics.contains(&format!("# HELP {family} ")), "{family}: {metrics}");
        assert!(metrics.contains(&format!("# TYPE {family} gauge")), "{family}: {metrics}");
        for pid in &pids {
            assert!(metrics.contains(&format!("{family}{{worker=")), "{family}: {metrics}");
            assert!(metrics.contains(&format!("pid=\"{pid}\"}}")), "{pid}: {metrics}");
        }
    }
    assert!(metrics.contains("\nuvring_cluster_up 1\n"), "{metrics}");
    assert_eq!(admin_get(admin, "/nope").0, 404);

    // A request in progress keeps its worker draining; /health says 503
    // from the moment the shutdown begins.
    held[0].write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    ex.wait_log(&["disconnecting workers"]);
    let (status, body) = admin_get(admin, "/health");
    assert_eq!((status, body.as_str()), (503, "shutting down\n"));
    let (_, stats) = admin_get(admin, "/stats");
    assert!(stats.contains("\"shutting_down\":true"), "{stats}");
    assert!(admin_get(admin, "/metrics").1.contains("\nuvring_cluster_up 0\n"));

    // The request completes (the worker closes the connection after it, or
    // after the drain grace if the disconnect reached it later); the rest go.
    held[0].write_all(b"\r\n").unwrap();
    let r = read_response(&mut held[0]);
    assert!(r.ends_with("hello world"), "{r:?}");
    held.clear();
    ex.wait_clean_exit();
}

#[test]
fn epoll_rr() {
    scenario("epoll", "rr");
}

#[test]
fn io_uring_rr() {
    scenario("io_uring", "rr");
}

#[test]
fn epoll_shared() {
    scenario("epoll", "shared");
}

#[test]
fn io_uring_shared() {
    scenario("io_uring", "shared");
}
