//! Servers on Unix paths through the primary (issue 11): `hello_cluster
//! --unix PATH` with 2 workers serves HTTP on the socket (answered to `curl
//! --unix-socket` and to a plain client), the primary binds the path once
//! and removes it when the last worker has closed it, so the same command
//! restarts on the same path without `EADDRINUSE` and leaves no socket file
//! behind. Under `rr` the primary accepts and hands the connections over;
//! under `shared` the workers accept on copies of its socket. The same
//! with the test worker: one listener for both workers, bind errors reach
//! the workers, the path goes with the last worker's close, and abstract
//! names work through the primary.

mod cluster_support;

use cluster_support::hello::*;
use cluster_support::{collect, settings, shutdown, start_cluster, wait_for, Cluster, TestData};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn socket_path(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("uvring-hello-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// One HTTP request over the Unix socket with a plain client; the whole
/// answer (the server closes after `Connection: close`).
fn get_unix(path: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Waits until the server answers on `path` (the workers are up).
fn wait_serving(ex: &mut Example, path: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(answer) = get_unix(path) {
            assert!(answer.ends_with("hello world"), "{answer:?}");
            return;
        }
        assert!(Instant::now() < deadline, "no answer on {}; log: {:?}", path.display(), ex.seen);
        ex.wait_any(Duration::from_millis(20));
    }
}

/// SIGTERM: the primary disconnects the workers and exits 0; nothing of
/// the process group is left.
fn stop(ex: &mut Example) {
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    ex.wait_clean_exit();
}

fn unix_hello(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let path = socket_path(&format!("{backend}-{policy}"));
    let p = path.to_str().unwrap();
    let curl = Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    if !curl {
        eprintln!("SKIP curl: not installed (the plain client still runs)");
    }
    // Twice on the same path: the first run's exit removed it.
    for run in 0..2 {
        let mut ex = Example::start_with_args(backend, policy, 0, 2, &["--unix", p]);
        ex.wait_log(&["serving on unix", p]);
        wait_serving(&mut ex, &path);
        for _ in 0..6 {
            let answer = get_unix(&path).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hello world"), "{answer:?}");
        }
        if curl {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "10", "--unix-socket", p, "http://localhost/"])
                .output()
                .unwrap();
            assert!(out.status.success(), "curl: {out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world");
        }
        assert_eq!(ex.count_now("listen failed"), 0, "run {run}: {:?}", ex.seen);
        stop(&mut ex);
        assert_eq!(ex.count_log("EADDRINUSE"), 0);
        assert!(!path.exists(), "run {run}: the socket file is gone after the exit");
    }
}

macro_rules! unix_tests {
    ($($name:ident: $backend:literal, $policy:literal;)*) => {
        $(
            #[test]
            fn $name() {
                unix_hello($backend, $policy);
            }
        )*
    };
}

unix_tests! {
    unix_hello_rr_epoll: "epoll", "rr";
    unix_hello_rr_io_uring: "io_uring", "rr";
    unix_hello_shared_epoll: "epoll", "shared";
    unix_hello_shared_io_uring: "io_uring", "shared";
}

/// Runs the loop until both workers' servers listen (a Unix listen has no
/// address for the primary's `listening` event; the status says it).
fn wait_listening(lp: &mut uvring::Loop<Cluster>, c: &mut Cluster, n: usize) {
    cluster_support::run_until(lp, c, WAIT, |_, c| {
        let w = c.primary.workers();
        w.len() == n && w.iter().all(|w| w.status() == uvring_cluster::WorkerStatus::Listening)
    });
}

/// `n` connections one after another on a helper thread, each read to the
/// end ("worker <id>\n"), while the loop runs.
fn ask_unix(
    lp: &mut uvring::Loop<Cluster>,
    c: &mut Cluster,
    n: usize,
    connect: impl Fn() -> std::io::Result<UnixStream> + Send + 'static,
) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        for _ in 0..n {
            let mut s = connect().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            if tx.send(out).is_err() {
                return;
            }
        }
    });
    let out = collect(lp, c, &rx, n);
    t.join().unwrap();
    out
}

cluster_test! {
    // Two workers on one path: the primary binds it once; every connection
    // is answered by a worker (both, under rr); the path stays while one
    // worker still listens and goes with the last one's close.
    fn unix_path_bound_once_released_last(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let path = socket_path(&format!("worker-{policy:?}-{}", uvring_tests::fd_count()));
        let mut s = settings(policy, "unix-serve", 2);
        s.env.push(("UNIX_PATH".into(), path.clone().into()));
        let mut c = start_cluster(lp, s);
        wait_listening(lp, &mut c, 2);
        assert_eq!(c.primary.listener_count(), 1, "one listener for both workers");
        assert!(path.exists());
        let p = path.clone();
        let answers = ask_unix(lp, &mut c, 10, move || UnixStream::connect(&p));
        assert!(answers.iter().all(|a| a.starts_with("worker ")), "{answers:?}");
        if policy == uvring_cluster::SchedPolicy::RoundRobin {
            let mut who: Vec<&String> = answers.iter().collect();
            who.sort();
            who.dedup();
            assert_eq!(who.len(), 2, "both workers answer: {answers:?}");
        }
        let workers: Vec<_> = c.log.online.clone();
        c.primary.send(lp, workers[0], b"unix-close").unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("unix-closed") == 1);
        let p = path.clone();
        let answers = ask_unix(lp, &mut c, 2, move || UnixStream::connect(&p));
        assert!(answers.iter().all(|a| a.starts_with("worker ")), "{answers:?}");
        assert!(path.exists(), "held for the other worker");
        c.primary.send(lp, workers[1], b"unix-close").unwrap();
        cluster_support::run_until(lp, &mut c, WAIT, |_, c| c.primary.listener_count() == 0 && !path.exists());
        shutdown(lp, &mut c);
    }

    // A path that cannot be bound: the error reaches both workers' servers
    // and no listener is kept.
    fn unix_bind_error_reaches_the_worker(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut s = settings(policy, "unix-serve", 2);
        s.env.push(("UNIX_PATH".into(), "/nonexistent-uvring-dir/s.sock".into()));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.count_prefix("error ") == 2);
        assert_eq!(c.log.count_prefix(&format!("error {}", libc::ENOENT)), 2, "{:?}", c.log.messages);
        assert_eq!(c.primary.listener_count(), 0);
        shutdown(lp, &mut c);
    }

    // An abstract name through the primary: another program reaches it by
    // the name alone (no trailing NUL), and nothing is in the filesystem.
    fn abstract_name_through_the_primary(lp, policy) [rr = RoundRobin, shared = Shared] {
        let name = format!("uvring-cluster-{}-{}", std::process::id(), uvring_tests::fd_count());
        let mut s = settings(policy, "unix-serve", 2);
        s.env.push(("UNIX_PATH".into(), format!("@{name}").into()));
        let mut c = start_cluster(lp, s);
        wait_listening(lp, &mut c, 2);
        let answers = ask_unix(lp, &mut c, 4, move || {
            use std::os::linux::net::SocketAddrExt;
            UnixStream::connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?)
        });
        assert!(answers.iter().all(|a| a.starts_with("worker ")), "{answers:?}");
        shutdown(lp, &mut c);
    }
}
