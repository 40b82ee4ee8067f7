//! Process bookkeeping for the operations tests (socket activation,
//! upgrades): processes read from `/proc`, a subreaper so that a primary
//! started by an upgrade (whose parent exits) is reaped by the test, and
//! bounded waits.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use super::hello::WAIT;

/// Makes this test process the reaper of its orphaned descendants (a new
/// primary whose old primary exited becomes our child), so that the test
/// reaps everything it started.
pub fn become_subreaper() {
    // SAFETY: plain prctl on this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error());
}

/// The process's state letter from `/proc/PID/stat` (`R`, `S`, `Z`, ...);
/// `None` when it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Whether the process runs (exists and is not a zombie).
pub fn running(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z')
}

/// The live (non-zombie) processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the name: state, ppid, pgrp, ...
        if f.len() > 2 && f[0] != "Z" && f[2].parse::<i32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Waits (bounded) for our child to exit; returns its status.
pub fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "pid {} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for process `pid`, which became our child through
/// [`become_subreaper`], to exit, and reaps it; returns its raw wait
/// status.
pub fn reap(pid: i32) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid on one pid, WNOHANG.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return status;
        }
        assert!(rc == 0, "waitpid({pid}): {}", std::io::Error::last_os_error());
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until process group `pgid` has no live process.
pub fn wait_group_gone(pgid: i32) {
    let deadline = Instant::now() + WAIT;
    while !group_members(pgid).is_empty() {
        assert!(Instant::now() < deadline, "processes left behind: {:?}", group_members(pgid));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signum` to `pid`.
pub fn signal(pid: i32, signum: i32) {
    // SAFETY: plain kill on a process the test started.
    assert_eq!(unsafe { libc::kill(pid, signum) }, 0, "kill({pid}, {signum})");
}

/// The pid in a log line's `[primary PID]` prefix.
pub fn primary_of(line: &str) -> i32 {
    line.split("[primary ").nth(1).unwrap().split(']').next().unwrap().parse().unwrap()
}
