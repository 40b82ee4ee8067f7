//! systemd socket activation and sd_notify, with the `hello_cluster`
//! example (built as `cluster-hello`) as the service.
//!
//! Activation is done the way systemd (and `systemd-socket-activate`) does
//! it: the test binds and listens, puts the socket at fd 3 of the child,
//! and the child's environment says `LISTEN_FDS=1` and `LISTEN_PID=` its
//! own pid (set by a `sh` wrapper that `exec`s the example, so the pid is
//! the example's). The primary must serve on that very socket under `rr`
//! and `shared`: the port is held by the test's socket, so a bind of its
//! own would fail, and `/proc/net/tcp` must show one listening socket on
//! the port, the test's.

mod cluster_support;

use cluster_support::hello::*;
use cluster_support::ops::*;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The inode of a socket fd (`socket:[INODE]` in `/proc/PID/fd`).
fn socket_inode(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino()
}

/// Inodes of the sockets listening on `port` (IPv4), from `/proc/net/tcp`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(local_port) = f.get(1).and_then(|a| a.split(':').nth(1)) else { continue };
        if u16::from_str_radix(local_port, 16).ok() == Some(port) && f.get(3) == Some(&"0A") {
            out.push(f[9].parse().unwrap());
        }
    }
    out
}

/// Whether process `pid` has an fd open on socket `inode`; returns the fd.
fn fd_on_socket(pid: i32, inode: u64) -> Option<String> {
    let want = format!("socket:[{inode}]");
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_str() == Some(&want)) {
            return Some(e.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

fn environ(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).replace('\0', "\n")
}

fn activation(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let inode = socket_inode(&listener);
    let raw = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", r#"export LISTEN_PID=$$; exec "$0" "$@""#, HELLO])
        .args(["--workers", "2", "--policy", policy, "--backend", backend, "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and
    // exec: the socket goes to fd 3 without close-on-exec, as systemd
    // passes it.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(raw, 3) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut ex = Example::spawn(cmd);
    let primary = ex.child.id() as i32;
    ex.wait_log(&["adopted 1 listening socket(s) from systemd", &format!("127.0.0.1:{port}")]);
    let w1 = pid_of(&ex.wait_log(&["worker 1", "listening on", &format!(":{port}")]));
    let w2 = pid_of(&ex.wait_log(&["worker 2", "listening on", &format!(":{port}")]));
    for _ in 0..6 {
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("hello world"), "{r:?}");
    }

    // One listening socket on the port, the test's: the primary bound
    // nothing of its own (a bind would have failed with EADDRINUSE anyway).
    assert_eq!(listening_inodes(port), vec![inode]);
    // The primary holds it as fd 3, close-on-exec.
    assert_eq!(fd_on_socket(primary, inode).as_deref(), Some("3"));
    let fdinfo = std::fs::read_to_string(format!("/proc/{primary}/fdinfo/3")).unwrap();
    let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
    let flags = u32::from_str_radix(flags, 8).unwrap();
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "fd 3 is not close-on-exec: {fdinfo}");
    // The workers got no LISTEN_* variables; under `shared` they accept on
    // copies of the activated socket, under `rr` they never see it.
    for w in [w1, w2] {
        let env = environ(w);
        assert!(!env.contains("LISTEN_FDS=") && !env.contains("LISTEN_PID="), "worker {w} env:\n{env}");
        assert_eq!(fd_on_socket(w, inode).is_some(), policy == "shared", "worker {w} and the socket");
    }

    signal(primary, libc::SIGTERM);
    assert_eq!(wait_child(&mut ex.child).code(), Some(0));
    wait_group_gone(ex.pgid);
    // The port is still ours, and still listening.
    assert_eq!(listening_inodes(port), vec![inode]);
    drop(listener);
}

#[test]
fn activation_epoll_rr() {
    activation("epoll", "rr");
}

#[test]
fn activation_io_uring_rr() {
    activation("io_uring", "rr");
}

#[test]
fn activation_epoll_shared() {
    activation("epoll", "shared");
}

#[test]
fn activation_io_uring_shared() {
    activation("io_uring", "shared");
}

/// A notification socket like systemd's, under an abstract name.
struct Manager {
    socket: UnixDatagram,
    name: String,
    watchdogs: usize,
}

impl Manager {
    fn new(tag: &str) -> Manager {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("uvring-test-notify-{}-{tag}-{nanos}", std::process::id());
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Manager { socket, name: format!("@{name}"), watchdogs: 0 }
    }

    /// The next state other than `WATCHDOG=1` (those are counted).
    fn next(&mut self, ex: &mut Example) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 512];
        loop {
            assert!(Instant::now() < deadline, "no sd_notify message; log:\n{}", ex.seen.join("\n"));
            ex.poll_log();
            let Ok(n) = self.socket.recv(&mut buf) else { continue };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg == "WATCHDOG=1" {
                self.watchdogs += 1;
            } else {
                return msg;
            }
        }
    }
}

/// READY=1 once the workers listen; RELOADING=1 and READY=1 around a
/// rolling restart (SIGHUP); MAINPID= the new primary after an upgrade
/// (SIGUSR2); STOPPING=1 at shutdown; WATCHDOG=1 pings since the unit asks
/// for them (`WATCHDOG_USEC`); the pid file follows the main pid.
fn notify(backend: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    become_subreaper();
    let mut mgr = Manager::new(backend);
    let port = free_port();
    let pid_file = std::env::temp_dir().join(format!("uvring-notify-{}-{port}.pid", std::process::id()));
    let mut cmd = Command::new(HELLO);
    cmd.args(["--workers", "1", "--policy", "rr", "--backend", backend, "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--pid-file", pid_file.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &mgr.name)
        .env("WATCHDOG_USEC", "100000");
    let mut ex = Example::spawn(cmd);
    let old = ex.child.id() as i32;

    assert_eq!(mgr.next(&mut ex), "READY=1");
    // Said after the worker's listening line was written.
    ex.wait_log(&["worker 1", "listening on"]);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), old.to_string());
    assert!(get(port).ends_with("hello world"));

    signal(old, libc::SIGHUP);
    let reloading = mgr.next(&mut ex);
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|us| us > 0), "{reloading:?}");
    assert_eq!(mgr.next(&mut ex), "READY=1");
    ex.wait_log(&["rolling restart done"]);

    signal(old, libc::SIGUSR2);
    let msg = mgr.next(&mut ex);
    let new = primary_of(&ex.wait_log(&["adopted 1 listening socket(s) from upgrade"]));
    assert_eq!(msg, format!("MAINPID={new}"));
    assert_eq!(wait_child(&mut ex.child).code(), Some(0), "the old primary exits 0");
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), new.to_string());
    assert!(get(port).ends_with("hello world"));

    signal(new, libc::SIGTERM);
    assert_eq!(mgr.next(&mut ex), "STOPPING=1");
    let status = reap(new);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "new primary status {status:#x}");
    wait_group_gone(ex.pgid);
    assert!(mgr.watchdogs > 0, "no WATCHDOG=1 although WATCHDOG_USEC asked for it");
    assert!(!pid_file.exists(), "the pid file outlived the primary");
}

#[test]
fn notify_epoll() {
    notify("epoll");
}

#[test]
fn notify_io_uring() {
    notify("io_uring");
}
