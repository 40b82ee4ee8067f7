//! Zero-downtime upgrade of the primary (nginx's USR2 + QUIT), with the
//! `hello_cluster` example (built as `cluster-hello`): on SIGUSR2 the
//! primary starts a new one that inherits its listening sockets; once the
//! new one's workers listen, the old one drains and exits. Under a steady
//! stream of new connections no attempt is refused or reset, and at the
//! end only the new primary and its workers run. An upgrade whose program
//! cannot start, or exits, leaves the old primary serving.
//!
//! The new primary's parent (the old primary) exits, so the test makes
//! itself a subreaper to reap it.

mod cluster_support;

use cluster_support::hello::*;
use cluster_support::ops::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client threads that open one connection per request, as fast as they
/// can, until stopped (or for 60 s at most).
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

fn one_request(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
    if out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("hello world") {
        Ok(())
    } else {
        Err(format!("bad response {out:?}"))
    }
}

/// One request to the admin endpoint; the whole response.
fn admin_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

impl Load {
    fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match one_request(port) {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.push(e),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, served, threads }
    }

    /// Waits (bounded) until `n` more requests have been served.
    fn wait_more(&self, n: usize) {
        let target = self.served.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + WAIT;
        while self.served.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients; returns (served, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (self.served.load(Ordering::Relaxed), failures)
    }
}

/// The pids of the workers a primary's log reports listening.
fn listening_workers(ex: &Example, primary: i32) -> Vec<i32> {
    let prefix = format!("[primary {primary}] worker ");
    let mut pids: Vec<i32> =
        ex.seen.iter().filter(|l| l.starts_with(&prefix) && l.contains("listening on")).map(|l| pid_of(l)).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn upgrade_under_load(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    become_subreaper();
    let port = free_port();
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut ex = Example::start_with_args(backend, policy, port, 2, &["--admin", &admin_addr]);
    let old = ex.child.id() as i32;
    ex.wait_log(&["worker 1", "listening on"]);
    ex.wait_log(&["worker 2", "listening on"]);
    let old_workers = listening_workers(&ex, old);

    let load = Load::start(port, 2);
    load.wait_more(50);
    signal(old, libc::SIGUSR2);
    let line = ex.wait_log(&["upgrade: new primary (pid", "serves"]);
    let new: i32 = line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    assert_eq!(wait_child(&mut ex.child).code(), Some(0), "the old primary exits 0");
    // The new primary serves alone for a while.
    load.wait_more(100);
    let (served, failures) = load.finish();
    assert!(failures.is_empty(), "{} of {} requests failed: {:?}", failures.len(), served + failures.len(), failures);

    // Only the new primary and its workers are left.
    ex.poll_log();
    let new_workers = listening_workers(&ex, new);
    assert_eq!(new_workers.len(), 2, "{:?}", ex.seen);
    for w in &old_workers {
        assert!(!running(*w), "old worker {w} still runs");
    }
    let mut expected = new_workers.clone();
    expected.push(new);
    expected.sort_unstable();
    assert_eq!(group_members(ex.pgid), expected, "processes after the upgrade");
    assert_eq!(ex.count_now(&format!("[primary {old}] all workers gone; bye")), 1);
    // The admin listener moved too: the new primary answers on it.
    ex.wait_log(&[&format!("[primary {new}] adopted 2 listening socket(s) from upgrade"), &admin_addr]);
    let stats = admin_get(admin, "/stats");
    assert!(stats.starts_with("HTTP/1.1 200") && stats.contains(&format!("\"pid\":{new},")), "{stats}");
    assert!(admin_get(admin, "/health").starts_with("HTTP/1.1 200"));

    signal(new, libc::SIGTERM);
    let status = reap(new);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "new primary status {status:#x}");
    wait_group_gone(ex.pgid);
}

#[test]
fn upgrade_epoll_rr() {
    upgrade_under_load("epoll", "rr");
}

#[test]
fn upgrade_io_uring_rr() {
    upgrade_under_load("io_uring", "rr");
}

#[test]
fn upgrade_epoll_shared() {
    upgrade_under_load("epoll", "shared");
}

#[test]
fn upgrade_io_uring_shared() {
    upgrade_under_load("io_uring", "shared");
}

/// `--upgrade-exec` names a program that does not exist, then (a symlink
/// appears there) one that exits 1: both upgrades fail, each says why, and
/// the old primary serves throughout with its own workers.
fn failed_upgrade(backend: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("uvring-upgrade-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("new-hello");
    let mut cmd = Command::new(HELLO);
    cmd.args(["--workers", "2", "--policy", "rr", "--backend", backend, "--host", "127.0.0.1"]).args([
        "--port",
        &port.to_string(),
        "--upgrade-exec",
        program.to_str().unwrap(),
    ]);
    let mut ex = Example::spawn(cmd);
    let old = ex.child.id() as i32;
    ex.wait_log(&["worker 1", "listening on"]);
    ex.wait_log(&["worker 2", "listening on"]);
    let before = group_members(ex.pgid);
    assert_eq!(before.len(), 3, "{before:?}");

    let load = Load::start(port, 1);
    load.wait_more(20);
    signal(old, libc::SIGUSR2);
    ex.wait_log(&["upgrade failed: cannot start", "new-hello", "still serving"]);
    load.wait_more(20);

    std::os::unix::fs::symlink("/bin/false", &program).unwrap();
    signal(old, libc::SIGUSR2);
    ex.wait_log(&["upgrade failed: the new primary exited with code 1 before it was ready; still serving"]);
    load.wait_more(20);
    let (served, failures) = load.finish();
    assert!(failures.is_empty(), "{} of {} requests failed: {:?}", failures.len(), served + failures.len(), failures);
    assert_eq!(group_members(ex.pgid), before, "the old primary and its workers serve on");
    assert!(ex.child.try_wait().unwrap().is_none());

    signal(old, libc::SIGTERM);
    assert_eq!(wait_child(&mut ex.child).code(), Some(0));
    wait_group_gone(ex.pgid);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn failed_upgrade_epoll() {
    failed_upgrade("epoll");
}

#[test]
fn failed_upgrade_io_uring() {
    failed_upgrade("io_uring");
}
