//! What a user sees when io_uring is forbidden (a seccomp filter makes
//! `io_uring_setup` fail with EPERM, as `kernel.io_uring_disabled=2` or a
//! container's default profile does): with `--backend io_uring` the example
//! exits 1 with the engine's sentence saying why, not only "Operation not
//! permitted"; with `--backend auto` it says that it fell back to epoll and
//! why, then serves.
//!
//! The filter is installed in the child only (after fork, before exec), so
//! the rest of the test binary keeps io_uring.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELLO: &str = env!("CARGO_BIN_EXE_cluster-hello");

/// Installs a seccomp filter that fails `io_uring_setup` with EPERM and
/// allows everything else. Runs in the forked child before exec: only
/// async-signal-safe calls (two prctl), no allocation.
fn forbid_io_uring() -> std::io::Result<()> {
    // BPF: load the syscall number; if io_uring_setup, return ERRNO|EPERM;
    // else allow. (This test runs on x86_64 and aarch64, where the number is
    // libc::SYS_io_uring_setup.)
    let filter = [
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: plain prctl calls; `prog` and `filter` live across them and the
    // kernel copies the program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn hello(args: &[&str]) -> Command {
    let mut cmd = Command::new(HELLO);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: the closure only makes two prctl calls (async-signal-safe).
    unsafe { cmd.pre_exec(forbid_io_uring) };
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn forbidden_io_uring_is_explained() {
    let port = free_port().to_string();
    let mut child =
        hello(&["--backend", "io_uring", "--workers", "1", "--host", "127.0.0.1", "--port", &port]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "hello_cluster did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("io_uring_setup: EPERM"), "the sentence says what failed: {err}");
    assert!(err.contains("seccomp"), "and why: {err}");
}

#[test]
fn auto_says_it_fell_back_and_why() {
    let port = free_port();
    let mut child = hello(&["--backend", "auto", "--workers", "0", "--host", "127.0.0.1", "--port", &port.to_string()])
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let served = (|| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut body = String::new();
        c.read_to_string(&mut body).ok()?;
        Some(body)
    })();
    // SAFETY: plain kill of the child's process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    assert!(first.contains("auto backend fell back to epoll: io_uring_setup: EPERM"), "{first}");
    assert!(second.contains("(epoll backend)"), "{second}");
    assert!(served.is_some_and(|b| b.ends_with("hello world")), "serves on epoll");
}
