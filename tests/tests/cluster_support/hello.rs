//! Driving the `hello_cluster` example (built as the `cluster-hello`
//! helper) as an operator would: a real process in its own process group,
//! its stderr log read line by line, plain HTTP clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub const HELLO: &str = env!("CARGO_BIN_EXE_cluster-hello");
pub const WAIT: Duration = Duration::from_secs(20);

/// The running example in its own process group; killed (whole group) if
/// the test fails.
pub struct Example {
    pub child: Child,
    pub pgid: i32,
    log: Receiver<String>,
    pub seen: Vec<String>,
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
    pub fn start(backend: &str, policy: &str, port: u16) -> Example {
        Example::start_with(backend, policy, port, 2)
    }

    /// The example with `workers` workers.
    pub fn start_with(backend: &str, policy: &str, port: u16, workers: usize) -> Example {
        Example::start_with_args(backend, policy, port, workers, &[])
    }

    /// The example with `workers` workers and the `extra` arguments.
    pub fn start_with_args(backend: &str, policy: &str, port: u16, workers: usize, extra: &[&str]) -> Example {
        let workers = workers.to_string();
        let mut cmd = Command::new(HELLO);
        cmd.args(["--workers", &workers, "--policy", policy, "--backend", backend, "--host", "127.0.0.1"])
            .args(extra)
            .env("PORT", port.to_string());
        Example::spawn(cmd)
    }

    /// Runs `cmd` (the example, or a wrapper that execs it) as the example:
    /// stdout discarded, stderr read as the log, its own process group.
    pub fn spawn(mut cmd: Command) -> Example {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0).spawn().unwrap();
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
    pub fn wait_log(&mut self, parts: &[&str]) -> String {
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

    /// Takes the log lines that have arrived, without waiting.
    pub fn poll_log(&mut self) {
        while let Ok(l) = self.log.try_recv() {
            self.seen.push(l);
        }
    }

    /// Counts the log lines so far that contain `part` (the example runs on).
    pub fn count_now(&mut self, part: &str) -> usize {
        self.poll_log();
        self.seen.iter().filter(|l| l.contains(part)).count()
    }

    /// Waits up to `d` for one more log line.
    pub fn wait_any(&mut self, d: Duration) {
        if let Ok(l) = self.log.recv_timeout(d) {
            self.seen.push(l);
        }
    }

    /// Waits for the primary to exit 0 (after a SIGTERM, say) and for no
    /// process of its group to be left.
    pub fn wait_clean_exit(&mut self) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "primary did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(0), "{status:?}");
        while group_alive(self.pgid) {
            assert!(Instant::now() < deadline, "processes left behind");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Counts log lines containing `part`, after the example has exited:
    /// reads its output to the end first (the reader thread may still hold
    /// the last lines when the exit is seen).
    pub fn count_log(&mut self, part: &str) -> usize {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response (head and an 11-byte body).
pub fn read_response(s: &mut TcpStream) -> String {
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

pub fn get(port: u16) -> String {
    let mut s = connect(port);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn pid_of(line: &str) -> i32 {
    line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap()
}

pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// Whether io_uring loops can be made here (`make_loop` prints a SKIP line
/// when not, and fails when `UVRING_REQUIRE_IO_URING=1`).
pub fn io_uring_available() -> bool {
    let probe: Option<uvring::Loop> = uvring_tests::make_loop(uvring::Backend::IoUring, Default::default());
    probe.is_some()
}
