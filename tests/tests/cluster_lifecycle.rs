//! Worker lifecycle, after Node's test-cluster-worker-kill, -worker-exit,
//! -worker-kill-signal, -kill-disconnect, -primary-kill,
//! -worker-wait-server-close, -worker-no-exit, -disconnect-with-no-workers
//! and -concurrent-disconnect; plus respawn, restart storms, rolling
//! restarts and a worker that sends garbage.

mod cluster_support;

use cluster_support::*;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};
use uvring::{Loop, OnConnection, OnRead, TcpStream};
use uvring_cluster::{Primary, PrimaryData, RespawnSettings, SchedPolicy, WorkerStatus};

/// Runs the loop for a while (to show that something does *not* happen).
fn run_for(lp: &mut Loop<Cluster>, c: &mut Cluster, d: Duration) {
    let end = Instant::now() + d;
    run_until(lp, c, d + WAIT, |_, _| Instant::now() >= end);
}

fn exit_of(log: &Log, id: u32) -> Vec<(u32, i64, i32, bool)> {
    log.exits.iter().filter(|e| e.0 == id).cloned().collect()
}

/// What a primary on a `Loop<Tally>` saw: the loop's user data, which also
/// holds the primary.
#[derive(Debug)]
struct Tally {
    primary: Primary<Tally>,
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

impl PrimaryData for Tally {
    fn primary(&mut self) -> &mut Primary<Tally> {
        &mut self.primary
    }
}

cluster_test! {
    // SIGKILL from outside: disconnect and exit fire once each, with the
    // signal, not after a disconnect; the table empties.
    fn worker_kill(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "serve", 1));
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let w = c.primary.workers()[0].id();
        // SAFETY: plain syscall on our child's pid.
        assert_eq!(unsafe { libc::kill(c.pid(w), libc::SIGKILL) }, 0);
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        run_for(lp, &mut c, Duration::from_millis(100));
        assert_eq!(c.log.exits, vec![(1, 0, libc::SIGKILL, false)]);
        assert_eq!(c.log.disconnects, vec![1]);
        let w = c.primary.worker(w).unwrap();
        assert!(w.is_dead() && !w.is_connected() && !w.exited_after_disconnect());
        assert_eq!(c.primary.worker_count(), 0);
        assert_eq!(c.primary.listener_count(), 0);
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // exit(42): code 42, events once each.
    fn worker_exit(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "exit42", 1));
        let w = c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        run_for(lp, &mut c, Duration::from_millis(100));
        assert_eq!(c.log.exits, vec![(1, 42, 0, false)]);
        assert_eq!(c.log.disconnects, vec![1]);
        let w = c.primary.worker(w).unwrap();
        assert!(w.is_dead() && !w.exited_after_disconnect());
        assert_eq!(c.primary.worker_count(), 0);
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // worker.kill(signal): the exit reports that signal, and counts as a
    // disconnect (kill-disconnect).
    fn worker_kill_signal(lp, policy) [rr = RoundRobin] {
        let mut c = start_cluster(lp, settings(policy, "idle", 2));
        wait_for(lp, &mut c, |l| l.online.len() == 2);
        let ws: Vec<u32> = c.primary.workers().iter().map(|w| w.id()).collect();
        c.primary.kill(lp, ws[0], libc::SIGTERM).unwrap();
        c.primary.kill(lp, ws[1], libc::SIGKILL).unwrap();
        assert!(c.primary.worker(ws[0]).unwrap().is_connected(), "the signal is sent; the channel closes with the process");
        assert!(c.log.disconnects.is_empty(), "the disconnect event comes from the loop");
        wait_for(lp, &mut c, |l| l.exits.len() == 2);
        run_for(lp, &mut c, Duration::from_millis(100));
        assert_eq!(exit_of(&c.log, 1), vec![(1, 0, libc::SIGTERM, true)]);
        assert_eq!(exit_of(&c.log, 2), vec![(2, 0, libc::SIGKILL, true)]);
        let mut d = c.log.disconnects.clone();
        d.sort();
        assert_eq!(d, vec![1, 2]);
        assert!(ws.iter().map(|&w| c.primary.worker(w).unwrap()).all(|w| w.is_dead() && w.exited_after_disconnect()));
        assert_eq!(c.primary.worker_count(), 0);
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // A disconnecting worker stays alive while a client connection is open,
    // and exits (code 0) after it closes.
    fn worker_wait_server_close(lp, policy) [rr = RoundRobin, shared = Shared, reuseport = ReusePort] {
        let mut s = settings(policy, "serve-hold", 1);
        if policy == SchedPolicy::ReusePort {
            s.env.push(("PORT".into(), free_port().to_string().into()));
        }
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let port = c.log.listening[0].1;
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        wait_for(lp, &mut c, |l| l.has_message("accepted"));
        let w = c.primary.workers()[0].id();
        c.primary.disconnect_worker(lp, w);
        wait_for(lp, &mut c, |l| l.disconnects.len() == 1);
        run_for(lp, &mut c, Duration::from_millis(300));
        assert!(c.log.exits.is_empty(), "worker exited with a connection open");
        assert!(!c.primary.worker(w).unwrap().is_dead());
        drop(client);
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.log.exits[0], (1, 0, 0, true));
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // The worker holds an outgoing connection to a server in the primary:
    // disconnected, it lives until that connection closes.
    fn worker_no_exit(lp, policy) [rr = RoundRobin] {
        let sock = lp.tcp_init().unwrap();
        lp.tcp_bind(sock, "127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let on_read = OnRead::new(|_, _, _: TcpStream, _| {});
        // The accepted connection is kept in the loop data.
        let server = lp.listen(sock, 8, &OnConnection::new(move |lp, d: &mut Cluster, srv, _| {
            let c = lp.accept(srv).unwrap();
            lp.read_start(c, &on_read).unwrap();
            d.streams.push(c);
        })).unwrap();
        let port = lp.tcp_getsockname(server).unwrap().port();
        let mut c = Cluster::new(lp, settings(policy, "hold-connection", 0));
        let w = c.primary.fork_with_env(lp, &[("PORT", &port.to_string())]).unwrap();
        wait_for(lp, &mut c, |l| l.has_message("connected"));
        run_until(lp, &mut c, WAIT, |_, c| !c.streams.is_empty());
        c.primary.disconnect_worker(lp, w);
        wait_for(lp, &mut c, |l| l.disconnects.len() == 1);
        run_for(lp, &mut c, Duration::from_millis(300));
        assert!(c.log.exits.is_empty(), "worker exited with its connection open");
        lp.close(c.streams.pop().unwrap(), None).unwrap();
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.log.exits[0], (1, 0, 0, true));
        lp.close(server, None).unwrap();
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // The disconnect callback runs on a later turn even with no worker.
    fn disconnect_with_no_workers(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "idle", 0));
        c.primary.disconnect(lp, |_, d| d.log.disconnected = true);
        assert!(!c.log.disconnected, "callback must be asynchronous");
        run_until(lp, &mut c, WAIT, |_, c| c.log.disconnected);
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // Every worker disconnected in the same turn: each exits cleanly once.
    fn concurrent_disconnect(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut c = start_cluster(lp, settings(policy, "serve", 4));
        wait_for(lp, &mut c, |l| l.listening.len() == 4);
        for w in c.primary.workers() {
            c.primary.disconnect_worker(lp, w.id());
        }
        assert!(c.primary.workers().iter().all(|w| w.status() == WorkerStatus::Disconnecting));
        wait_for(lp, &mut c, |l| l.exits.len() == 4);
        run_for(lp, &mut c, Duration::from_millis(100));
        let l = &c.log;
        assert!(l.exits.iter().all(|&(_, code, sig, ead)| code == 0 && sig == 0 && ead), "{:?}", l.exits);
        assert_eq!(l.disconnects.len(), 4);
        assert_eq!(c.primary.worker_count(), 0);
        assert_eq!(c.primary.listener_count(), 0);
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
    }

    // A crashed worker is replaced (after a back-off); a disconnect stops it.
    fn respawn_after_crash(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "serve", 2);
        s.respawn = RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(20));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        // SAFETY: plain syscall on our child's pid.
        unsafe { libc::kill(c.primary.workers()[0].pid(), libc::SIGKILL) };
        wait_for(lp, &mut c, |l| l.listening.len() == 3);
        assert_eq!(c.primary.worker_count(), 2);
        assert_eq!(c.log.pids.len(), 3);
        let port = c.log.listening[2].1;
        let rx = ask_many(port, 4, 2);
        assert!(collect(lp, &mut c, &rx, 4).into_iter().all(|r| r.is_ok()));
        shutdown(lp, &mut c);
        assert_eq!(c.log.pids.len(), 3, "no respawn after a disconnect");
    }

    // A worker that keeps crashing is given up on after the storm limit.
    fn restart_storm(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "exit42", 1);
        s.respawn = RespawnSettings::default()
            .enabled(true)
            .base_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20))
            .storm_limit(3)
            .window(Duration::from_secs(60));
        let mut c = Cluster::new(lp, s);
        c.primary.on_restart_storm(|_, d| d.log.messages.push((0, "storm".into())));
        c.primary.start(lp).unwrap();
        run_until(lp, &mut c, WAIT, |_, c| c.log.has_message("storm"));
        run_until(lp, &mut c, WAIT, |lp, _| !lp.alive());
        assert_eq!(c.log.exits.len(), 4, "the first run and three respawns");
        assert!(c.primary.respawn_stopped());
        assert_eq!(c.primary.worker_count(), 0);
    }

    // Rolling restart: every worker replaced while clients keep being served.
    fn rolling_restart(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut c = start_cluster(lp, settings(policy, "serve", 2));
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        let port = c.log.listening[0].1;
        let rx = ask_many(port, 200, 2);
        c.primary.rolling_restart(lp, |_, d| d.log.messages.push((0, "rolled".into())));
        run_until(lp, &mut c, WAIT, |_, c| c.log.has_message("rolled"));
        let answers = collect(lp, &mut c, &rx, 200);
        let ok = answers.iter().filter(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))).count();
        // Under shared, a leaving worker stops accepting before it closes its
        // copy of the listener (`listen_stop`): what its accept op already
        // took (io_uring's multishot accept) is served, never reset.
        assert_eq!(ok, 200, "{answers:?}");
        let mut ids: Vec<u32> = c.primary.workers().iter().map(|w| w.id()).collect();
        ids.sort();
        assert_eq!(ids, vec![3, 4]);
        assert!(c.log.exits.iter().all(|e| e.3 && e.1 == 0), "{:?}", c.log.exits);
        shutdown(lp, &mut c);
    }

    // Every event callback gets the loop's user data (the value passed to
    // `run`): a primary on a `Loop<Tally>` keeps its whole record there, with
    // no shared cell, and is itself part of it; the disconnect callback gets
    // it too.
    fn events_get_loop_data(lp: Tally, policy) [rr = RoundRobin, shared = Shared] {
        let mut primary = Primary::new(lp, settings(policy, "serve", 2)).unwrap();
        primary.on_fork(|_, d: &mut Tally, w| d.forks.push(w.pid()));
        primary.on_online(|_, d, w| d.online.push(w.id()));
        primary.on_listening(|_, d, w, addr| d.listening.push((w.id(), addr.port())));
        primary.on_message(|_, d, w, bytes, _| d.messages.push((w.id(), String::from_utf8_lossy(bytes).into_owned())));
        primary.on_disconnect(|_, d, w| d.disconnects.push(w.id()));
        primary.on_exit(|_, d, w, code, signal| d.exits.push((w.id(), code, signal, w.exited_after_disconnect())));
        primary.start(lp).unwrap();
        let pids: Vec<i32> = primary.workers().iter().map(|w| w.pid()).collect();
        let _guard = PidGuard(pids.clone());
        let mut t = Tally {
            primary,
            forks: Vec::new(),
            online: Vec::new(),
            listening: Vec::new(),
            messages: Vec::new(),
            disconnects: Vec::new(),
            exits: Vec::new(),
            disconnected: false,
        };
        assert!(t.forks.is_empty(), "the fork events come from the loop");
        run_until(lp, &mut t, WAIT, |_, t| t.listening.len() == 2);
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
        let answers = collect(lp, &mut t, &rx, 4);
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|s| s.starts_with("worker "))), "{answers:?}");
        for w in t.primary.workers() {
            t.primary.send(lp, w.id(), b"sched").unwrap();
        }
        let sched = |t: &Tally| t.messages.iter().filter(|(_, m)| m.starts_with("sched ")).count();
        run_until(lp, &mut t, WAIT, |_, t| sched(t) == 2);
        // Workers run under SCHED_BATCH (Settings::worker_batch_scheduling,
        // on by default); cluster_rr::batch_scheduling checks the way back
        // to the normal policy when it is off.
        let batch = t.messages.iter().filter(|(_, m)| m == "sched other").map(|(w, _)| *w);
        assert_eq!(batch.collect::<std::collections::BTreeSet<u32>>(), [1, 2].into(), "{t:?}");
        t.primary.disconnect(lp, |_, d| d.disconnected = true);
        assert!(!t.disconnected, "callback must be asynchronous");
        run_until(lp, &mut t, WAIT, |_, t| t.disconnected);
        assert_eq!(t.primary.worker_count(), 0);
        assert_eq!(t.primary.listener_count(), 0);
        run_until(lp, &mut t, WAIT, |lp, _| !lp.alive());
        let mut disconnects = t.disconnects.clone();
        disconnects.sort();
        assert_eq!(disconnects, vec![1, 2], "{t:?}");
        assert_eq!(t.exits.len(), 2, "{t:?}");
        assert!(t.exits.iter().all(|&(_, code, sig, ead)| code == 0 && sig == 0 && ead), "{t:?}");
    }

    // A worker that writes garbage on its channel loses it (and exits); the
    // other keeps serving. (Two clusters on one loop: the loop data holds
    // both primaries.)
    fn garbage_from_worker(lp, policy) [rr = RoundRobin] {
        let mut c = Cluster::new(lp, settings(policy, "serve", 0));
        c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let port = c.log.listening[0].1;
        let mut s = settings(policy, "garbage", 0);
        s.args = Some(vec!["garbage".into()]);
        c.add_second(lp, s);
        c.second().fork(lp).unwrap();
        wait_for_second(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.second_log().disconnects, vec![1]);
        let rx = ask_many(port, 3, 1);
        assert!(collect(lp, &mut c, &rx, 3).into_iter().all(|r| r.unwrap() == "worker 1\n"));
        shutdown(lp, &mut c);
    }
}

/// Reads a process's state letter from /proc (None once it is gone).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

// Every worker exits when the primary dies (EOF on the channel): an idle
// one, one whose listener would keep its loop alive (the worker's default
// action stops the loop), and one that replaced that action
// (`on_primary_gone`: it says so, then stops).
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
        // The primary's stdout, which its workers share.
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines.recv_timeout(WAIT).expect("the pids line");
        let pids: Vec<i32> =
            line.trim().strip_prefix("pids ").unwrap().split(' ').map(|p| p.parse().unwrap()).collect();
        assert_eq!(pids.len(), 3);
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = lines.recv_timeout(WAIT);
        let deadline = Instant::now() + WAIT;
        while pids.iter().any(|&p| proc_state(p).is_some_and(|s| s != 'Z')) {
            if Instant::now() > deadline {
                // SAFETY: plain syscall on the process group this test made.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                panic!("workers outlived their primary ({backend})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(gone.as_deref(), Ok("gone 3"), "the replaced action ran ({backend})");
    }
    guard.check_fds();
}

/// Whether io_uring loops can be made here (`make_loop` prints a SKIP line
/// when not, and fails when `UVRING_REQUIRE_IO_URING=1`).
fn io_uring_available() -> bool {
    let probe: Option<uvring::Loop> = uvring_tests::make_loop(uvring::Backend::IoUring, Default::default());
    probe.is_some()
}

cluster_test! {
    // kill(SIGUSR1) delivers the signal and nothing else: a worker that
    // handles it keeps running, connected, and is not respawned or counted
    // as leaving; a graceful stop of one worker is `disconnect_worker`.
    fn kill_delivers_a_nonfatal_signal(lp, policy) [rr = RoundRobin, shared = Shared] {
        let mut s = settings(policy, "tagged", 1);
        s.env.push(("TAG".into(), "plain".into()));
        s.respawn = RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(10));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.has_message("tag plain"));
        let id = c.primary.workers()[0].id();
        let pid = c.pid(id);
        for n in 1..=3 {
            c.primary.kill(lp, id, libc::SIGUSR1).unwrap();
            wait_for(lp, &mut c, |l| l.count_prefix("usr1 plain") == n);
        }
        run_for(lp, &mut c, Duration::from_millis(100));
        let w = c.primary.worker(id).unwrap();
        assert!(w.is_connected() && !w.is_dead() && !w.exited_after_disconnect(), "{w:?}");
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "the worker runs");
        assert!(c.log.disconnects.is_empty() && c.log.exits.is_empty(), "{:?}", c.log);
        c.primary.disconnect_worker(lp, id);
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        assert_eq!(c.log.exits, vec![(id, 0, 0, true)]);
        run_for(lp, &mut c, Duration::from_millis(100));
        assert_eq!(c.log.pids.len(), 1, "a disconnected worker is not respawned");
        assert!(c.primary.kill(lp, id, libc::SIGUSR1).is_err(), "ESRCH once it is gone");
        shutdown(lp, &mut c);
    }

    // The environment given at fork is the worker's identity: its respawned
    // replacement (after a crash) and its rolled replacement get it too.
    fn respawn_and_roll_keep_the_env(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "tagged", 0);
        s.respawn = RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(10));
        let mut c = start_cluster(lp, s);
        let plain = c.primary.fork(lp).unwrap();
        let agent = c.primary.fork_with_env(lp, &[("TAG", "agent")]).unwrap();
        wait_for(lp, &mut c, |l| l.messages.len() == 2);
        assert_eq!(c.log.messages_from(agent), vec!["tag agent"]);
        assert_eq!(c.log.messages_from(plain), vec!["tag "]);
        // A crash: the replacement is an agent again.
        // SAFETY: plain syscall on a worker this test forked.
        assert_eq!(unsafe { libc::kill(c.pid(agent), libc::SIGKILL) }, 0);
        wait_for(lp, &mut c, |l| l.count_prefix("tag agent") == 2);
        // A rolling restart: one agent and one plain worker again.
        c.primary.rolling_restart(lp, |_, d| d.log.messages.push((0, "rolled".into())));
        wait_for(lp, &mut c, |l| l.has_message("rolled"));
        // A replacement's tag message may come in a later read than its
        // `Online` (which completes the roll).
        let ids: Vec<_> = c.primary.workers().iter().map(|w| w.id()).collect();
        wait_for(lp, &mut c, |l| ids.iter().all(|&id| l.messages_from(id).iter().any(|m| m.starts_with("tag"))));
        let live: Vec<String> =
            c.primary.workers().iter().flat_map(|w| c.log.messages_from(w.id())).filter(|m| m.starts_with("tag")).collect();
        let mut live = live;
        live.sort();
        assert_eq!(live, vec!["tag ", "tag agent"], "{:?}", c.log);
        assert_eq!(c.log.count_prefix("tag agent"), 3, "{:?}", c.log);
        assert_eq!(c.primary.worker_count(), 2);
        shutdown(lp, &mut c);
    }
}

cluster_test! {
    // Liveness: a worker whose loop is stuck in a busy loop misses its
    // heartbeats; it is killed within the configured time, the connections
    // it held unacknowledged go to the other worker, and it is replaced.
    fn stuck_worker_is_replaced(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "serve", 0)
            .heartbeat_interval(Duration::from_millis(100))
            .heartbeat_timeout(Duration::from_millis(500));
        s.respawn = RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(10));
        let mut c = Cluster::new(lp, s);
        c.primary.on_unresponsive(|_, d, w| d.log.messages.push((w.id(), "unresponsive".into())));
        let stuck = c.primary.fork_with_env(lp, &[("SCENARIO", "spin-on-first")]).unwrap();
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let port = c.log.listening[0].1;
        // The first connection goes to the only worker: it spins.
        let rx = ask_many(port, 1, 1);
        run_for(lp, &mut c, Duration::from_millis(50));
        let t0 = Instant::now();
        let helper = c.primary.fork(lp).unwrap();
        wait_for(lp, &mut c, |l| l.has_message("unresponsive"));
        let took = t0.elapsed();
        eprintln!("FIGURE stuck_worker: killed {took:?} after t0 (t0 is 50 ms into the spin; interval 100 ms, timeout 500 ms)");
        assert!(took < Duration::from_millis(500 + 1000), "{took:?}");
        assert!(c.log.messages_from(stuck).contains(&"unresponsive".to_string()), "{:?}", c.log);
        assert_eq!(c.log.count_prefix("unresponsive"), 1, "{:?}", c.log);
        wait_for(lp, &mut c, |l| l.exits.iter().any(|e| e.0 == stuck));
        assert_eq!(exit_of(&c.log, stuck), vec![(stuck, 0, libc::SIGKILL, false)]);
        // The connection it held unacknowledged was answered by another.
        let answers = collect(lp, &mut c, &rx, 1);
        assert!(answers[0].as_ref().is_ok_and(|a| a.starts_with("worker ")), "{answers:?}");
        assert!(c.primary.stats().redistributed >= 1, "{:?}", c.primary.stats());
        // Replaced: a third worker (with the stuck one's env) is forked.
        wait_for(lp, &mut c, |l| l.pids.len() == 3);
        assert!(c.primary.workers().iter().any(|w| w.id() == helper));
        shutdown(lp, &mut c);
    }
}

cluster_test! {
    // Every drain ends: a disconnected worker that holds a connection open
    // past the drain deadline is killed; the load it reported was its open
    // connections.
    fn drain_deadline_kills(lp, policy) [rr = RoundRobin, shared = Shared] {
        let s = settings(policy, "serve-hold", 1)
            .drain_timeout(Duration::from_millis(300))
            .load_report(Duration::from_millis(20));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let port = c.log.listening[0].1;
        let clients: Vec<std::net::TcpStream> =
            (0..3).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        wait_for(lp, &mut c, |l| l.count_prefix("accepted") == 3);
        let id = c.primary.workers()[0].id();
        if policy == SchedPolicy::RoundRobin {
            let t = Instant::now();
            run_until(lp, &mut c, WAIT, |_, c| c.primary.worker(id).unwrap().open_connections() == 3);
            eprintln!("FIGURE load: 3 open connections reported after {:?}", t.elapsed());
        }
        let t0 = Instant::now();
        c.primary.disconnect_worker(lp, id);
        wait_for(lp, &mut c, |l| l.exits.len() == 1);
        let took = t0.elapsed();
        eprintln!("FIGURE drain_deadline: killed after {took:?} (deadline 300 ms)");
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(c.log.exits, vec![(id, 0, libc::SIGKILL, true)]);
        drop(clients);
        shutdown(lp, &mut c);
    }

    // A rolling replacement that does not listen by the startup deadline is
    // killed (a failed start); the worker it was to replace stays.
    fn replacement_that_never_listens_is_killed(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "serve-first-only", 1).startup_timeout(Duration::from_millis(300));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 1);
        let t0 = Instant::now();
        c.primary.rolling_restart(lp, |_, d| d.log.messages.push((0, "rolled".into())));
        wait_for(lp, &mut c, |l| l.has_message("rolled"));
        let took = t0.elapsed();
        eprintln!("FIGURE startup_deadline: roll gave up after {took:?} (deadline 300 ms)");
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(c.log.exits, vec![(2, 0, libc::SIGKILL, true)]);
        let live: Vec<u32> = c.primary.workers().iter().map(|w| w.id()).collect();
        assert_eq!(live, vec![1], "the old worker stays");
        let port = c.log.listening[0].1;
        let rx = ask_many(port, 1, 1);
        let answers = collect(lp, &mut c, &rx, 1);
        assert!(answers[0].as_ref().is_ok_and(|a| a.starts_with("worker 1")), "{answers:?}");
        shutdown(lp, &mut c);
    }
}

cluster_test! {
    // A crash inside a rolling swap does not grow the table: the old
    // worker dying leaves its replacement (no respawn); the replacement
    // dying leaves the old worker (a failed start, no respawn).
    fn crash_during_a_swap_keeps_the_target(lp, policy) [rr = RoundRobin] {
        let mut s = settings(policy, "serve", 2);
        s.respawn = RespawnSettings::default().enabled(true).base_delay(Duration::from_millis(10));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.listening.len() == 2);
        // The replacement dies before it listens.
        c.primary.rolling_restart(lp, |_, d| d.log.messages.push((0, "rolled 1".into())));
        let new = c.primary.workers().last().unwrap().id();
        // SAFETY: plain syscall on a worker this test forked.
        assert_eq!(unsafe { libc::kill(c.pid(new), libc::SIGKILL) }, 0);
        wait_for(lp, &mut c, |l| l.has_message("rolled 1"));
        run_for(lp, &mut c, Duration::from_millis(200));
        assert_eq!(c.primary.worker_count(), 2, "{:?}", c.log);
        // The old worker dies while its replacement starts.
        c.primary.rolling_restart(lp, |_, d| d.log.messages.push((0, "rolled 2".into())));
        let old = c.primary.workers()[0].id();
        // SAFETY: plain syscall on a worker this test forked.
        assert_eq!(unsafe { libc::kill(c.pid(old), libc::SIGKILL) }, 0);
        wait_for(lp, &mut c, |l| l.has_message("rolled 2"));
        run_for(lp, &mut c, Duration::from_millis(200));
        assert_eq!(c.primary.worker_count(), 2, "{:?}", c.log);
        shutdown(lp, &mut c);
    }
}

cluster_test! {
    // The drain event reaches the application with the configured grace,
    // from the loop, whether the primary disconnects the worker or the
    // worker disconnects itself.
    fn drain_event_reaches_the_worker(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "drain-report", 2).drain_grace(Duration::from_millis(250));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.online.len() == 2);
        let ws: Vec<u32> = c.primary.workers().iter().map(|w| w.id()).collect();
        c.primary.disconnect_worker(lp, ws[0]);
        c.primary.send(lp, ws[1], b"leave").unwrap();
        wait_for(lp, &mut c, |l| l.exits.len() == 2);
        assert_eq!(c.log.messages_from(ws[0]), vec!["drain 250"]);
        assert_eq!(c.log.messages_from(ws[1]), vec!["drain 250"]);
        assert!(c.log.exits.iter().all(|e| e.1 == 0 && e.2 == 0 && e.3), "{:?}", c.log.exits);
        shutdown(lp, &mut c);
    }
}
