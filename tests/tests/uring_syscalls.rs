//! Issue 3's proof that io_uring does the stream I/O: an echo server on the
//! io_uring backend, traced with `strace -f`, serves 1,000 round trips
//! without one read/recv/write/send/accept/epoll_wait syscall — the work goes
//! through `io_uring_enter`.
//!
//! The test re-runs its own binary as the traced server. The server brackets
//! the traffic with two `getppid()` calls (a syscall nothing else makes), so
//! start-up and shutdown noise is outside the window that is checked.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uvring::*;

const CHILD_ENV: &str = "UVRING_STRACE_SERVER";
const ROUND_TRIPS: usize = 1000;

fn serve() {
    let mut lp: Loop = Loop::with_backend(Backend::IoUring).expect("io_uring loop");
    let on_read = OnRead::new(|lp, _, s: TcpStream, res| match res {
        Ok(b) => lp.write(s, b, None).expect("write"),
        Err(_) => {
            // SAFETY-free marker: getppid has no side effects.
            let _ = unsafe_marker();
            lp.close(s, None).expect("close");
        }
    });
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let server = lp
        .listen(
            sock,
            8,
            &OnConnection::new(move |lp, _, srv, st| {
                st.expect("accept");
                let c = lp.accept(srv).expect("accept");
                lp.read_start(c, &on_read).expect("read_start");
                lp.close(srv, None).expect("close listener");
                let _ = unsafe_marker();
            }),
        )
        .unwrap();
    // Never outlive a parent that gave up on us.
    let guard = lp.timer_init().unwrap();
    lp.timer_start(guard, Duration::from_secs(120), Duration::ZERO, &OnTimer::new(|_, _, _| std::process::exit(3)))
        .unwrap();
    lp.unref_handle(guard).unwrap();
    println!("PORT {}", lp.tcp_getsockname(server).unwrap().port());
    std::io::stdout().flush().unwrap();
    lp.run(RunMode::Default, &mut ()).unwrap();
}

fn unsafe_marker() -> i32 {
    // getppid cannot fail and has no side effects; it only marks the trace.
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::getppid() }
}

#[test]
fn io_uring_echo_makes_no_stream_syscalls() {
    if std::env::var_os(CHILD_ENV).is_some() {
        serve();
        return;
    }
    if Loop::<()>::with_backend(Backend::IoUring).is_err() {
        assert!(!uvring_tests::io_uring_required(), "io_uring required but unavailable");
        eprintln!("SKIP (io_uring unavailable)");
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(!uvring_tests::io_uring_required(), "strace is required with UVRING_REQUIRE_IO_URING=1");
        eprintln!("SKIP (strace not installed)");
        return;
    }
    let trace = std::env::temp_dir().join(format!("uvring-strace-{}.txt", std::process::id()));
    let child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "io_uring_echo_makes_no_stream_syscalls", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn strace");
    let mut child = KillGroupOnDrop(Some(child));
    let mut child_out = child.0.as_mut().unwrap().stdout.take();
    let out = BufReader::new(child_out.take().unwrap());
    // Read the port, then keep draining the child's stdout until it ends so
    // the child never writes into a closed pipe.
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            // libtest prints "test <name> ... " without a newline first.
            if let Some((_, p)) = line.trim().rsplit_once("PORT ") {
                let _ = port_tx.send(p.parse::<u16>().ok());
            }
        }
    });
    // Start-up under strace is slow on a loaded machine; the bound is generous.
    let port = port_rx.recv_timeout(Duration::from_secs(120)).ok().flatten();
    let Some(port) = port else { panic!("traced server did not start") };
    uvring_tests::with_timeout(Duration::from_secs(60), move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..ROUND_TRIPS {
            let msg = format!("round trip {i:05}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
    });
    let mut strace = child.0.take().unwrap();
    let status = uvring_tests::with_timeout(Duration::from_secs(60), move || strace.wait().unwrap());
    assert!(status.success(), "traced server failed: {status}");

    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    let lines: Vec<&str> = text.lines().collect();
    let marks: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains("getppid(")).map(|(i, _)| i).collect();
    assert_eq!(marks.len(), 2, "expected two markers in the trace");
    let window = &lines[marks[0]..marks[1]];
    let forbidden = ["read(", "recv", "write(", "writev(", "send", "accept", "epoll_wait", "epoll_pwait"];
    let offending: Vec<&&str> = window
        .iter()
        .filter(|l| {
            let call = l.split_whitespace().nth(1).unwrap_or("");
            forbidden.iter().any(|f| call.starts_with(f))
        })
        .collect();
    assert!(offending.is_empty(), "stream syscalls outside io_uring during the traffic:\n{offending:#?}");
    let enters = window.iter().filter(|l| l.contains("io_uring_enter(")).count();
    assert!(enters >= ROUND_TRIPS, "expected the traffic to go through io_uring_enter, saw {enters} calls");
    eprintln!("{ROUND_TRIPS} round trips: {enters} io_uring_enter calls, no read/recv/write/send/accept/epoll_wait");
}

/// Kills the whole process group (strace and its tracee) unless the child
/// was taken back for a normal wait: no orphan survives a failed test.
struct KillGroupOnDrop(Option<Child>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child's process group; no memory involved.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}
