//! Process spawn (libuv's test-spawn.c, test-stdio-over-pipes.c and the
//! process cases of test-ref.c): exit code and signal, stdio over pipes, a
//! listener passed as fd 3, cwd and env, exec errors, and how process
//! handles ref the loop.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;
use uvring::*;
use uvring_tests::child::{record_exit, spawn_child, ChildGuard};
use uvring_tests::{both_backends, run_until, with_timeout};

const LIMIT: Duration = Duration::from_secs(20);

fn child_exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_uvring-test-child"))
}

/// Reads `s` to end of file; the bytes and an EOF flag.
fn collect(lp: &mut Loop, s: PipeStream) -> (Rc<RefCell<Vec<u8>>>, Rc<Cell<bool>>) {
    let buf = Rc::new(RefCell::new(Vec::new()));
    let eof = Rc::new(Cell::new(false));
    let (b, e) = (buf.clone(), eof.clone());
    lp.read_start(
        s,
        &OnRead::new(move |lp, _, s, res| match res {
            Ok(data) => b.borrow_mut().extend_from_slice(data),
            Err(err) => {
                assert_eq!(err, Error::EOF);
                e.set(true);
                lp.close(s, None).unwrap();
            }
        }),
    )
    .unwrap();
    (buf, eof)
}

both_backends! {
    fn spawn_exit_code(lp) {
        let (p, _guard, exit) = spawn_child(lp, child_exe(), &["exit", "42"], &[]);
        assert!(lp.process_pid(p).unwrap() > 0);
        run_until(lp, LIMIT, |_| exit.get().is_some());
        assert_eq!(exit.get(), Some((42, 0)));
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn spawn_exit_by_signal(lp) {
        let (p, _guard, exit) = spawn_child(lp, child_exe(), &["sleep"], &[]);
        lp.process_kill(p, libc::SIGTERM).unwrap();
        run_until(lp, LIMIT, |_| exit.get().is_some());
        assert_eq!(exit.get(), Some((0, libc::SIGTERM)));
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn spawn_kill_after_exit_is_esrch(lp) {
        let seen = Rc::new(Cell::new(None));
        let s = seen.clone();
        let on_exit = OnExit::new(move |lp, _, p, status, _| {
            s.set(Some((status, lp.process_kill(p, libc::SIGTERM))));
            lp.close(p, None).unwrap();
        });
        let args = [OsStr::new("exit"), OsStr::new("0")];
        let opts = ProcessOptions::new(child_exe()).args(&args);
        let p = lp.spawn(&opts, &on_exit).unwrap();
        let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(seen.get(), Some((0, Err(Error::ESRCH))));
    }

    fn spawn_fails_with_enoent(lp) {
        let (_, on_exit) = record_exit();
        let opts = ProcessOptions::new(Path::new("/nonexistent/uvring-no-such-program"));
        assert_eq!(lp.spawn(&opts, &on_exit).unwrap_err(), Error::ENOENT);
        let opts = ProcessOptions::new(Path::new("uvring-no-such-program-in-path"));
        assert_eq!(lp.spawn(&opts, &on_exit).unwrap_err(), Error::ENOENT);
        assert_eq!(lp.handle_count(), 0);
    }

    fn spawn_searches_path(lp) {
        let args = [OsStr::new("-c"), OsStr::new("exit 7")];
        let (exit, on_exit) = record_exit();
        let p = lp.spawn(&ProcessOptions::new(Path::new("sh")).args(&args), &on_exit).unwrap();
        let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
        run_until(lp, LIMIT, |_| exit.get().is_some());
        assert_eq!(exit.get(), Some((7, 0)));
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn spawn_with_cwd_and_env(lp) {
        let out = lp.pipe_init(false).unwrap();
        let args = [OsStr::new("env"), OsStr::new("UVRING_TEST_VAR")];
        let env = [(OsStr::new("UVRING_TEST_VAR"), OsStr::new("forty two"))];
        let stdio = [Stdio::Ignore, Stdio::Pipe(out), Stdio::Inherit];
        let dir = std::env::temp_dir().canonicalize().unwrap();
        let opts = ProcessOptions::new(child_exe()).args(&args).env(Some(&env)).cwd(Some(&dir)).stdio(&stdio);
        let (exit, on_exit) = record_exit();
        let p = lp.spawn(&opts, &on_exit).unwrap();
        let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
        let out = lp.pipe_stream(out).expect("spawn connected stdout");
        let (buf, eof) = collect(lp, out);
        run_until(lp, LIMIT, |_| eof.get() && exit.get().is_some());
        assert_eq!(exit.get(), Some((0, 0)));
        assert_eq!(String::from_utf8_lossy(&buf.borrow()), format!("{}\nforty two\n", dir.display()));
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn stdio_over_pipes(lp) {
        let stdin = lp.pipe_init(false).unwrap();
        let stdout = lp.pipe_init(false).unwrap();
        assert_eq!(lp.pipe_stream(stdin), Err(Error::INVALID_STATE), "not connected before the spawn");
        let stdio = [Stdio::Pipe(stdin), Stdio::Pipe(stdout), Stdio::Inherit];
        let (_p, _guard, exit) = spawn_child(lp, child_exe(), &["stdio"], &stdio);
        let stdin = lp.pipe_stream(stdin).expect("spawn connected stdin");
        let stdout = lp.pipe_stream(stdout).expect("spawn connected stdout");
        assert_eq!(lp.stream_type(stdin), Ok(StreamType::Pipe));
        let (buf, eof) = collect(lp, stdout);
        let echoed = b"it travels through a socketpair\n";
        lp.write(stdin, echoed, None).unwrap();
        lp.shutdown(stdin, Some(&OnShutdown::new(|lp, _, s, res| {
            res.unwrap();
            lp.close(s, None).unwrap();
        }))).unwrap();
        run_until(lp, LIMIT, |_| eof.get() && exit.get().is_some());
        assert_eq!(exit.get(), Some((0, 0)));
        let mut want = b"hello world\n".to_vec();
        want.extend_from_slice(echoed);
        assert_eq!(*buf.borrow(), want);
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn spawn_tcp_server(lp) {
        // A bound (not yet listening) socket goes to the child as fd 3; the
        // child listens and serves on it.
        let server = lp.tcp_init().unwrap();
        lp.tcp_bind(server, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let addr = lp.tcp_getsockname(server).unwrap();
        let stdio = [Stdio::Ignore, Stdio::Inherit, Stdio::Inherit, Stdio::Fd(lp.fileno(server).unwrap())];
        let (_p, _guard, exit) = spawn_child(lp, child_exe(), &["tcp_server_fd3"], &stdio);
        lp.close(server, None).unwrap();
        let client = std::thread::spawn(move || {
            // The child may not be listening yet: retry refused connects.
            let mut s = (0..200)
                .find_map(|_| {
                    std::net::TcpStream::connect(addr).ok().or_else(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        None
                    })
                })
                .expect("connect to the child's server");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"ping over fd 3").unwrap();
            let mut buf = [0u8; 14];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"ping over fd 3");
        });
        run_until(lp, LIMIT, |_| exit.get().is_some());
        assert_eq!(exit.get(), Some((0, 0)));
        client.join().unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn process_ref(lp) {
        // An unref'd process does not keep the loop running; kill and close
        // it afterwards (libuv's test-ref.c process_ref).
        let (p, guard, exit) = spawn_child(lp, child_exe(), &["sleep"], &[]);
        lp.unref_handle(p).unwrap();
        assert!(!lp.run(RunMode::Default, &mut ()).unwrap());
        assert_eq!(exit.get(), None);
        assert_eq!(lp.process_kill(p, 0), Ok(()), "the child still runs");
        lp.process_kill(p, libc::SIGTERM).unwrap();
        lp.close(p, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        drop(guard);
    }

    fn spawn_auto_unref(lp) {
        // After the child exits, its handle no longer keeps the loop alive
        // although it is not closed.
        let args = [OsStr::new("exit"), OsStr::new("0")];
        let opts = ProcessOptions::new(child_exe()).args(&args);
        let p = lp.spawn(&opts, &OnExit::new(|_, _, _, _, _| {})).unwrap();
        let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
        assert!(lp.is_active(p));
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert!(!lp.is_closing(p));
        assert!(!lp.is_active(p));
        assert!(lp.process_exited(p).unwrap());
        lp.close(p, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert!(!lp.is_live(p));
    }

    fn closing_a_process_does_not_kill_it(lp) {
        let (p, guard, exit) = spawn_child(lp, child_exe(), &["sleep"], &[]);
        let pid = lp.process_pid(p).unwrap();
        lp.close(p, None).unwrap();
        lp.run(RunMode::Default, &mut ()).unwrap();
        assert_eq!(exit.get(), None);
        // SAFETY: signal 0 only checks that our (unreaped) child exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the child was killed by close");
        drop(guard);
    }

    // uid, gid, groups and CPU affinity applied in the child before exec
    // (as root; visibly skipped otherwise), read back from /proc.
    fn spawn_with_privileges_and_affinity(lp) {
        let (_, on_exit) = record_exit();
        for bad in [&[][..], &[100_000][..]] {
            let opts = ProcessOptions::new(child_exe()).cpu_affinity(Some(bad));
            assert_eq!(lp.spawn(&opts, &on_exit).unwrap_err(), Error::EINVAL, "{bad:?}");
        }
        let Some(exe) = exe_for_others("spawn_with_privileges_and_affinity") else { return };
        let cpu = *uvring::os::allowed_cpus().unwrap().last().unwrap();
        let (args, groups, cpus) = ([OsStr::new("sleep")], [65534, 100], [cpu]);
        let (exit, on_exit) = record_exit();
        let opts = ProcessOptions::new(exe)
            .args(&args)
            .uid(Some(65534))
            .gid(Some(65534))
            .groups(Some(&groups))
            .cpu_affinity(Some(&cpus));
        let p = lp.spawn(&opts, &on_exit).unwrap();
        let pid = lp.process_pid(p).unwrap();
        let _guard = ChildGuard::new(pid);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..].split_whitespace().collect::<Vec<_>>().join(" ")
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534");
        assert_eq!(field("Groups:"), "100 65534");
        assert_eq!(field("Cpus_allowed_list:"), cpu.to_string());
        lp.process_kill(p, libc::SIGTERM).unwrap();
        run_until(lp, LIMIT, |_| exit.get().is_some());
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    /// The child drops privileges with raw system calls. glibc's `setuid`,
    /// `setgid` and `setgroups` act for every thread glibc knows of, waiting
    /// on futexes for each; a child made by `clone3` inherits that
    /// bookkeeping without the threads (a thread that was being created at
    /// the moment of the clone never answers), and it hung there, before
    /// exec, while the parent created threads. 100 spawns with a uid and a
    /// gid while another thread creates and joins threads without pause:
    /// every child execs and exits 0. A watchdog kills this process's
    /// children after 60 s, so a hang fails the test instead of stalling it.
    fn spawn_with_uid_while_threads_come_and_go(lp) {
        let Some(exe) = exe_for_others("spawn_with_uid_while_threads_come_and_go") else { return };
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::spawn(|| {}).join().unwrap();
                    n += 1;
                }
                n
            })
        };
        let watchdog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) {
                    if std::time::Instant::now() > deadline {
                        for pid in children_of_this_process() {
                            // SAFETY: a plain system call on our own child.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let args = [OsStr::new("exit"), OsStr::new("0")];
        for i in 0..100 {
            let (exit, on_exit) = record_exit();
            let opts = ProcessOptions::new(exe).args(&args).uid(Some(65534)).gid(Some(65534));
            let p = lp.spawn(&opts, &on_exit).unwrap();
            let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
            run_until(lp, LIMIT, |_| exit.get().is_some());
            assert_eq!(exit.get(), Some((0, 0)), "child {i} (a hang killed by the watchdog shows as signal 9)");
        }
        stop.store(true, Ordering::Relaxed);
        let threads = churn.join().unwrap();
        watchdog.join().unwrap();
        assert!(threads > 0);
        lp.run(RunMode::Default, &mut ()).unwrap();
    }

    fn spawn_inherits_env_by_default(lp) {
        // With env None the parent's environment passes unchanged.
        let out = lp.pipe_init(false).unwrap();
        let args = [OsStr::new("env"), OsStr::new("PATH")];
        let stdio = [Stdio::Ignore, Stdio::Pipe(out), Stdio::Inherit];
        let opts = ProcessOptions::new(child_exe()).args(&args).stdio(&stdio);
        let (exit, on_exit) = record_exit();
        let p = lp.spawn(&opts, &on_exit).unwrap();
        let _guard = ChildGuard::new(lp.process_pid(p).unwrap());
        let out = lp.pipe_stream(out).expect("spawn connected stdout");
        let (buf, eof) = collect(lp, out);
        run_until(lp, LIMIT, |_| eof.get() && exit.get().is_some());
        let text = String::from_utf8_lossy(&buf.borrow()).into_owned();
        assert_eq!(text.lines().nth(1).unwrap_or(""), std::env::var("PATH").unwrap_or_default());
        lp.run(RunMode::Default, &mut ()).unwrap();
    }
}

#[test]
fn spawned_child_uses_the_test_backend() {
    // The helper reads UVRING_BACKEND; make sure an invalid value is refused
    // (the child would panic, exit 101), so the env really reaches it.
    let guard = uvring_tests::TestGuard::new();
    let code = with_timeout(Duration::from_secs(20), || {
        std::process::Command::new(env!("CARGO_BIN_EXE_uvring-test-child"))
            .arg("idle")
            .env("UVRING_BACKEND", "no-such-backend")
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .code()
    });
    assert_eq!(code, Some(101));
    guard.check_fds();
}

/// The test child, if a process running as nobody (uid 65534) may execute
/// it: needs root to switch users at all. `None` (with a SKIP line) if not.
fn exe_for_others(test: &str) -> Option<&'static Path> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: not root");
        return None;
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    let exe = child_exe();
    if mode(exe) & 0o005 != 0o005 || exe.ancestors().skip(1).any(|d| !d.as_os_str().is_empty() && mode(d) & 0o001 == 0)
    {
        eprintln!("SKIP {test}: {} is not executable by others", exe.display());
        return None;
    }
    Some(exe)
}

/// The pids of this process's children (every thread's).
fn children_of_this_process() -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    pids
}
