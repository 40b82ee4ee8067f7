//! Worker lifecycle, after Node's test-cluster-worker-kill, -worker-exit,
//! -worker-kill-signal, -kill-disconnect, -primary-kill,
//! -worker-wait-server-close, -worker-no-exit, -disconnect-with-no-workers
//! and -concurrent-disconnect; plus respawn, restart storms, rolling
//! restarts and a worker that sends garbage.

mod cluster_support;

use cluster_support::*;
use std::cell::Cell;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::rc::Rc;
use std::time::{Duration, Instant};
use uvring::{Loop, OnConnection, OnRead, TcpStream};
use uvring_cluster::{Primary, RespawnSettings, SchedPolicy};

/// Runs the loop for a while (to show that something does *not* happen).
fn run_for(lp: &mut Loop, d: Duration) {
    let end = Instant::now() + d;
    run_until(lp, d + WAIT, |_| Instant::now() >= end);
}

fn exit_of(log: &SharedLog, id: u32) -> Vec<(u32, i64, i32, bool)> {
    log.borrow().exits.iter().filter(|e| e.0 == id).cloned().collect()
}

/// What a primary on a `Loop<Tally>` saw: the loop's user data.
#[derive(Default, Debug)]
struct Tally {
    forks: Vec<i32>,
    online: Vec<u32>,
    listening: Vec<(u32, u16)>,
    messages: Vec<(u32, String)>,
    disconnects: Vec<u32>,
    /// `(worker, code, signal, exited_after_disconnect)`.
    exits: Vec<(u32, i64, i32, bool)>,
    /// The disconnect callback ran.
    disconnected: bool,
}

cluster_test! {
    // SIGKILL from outside: disconnect and exit fire once each, with the
    // signal, not after a disconnect; the table empties.
    fn worker_kill(lp, policy) [rr = RoundRobin] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "serve", 1));
        wait_for(lp, &log, |l| l.listening.len() == 1);
        let w = primary.workers()[0].clone();
        // SAFETY: plain syscall on our child's pid.
        assert_eq!(unsafe { libc::kill(w.pid(), libc::SIGKILL) }, 0);
        wait_for(lp, &log, |l| l.exits.len() == 1);
        run_for(lp, Duration::from_millis(100));
        let l = log.borrow();
        assert_eq!(l.exits, vec![(1, 0, libc::SIGKILL, false)]);
        assert_eq!(l.disconnects, vec![1]);
        drop(l);
        assert!(w.is_dead() && !w.is_connected() && !w.exited_after_disconnect());
        assert_eq!(primary.worker_count(), 0);
        assert_eq!(primary.listener_count(), 0);
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // exit(42): code 42, events once each.
    fn worker_exit(lp, policy) [rr = RoundRobin] {
        let primary = Primary::new(lp, settings(policy, "exit42", 1)).unwrap();
        let log = record(&primary);
        let _guard = KillGuard(log.clone());
        let w = primary.fork(lp).unwrap();
        wait_for(lp, &log, |l| l.exits.len() == 1);
        run_for(lp, Duration::from_millis(100));
        let l = log.borrow();
        assert_eq!(l.exits, vec![(1, 42, 0, false)]);
        assert_eq!(l.disconnects, vec![1]);
        drop(l);
        assert!(w.is_dead() && !w.exited_after_disconnect());
        assert_eq!(primary.worker_count(), 0);
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // worker.kill(signal): the exit reports that signal, and counts as a
    // disconnect (kill-disconnect).
    fn worker_kill_signal(lp, policy) [rr = RoundRobin] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "idle", 2));
        wait_for(lp, &log, |l| l.online.len() == 2);
        let ws = primary.workers();
        ws[0].kill(lp, libc::SIGTERM).unwrap();
        ws[1].kill(lp, libc::SIGKILL).unwrap();
        assert!(!ws[0].is_connected(), "kill closes the channel at once");
        wait_for(lp, &log, |l| l.exits.len() == 2);
        run_for(lp, Duration::from_millis(100));
        assert_eq!(exit_of(&log, 1), vec![(1, 0, libc::SIGTERM, true)]);
        assert_eq!(exit_of(&log, 2), vec![(2, 0, libc::SIGKILL, true)]);
        let mut d = log.borrow().disconnects.clone();
        d.sort();
        assert_eq!(d, vec![1, 2]);
        assert!(ws.iter().all(|w| w.is_dead() && w.exited_after_disconnect()));
        assert_eq!(primary.worker_count(), 0);
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // A disconnecting worker stays alive while a client connection is open,
    // and exits (code 0) after it closes.
    fn worker_wait_server_close(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let mut s = settings(policy, "serve-hold", 1);
        if policy == SchedPolicy::ReusePort {
            s.env.push(("PORT".into(), free_port().to_string().into()));
        }
        let (primary, log, _guard) = start_cluster(lp, s);
        wait_for(lp, &log, |l| l.listening.len() == 1);
        let port = log.borrow().listening[0].1;
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        wait_for(lp, &log, |l| l.has_message("accepted"));
        let w = primary.workers()[0].clone();
        w.disconnect(lp);
        wait_for(lp, &log, |l| l.disconnects.len() == 1);
        run_for(lp, Duration::from_millis(300));
        assert!(log.borrow().exits.is_empty(), "worker exited with a connection open");
        assert!(!w.is_dead());
        drop(client);
        wait_for(lp, &log, |l| l.exits.len() == 1);
        assert_eq!(log.borrow().exits[0], (1, 0, 0, true));
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // The worker holds an outgoing connection to a server in the primary:
    // disconnected, it lives until that connection closes.
    fn worker_no_exit(lp, policy) [rr = RoundRobin] {
        let held: Rc<Cell<Option<TcpStream>>> = Rc::default();
        let h = held.clone();
        let sock = lp.tcp_init().unwrap();
        lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let on_read = OnRead::new(|_, _, _: TcpStream, _| {});
        let server = lp.listen(sock, 8, &OnConnection::new(move |lp, _, srv, _| {
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            h.set(Some(c));
        })).unwrap();
        let port = lp.tcp_getsockname(server).unwrap().port();
        let primary = Primary::new(lp, settings(policy, "hold-connection", 0)).unwrap();
        let log = record(&primary);
        let _guard = KillGuard(log.clone());
        let w = primary.fork_with_env(lp, &[("PORT", &port.to_string())]).unwrap();
        wait_for(lp, &log, |l| l.has_message("connected"));
        run_until(lp, WAIT, |_| held.get().is_some());
        w.disconnect(lp);
        wait_for(lp, &log, |l| l.disconnects.len() == 1);
        run_for(lp, Duration::from_millis(300));
        assert!(log.borrow().exits.is_empty(), "worker exited with its connection open");
        lp.close(held.get().unwrap(), None).unwrap();
        wait_for(lp, &log, |l| l.exits.len() == 1);
        assert_eq!(log.borrow().exits[0], (1, 0, 0, true));
        lp.close(server, None).unwrap();
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // The disconnect callback runs on a later turn even with no worker.
    fn disconnect_with_no_workers(lp, policy) [rr = RoundRobin] {
        let primary = Primary::new(lp, settings(policy, "idle", 0)).unwrap();
        let called = Rc::new(Cell::new(false));
        let c = called.clone();
        primary.disconnect(lp, move |_, _| c.set(true));
        assert!(!called.get(), "callback must be asynchronous");
        run_until(lp, WAIT, |_| called.get());
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // Every worker disconnected in the same turn: each exits cleanly once.
    fn concurrent_disconnect(lp, policy) [rr = RoundRobin, shared = Shared] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "serve", 4));
        wait_for(lp, &log, |l| l.listening.len() == 4);
        for w in primary.workers() {
            w.disconnect(lp);
        }
        wait_for(lp, &log, |l| l.exits.len() == 4);
        run_for(lp, Duration::from_millis(100));
        let l = log.borrow();
        assert!(l.exits.iter().all(|&(_, code, sig, ead)| code == 0 && sig == 0 && ead), "{:?}", l.exits);
        assert_eq!(l.disconnects.len(), 4);
        drop(l);
        assert_eq!(primary.worker_count(), 0);
        assert_eq!(primary.listener_count(), 0);
        run_until(lp, WAIT, |lp| !lp.alive());
    }

    // A crashed worker is replaced (after a back-off); a disconnect stops it.
    fn respawn_after_crash(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "serve", 2);
        s.respawn = RespawnSettings { enabled: true, base_delay_ms: 20, ..RespawnSettings::default() };
        let (primary, log, _guard) = start_cluster(lp, s);
        wait_for(lp, &log, |l| l.listening.len() == 2);
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(primary.workers()[0].pid(), libc::SIGKILL) };
        wait_for(lp, &log, |l| l.listening.len() == 3);
        assert_eq!(primary.worker_count(), 2);
        assert_eq!(log.borrow().pids.len(), 3);
        let port = log.borrow().listening[2].1;
        let rx = ask_many(port, 4, 2);
        assert!(collect(lp, &rx, 4).into_iter().all(|r| r.is_ok()));
        shutdown(lp, &primary);
        assert_eq!(log.borrow().pids.len(), 3, "no respawn after a disconnect");
    }

    // A worker that keeps crashing is given up on after the storm limit.
    fn restart_storm(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "exit42", 1);
        s.respawn = RespawnSettings { enabled: true, base_delay_ms: 5, max_delay_ms: 20, storm_limit: 3, window_ms: 60_000 };
        let primary = Primary::new(lp, s).unwrap();
        let log = record(&primary);
        let _guard = KillGuard(log.clone());
        let stormed = Rc::new(Cell::new(false));
        let st = stormed.clone();
        primary.on_restart_storm(move |_, _| st.set(true));
        primary.start(lp).unwrap();
        run_until(lp, WAIT, |_| stormed.get());
        run_until(lp, WAIT, |lp| !lp.alive());
        assert_eq!(log.borrow().exits.len(), 4, "the first run and three respawns");
        assert!(primary.respawn_stopped());
        assert_eq!(primary.worker_count(), 0);
    }

    // Rolling restart: every worker replaced while clients keep being served.
    fn rolling_restart(lp, policy) [rr = RoundRobin, shared = Shared] {
        let (primary, log, _guard) = start_cluster(lp, settings(policy, "serve", 2));
        wait_for(lp, &log, |l| l.listening.len() == 2);
        let port = log.borrow().listening[0].1;
        let rx = ask_many(port, 200, 2);
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        primary.rolling_restart(lp, move |_, _| d.set(true));
        run_until(lp, WAIT, |_| done.get());
        let answers = collect(lp, &rx, 200);
        let ok = answers.iter().filter(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))).count();
        // Under shared, a leaving worker stops accepting before it closes its
        // copy of the listener (`listen_stop`): what its accept op already
        // took (io_uring's multishot accept) is served, never reset.
        assert_eq!(ok, 200, "{answers:?}");
        let mut ids: Vec<u32> = primary.workers().iter().map(|w| w.id()).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 4]);
        assert!(log.borrow().exits.iter().all(|e| e.3 && e.1 == 0), "{:?}", log.borrow().exits);
        shutdown(lp, &primary);
    }

    // Every event callback gets the loop's user data (the value passed to
    // `run`): a primary on a `Loop<Tally>` keeps its whole record there, with
    // no shared cell; the disconnect callback gets it too.
    fn events_get_loop_data(lp: Tally, policy) [rr = RoundRobin, shared = Shared] {
        let primary = Primary::new(lp, settings(policy, "serve", 2)).unwrap();
        primary.on_fork(|_, d, w| d.forks.push(w.pid()));
        primary.on_online(|_, d, w| d.online.push(w.id()));
        primary.on_listening(|_, d, w, addr| d.listening.push((w.id(), addr.port())));
        primary.on_message(|_, d, w, bytes, _| d.messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned())));
        primary.on_disconnect(|_, d, w| d.disconnects.push(w.id()));
        primary.on_exit(|_, d, w, code, signal| d.exits.push((w.id(), code, signal, w.exited_after_disconnect())));
        primary.start(lp).unwrap();
        let pids: Vec<i32> = primary.workers().iter().map(|w| w.pid()).collect();
        let _guard = PidGuard(pids.clone());
        let mut t = Tally::default();
        run_until_with(lp, &mut t, WAIT, |_, t| t.listening.len() == 2);
        let mut forks = t.forks.clone();
        forks.sort();
        let mut expected = pids.clone();
        expected.sort();
        assert_eq!(forks, expected, "{t:?}");
        let mut online = t.online.clone();
        online.sort();
        assert_eq!(online, vec![1, 2], "{t:?}");
        assert_eq!(t.listening[0].1, t.listening[1].1, "{t:?}");
        let rx = ask_many(t.listening[0].1, 4, 2);
        let answers = collect_with(lp, &mut t, &rx, 4);
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))), "{answers:?}");
        for w in primary.workers() {
            w.send(lp, b"sched").unwrap();
        }
        let sched = |t: &Tally| t.messages.iter().filter(|(_, m)| m.starts_with("sched ")).count();
        run_until_with(lp, &mut t, WAIT, |_, t| sched(t) == 2);
        let normal = t.messages.iter().filter(|(_, m)| m == "sched normal").map(|(w, _)| *w);
        assert_eq!(normal.collect::<std::collections::BTreeSet<u32>>(), [1, 2].into(), "{t:?}");
        primary.disconnect(lp, |_, d| d.disconnected = true);
        assert!(!t.disconnected, "callback must be asynchronous");
        run_until_with(lp, &mut t, WAIT, |_, t| t.disconnected);
        assert_eq!(primary.worker_count(), 0);
        assert_eq!(primary.listener_count(), 0);
        run_until_with(lp, &mut t, WAIT, |lp, _| !lp.alive());
        let mut disconnects = t.disconnects.clone();
        disconnects.sort();
        assert_eq!(disconnects, vec![1, 2], "{t:?}");
        assert_eq!(t.exits.len(), 2, "{t:?}");
        assert!(t.exits.iter().all(|&(_, code, sig, ead)| code == 0 && sig == 0 && ead), "{t:?}");
    }

    // A worker that writes garbage on its channel loses it (and exits); the
    // other keeps serving.
    fn garbage_from_worker(lp, policy) [rr = RoundRobin] {
        let primary = Primary::new(lp, settings(policy, "serve", 0)).unwrap();
        let log = record(&primary);
        let _guard = KillGuard(log.clone());
        primary.fork(lp).unwrap();
        wait_for(lp, &log, |l| l.listening.len() == 1);
        let port = log.borrow().listening[0].1;
        let mut s = settings(policy, "garbage", 0);
        s.args = Some(vec!["garbage".into()]);
        let bad = Primary::new(lp, s).unwrap();
        let bad_log = record(&bad);
        let _guard2 = KillGuard(bad_log.clone());
        bad.fork(lp).unwrap();
        wait_for(lp, &bad_log, |l| l.exits.len() == 1);
        assert_eq!(bad_log.borrow().disconnects, vec![1]);
        let rx = ask_many(port, 3, 1);
        assert!(collect(lp, &rx, 3).into_iter().all(|r| r.unwrap() == "worker 1\n"));
        shutdown(lp, &primary);
    }
}

/// Reads a process's state letter from /proc (None once it is gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

// Every worker exits when the primary dies (EOF on the channel).
#[test]
fn primary_kill() {
    // Serialised with the other tests of this binary: they count this
    // process's fds, and this test opens some.
    let guard = uvring_tests::TestGuard::new();
    for backend in ["epoll", "io_uring"] {
        if backend == "io_uring" && !io_uring_available() {
            continue;
        }
        let mut child = std::process::Command::new(WORKER)
            .arg("primary-kill")
            .env("UVRING_BACKEND", backend)
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let stdout = child.stdout.take().unwrap();
        let line = uvring_tests::with_timeout(WAIT, move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        });
        let pids: Vec<i32> =
            line.trim().strip_prefix("pids ").unwrap().split(' ').map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + WAIT;
        while pids.iter().any(|&p| proc_state(p).is_some_and(|s| s != 'Z')) {
            if Instant::now() > deadline {
                // SAFETY: plain syscall on the process group this test made.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                panic!("workers outlived their primary ({backend})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    guard.check_fds();
}

/// Whether io_uring loops can be made here (`make_loop` prints a SKIP line
/// when not, and fails when `UVRING_REQUIRE_IO_URING=1`).
fn io_uring_available() -> bool {
    let probe: Option<uvring::Loop> = uvring_tests::make_loop(uvring::Backend::IoUring, Default::default());
    probe.is_some()
}
