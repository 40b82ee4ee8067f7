//! Unchanged Node.js workers under uvring's primary, which speaks Node's
//! own cluster protocol (issue 15): the `uvring-node` binary driven as an
//! operator would (the seed's hello-world app under rr and shared, a
//! `kill -9`, a rolling restart, a worker's own disconnect, SIGTERM, the
//! primary's death). The library with Node workers is in node_protocol.rs.
//!
//! `node` comes from the machine. Without it every test prints a visible
//! SKIP line and passes, unless `UVRING_REQUIRE_NODE=1` (CI sets it), which
//! makes that a failure. The JavaScript apps live in tests/node/.

mod cluster_support;
mod node_support;

use cluster_support::hello::{group_alive, pid_of, Example, WAIT};
use cluster_support::*;
use node_support::{app, node_available};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const NODE_PRIMARY: &str = env!("CARGO_BIN_EXE_node-primary");

/// `uvring-node` on `backend` with `args`, the app listening on port 0 of
/// 127.0.0.1 (`None` when the backend cannot run here: a SKIP line).
fn start(backend: &str, args: &[&str]) -> Option<Example> {
    start_on(backend, args, "0")
}

/// [`start`] with the app listening on `port`.
fn start_on(backend: &str, args: &[&str], port: &str) -> Option<Example> {
    if !node_available() || (backend == "io_uring" && !hello::io_uring_available()) {
        return None;
    }
    let mut cmd = Command::new(NODE_PRIMARY);
    cmd.args(args).env("UVRING_BACKEND", backend).env("PORT", port).env("HOST", "127.0.0.1");
    Some(Example::spawn(cmd))
}

/// Waits for `workers` to listen; returns their common port.
fn wait_listening(ex: &mut Example, workers: &[u32]) -> u16 {
    let mut port = None;
    for w in workers {
        let line = ex.wait_log(&[&format!("worker {w} "), "listening on 127.0.0.1:"]);
        let p: u16 = line.rsplit(':').next().unwrap().parse().unwrap();
        assert_ne!(p, 0, "the real port is reported: {line}");
        assert!(port.is_none() || port == Some(p), "port 0 is shared: {line}");
        port = Some(p);
    }
    port.unwrap()
}

/// One `Connection: close` request; returns the worker that answered.
fn request(port: u16, path: &str) -> u32 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    // Node answers in chunks: "c\r\nhello world\n\r\n0\r\n\r\n".
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("\r\n\r\nc\r\nhello world\n\r\n0"), "{out:?}");
    let worker = out.lines().find_map(|l| l.strip_prefix("X-Worker: ")).expect("an X-Worker header");
    worker.trim().parse().unwrap()
}

/// `n` requests from `threads` client threads; returns how many each
/// worker answered (index = worker id).
fn load(port: u16, n: usize, threads: usize) -> Vec<usize> {
    let per = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut counts = vec![0usize; 16];
                for _ in 0..per {
                    counts[request(port, "/") as usize] += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = vec![0usize; 16];
    for h in handles {
        for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
            *t += c;
        }
    }
    total
}

/// SIGTERM: the workers leave after a disconnect and the primary exits 0,
/// leaving no process behind.
fn stop(ex: &mut Example, workers: usize) {
    // SAFETY: plain syscall on the child this test spawned.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = ex.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the primary did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(ex.count_log("exited after disconnect (code 0, signal 0)"), workers, "{:#?}", ex.seen);
    assert_eq!(ex.count_log("all workers gone"), 1);
    let deadline = Instant::now() + WAIT;
    while group_alive(ex.pgid) {
        assert!(Instant::now() < deadline, "processes left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The seed's app on 2 Node workers: `n` connections all answered, spread
/// over both; the port (asked as 0) is the same for both.
fn serve(backend: &str, policy: &str, n: usize) {
    let Some(mut ex) = start(backend, &["--workers", "2", "--policy", policy, &app("hello.js")]) else { return };
    let port = wait_listening(&mut ex, &[1, 2]);
    let counts = load(port, n, 4);
    assert_eq!(counts.iter().sum::<usize>(), n);
    // rr hands each connection to the least-loaded worker; under shared the
    // workers race for them, and each gets some.
    let least = if policy == "rr" { n / 20 } else { 1 };
    assert!(counts[1] >= least && counts[2] >= least, "spread over both workers: {:?}", &counts[..3]);
    stop(&mut ex, 2);
}

#[test]
fn epoll_rr_10000_connections() {
    serve("epoll", "rr", 10_000);
}

#[test]
fn io_uring_rr() {
    serve("io_uring", "rr", 1000);
}

#[test]
fn epoll_shared() {
    serve("epoll", "shared", 1000);
}

#[test]
fn io_uring_shared() {
    serve("io_uring", "shared", 1000);
}

/// A Node worker killed with `kill -9` is replaced, and the replacement
/// serves; SIGHUP then replaces both in turn without dropping service.
fn kill_and_roll(backend: &str) {
    let Some(mut ex) = start(backend, &["--workers", "2", &app("hello.js")]) else { return };
    let port = wait_listening(&mut ex, &[1, 2]);
    let pid = pid_of(&ex.wait_log(&["worker 1 (pid", "listening"]));
    // SAFETY: plain syscall on a worker of the primary this test spawned.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    ex.wait_log(&[&format!("worker 1 (pid {pid}) exited unexpectedly (code 0, signal 9)")]);
    assert_eq!(wait_listening(&mut ex, &[3]), port, "the replacement listens on the same port");
    let counts = load(port, 200, 2);
    assert!(counts[3] > 0 && counts[1] == 0, "the replacement serves: {:?}", &counts[..4]);
    // SAFETY: as above, on the primary.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGHUP) };
    ex.wait_log(&["rolling restart done"]);
    assert_eq!(wait_listening(&mut ex, &[4, 5]), port);
    let counts = load(port, 200, 2);
    assert!(counts[4] + counts[5] == 200, "the new workers serve: {:?}", &counts[..6]);
    stop(&mut ex, 4);
}

#[test]
fn epoll_kill_9_and_rolling_restart() {
    kill_and_roll("epoll");
}

#[test]
fn io_uring_kill_9_and_rolling_restart() {
    kill_and_roll("io_uring");
}

/// `cluster.worker.disconnect()` in a worker ends it cleanly (it is not
/// replaced: it left on purpose); the other serves on; SIGTERM ends the
/// rest.
fn worker_disconnect(backend: &str) {
    let Some(mut ex) = start(backend, &["--workers", "2", &app("disconnect.js")]) else { return };
    let port = wait_listening(&mut ex, &[1, 2]);
    let leaver = request(port, "/leave");
    ex.wait_log(&[&format!("worker {leaver} (pid"), "exited after disconnect (code 0, signal 0)"]);
    let stayer = 3 - leaver;
    let counts = load(port, 100, 2);
    assert_eq!(counts[stayer as usize], 100, "{:?}", &counts[..3]);
    stop(&mut ex, 2);
    assert_eq!(ex.count_now("worker 3 "), 0, "no replacement for a worker that left on purpose: {:#?}", ex.seen);
}

#[test]
fn epoll_worker_disconnect_and_sigterm() {
    worker_disconnect("epoll");
}

#[test]
fn io_uring_worker_disconnect_and_sigterm() {
    worker_disconnect("io_uring");
}

/// The primary killed with SIGKILL: every Node worker ends (Node's own
/// behaviour when its channel closes).
fn primary_death(backend: &str) {
    let Some(mut ex) = start(backend, &["--workers", "2", &app("hello.js")]) else { return };
    wait_listening(&mut ex, &[1, 2]);
    let pids: Vec<i32> =
        [1, 2].iter().map(|w| pid_of(&ex.wait_log(&[&format!("worker {w} (pid"), "listening"]))).collect();
    ex.child.kill().unwrap();
    ex.child.wait().unwrap();
    let deadline = Instant::now() + WAIT;
    for pid in pids {
        // Gone, or a zombie waiting for whoever adopted it.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        {
            assert!(Instant::now() < deadline, "worker {pid} outlived its primary");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn epoll_primary_death_ends_the_workers() {
    primary_death("epoll");
}

#[test]
fn io_uring_primary_death_ends_the_workers() {
    primary_death("io_uring");
}

#[test]
fn help_exits_0_and_a_bad_option_2() {
    let out = Command::new(NODE_PRIMARY).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: uvring-node"));
    let out = Command::new(NODE_PRIMARY).args(["--policy", "fifo", "app.js"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--policy is rr or shared"));
}

/// A port that is taken: the primary's bind fails, the worker gets Node's
/// own `EADDRINUSE` error (errno -98 in the `queryServer` reply), crashes,
/// and after a restart storm the primary exits 1 instead of forking for
/// ever.
#[test]
fn a_taken_port_ends_in_a_restart_storm() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let Some(mut ex) = start_on("epoll", &["--workers", "1", &app("hello.js")], &port) else { return };
    ex.wait_log(&["Error: bind EADDRINUSE"]);
    ex.wait_log(&["no worker left after a restart storm"]);
    let status = ex.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}");
    drop(taken);
}
