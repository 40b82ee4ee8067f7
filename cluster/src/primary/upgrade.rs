//! Inherited listeners and the zero-downtime upgrade of the primary
//! (nginx's `USR2` + `QUIT`).
//!
//! **Inherited listeners.** [`Primary::adopt`] takes the sockets of a
//! [`ListenFds`] (systemd socket activation, or the hand-over below); a
//! worker's listen on a matching address then gets the inherited socket
//! (under `rr` the primary accepts on it, under `shared` the workers get
//! copies of it) instead of a bind. Under `reuseport` every worker binds a
//! socket of its own, so inherited sockets are not used: `adopt` closes
//! them (freeing their ports for the workers' binds).
//!
//! **Upgrade.** [`Primary::upgrade`] spawns a new primary (the current
//! program or another binary) with this primary's listening sockets (the
//! workers' and the admin endpoint's) at fds 3 and up
//! (`UVRING_LISTEN_FDS`, their requested addresses in
//! `UVRING_LISTEN_FDNAMES`) and one end of a socketpair
//! (`UVRING_UPGRADE_READY_FD`). The new primary adopts them (the same path
//! as socket activation), forks its workers, and once they listen calls
//! [`Primary::announce_ready`], which writes one byte. Then this primary
//! stops accepting on its `rr` and admin listeners (their sockets stay
//! open in the new primary, so the backlog is never closed and no
//! connection attempt is refused), waits until every connection it
//! accepted meanwhile is in a worker's hands (acknowledged), closes its
//! admin endpoint and reports success; the program then disconnects its
//! workers and exits. If the new primary exits, closes the pipe or does
//! not say it is ready within three times `Settings::startup_timeout`
//! (then it is killed), the upgrade failed and this primary serves on as
//! before.
//!
//! Under `reuseport` the workers' sockets are their own: the new workers
//! bind theirs next to the old ones, and the old ones close as their
//! workers drain. A connection still in a closing socket's accept queue
//! is reset, unless `net.ipv4.tcp_migrate_req` is 1 (Linux 5.14), which
//! moves it to another socket of the group.

use super::{Primary, PrimaryData, PrimaryId};
use crate::activation::{
    ListenFds, ListenSource, ENV_LISTEN_FDNAMES, ENV_LISTEN_FDS, ENV_UPGRADE_READY_FD, LISTEN_FDS_START,
};
use crate::settings::{SchedPolicy, ENV_NORMAL_SCHED};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uvring::{
    Error, HandleId, Loop, OnExit, OnListenStop, OnRead, OnTimer, PipeStream, Process, ProcessOptions, Result, Stdio,
    TcpListener, TcpSocket, Timer,
};

/// Why an upgrade failed (the old primary serves on).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeFailure {
    /// The new primary exited before it was ready: its exit code and the
    /// signal that ended it (0 if none).
    Exited {
        /// Exit code.
        code: i64,
        /// Terminating signal, or 0.
        signal: i32,
    },
    /// It closed its end of the hand-over pipe without saying it is ready.
    Closed,
    /// It did not say it is ready within this time; it was killed.
    Timeout(Duration),
}

impl std::fmt::Display for UpgradeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeFailure::Exited { code, signal: 0 } => {
                write!(f, "the new primary exited with code {code} before it was ready")
            }
            UpgradeFailure::Exited { signal, .. } => {
                write!(f, "the new primary was killed by signal {signal} before it was ready")
            }
            UpgradeFailure::Closed => f.write_str("the new primary closed the hand-over pipe before it was ready"),
            UpgradeFailure::Timeout(d) => {
                write!(f, "the new primary was not ready within {} ms; killed", d.as_millis())
            }
        }
    }
}

type UpgradeFn<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D, std::result::Result<i32, UpgradeFailure>)>;

#[derive(Copy, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for the new primary's byte.
    Waiting,
    /// Ready: this many `rr` listeners are still stopping.
    Stopping(usize),
    /// Every listener stopped; waiting until every connection accepted
    /// meanwhile is in a worker's hands (queued or unacknowledged ones
    /// would be dropped by the disconnect that follows).
    Settling,
    /// The outcome was delivered; waiting only for a killed child's exit.
    Done,
}

/// An upgrade under way.
struct Upgrading<D> {
    pid: i32,
    process: Option<Process>,
    pipe: Option<PipeStream>,
    timer: Option<Timer>,
    phase: Phase,
    /// `lp.now()` when settling began.
    settle_since: u64,
    cb: Option<UpgradeFn<D>>,
}

/// The primary's part for inherited sockets and upgrades.
pub(super) struct Handover<D> {
    inherited: ListenFds,
    /// Set in a primary an upgrade started: where it says it is ready.
    ready_to_old: Option<OwnedFd>,
    upgrading: Option<Upgrading<D>>,
    on_exit: OnExit<D>,
    on_ready: OnRead<D, PipeStream>,
    on_timeout: OnTimer<D>,
    on_stopped: OnListenStop<D, TcpListener>,
    on_settle: OnTimer<D>,
}

impl<D: PrimaryData> Handover<D> {
    pub(super) fn new(id: PrimaryId) -> Handover<D> {
        Handover {
            inherited: ListenFds::none(),
            ready_to_old: None,
            upgrading: None,
            on_exit: OnExit::new(move |lp, d: &mut D, proc, code, signal| {
                let _ = lp.close(proc, None);
                let Some(p) = d.primary_by_id(id) else { return };
                let Some(u) = p.handover.upgrading.as_mut().filter(|u| u.process == Some(proc)) else { return };
                u.process = None;
                upgrade_failed(lp, d, id, UpgradeFailure::Exited { code, signal });
            }),
            on_ready: OnRead::new(move |lp, d: &mut D, _, res| match res {
                Ok([]) => {}
                Ok(_) => upgrade_ready(lp, d, id),
                Err(_) => {
                    // Its exit (which says why) usually follows: wait for
                    // it while the process runs (the deadline bounds this).
                    let Some(p) = d.primary_by_id(id) else { return };
                    let Some(u) = p.handover.upgrading.as_mut() else { return };
                    if u.process.is_some() && u.phase == Phase::Waiting {
                        if let Some(pipe) = u.pipe.take() {
                            let _ = lp.close(pipe, None);
                        }
                        return;
                    }
                    upgrade_failed(lp, d, id, UpgradeFailure::Closed)
                }
            }),
            on_timeout: OnTimer::new(move |lp, d: &mut D, _| {
                let Some(p) = d.primary_by_id(id) else { return };
                let limit = p.upgrade_deadline();
                if let Some(proc) = p.handover.upgrading.as_ref().and_then(|u| u.process) {
                    let _ = lp.process_kill(proc, libc::SIGKILL);
                }
                upgrade_failed(lp, d, id, UpgradeFailure::Timeout(limit));
            }),
            on_stopped: OnListenStop::new(move |lp, d: &mut D, _, _| {
                let Some(p) = d.primary_by_id(id) else { return };
                let Some(u) = p.handover.upgrading.as_mut() else { return };
                if let Phase::Stopping(n) = u.phase {
                    u.phase = Phase::Stopping(n.saturating_sub(1));
                    if n <= 1 {
                        settle(lp, d, id);
                    }
                }
            }),
            on_settle: OnTimer::new(move |lp, d: &mut D, _| settle(lp, d, id)),
        }
    }
}

impl<D> Primary<D> {
    /// Takes the inherited sockets of `fds` (see the module docs): a
    /// worker's listen on a matching address gets one of them instead of a
    /// bind. Under `reuseport` they are closed instead (each worker binds
    /// its own socket). Returns how many were kept.
    pub fn adopt(&mut self, mut fds: ListenFds) -> usize {
        // (An upgrade under `reuseport` hands over only the admin listener.)
        if self.settings.policy == SchedPolicy::ReusePort && fds.source() == ListenSource::Systemd {
            fds.clear();
        }
        if let Some(fd) = fds.take_ready() {
            self.handover.ready_to_old = Some(fd);
        }
        let n = fds.len();
        self.handover.inherited = fds;
        n
    }

    /// The inherited sockets no listener has taken yet.
    pub fn inherited(&self) -> &ListenFds {
        &self.handover.inherited
    }

    /// Whether this primary was started by an upgrade and has not yet
    /// [announced](Self::announce_ready) that it is ready.
    pub fn awaits_ready(&self) -> bool {
        self.handover.ready_to_old.is_some()
    }

    /// In a primary an upgrade started: tells the old primary that this
    /// one serves (call it once the workers listen); the old one then
    /// drains and exits. `Ok(false)` when this primary was not started by
    /// an upgrade (or already said so).
    pub fn announce_ready(&mut self) -> Result<bool> {
        let Some(fd) = self.handover.ready_to_old.take() else { return Ok(false) };
        let mut s = std::os::unix::net::UnixStream::from(fd);
        s.write_all(b"R").map_err(Error::from)?;
        Ok(true)
    }

    /// Whether an upgrade is under way (started, not yet ended).
    pub fn is_upgrading(&self) -> bool {
        self.handover.upgrading.as_ref().is_some_and(|u| u.phase != Phase::Done)
    }

    fn upgrade_deadline(&self) -> Duration {
        self.settings.startup_timeout.saturating_mul(3)
    }

    /// The inherited socket for `addr` (the admin endpoint's), taken.
    pub(super) fn take_inherited(&mut self, addr: SocketAddr) -> Option<OwnedFd> {
        self.handover.inherited.take(addr)
    }

    /// The listening sockets an upgrade hands over: the workers' (see
    /// `handover_listeners`) and the admin endpoint's; each with its
    /// handle, the address asked for, and the listener to stop accepting
    /// on once the new primary serves (not for `shared`: the workers
    /// accept there).
    fn upgrade_sockets(&self) -> Vec<(HandleId, SocketAddr, Option<TcpListener>)> {
        let mut out = self.handover_listeners();
        if let Some(a) = self.admin.as_ref() {
            out.push((a.listener().into(), a.address(), Some(a.listener())));
        }
        out
    }

    /// The inherited socket for a listen on `addr`, opened in the loop.
    pub(super) fn inherited_socket(&mut self, lp: &mut Loop<D>, addr: SocketAddr) -> Result<Option<TcpSocket>> {
        if self.settings.policy == SchedPolicy::ReusePort {
            return Ok(None);
        }
        match self.handover.inherited.take(addr) {
            Some(fd) => lp.tcp_open(fd).map(Some),
            None => Ok(None),
        }
    }

    /// Closes the upgrade's pipe and timer.
    fn upgrade_release(&mut self, lp: &mut Loop<D>) {
        let Some(u) = self.handover.upgrading.as_mut() else { return };
        if let Some(pipe) = u.pipe.take() {
            let _ = lp.close(pipe, None);
        }
        if let Some(t) = u.timer.take() {
            let _ = lp.close(t, None);
        }
        if u.phase == Phase::Done && u.process.is_none() {
            self.handover.upgrading = None;
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Starts a zero-downtime upgrade (see the module docs): spawns `exec`
    /// (`None`: the program this process was started as, `argv[0]`) with
    /// this process's arguments, handing it the listening sockets. Returns
    /// the new primary's pid. `cb` runs once, from the loop: `Ok(pid)` when
    /// the new primary serves and this one has stopped accepting (now
    /// disconnect the workers and exit), or `Err` with why the upgrade
    /// failed (this primary serves on).
    ///
    /// Fails at once, calling nothing, with `EALREADY` if an upgrade is
    /// under way, or with the spawn's error (`ENOENT`, `EACCES`, ...) if
    /// the program cannot be started.
    pub fn upgrade(
        &mut self,
        lp: &mut Loop<D>,
        exec: Option<&Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, std::result::Result<i32, UpgradeFailure>) + 'static,
    ) -> Result<i32> {
        if self.is_upgrading() {
            return Err(Error::from_errno(libc::EALREADY));
        }
        let program: PathBuf = match exec {
            Some(p) => p.to_path_buf(),
            None => match std::env::args_os().next() {
                Some(a) if !a.is_empty() => PathBuf::from(a),
                _ => std::env::current_exe().map_err(Error::from)?,
            },
        };
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let arg_refs: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
        let listeners = self.upgrade_sockets();
        let mut stdio = vec![Stdio::Inherit, Stdio::Inherit, Stdio::Inherit];
        let mut names = String::new();
        for (h, requested, _) in &listeners {
            stdio.push(Stdio::Fd(lp.fileno(*h)?));
            if !names.is_empty() {
                names.push(';');
            }
            names.push_str(&requested.to_string());
        }
        let (mine, theirs) = uvring::os::socketpair(false)?;
        stdio.push(Stdio::Fd(theirs.as_raw_fd()));
        let ready_fd = LISTEN_FDS_START + listeners.len() as i32;
        // The child's whole environment: ours, without anything naming
        // fds or pids of this process, plus the hand-over.
        let skip = |k: &OsStr| {
            let k = k.to_string_lossy();
            k.starts_with("LISTEN_")
                || k.starts_with("UVRING_LISTEN_")
                || k == ENV_UPGRADE_READY_FD
                || k == "WATCHDOG_PID"
                || k == ENV_NORMAL_SCHED
        };
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().filter(|(k, _)| !skip(k)).collect();
        env.push((ENV_LISTEN_FDS.into(), listeners.len().to_string().into()));
        env.push((ENV_LISTEN_FDNAMES.into(), names.into()));
        env.push((ENV_UPGRADE_READY_FD.into(), ready_fd.to_string().into()));
        if !uvring::os::sched_is_normal() {
            // This thread runs under `SCHED_BATCH` (`Settings::batch_scheduling`),
            // which the child inherits: the new primary moves back first.
            env.push((ENV_NORMAL_SCHED.into(), "1".into()));
        }
        let env_refs: Vec<(&OsStr, &OsStr)> = env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())).collect();
        let opts = ProcessOptions::new(&program).args(&arg_refs).env(Some(&env_refs)).stdio(&stdio);
        let process = lp.spawn(&opts, &self.handover.on_exit)?;
        drop(theirs);
        let pid = lp.process_pid(process)?;
        let mut u = Upgrading {
            pid,
            process: Some(process),
            pipe: None,
            timer: None,
            phase: Phase::Waiting,
            settle_since: 0,
            cb: None,
        };
        let watch = lp.pipe_open(mine, false).and_then(|pipe| {
            u.pipe = Some(pipe);
            lp.read_start(pipe, &self.handover.on_ready)?;
            let t = lp.timer_init()?;
            u.timer = Some(t);
            lp.timer_start(t, self.upgrade_deadline(), Duration::ZERO, &self.handover.on_timeout)
        });
        if let Err(e) = watch {
            // Without a way to hear from it, the new primary cannot take
            // over: it is stopped, and this one serves on.
            let _ = lp.process_kill(process, libc::SIGKILL);
            u.phase = Phase::Done;
            self.handover.upgrading = Some(u);
            self.upgrade_release(lp);
            return Err(e);
        }
        u.cb = Some(Box::new(cb));
        self.handover.upgrading = Some(u);
        Ok(pid)
    }
}

/// The new primary said it is ready: stop accepting, then report.
fn upgrade_ready<D: PrimaryData>(lp: &mut Loop<D>, d: &mut D, id: PrimaryId) {
    let Some(p) = d.primary_by_id(id) else { return };
    let Some(u) = p.handover.upgrading.as_mut().filter(|u| u.phase == Phase::Waiting) else { return };
    // From now on its exit is none of our business.
    if let Some(proc) = u.process.take() {
        let _ = lp.close(proc, None);
    }
    u.phase = Phase::Stopping(0);
    p.upgrade_release(lp);
    let mut stopping = 0;
    for (_, _, rr) in p.upgrade_sockets() {
        if let Some(l) = rr {
            if lp.listen_stop(l, Some(&p.handover.on_stopped)).is_ok() {
                stopping += 1;
            }
        }
    }
    if let Some(u) = p.handover.upgrading.as_mut() {
        u.phase = Phase::Stopping(stopping);
    }
    if stopping == 0 {
        settle(lp, d, id);
    }
}

/// Reports success once no accepted connection waits in this primary
/// (checked again every 2 ms; after `Settings::startup_timeout` it
/// reports anyway: a worker that never acknowledges is killed by the
/// heartbeat and its connections go elsewhere).
fn settle<D: PrimaryData>(lp: &mut Loop<D>, d: &mut D, id: PrimaryId) {
    let Some(p) = d.primary_by_id(id) else { return };
    let quiet = p.handoff.is_idle() && p.workers.iter().all(|w| w.conns.unacked.is_empty());
    let Some(u) = p.handover.upgrading.as_mut() else { return };
    if u.phase != Phase::Settling {
        u.phase = Phase::Settling;
        u.settle_since = lp.now();
    }
    let waited = Duration::from_millis(lp.now().saturating_sub(u.settle_since));
    if quiet || waited >= p.settings.startup_timeout {
        return upgrade_done(lp, d, id);
    }
    if u.timer.is_none() {
        let every = Duration::from_millis(2);
        let t = lp.timer_init().and_then(|t| lp.timer_start(t, every, every, &p.handover.on_settle).map(|()| t));
        match t {
            Ok(t) => u.timer = Some(t),
            Err(_) => upgrade_done(lp, d, id),
        }
    }
}

/// Every `rr` listener stopped: the upgrade succeeded.
fn upgrade_done<D: PrimaryData>(lp: &mut Loop<D>, d: &mut D, id: PrimaryId) {
    let Some(p) = d.primary_by_id(id) else { return };
    let Some(mut u) = p.handover.upgrading.take() else { return };
    if let Some(t) = u.timer.take() {
        let _ = lp.close(t, None);
    }
    // The new primary answers on the admin socket from now on.
    p.admin_close(lp);
    if let Some(cb) = u.cb.take() {
        cb(lp, d, Ok(u.pid));
    }
}

/// The upgrade failed (reported once; a later report only releases what
/// is left).
fn upgrade_failed<D: PrimaryData>(lp: &mut Loop<D>, d: &mut D, id: PrimaryId, why: UpgradeFailure) {
    let Some(p) = d.primary_by_id(id) else { return };
    let Some(u) = p.handover.upgrading.as_mut() else { return };
    if u.phase != Phase::Waiting {
        p.upgrade_release(lp);
        return;
    }
    u.phase = Phase::Done;
    let cb = u.cb.take();
    p.upgrade_release(lp);
    if let Some(cb) = cb {
        cb(lp, d, Err(why));
    }
}
