//! `Connection: close` churn through the `hello_cluster` example (built as
//! the `cluster-hello` helper) under `rr`: every connection gets its whole
//! response and then EOF, whether the worker closes right after the write
//! (the default) or shuts the write side down first (`HELLO_CHURN=legacy`,
//! the A/B switch of the benchmarks), and no process of the cluster keeps
//! an fd once the load is over (the primary closes its copy of every
//! handed-off connection, the workers theirs).

mod cluster_support;

use cluster_support::hello::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// One `Connection: close` request: the whole response, then EOF.
fn close_request(port: u16) {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("\r\n\r\nhello world"), "{out:?}");
    assert!(out.contains("Connection: close"), "{out:?}");
}

fn scenario(backend: &str, legacy: bool) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let port = free_port();
    let mut cmd = Command::new(HELLO);
    cmd.args(["--workers", "2", "--policy", "rr", "--backend", backend, "--host", "127.0.0.1"])
        .env("PORT", port.to_string());
    if legacy {
        cmd.env("HELLO_CHURN", "legacy");
    }
    let mut ex = Example::spawn(cmd);
    let w1 = pid_of(&ex.wait_log(&["worker 1", "listening on"]));
    let w2 = pid_of(&ex.wait_log(&["worker 2", "listening on"]));
    let primary = ex.child.id() as i32;
    // One request each first, so that lazily opened fds are there.
    for _ in 0..4 {
        close_request(port);
    }
    let before: Vec<usize> = [primary, w1, w2].iter().map(|&p| fd_count(p)).collect();

    // 4 clients at once, 50 connections each: batches of several fds.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    close_request(port);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Keep-alive still works after the churn (nodelay is set lazily).
    let mut s = connect(port);
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(read_response(&mut s).ends_with("hello world"));
    }
    drop(s);

    // Every process is back to (at most) its fds of before (the primary's copies are
    // closed once acknowledged; bounded wait, no timing assumed).
    let deadline = Instant::now() + WAIT;
    loop {
        let now: Vec<usize> = [primary, w1, w2].iter().map(|&p| fd_count(p)).collect();
        // (Before may count a warm-up connection still closing: at most.)
        if now.iter().zip(&before).all(|(n, b)| n <= b) {
            break;
        }
        assert!(Instant::now() < deadline, "fds before {before:?}, now {now:?} (primary, worker 1, worker 2)");
        std::thread::sleep(Duration::from_millis(50));
    }
    ex.terminate();
}

#[test]
fn epoll_close_after_write() {
    scenario("epoll", false);
}

#[test]
fn io_uring_close_after_write() {
    scenario("io_uring", false);
}

#[test]
fn epoll_legacy_shutdown_then_close() {
    scenario("epoll", true);
}

#[test]
fn io_uring_legacy_shutdown_then_close() {
    scenario("io_uring", true);
}
