//! Issue 3's proof that io_uring does the stream I/O: an echo server on the
//! io_uring backend, traced with `strace -f`, serves 1,000 round trips and
//! answers and closes 100 more connections without one
//! read/recv/write/send/accept/epoll_wait/close syscall — the work, closes
//! included (`IORING_OP_CLOSE` with `UVRING_IO_URING_FEATURES=close`, issue
//! 13), goes through `io_uring_enter`.
//!
//! The test re-runs its own binary as the traced server. The server brackets
//! the traffic with two `getppid()` calls (a syscall nothing else makes), so
//! start-up and shutdown noise is outside the window that is checked.
//!
//! Issue 12's counterpart for files: on the io_uring backend, file opens,
//! reads, writes, fsyncs and stats make no `openat`/`pread64`/`pwrite64`/
//! `fsync`/`statx` syscall (nor a work-pool thread's): they go through
//! `io_uring_enter`.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;
use uvring::*;

const CHILD_ENV: &str = "UVRING_STRACE_SERVER";
const ROUND_TRIPS: usize = 1000;
const CLOSED_CONNECTIONS: usize = 100;

fn serve() {
    let mut lp: Loop = Loop::with_backend(Backend::IoUring).expect("io_uring loop");
    let listener: Rc<Cell<Option<TcpListener>>> = Rc::new(Cell::new(None));
    let l = listener.clone();
    // A message that starts with '!' is answered and then the connection is
    // closed from the write's callback (as an HTTP server closes after a
    // `Connection: close` response); anything else is echoed.
    let close_after = OnWrite::new(|lp, _, s: TcpStream, _| lp.close(s, None).expect("close"));
    let on_read = OnRead::new(move |lp, _, s: TcpStream, res| match res {
        Ok(b) if b.first() == Some(&b'!') => lp.write(s, b, Some(&close_after)).expect("write"),
        Ok(b) => lp.write(s, b, None).expect("write"),
        Err(_) => {
            // SAFETY-free marker: getppid has no side effects.
            let _ = unsafe_marker();
            lp.close(s, None).expect("close");
            if let Some(srv) = l.take() {
                lp.close(srv, None).expect("close listener");
            }
        }
    });
    let sock = lp.tcp_init().unwrap();
    lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
    let marked = Cell::new(false);
    let server = lp
        .listen(
            sock,
            64,
            &OnConnection::new(move |lp, _, srv, st| {
                st.expect("accept");
                let c = lp.accept(srv).expect("accept");
                lp.read_start(c, &on_read).expect("read_start");
                if !marked.replace(true) {
                    let _ = unsafe_marker();
                }
            }),
        )
        .unwrap();
    listener.set(Some(server));
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
        // Closes go through the ring too (off by default: they cost the same).
        .env("UVRING_IO_URING_FEATURES", "close")
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
        // Connections the server answers and then closes, while the first
        // one stays open (so the markers bracket every close).
        for i in 0..CLOSED_CONNECTIONS {
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let msg = format!("!close {i:03}");
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes(), "answer, then EOF");
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
    let forbidden =
        ["read(", "recv", "write(", "writev(", "send", "accept", "epoll_wait", "epoll_pwait", "close(", "shutdown("];
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
    eprintln!(
        "{ROUND_TRIPS} round trips and {CLOSED_CONNECTIONS} connections closed: {enters} io_uring_enter calls, \
         no read/recv/write/send/accept/epoll_wait/close"
    );
}

const FILES_CHILD_ENV: &str = "UVRING_STRACE_FILES";
const FILE_ROUNDS: usize = 100;

/// The traced side of the file test: `FILE_ROUNDS` writes and reads at
/// offsets, then fsync, fdatasync, fstat, stat and an open, each run to
/// completion, between the two markers.
fn file_io(dir: &std::path::Path) {
    type Got = Option<Box<dyn std::any::Any>>;
    fn finish<T: 'static>(lp: &mut Loop<Got>) -> T {
        let mut got = None;
        lp.run(RunMode::Default, &mut got).unwrap();
        *got.expect("callback").downcast::<T>().expect("type")
    }
    fn keep<T: 'static>(_: &mut Loop<Got>, got: &mut Got, r: T) {
        *got = Some(Box::new(r));
    }
    fn keep_rw(_: &mut Loop<Got>, got: &mut Got, r: Result<usize>, buf: Vec<u8>) {
        *got = Some(Box::new((r, buf)));
    }
    let opts = LoopOptions::default().backend(Backend::IoUring).fs_io_uring(true);
    let mut lp: Loop<Got> = Loop::with_options(opts).expect("io_uring loop");
    assert!(lp.fs_io_uring());
    let path = dir.join("traced");
    let file = std::fs::File::create(&path).unwrap();
    let _ = unsafe_marker();
    let flags = OpenFlags::READ_WRITE;
    lp.fs_open(&path, flags, 0, keep).unwrap();
    let f: std::fs::File = finish::<Result<std::fs::File>>(&mut lp).unwrap();
    for i in 0..FILE_ROUNDS {
        let data = format!("record {i:05}\n").into_bytes();
        let off = (i * data.len()) as u64;
        lp.fs_write(&f, data.clone(), Some(off), keep_rw).unwrap();
        let (n, _) = finish::<(Result<usize>, Vec<u8>)>(&mut lp);
        assert_eq!(n, Ok(data.len()));
        lp.fs_read(&f, vec![0; data.len()], Some(off), keep_rw).unwrap();
        let (n, back) = finish::<(Result<usize>, Vec<u8>)>(&mut lp);
        assert_eq!((n, back), (Ok(data.len()), data));
    }
    lp.fs_fsync(&f, keep).unwrap();
    finish::<Result<()>>(&mut lp).unwrap();
    lp.fs_fdatasync(&f, keep).unwrap();
    finish::<Result<()>>(&mut lp).unwrap();
    lp.fs_fstat(&f, keep).unwrap();
    assert_eq!(finish::<Result<FileStat>>(&mut lp).unwrap().size, (FILE_ROUNDS * 13) as u64);
    lp.fs_stat(&path, keep).unwrap();
    assert!(finish::<Result<FileStat>>(&mut lp).unwrap().is_file());
    let _ = unsafe_marker();
    drop((f, file));
}

#[test]
fn io_uring_file_io_makes_no_file_syscalls() {
    if let Some(dir) = std::env::var_os(FILES_CHILD_ENV) {
        file_io(std::path::Path::new(&dir));
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
    let dir = std::env::temp_dir().join(format!("uvring-strace-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("trace.txt");
    let child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "io_uring_file_io_makes_no_file_syscalls", "--nocapture", "--test-threads=1"])
        .env(FILES_CHILD_ENV, &dir)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn strace");
    let mut child = KillGroupOnDrop(Some(child));
    let mut strace = child.0.take().unwrap();
    let status = uvring_tests::with_timeout(Duration::from_secs(120), move || strace.wait().unwrap());
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "traced file I/O failed: {status}");
    let lines: Vec<&str> = text.lines().collect();
    let marks: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains("getppid(")).map(|(i, _)| i).collect();
    assert_eq!(marks.len(), 2, "expected two markers in the trace");
    let window = &lines[marks[0]..marks[1]];
    let forbidden = [
        "openat(",
        "read(",
        "pread64(",
        "preadv",
        "write(",
        "pwrite64(",
        "pwritev",
        "fsync(",
        "fdatasync(",
        "statx(",
        "newfstatat(",
    ];
    let offending: Vec<&&str> = window
        .iter()
        .filter(|l| {
            let call = l.split_whitespace().nth(1).unwrap_or("");
            forbidden.iter().any(|f| call.starts_with(f))
        })
        .collect();
    assert!(offending.is_empty(), "file syscalls outside io_uring:\n{offending:#?}");
    let enters = window.iter().filter(|l| l.contains("io_uring_enter(")).count();
    assert!(enters >= 2 * FILE_ROUNDS, "expected the file I/O to go through io_uring_enter, saw {enters} calls");
    eprintln!(
        "{FILE_ROUNDS} writes and reads, fsyncs, stats, an open: {enters} io_uring_enter calls, no file syscalls"
    );
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
