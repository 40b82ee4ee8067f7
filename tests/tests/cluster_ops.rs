//! Operations settings of the cluster, checked from `/proc`: workers run
//! with the configured uid, gid, supplementary groups and working
//! directory; each is pinned to its own CPU; they inherit the fd limit the
//! primary raised to its hard limit; captured worker output reaches the
//! primary prefixed with the worker's id and pid (partial and long lines
//! included), and lines the primary's output cannot take are counted.

mod cluster_support;

use cluster_support::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use uvring_cluster::ChildOutput;

/// A field of `/proc/PID/status`.
fn status_field(pid: i32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name}"));
    line[name.len() + 1..].trim().to_string()
}

/// Why a process running as another user could not exec the worker
/// program, if it could not: every directory above it must be searchable
/// and the file executable by others.
fn not_executable_by_others(path: &std::path::Path) -> Option<String> {
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    if mode(path) & 0o005 != 0o005 {
        return Some(format!("{} is not readable and executable by others", path.display()));
    }
    path.ancestors()
        .skip(1)
        .find(|d| !d.as_os_str().is_empty() && mode(d) & 0o001 == 0)
        .map(|d| format!("{} is not searchable by others", d.display()))
}

/// Whether this test runs as root (needed to switch the workers' user).
fn is_root() -> bool {
    status_field(std::process::id() as i32, "Uid").split_whitespace().nth(1) == Some("0")
}

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().map(str::to_string).collect()
    }
}

cluster_test! {
    // uid/gid/groups 65534 (nobody/nogroup), cwd /, as a root primary
    // would run them.
    fn workers_run_unprivileged(lp, policy) [rr = RoundRobin] {
        if !is_root() {
            eprintln!("SKIP workers_run_unprivileged: not root, the workers' user cannot be switched");
            return;
        }
        if let Some(why) = not_executable_by_others(std::path::Path::new(WORKER)) {
            eprintln!("SKIP workers_run_unprivileged: {why}");
            return;
        }
        let s = settings(policy, "idle", 1).uid(Some(65534)).gid(Some(65534)).groups(Some(vec![65534])).cwd(Some("/".into()));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.online.len() == 1);
        let pid = c.log.pids[0];
        assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
        assert_eq!(status_field(pid, "Groups"), "65534");
        assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), std::path::Path::new("/"));
        shutdown(lp, &mut c);
        // Without explicit groups, a root primary's groups are dropped.
        let s = settings(policy, "idle", 1).uid(Some(65534)).gid(Some(65534));
        let mut c = start_cluster(lp, s);
        wait_for(lp, &mut c, |l| l.online.len() == 1);
        assert_eq!(status_field(c.log.pids[0], "Groups"), "");
        shutdown(lp, &mut c);
    }

    // Worker i on the i-th allowed CPU; the soft fd limit raised to the
    // hard one, in the primary and its workers.
    fn affinity_and_fd_limit(lp, policy) [rr = RoundRobin] {
        // The limit is the process's: one variant at a time.
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let cpus = uvring::os::allowed_cpus().unwrap();
        let (_, hard) = uvring::os::nofile_limit().unwrap();
        // Lower the soft limit, so that raising it shows.
        let lowered = libc::rlimit { rlim_cur: (hard / 2).max(256).min(hard), rlim_max: hard };
        // SAFETY: plain syscall with a valid struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let s = settings(policy, "idle", 2).cpu_affinity(true).raise_fd_limit(true);
        let mut c = start_cluster(lp, s);
        assert_eq!(uvring::os::nofile_limit().unwrap(), (hard, hard), "the primary raised its soft limit");
        wait_for(lp, &mut c, |l| l.online.len() == 2);
        for (i, &pid) in c.log.pids.iter().enumerate() {
            let want = cpus[i % cpus.len()].to_string();
            assert_eq!(status_field(pid, "Cpus_allowed_list"), want, "worker {i}");
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
            let soft: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
            assert_eq!(soft, [hard.to_string(), hard.to_string()], "worker {i}: {line}");
        }
        shutdown(lp, &mut c);
    }

    // Captured lines arrive prefixed; a line written in two parts arrives
    // whole, a 10,000-byte line in 4,096-byte pieces; the worker's ends are
    // blocking. A worker forked with Discard writes to /dev/null.
    fn captured_output_is_prefixed(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "chatter", 0).output(ChildOutput::Capture);
        let out = Shared::default();
        let mut c = Cluster::new(lp, s);
        c.primary.capture_into(out.clone());
        let id = c.primary.fork(lp).unwrap();
        let quiet = c.primary.fork_with_output(lp, ChildOutput::Discard).unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("chatter-done") == 2);
        assert_eq!(c.log.count_prefix("chatter-done nonblocking false"), 2, "{:?}", c.log.messages);
        let pid = c.pid(id);
        let quiet_pid = c.pid(quiet);
        for fd in [0, 1, 2] {
            let target = std::fs::read_link(format!("/proc/{quiet_pid}/fd/{fd}")).unwrap();
            assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd} of the discarding worker");
        }
        let prefix = format!("[worker {id} pid {pid}] ");
        let want_long = |l: &String| l.strip_prefix(&prefix).is_some_and(|x| x.bytes().all(|b| b == b'x'));
        run_until(lp, &mut c, WAIT, |_, _| out.lines().iter().filter(|l| want_long(l)).count() == 3);
        let lines = out.lines();
        for want in ["hello out", "hello err", "partial"] {
            assert!(lines.contains(&format!("{prefix}{want}")), "{want:?} in {lines:?}");
        }
        let long: Vec<usize> = lines.iter().filter(|l| want_long(l)).map(|l| l.len() - prefix.len()).collect();
        assert_eq!(long, [4096, 4096, 10_000 - 8192]);
        assert!(lines.iter().all(|l| l.starts_with(&prefix)), "only the capturing worker's lines: {lines:?}");
        assert_eq!(c.primary.captured_lines_dropped(), 0);
        shutdown(lp, &mut c);
    }

    // A primary whose output is stuck drops whole lines and counts them;
    // every line is either written or counted.
    fn slow_output_drops_and_counts_lines(lp, policy) [rr = RoundRobin] {
        let s = settings(policy, "chatter", 1)
            .output(ChildOutput::Capture)
            .capture_buffer(2048)
            .env(vec![("LINES".into(), "2000".into())]);
        // The writer blocks until the test lets it go.
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        struct Gated(std::sync::mpsc::Receiver<()>, Shared, bool);
        impl Write for Gated {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if !self.2 {
                    let _ = self.0.recv();
                    self.2 = true;
                }
                self.1.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let mut c = Cluster::new(lp, s);
        c.primary.capture_into(Gated(gate_rx, out.clone(), false));
        c.primary.start(lp).unwrap();
        wait_for(lp, &mut c, |l| l.count_prefix("chatter-done") == 1);
        // Every numbered line was read (the worker's stream ended) before
        // the gate opens.
        let numbered = |out: &Shared| out.lines().iter().filter(|l| l.contains("] line ")).count() as u64;
        run_until(lp, &mut c, WAIT, |_, c| c.primary.captured_lines_dropped() > 0 && !c.primary.workers().is_empty());
        shutdown(lp, &mut c);
        gate_tx.send(()).unwrap();
        // 2,000 numbered lines plus 6 others (two hello, partial, three
        // pieces of the long line).
        let total = 2006;
        let deadline = std::time::Instant::now() + WAIT;
        while out.lines().len() as u64 + c.primary.captured_lines_dropped() < total {
            assert!(std::time::Instant::now() < deadline, "lines lost: {} written", out.lines().len());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(c.primary.captured_lines_dropped() > 0);
        assert!(numbered(&out) < 2000);
        assert_eq!(out.lines().len() as u64 + c.primary.captured_lines_dropped(), total);
    }
}
