//! Operating the `hello_cluster` example as an operator would: SIGTTIN and
//! SIGTTOU change the number of workers at run time (gunicorn's signals);
//! `--log FILE` sends the primary's log there and SIGUSR1 reopens it after
//! a rotation (nginx's); `--stdio capture` brings each worker's output into
//! that log, prefixed with the worker's id and pid.

mod cluster_support;

use cluster_support::hello::*;
use std::time::{Duration, Instant};

/// SIGTERM, then waits for exit 0 and for the whole group to be gone.
fn stop(ex: &mut Example) {
    signal(ex, libc::SIGTERM);
    ex.wait_clean_exit();
}

fn signal(ex: &Example, signum: i32) {
    // SAFETY: plain syscall on our child.
    assert_eq!(unsafe { libc::kill(ex.child.id() as i32, signum) }, 0);
}

fn worker_count(backend: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let port = free_port();
    let mut ex = Example::start_with_args(backend, "rr", port, 1, &[]);
    ex.wait_log(&["worker 1", "listening on"]);
    signal(&ex, libc::SIGTTIN);
    ex.wait_log(&["SIGTTIN: workers 1 -> 2"]);
    ex.wait_log(&["worker 2", "listening on"]);
    signal(&ex, libc::SIGTTIN);
    ex.wait_log(&["SIGTTIN: workers 2 -> 3"]);
    ex.wait_log(&["worker 3", "listening on"]);
    // Down by one: the newest worker leaves gracefully.
    signal(&ex, libc::SIGTTOU);
    ex.wait_log(&["SIGTTOU: workers 3 -> 2"]);
    ex.wait_log(&["worker 3", "exited after disconnect"]);
    for _ in 0..4 {
        assert!(get(port).ends_with("hello world"));
    }
    assert_eq!(ex.count_now("exited"), 1, "{:#?}", ex.seen);
    stop(&mut ex);
    assert_eq!(ex.count_log("exited after disconnect"), 3);
}

/// Waits until the file at `path` has a line containing all of `parts`.
fn wait_file(path: &std::path::Path, parts: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no line with {parts:?} in {}:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_reopen_and_capture(backend: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("uvring-hello-log-{}-{backend}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("primary.log");
    let port = free_port();
    let mut ex =
        Example::start_with_args(backend, "rr", port, 1, &["--log", log.to_str().unwrap(), "--stdio", "capture"]);
    let listening = wait_file(&log, &["worker 1", "listening on"]);
    let pid = pid_of(&listening);
    // The worker's own stdout line, captured and prefixed.
    wait_file(&log, &[&format!("[worker 1 pid {pid}] serving on 127.0.0.1:{port}")]);
    // Rotate: move the file away, SIGUSR1, and the log goes on in a new file.
    let rotated = dir.join("primary.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(&ex, libc::SIGUSR1);
    wait_file(&log, &["SIGUSR1: log reopened", "0 captured lines dropped"]);
    // A new worker's captured output reaches the new file.
    signal(&ex, libc::SIGTTIN);
    let line = wait_file(&log, &["worker 2", "listening on"]);
    wait_file(&log, &[&format!("[worker 2 pid {}] serving on 127.0.0.1:{port}", pid_of(&line))]);
    assert!(get(port).ends_with("hello world"));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!old.contains("worker 2"), "the rotated file is left alone:\n{old}");
    stop(&mut ex);
    wait_file(&log, &["all workers gone; bye"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ttin_ttou_change_the_worker_count_epoll() {
    worker_count("epoll");
}

#[test]
fn ttin_ttou_change_the_worker_count_io_uring() {
    worker_count("io_uring");
}

#[test]
fn log_reopen_and_captured_output_epoll() {
    log_reopen_and_capture("epoll");
}

#[test]
fn log_reopen_and_captured_output_io_uring() {
    log_reopen_and_capture("io_uring");
}

/// A free port below 1024 on 127.0.0.1 (none: `None`).
/// A free port in `range`: each test has its own range, since the tests run
/// in parallel and a probe says nothing about a port another test is about
/// to bind (both once took 1023: the second cluster's bind failed).
fn free_privileged_port(range: std::ops::Range<u16>) -> Option<u16> {
    range.rev().find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// Run as root, the primary binds a privileged port and its workers serve
/// it as nobody (uid and gid 65534), under `rr` and `shared`.
fn privileged_port_unprivileged_workers(backend: &str, policy: &str, ports: std::ops::Range<u16>) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP privileged_port_unprivileged_workers: not root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let hello = std::path::Path::new(HELLO);
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode(hello) & 0o005 != 0o005
        || hello.ancestors().skip(1).any(|d| !d.as_os_str().is_empty() && mode(d) & 0o001 == 0)
    {
        eprintln!("SKIP privileged_port_unprivileged_workers: {} is not executable by others", hello.display());
        return;
    }
    let Some(port) = free_privileged_port(ports) else {
        eprintln!("SKIP privileged_port_unprivileged_workers: no free port below 1024");
        return;
    };
    let mut ex = Example::start_with_args(backend, policy, port, 2, &["--uid", "65534", "--gid", "65534"]);
    let line = ex.wait_log(&["worker 1", "listening on"]);
    ex.wait_log(&["worker 2", "listening on"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid_of(&line))).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{uid}");
    for _ in 0..4 {
        assert!(get(port).ends_with("hello world"));
    }
    stop(&mut ex);
}

#[test]
fn privileged_port_unprivileged_workers_rr_epoll() {
    privileged_port_unprivileged_workers("epoll", "rr", 900..962);
}

#[test]
fn privileged_port_unprivileged_workers_shared_io_uring() {
    privileged_port_unprivileged_workers("io_uring", "shared", 962..1024);
}
