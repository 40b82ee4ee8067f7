//! Helpers for tests that spawn child processes: a guard that leaves no
//! orphan, the environment that makes a child use the test's backend, and an
//! exit recorder.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use uvring::{Backend, Loop, OnExit, PipeSocket, Process, ProcessOptions, Stdio};

/// Kills (SIGKILL) and reaps a child when dropped, unless it has been reaped
/// already: a test that fails or times out leaves no orphan. It holds its own
/// pidfd, so it never signals a recycled pid.
pub struct ChildGuard {
    pidfd: Option<OwnedFd>,
}

impl ChildGuard {
    /// Guards the child `pid` (which must not have been reaped yet).
    pub fn new(pid: i32) -> ChildGuard {
        ChildGuard { pidfd: uvring::os::pidfd_open(pid).ok() }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd.take() {
            let _ = uvring::os::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            // ECHILD if the loop reaped it already; else this reaps it.
            let _ = uvring::os::wait_blocking(fd.as_fd());
        }
    }
}

/// This process's environment with `UVRING_BACKEND` set to `backend`, so
/// that the child's loop runs on the same backend as the test's.
pub fn child_env(backend: Backend) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(k, _)| k != "UVRING_BACKEND").collect();
    env.push(("UVRING_BACKEND".into(), backend.name().into()));
    env
}

/// How a child ended: `(exit status, terminating signal)`, once known.
pub type ExitRecord = Rc<Cell<Option<(i64, i32)>>>;

/// An exit callback that records the status and closes the process handle.
pub fn record_exit<D: 'static>() -> (ExitRecord, OnExit<D>) {
    let rec: ExitRecord = Rc::new(Cell::new(None));
    let r = rec.clone();
    let cb = OnExit::new(move |lp: &mut Loop<D>, _: &mut D, p, status, signal| {
        r.set(Some((status, signal)));
        lp.close(p, None).unwrap();
    });
    (rec, cb)
}

/// Spawns `exe args..` with `stdio`, on the test loop's backend; returns the
/// process handle, a guard, and the exit record (the handle closes itself
/// at exit).
pub fn spawn_child<D: 'static>(
    lp: &mut Loop<D>,
    exe: &Path,
    args: &[&str],
    stdio: &[Stdio],
) -> (Process, ChildGuard, ExitRecord) {
    let env = child_env(lp.backend());
    let env_refs: Vec<(&OsStr, &OsStr)> = env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())).collect();
    let arg_refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let opts = ProcessOptions::new(exe).args(&arg_refs).env(Some(&env_refs)).stdio(stdio);
    let (rec, on_exit) = record_exit();
    let p = lp.spawn(&opts, &on_exit).expect("spawn the test child");
    let guard = ChildGuard::new(lp.process_pid(p).unwrap());
    (p, guard, rec)
}

/// The standard stdio of an IPC test child: stdin ignored, stdout and
/// stderr inherited (so its panics show in the test output), `ipc` (a
/// `pipe_init(true)` socket; take its stream with `pipe_stream` after the
/// spawn) as fd 3.
pub fn ipc_stdio(ipc: PipeSocket) -> [Stdio; 4] {
    [Stdio::Ignore, Stdio::Inherit, Stdio::Inherit, Stdio::Ipc(ipc)]
}
