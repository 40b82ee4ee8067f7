//! Child processes (`uv_process_t`): spawn with stdio wiring, kill, and an
//! exit callback.
//!
//! Exit is observed through a pidfd (from `clone3(CLONE_PIDFD)`) that the
//! backend polls (`poll_in`); when it turns readable the loop reaps exactly
//! that child with `waitid(P_PIDFD)`. Reaping never races with other code's
//! `waitpid` of unrelated children, a pid is never confused with a recycled
//! one, and no SIGCHLD handler is needed. A process handle is active (keeps
//! the loop alive, unless unref'd) from spawn until the child exits, as in
//! libuv. Closing the handle does not kill the child.

use crate::backend::{Driver, Op, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::*;
use crate::stream::{Stream, StreamType};
use crate::sys::process::{self as sysproc, ExitStatus, SpawnPlan};
use crate::sys::{self, socket};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

/// What a child gets as one of its fds ([`ProcessOptions::stdio`], indexed
/// by the child's fd number: 0 stdin, 1 stdout, 2 stderr, 3 and up extra).
#[derive(Copy, Clone, Debug)]
pub enum Stdio {
    /// `/dev/null` for fds 0 to 2; for higher fds, nothing (the fd is closed
    /// in the child).
    Ignore,
    /// The parent's own fd of the same number.
    Inherit,
    /// This parent fd (the parent keeps its copy).
    Fd(RawFd),
    /// A new Unix socketpair: the child gets one end, this
    /// [`pipe_init(false)`](Loop::pipe_init) socket becomes the other (take
    /// its stream with [`pipe_stream`](Loop::pipe_stream) after `spawn`).
    Pipe(PipeSocket),
    /// As `Pipe`, for a [`pipe_init(true)`](Loop::pipe_init) socket: an IPC
    /// channel that carries handles.
    Ipc(PipeSocket),
}

/// How to start a child ([`Loop::spawn`]): `ProcessOptions::new(file)`, then
/// the builder methods (`.args(..)`, `.env(..)`, `.stdio(..)`, ...).
///
/// The defaults (from `new`): no arguments, the parent's environment and
/// working directory, fds 0, 1 and 2 on `/dev/null` ([`Stdio::Ignore`]), no other
/// fd, not detached.
#[derive(Copy, Clone, Debug)]
#[non_exhaustive]
pub struct ProcessOptions<'a> {
    /// The program: a path, or a name looked up in `PATH` (the child's
    /// `PATH` when `env` is given, else the parent's) if it has no `/`.
    pub file: &'a Path,
    /// Arguments after the program name (`argv[0]` is `file`).
    pub args: &'a [&'a OsStr],
    /// The child's whole environment; `None` inherits the parent's.
    pub env: Option<&'a [(&'a OsStr, &'a OsStr)]>,
    /// Working directory of the child; `None` keeps the parent's.
    pub cwd: Option<&'a Path>,
    /// The child's fds 0, 1, 2, ... (missing entries: as `Ignore` for 0 to
    /// 2, nothing above).
    pub stdio: &'a [Stdio],
    /// Start the child in a new session (`setsid`), as libuv's `DETACHED`.
    pub detached: bool,
    /// User id the child runs as (`setuid` before exec, after `setgid`),
    /// as libuv's `UV_PROCESS_SETUID`; `None` keeps the parent's.
    pub uid: Option<u32>,
    /// Group id the child runs as (`setgid` before exec); `None` keeps the
    /// parent's.
    pub gid: Option<u32>,
    /// Supplementary groups of the child (`setgroups`). `None`: when `uid`
    /// or `gid` is set, the parent's supplementary groups are dropped if
    /// the parent may (as libuv does), else kept.
    pub groups: Option<&'a [u32]>,
    /// CPUs the child may run on (`sched_setaffinity` before exec; numbers
    /// as in `/proc/PID/status`'s `Cpus_allowed_list`); `None` keeps the
    /// parent's set. `EINVAL` for an empty list or a CPU past the 1,024
    /// a `cpu_set_t` holds.
    pub cpu_affinity: Option<&'a [usize]>,
}

impl<'a> ProcessOptions<'a> {
    /// Options to run `file` without arguments, with the parent's
    /// environment and directory and stdio ignored.
    pub fn new(file: &'a Path) -> ProcessOptions<'a> {
        ProcessOptions {
            file,
            args: &[],
            env: None,
            cwd: None,
            stdio: &[],
            detached: false,
            uid: None,
            gid: None,
            groups: None,
            cpu_affinity: None,
        }
    }

    /// Sets the arguments after the program name.
    pub fn args(mut self, args: &'a [&'a OsStr]) -> Self {
        self.args = args;
        self
    }

    /// Sets the child's whole environment (`None`: the parent's).
    pub fn env(mut self, env: Option<&'a [(&'a OsStr, &'a OsStr)]>) -> Self {
        self.env = env;
        self
    }

    /// Sets the child's working directory (`None`: the parent's).
    pub fn cwd(mut self, cwd: Option<&'a Path>) -> Self {
        self.cwd = cwd;
        self
    }

    /// Sets the child's fds 0, 1, 2, ...
    pub fn stdio(mut self, stdio: &'a [Stdio]) -> Self {
        self.stdio = stdio;
        self
    }

    /// Starts the child in a new session (`setsid`).
    pub fn detached(mut self, on: bool) -> Self {
        self.detached = on;
        self
    }

    /// Sets the user id the child runs as.
    pub fn uid(mut self, uid: Option<u32>) -> Self {
        self.uid = uid;
        self
    }

    /// Sets the group id the child runs as.
    pub fn gid(mut self, gid: Option<u32>) -> Self {
        self.gid = gid;
        self
    }

    /// Sets the child's supplementary groups.
    pub fn groups(mut self, groups: Option<&'a [u32]>) -> Self {
        self.groups = groups;
        self
    }

    /// Sets the CPUs the child may run on.
    pub fn cpu_affinity(mut self, cpus: Option<&'a [usize]>) -> Self {
        self.cpu_affinity = cpus;
        self
    }
}

pub(crate) struct ProcessState<D> {
    pub pid: i32,
    pub pidfd: Option<OwnedFd>,
    pub exit_cb: Option<Rc<ExitFn<D>>>,
    pub exited: bool,
    /// The pidfd poll in flight.
    pub op: Option<Token>,
}

/// C strings for `execve`, built before the fork.
struct ExecStrings {
    paths: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: Option<CString>,
}

fn cstring(bytes: &[u8]) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::EINVAL)
}

fn pair(key: &OsStr, value: &OsStr) -> Result<CString> {
    let mut v = Vec::with_capacity(key.len() + value.len() + 1);
    v.extend_from_slice(key.as_bytes());
    v.push(b'=');
    v.extend_from_slice(value.as_bytes());
    cstring(&v)
}

impl ExecStrings {
    fn new(opts: &ProcessOptions<'_>) -> Result<ExecStrings> {
        let file = opts.file.as_os_str().as_bytes();
        if file.is_empty() {
            return Err(Error::EINVAL);
        }
        let mut argv = Vec::with_capacity(opts.args.len() + 1);
        argv.push(cstring(file)?);
        for a in opts.args {
            argv.push(cstring(a.as_bytes())?);
        }
        let mut envp = Vec::new();
        let mut path_var = None;
        match opts.env {
            Some(env) => {
                for (k, v) in env {
                    if k.as_bytes() == b"PATH" {
                        path_var = Some(v.as_bytes().to_vec());
                    }
                    envp.push(pair(k, v)?);
                }
            }
            None => {
                for (k, v) in std::env::vars_os() {
                    envp.push(pair(&k, &v)?);
                }
                path_var = std::env::var_os("PATH").map(|p| p.as_bytes().to_vec());
            }
        }
        let mut paths = Vec::new();
        if file.contains(&b'/') {
            paths.push(cstring(file)?);
        } else {
            let search = path_var.unwrap_or_else(|| b"/usr/local/bin:/usr/bin:/bin".to_vec());
            for dir in search.split(|&b| b == b':') {
                let mut p = Vec::with_capacity(dir.len() + file.len() + 1);
                p.extend_from_slice(if dir.is_empty() { b"." } else { dir });
                p.push(b'/');
                p.extend_from_slice(file);
                paths.push(cstring(&p)?);
            }
        }
        let cwd = match opts.cwd {
            Some(c) => Some(cstring(c.as_os_str().as_bytes())?),
            None => None,
        };
        Ok(ExecStrings { paths, argv, envp, cwd })
    }
}

impl<D> Loop<D> {
    /// Starts a child process (`uv_spawn`). `on_exit` runs once, with the
    /// exit code and the terminating signal (0 when none), when the child
    /// ends; close the handle then (or any time: closing does not kill the
    /// child). Fails with the child's exec error (`ENOENT`, `EACCES`, ...)
    /// if the program could not be started. The handle keeps the loop alive
    /// until the child exits, unless unref'd.
    ///
    /// # Errors
    ///
    /// Nothing is started and `on_exit` never runs: [`Error::STALE_HANDLE`] for a closed stdio
    /// pipe; [`Error::WRONG_TYPE`] for a `Stdio::Pipe` given an IPC pipe or the reverse;
    /// [`Error::INVALID_STATE`] for a stdio pipe that already has a socket; `EINVAL` for an empty
    /// program name, a NUL byte in the program, an argument or the environment, or one pipe given
    /// twice; the child's exec error (`ENOENT` for no such program, `EACCES` for one that is not
    /// executable); the errno of `socketpair`, `open("/dev/null")`, `clone3` (or `fork` and
    /// `pidfd_open`), or `ENOSPC` for a full handle table.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ffi::OsStr;
    /// use std::path::Path;
    /// use uvring::{Loop, OnExit, Process, ProcessOptions, RunMode};
    ///
    /// type Exit = Option<(i64, i32)>;
    /// let mut lp: Loop<Exit> = Loop::new()?;
    /// let args = [OsStr::new("-c"), OsStr::new("exit 3")];
    /// let opts = ProcessOptions::new(Path::new("sh")).args(&args); // found in PATH
    /// let on_exit = OnExit::new(|lp: &mut Loop<Exit>, out: &mut Exit, p: Process, code, signal| {
    ///     *out = Some((code, signal));
    ///     lp.close(p, None).unwrap_or(());
    /// });
    /// lp.spawn(&opts, &on_exit)?;
    /// let mut out = None;
    /// lp.run(RunMode::Default, &mut out)?;
    /// assert_eq!(out, Some((3, 0)));
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn spawn(&mut self, opts: &ProcessOptions<'_>, on_exit: &OnExit<D>) -> Result<Process> {
        // Validate stdio handles: pipe handles without an fd, of the right kind.
        for (i, st) in opts.stdio.iter().enumerate() {
            let (s, want) = match *st {
                Stdio::Pipe(s) => (Stream::of(s), StreamType::Pipe),
                Stdio::Ipc(s) => (Stream::of(s), StreamType::IpcPipe),
                _ => continue,
            };
            let st = self.stream_ref(s)?;
            if st.ty != want {
                return Err(Error::WRONG_TYPE);
            }
            if st.fd >= 0 {
                return Err(Error::INVALID_STATE);
            }
            let dup = opts.stdio[..i].iter().any(|o| matches!(*o, Stdio::Pipe(x) | Stdio::Ipc(x) if x.0 == s.0));
            if dup {
                return Err(Error::EINVAL);
            }
        }
        let strings = ExecStrings::new(opts)?;
        let paths: Vec<&std::ffi::CStr> = strings.paths.iter().map(|c| c.as_c_str()).collect();
        let mut argv: Vec<*const libc::c_char> = strings.argv.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = strings.envp.iter().map(|c| c.as_ptr()).collect();
        envp.push(std::ptr::null());

        // The child's fd table. Created fds are owned here until spawn
        // returns, then closed (child ends) or handed to handles (parent ends).
        let n = opts.stdio.len().max(3);
        let mut table: Vec<RawFd> = vec![-1; n];
        let mut child_ends: Vec<OwnedFd> = Vec::new();
        let mut parent_ends: Vec<(Stream, OwnedFd)> = Vec::new();
        let mut dev_null: Option<OwnedFd> = None;
        for (i, slot) in table.iter_mut().enumerate() {
            match opts.stdio.get(i).copied().unwrap_or(Stdio::Ignore) {
                Stdio::Ignore => {
                    if i <= 2 {
                        if dev_null.is_none() {
                            dev_null = Some(sysproc::open_dev_null_rw()?);
                        }
                        *slot = dev_null.as_ref().map_or(-1, |f| f.as_raw_fd());
                    }
                }
                Stdio::Inherit => *slot = i as RawFd,
                Stdio::Fd(fd) => *slot = fd,
                Stdio::Pipe(s) | Stdio::Ipc(s) => {
                    // The child's end is blocking, as a program expects of
                    // its stdio; the parent's end is made non-blocking below.
                    let (parent, child) = socket::socketpair(false)?;
                    *slot = child.as_raw_fd();
                    child_ends.push(child);
                    parent_ends.push((Stream::of(s), parent));
                }
            }
        }
        let mut scratch = vec![-1; n];
        let cpus = match opts.cpu_affinity {
            Some(list) => Some(sysproc::CpuSet::from_list(list)?),
            None => None,
        };
        let child = sysproc::spawn(SpawnPlan {
            paths: &paths,
            argv: &argv,
            envp: &envp,
            cwd: strings.cwd.as_deref(),
            stdio: &table,
            scratch: &mut scratch,
            detached: opts.detached,
            uid: opts.uid,
            gid: opts.gid,
            groups: opts.groups,
            cpus: cpus.as_ref(),
        })?;
        drop(child_ends);
        drop(dev_null);

        let st = ProcessState {
            pid: child.pid,
            pidfd: Some(child.pidfd),
            exit_cb: Some(on_exit.f.clone()),
            exited: false,
            op: None,
        };
        let h = match self.insert(Kind::Process(st)) {
            Ok(h) => h,
            Err(e) => {
                // No handle to report the exit to: don't leave the child running.
                let _ = sys::process::pidfd_open(child.pid).map(|fd| {
                    let _ = sysproc::pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
                    let _ = sysproc::wait_blocking(fd.as_raw_fd());
                });
                return Err(e);
            }
        };
        for (s, fd) in parent_ends {
            let _ = sys::set_nonblocking(fd.as_raw_fd(), true);
            if let Ok(st) = self.stream_state(s) {
                st.fd = fd.into_raw_fd();
                st.family = libc::AF_UNIX;
                st.connected = true;
            }
        }
        if let Err(e) = self.process_arm(h) {
            // Unlikely (the backend refused a poll). Without it the exit would
            // never be seen, so report the failure and leave no child behind.
            if let Ok(Kind::Process(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
                if let Some(fd) = &st.pidfd {
                    let _ = sysproc::pidfd_send_signal(fd.as_raw_fd(), libc::SIGKILL);
                    let _ = sysproc::wait_blocking(fd.as_raw_fd());
                }
                st.exited = true;
            }
            return Err(e);
        }
        self.set_active(h, true);
        Ok(Process(h))
    }

    fn process_arm(&mut self, h: HandleId) -> Result<()> {
        let fd = match self.slot(h).map(|s| &s.kind) {
            Ok(Kind::Process(st)) => st.pidfd.as_ref().map(|f| f.as_raw_fd()).ok_or(Error::EBADF)?,
            _ => return Err(Error::WRONG_TYPE),
        };
        // SAFETY: a poll lends nothing.
        let token = unsafe { self.submit_op(h, Op::PollIn { fd })? };
        if let Ok(Kind::Process(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            st.op = Some(token);
        }
        Ok(())
    }

    fn process_state(&self, p: Process) -> Result<&ProcessState<D>> {
        let slot = self.slot(p.0)?;
        if slot.flags & crate::event_loop::F_CLOSING != 0 {
            return Err(Error::STALE_HANDLE);
        }
        match &slot.kind {
            Kind::Process(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    /// The child's process id.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing.
    pub fn process_pid(&self, p: Process) -> Result<i32> {
        Ok(self.process_state(p)?.pid)
    }

    /// Whether the child has exited (its exit callback ran).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing.
    pub fn process_exited(&self, p: Process) -> Result<bool> {
        Ok(self.process_state(p)?.exited)
    }

    /// Sends `signum` to the child (`uv_process_kill`); 0 only checks that
    /// it exists. `ESRCH` once it has exited. The pidfd names this child
    /// only, so a recycled pid is never signalled.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if the handle is closed or closing; `ESRCH` once the child has
    /// exited; the errno of `pidfd_send_signal` (`EINVAL` for a bad signal number).
    pub fn process_kill(&mut self, p: Process, signum: i32) -> Result<()> {
        let st = self.process_state(p)?;
        if st.exited {
            return Err(Error::ESRCH);
        }
        let fd = st.pidfd.as_ref().ok_or(Error::ESRCH)?.as_raw_fd();
        sysproc::pidfd_send_signal(fd, signum)
    }

    pub(crate) fn process_close(&mut self, h: HandleId) {
        if let Ok(slot) = self.slot(h) {
            if let Kind::Process(st) = &slot.kind {
                if let (Some(fd), Some(token)) = (&st.pidfd, st.op) {
                    let fd = fd.as_raw_fd();
                    self.driver.cancel(fd, token);
                }
            }
        }
    }

    /// Second half of closing: the poll is over; forget and close the pidfd.
    /// A child that already exited but was not yet reaped is reaped here,
    /// so it does not linger as a zombie; a running child keeps running.
    pub(crate) fn process_finish_close(&mut self, h: HandleId) {
        let fd = match self.slot_mut(h).map(|s| &mut s.kind) {
            Ok(Kind::Process(st)) => {
                if !st.exited {
                    if let Some(fd) = &st.pidfd {
                        let _ = sysproc::try_wait(fd.as_raw_fd());
                    }
                }
                st.pidfd.take()
            }
            _ => return,
        };
        if let Some(fd) = fd {
            self.driver.deregister(fd.as_raw_fd());
        }
    }

    pub(crate) fn on_poll_in(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        let _ = res;
        if let Ok(Kind::Process(st)) = self.slot_mut(h).map(|s| &mut s.kind) {
            debug_assert_eq!(st.op, Some(token));
            st.op = None;
        }
        let fd = match self.slot(h).map(|s| &s.kind) {
            Ok(Kind::Process(st)) if !st.exited => match &st.pidfd {
                Some(fd) => fd.as_raw_fd(),
                None => return,
            },
            _ => return,
        };
        let (status, signal) = match sysproc::try_wait(fd) {
            Ok(None) => {
                // Not exited after all (a spurious wake-up): wait on.
                if self.process_arm(h).is_ok() {
                    return;
                }
                (-(libc::EIO as i64), 0)
            }
            Ok(Some(ExitStatus::Exited(code))) => (code as i64, 0),
            Ok(Some(ExitStatus::Signaled(sig))) => (0, sig),
            // Reaped by someone else (a `waitpid(-1)` elsewhere): the status
            // is lost; say so rather than invent one.
            Err(e) => (-(e.code() as i64), 0),
        };
        let cb = match self.slot_mut(h).map(|s| &mut s.kind) {
            Ok(Kind::Process(st)) => {
                st.exited = true;
                st.exit_cb.clone()
            }
            _ => return,
        };
        self.set_active(h, false);
        if let Some(cb) = cb {
            cb(self, d, h, status, signal);
        }
    }
}
