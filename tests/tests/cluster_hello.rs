//! The main job, end to end: the `hello_cluster` example (built as the
//! `cluster-hello` helper from the example's source) serves "hello world"
//! over HTTP/1.1 keep-alive with pipelining and `Connection: close`, replaces
//! a worker killed with `kill -9`, and on SIGTERM disconnects its workers
//! and exits 0 with no process left behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const HELLO: &str = env!("CARGO_BIN_EXE_cluster-hello");
const WAIT: Duration = Duration::from_secs(20);

/// The running example in its own process group; killed (whole group) if
/// the test fails.
struct Example {
    child: Child,
    pgid: i32,
    log: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Example {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: plain syscall on the process group this test made.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            let _ = self.child.wait();
            eprintln!("example log:\n{}", self.seen.join("\n"));
        }
    }
}

impl Example {
    fn start(backend: &str, policy: &str, port: u16) -> Example {
        let mut child = Command::new(HELLO)
            .args(["--workers", "2", "--policy", policy, "--backend", backend, "--host", "127.0.0.1"])
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Example { child, pgid, log, seen: Vec::new() }
    }

    /// Waits for a log line containing all of `parts`; returns it.
    fn wait_log(&mut self, parts: &[&str]) -> String {
        if let Some(l) = self.seen.iter().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {parts:?}"));
            self.seen.push(line.clone());
            if parts.iter().all(|p| line.contains(p)) {
                return line;
            }
        }
    }

    /// Counts log lines containing `part`, after the example has exited:
    /// reads its output to the end first (the reader thread may still hold
    /// the last lines when the exit is seen).
    fn count_log(&mut self, part: &str) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => break,
            }
        }
        self.seen.iter().filter(|l| l.contains(part)).count()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response (head and an 11-byte body).
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map(|v| v.trim().parse().unwrap()).unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8(body).unwrap()
}

fn get(port: u16) -> String {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn pid_of(line: &str) -> i32 {
    line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap()
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

fn scenario(backend: &str, policy: &str) {
    if backend == "io_uring" && !io_uring_available() {
        return;
    }
    let port = free_port();
    let mut ex = Example::start(backend, policy, port);
    ex.wait_log(&["worker 1", "listening on"]);
    let w2 = ex.wait_log(&["worker 2", "listening on"]);

    // Plain GET.
    let r = get(port);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nhello world"), "{r:?}");

    // Keep-alive: two requests on one connection, then pipelined ones
    // answered in order, the last with Connection: close.
    let mut s = connect(port);
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert!(read_response(&mut s).ends_with("hello world"));
    }
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    for i in 0..3 {
        let r = read_response(&mut s);
        assert!(r.starts_with("HTTP/1.1 200 OK") && r.ends_with("hello world"), "{i}: {r:?}");
        assert_eq!(r.contains("Connection: close"), i == 2);
    }
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after Connection: close");

    // kill -9 a worker: a replacement listens and serving goes on.
    // SAFETY: plain syscall on a worker of the example.
    unsafe { libc::kill(pid_of(&w2), libc::SIGKILL) };
    ex.wait_log(&["worker 2", "exited unexpectedly", "signal 9"]);
    ex.wait_log(&["worker 3", "listening on"]);
    for _ in 0..4 {
        assert!(get(port).ends_with("hello world"));
    }

    // SIGTERM: graceful disconnect, exit 0, nothing left.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(ex.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = ex.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "primary did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(ex.count_log("exited after disconnect"), 2);
    let deadline = Instant::now() + WAIT;
    while group_alive(ex.pgid) {
        assert!(Instant::now() < deadline, "processes left behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

macro_rules! hello_tests {
    ($($name:ident: $backend:literal, $policy:literal;)*) => {
        $(
            #[test]
            fn $name() {
                scenario($backend, $policy);
            }
        )*
    };
}

hello_tests! {
    epoll_rr: "epoll", "rr";
    io_uring_rr: "io_uring", "rr";
    epoll_shared: "epoll", "shared";
    io_uring_shared: "io_uring", "shared";
    epoll_reuseport: "epoll", "reuseport";
    io_uring_reuseport: "io_uring", "reuseport";
}

/// Whether io_uring loops can be made here (`make_loop` prints a SKIP line
/// when not, and fails when `UVRING_REQUIRE_IO_URING=1`).
fn io_uring_available() -> bool {
    let probe: Option<uvring::Loop> = uvring_tests::make_loop(uvring::Backend::IoUring, Default::default());
    probe.is_some()
}
