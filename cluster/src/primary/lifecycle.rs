//! The worker table's lifecycle: fork (re-executing the program with the
//! channel at fd 3), online and listening, channel close, exit, the
//! respawn governor, and disconnect and kill, for one worker or all.

use super::{drain_events, Event, Primary, PrimaryData, PrimaryId, WorkerEntry, WorkerInfo, WorkerStatus};
use crate::proto::{Frame, ListenAddress};
use crate::schedule::{RespawnDecision, RestartGovernor, WorkerId};
use crate::settings::{
    ChildOutput, SchedPolicy, Settings, ENV_BACKEND, ENV_CHANNEL_FD, ENV_DRAIN_GRACE_MS, ENV_MAX_MESSAGE_LEN,
    ENV_NORMAL_SCHED, ENV_SCHED_POLICY, ENV_WORKER_ID,
};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use uvring::{Error, Loop, OnExit, OnTimer, ProcessOptions, Result, Stdio, Timer};

/// The child fd number of the IPC channel.
pub(super) const CHANNEL_FD: i32 = 3;

/// Exited workers remembered for [`Primary::worker`].
const EXITED_KEPT: usize = 64;

/// The extra environment a worker was forked with.
pub(super) type WorkerEnv = Vec<(OsString, OsString)>;

/// Environment variable of a worker's extra environment that chooses its
/// stdio ([`ChildOutput::parse`] names), over `Settings::output`
/// ([`Primary::fork_with_output`]); kept with the environment, so its
/// respawned or rolled replacement gets the same choice.
pub(super) const ENV_OUTPUT: &str = "UVRING_CLUSTER_OUTPUT";

/// What the lifecycle keeps besides the table.
pub(super) struct Lifecycle<D> {
    exec: PathBuf,
    args: Vec<OsString>,
    /// This thread moved to `SCHED_BATCH` (`Settings::batch_scheduling`):
    /// workers are told to move back to the normal policy.
    batch_sched: bool,
    next_worker_id: WorkerId,
    governor: RestartGovernor,
    /// `disconnect` is under way: no respawn.
    pub(super) shutting_down: bool,
    disconnect_cbs: Vec<super::DoneFn<D>>,
    /// Pending respawns, each with the environment and the restart count
    /// of the worker it replaces.
    respawn_timers: Vec<(Timer, WorkerEnv, u32)>,
    /// Sends heartbeats while there are workers (`Settings::heartbeat_interval`).
    heartbeat_timer: Option<Timer>,
    heartbeat_seq: u32,
    /// The last workers that exited, newest last.
    pub(super) exited: VecDeque<WorkerInfo>,
    /// The CPUs workers are pinned to (`Settings::cpu_affinity`); empty
    /// when off.
    cpus: Vec<usize>,
}

impl<D> Lifecycle<D> {
    pub(super) fn new(settings: &Settings) -> Result<Lifecycle<D>> {
        let exec = match &settings.exec {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(Error::from)?,
        };
        let args = match &settings.args {
            Some(a) => a.clone(),
            None => std::env::args_os().skip(1).collect(),
        };
        // See `Settings::batch_scheduling`. A thread the user already put
        // under another policy keeps it.
        let batch_sched = settings.policy == SchedPolicy::RoundRobin
            && settings.batch_scheduling
            && uvring::os::sched_is_normal()
            && uvring::os::set_sched_batch(true).is_ok();
        Ok(Lifecycle {
            exec,
            args,
            batch_sched,
            next_worker_id: 1,
            governor: RestartGovernor::new(settings.respawn.clone()),
            shutting_down: false,
            disconnect_cbs: Vec::new(),
            respawn_timers: Vec::new(),
            heartbeat_timer: None,
            heartbeat_seq: 0,
            exited: VecDeque::with_capacity(EXITED_KEPT),
            cpus: if settings.cpu_affinity { uvring::os::allowed_cpus()? } else { Vec::new() },
        })
    }

    /// The `ShutdownDone` event is delivered: respawning may resume unless
    /// another `disconnect` came meanwhile.
    pub(super) fn shutdown_done(&mut self, no_workers: bool) {
        if no_workers && self.disconnect_cbs.is_empty() {
            self.shutting_down = false;
        }
    }
}

impl<D> Primary<D> {
    /// Whether a `disconnect` of every worker is under way.
    pub(super) fn life_shutting_down(&self) -> bool {
        self.life.shutting_down
    }

    /// Whether a restart storm stopped respawning.
    pub fn respawn_stopped(&self) -> bool {
        self.life.governor.stormed()
    }

    /// Worker `id` said `Online`.
    pub(super) fn worker_online(&mut self, id: WorkerId) {
        let Some(w) = self.entry_mut(id) else { return };
        if w.info.status == WorkerStatus::Starting {
            w.info.status = WorkerStatus::Online;
        }
        let info = w.info();
        self.events.queue.push_back(Event::Online(info));
    }

    /// A server of worker `id` listens on `address`, `port`.
    pub(super) fn worker_listening(&mut self, id: WorkerId, address: ListenAddress<'_>, port: u16) {
        let ip: Option<IpAddr> = match address {
            ListenAddress::V4(ip) => Some(ip.into()),
            ListenAddress::V6(ip) => Some(ip.into()),
            ListenAddress::Unix(_) | ListenAddress::Fd(_) => None,
        };
        let Some(w) = self.entry_mut(id) else { return };
        if matches!(w.info.status, WorkerStatus::Starting | WorkerStatus::Online) {
            w.info.status = WorkerStatus::Listening;
        }
        w.listened = true;
        let info = w.info();
        self.life.governor.on_started();
        if let Some(ip) = ip {
            self.events.queue.push_back(Event::Listening(info, SocketAddr::new(ip, port)));
        }
    }

    /// Worker `id` leaves by itself (it called `disconnect`).
    pub(super) fn worker_leaving(&mut self, id: WorkerId) {
        if let Some(w) = self.entry_mut(id) {
            w.info.exited_after_disconnect = true;
            w.disconnecting = true;
        }
    }

    /// The worker's channel is gone (EOF, error, garbage, kill): close it,
    /// queue its unacknowledged connections for others, leave its
    /// listeners.
    pub(super) fn channel_closed(&mut self, lp: &mut Loop<D>, id: WorkerId) {
        let Some(w) = self.workers.iter_mut().find(|w| w.info.id == id) else { return };
        let Some(ch) = w.channel.take() else { return };
        // Fds received ahead of their frames are closed with the decoder.
        w.decoder = None;
        w.info.connected = false;
        if w.info.status != WorkerStatus::Dead {
            w.info.status = WorkerStatus::Disconnected;
        }
        let info = w.info();
        // The unacknowledged connections may still be named by a send
        // queued on this channel: they wait in `limbo` until its close has
        // completed (`on_channel_freed`).
        let _ = lp.close(ch, Some(&self.cbs.channel_freed));
        self.writer.remove(ch);
        self.orphan_unacked(id, ch);
        self.leave_all_listeners(lp, id);
        self.rebalance(lp);
        self.events.queue.push_back(Event::Disconnect(info));
    }

    /// Asks worker `id` to leave; runs no user code.
    fn disconnect_one(&mut self, lp: &mut Loop<D>, id: WorkerId) {
        let Some(w) = self.entry_mut(id) else { return };
        w.info.exited_after_disconnect = true;
        if w.channel.is_none() || w.disconnecting {
            return;
        }
        w.disconnecting = true;
        w.info.status = WorkerStatus::Disconnecting;
        let _ = self.send_to(lp, id, &Frame::Disconnect);
        self.rebalance(lp);
        // Every drain ends: past the deadline, the worker is killed.
        let timeout = self.settings.drain_timeout;
        let timer = self.start_worker_timer(lp, id, timeout, true);
        if let Some(w) = self.entry_mut(id) {
            if let Some(old) = std::mem::replace(&mut w.drain_timer, timer) {
                let _ = lp.close(old, None);
            }
        }
    }

    /// A one-shot, unreferenced timer whose data word is worker `id`.
    pub(super) fn start_worker_timer(
        &mut self,
        lp: &mut Loop<D>,
        id: WorkerId,
        after: Duration,
        drain: bool,
    ) -> Option<Timer> {
        let t = lp.timer_init().ok()?;
        let cb = if drain { &self.cbs.drain_deadline } else { &self.cbs.startup_deadline };
        let ok = lp.set_data(t, id as usize).is_ok()
            && lp.unref_handle(t).is_ok()
            && lp.timer_start(t, after, Duration::ZERO, cb).is_ok();
        if ok {
            Some(t)
        } else {
            let _ = lp.close(t, None);
            None
        }
    }

    /// After `disconnect`: once the table is empty, queue the callbacks
    /// (the caller has them run from a later loop turn, never from inside
    /// the call that asked).
    fn check_shutdown_done(&mut self) {
        let life = &mut self.life;
        if !life.shutting_down || !self.workers.is_empty() || life.disconnect_cbs.is_empty() {
            return;
        }
        self.events.queue.push_back(Event::ShutdownDone);
        self.events.queue.extend(life.disconnect_cbs.drain(..).map(Event::Done));
    }

    /// Closes the primary's own handles once nothing is left to serve, so a
    /// primary without workers keeps no loop handle.
    fn release_if_idle(&mut self, lp: &mut Loop<D>) {
        if self.workers.is_empty() && self.routing.is_empty() && self.handoff.is_idle() {
            self.release_dispatch_hook(lp);
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Forks `settings.workers` workers.
    ///
    /// # Errors
    ///
    /// The first error of [`fork`](Self::fork); the workers forked before it keep running.
    pub fn start(&mut self, lp: &mut Loop<D>) -> Result<()> {
        for _ in 0..self.settings.workers {
            self.fork(lp)?;
        }
        Ok(())
    }

    /// Forks one worker (Node's `cluster.fork()`). Its `fork` event comes
    /// from the loop, after this call.
    ///
    /// # Errors
    ///
    /// As [`fork_with_env`](Self::fork_with_env).
    pub fn fork(&mut self, lp: &mut Loop<D>) -> Result<WorkerId> {
        self.fork_with_env(lp, &[])
    }

    /// Forks one worker with extra environment variables (Node's
    /// `cluster.fork(env)`).
    /// The environment stays the worker's identity: its respawned or rolled
    /// replacement is forked with it too.
    ///
    /// # Errors
    ///
    /// No worker is started: the error of [`Loop::spawn`](uvring::Loop::spawn) (`ENOENT` or
    /// `EACCES` for the program named by [`Settings::exec`](crate::Settings::exec), `EINVAL` for a
    /// NUL byte in an argument or variable, `EMFILE`, `EAGAIN` from the kernel), or of making the
    /// channel pipe or the primary's hook (`ENOSPC`, `EMFILE`). The id is used up all the same.
    pub fn fork_with_env(&mut self, lp: &mut Loop<D>, extra_env: &[(&str, &str)]) -> Result<WorkerId> {
        let env = extra_env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect();
        let id = self.fork_worker(lp, env);
        self.schedule_drain(lp);
        id
    }

    /// Asks worker `id` to leave gracefully (Node's `worker.disconnect()`):
    /// it closes its servers, lets open connections finish, and exits.
    pub fn disconnect_worker(&mut self, lp: &mut Loop<D>, id: WorkerId) {
        self.disconnect_one(lp, id);
        self.schedule_drain(lp);
    }

    /// Sends worker `id` the signal `signum` (Node's `worker.kill()`). The
    /// channel stays up: a signal that does not end the process (`SIGUSR1`
    /// handled by the worker, say) leaves the worker running and
    /// connected. If the process ends, its `disconnect` and `exit` events
    /// follow, and it counts as having exited after a disconnect (it is not
    /// respawned). A graceful stop of one worker is
    /// [`disconnect_worker`](Self::disconnect_worker). `ESRCH` if no such
    /// worker lives.
    ///
    /// # Errors
    ///
    /// `ESRCH` if no live worker has this id (never forked, or exited); the error of
    /// [`Loop::process_kill`](uvring::Loop::process_kill) (`EINVAL` for a bad signal number).
    pub fn kill(&mut self, lp: &mut Loop<D>, id: WorkerId, signum: i32) -> Result<()> {
        let w = self.entry_mut(id).ok_or(Error::ESRCH)?;
        let process = w.process.ok_or(Error::ESRCH)?;
        lp.process_kill(process, signum)?;
        if let Some(w) = self.entry_mut(id) {
            w.killed = true;
        }
        Ok(())
    }

    /// Disconnects every worker (Node's `cluster.disconnect(cb)`); `cb` runs
    /// once every worker has exited, always from a later loop turn (even
    /// when there is no worker). No worker is respawned meanwhile.
    ///
    /// A rolling restart under way is cancelled (nothing more is forked; its
    /// callback is dropped).
    pub fn disconnect(&mut self, lp: &mut Loop<D>, cb: impl FnOnce(&mut Loop<D>, &mut D) + 'static) {
        self.life.shutting_down = true;
        self.life.disconnect_cbs.push(Box::new(cb));
        self.rolling = None;
        for (t, ..) in std::mem::take(&mut self.life.respawn_timers) {
            let _ = lp.close(t, None);
        }
        let ids: Vec<WorkerId> = self.workers.iter().map(|w| w.info.id).collect();
        for id in ids {
            self.disconnect_one(lp, id);
        }
        // Listeners kept for workers that are gone close now (the others
        // close as their last member leaves).
        self.close_idle_listeners(lp);
        self.check_shutdown_done();
        self.schedule_drain(lp);
    }

    /// Changes the number of workers at run time (gunicorn's `TTIN` and
    /// `TTOU`): forks the missing ones, or disconnects the newest ones
    /// (gracefully: their open connections finish); pending respawns count
    /// as workers (and are cancelled first when the count goes down). The
    /// new count is recorded in `settings().workers`. Runs no user code;
    /// the events follow from the loop.
    ///
    /// # Errors
    ///
    /// The first fork's error (as [`fork_with_env`](Self::fork_with_env)); the workers forked
    /// before it stay, and the count is recorded anyway.
    pub fn set_worker_count(&mut self, lp: &mut Loop<D>, count: usize) -> Result<()> {
        self.settings.workers = count;
        let serving: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|w| !w.disconnecting && !w.info.exited_after_disconnect && !w.killed)
            .map(|w| w.info.id)
            .collect();
        let mut have = serving.len() + self.life.respawn_timers.len();
        // Fewer: pending respawns go first, then the newest workers.
        while have > count {
            let Some((t, ..)) = self.life.respawn_timers.pop() else { break };
            let _ = lp.close(t, None);
            have -= 1;
        }
        for &id in serving.iter().rev().take(have.saturating_sub(count)) {
            self.disconnect_one(lp, id);
        }
        let mut result = Ok(());
        for _ in have..count {
            if let Err(e) = self.fork_worker(lp, Vec::new()) {
                result = Err(e);
                break;
            }
        }
        self.schedule_drain(lp);
        result
    }

    /// Forks one worker whose stdio is `output` instead of
    /// `Settings::output` (Node's per-fork `stdio`); its respawned or rolled
    /// replacement gets the same.
    ///
    /// # Errors
    ///
    /// As [`fork_with_env`](Self::fork_with_env).
    pub fn fork_with_output(&mut self, lp: &mut Loop<D>, output: ChildOutput) -> Result<WorkerId> {
        self.fork_with_env(lp, &[(ENV_OUTPUT, output.name())])
    }

    /// The CPU with the fewest live workers pinned to it (the first of
    /// those), when pinning is on.
    fn pick_cpu(&self) -> Option<usize> {
        let cpus = &self.life.cpus;
        cpus.iter().copied().min_by_key(|&c| self.workers.iter().filter(|w| w.cpu == Some(c)).count())
    }

    /// Spawns a worker; its `fork` event is queued.
    pub(super) fn fork_worker(&mut self, lp: &mut Loop<D>, extra_env: WorkerEnv) -> Result<WorkerId> {
        let id = self.life.next_worker_id;
        self.life.next_worker_id += 1;
        let backend = self.settings.backend.unwrap_or(lp.backend());
        let ours = [
            ENV_WORKER_ID,
            ENV_CHANNEL_FD,
            ENV_SCHED_POLICY,
            ENV_BACKEND,
            super::ENV_LOAD_REPORT_MS,
            ENV_NORMAL_SCHED,
            crate::settings::ENV_WORKER_BATCH,
            ENV_DRAIN_GRACE_MS,
            ENV_MAX_MESSAGE_LEN,
            crate::worker::ENV_STORE_TIMEOUT_MS,
            ENV_OUTPUT,
        ];
        let mut env: Vec<(OsString, OsString)> =
            std::env::vars_os().filter(|(k, _)| !ours.iter().any(|o| OsStr::new(o) == k)).collect();
        for (k, v) in &self.settings.env {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in &extra_env {
            env.retain(|(x, _)| x != k);
            env.push((k.clone(), v.clone()));
        }
        env.push((ENV_WORKER_ID.into(), id.to_string().into()));
        env.push((ENV_CHANNEL_FD.into(), CHANNEL_FD.to_string().into()));
        env.push((ENV_SCHED_POLICY.into(), self.settings.policy.name().into()));
        env.push((ENV_BACKEND.into(), backend.name().into()));
        env.push((super::ENV_LOAD_REPORT_MS.into(), self.settings.load_report.as_millis().to_string().into()));
        env.push((ENV_DRAIN_GRACE_MS.into(), self.settings.drain_grace.as_millis().to_string().into()));
        env.push((ENV_MAX_MESSAGE_LEN.into(), self.settings.max_message_len.to_string().into()));
        let store_ms = self.settings.store_timeout.as_millis().to_string();
        env.push((crate::worker::ENV_STORE_TIMEOUT_MS.into(), store_ms.into()));
        if self.life.batch_sched {
            env.push((ENV_NORMAL_SCHED.into(), "1".into()));
        }
        if self.settings.worker_batch_scheduling {
            env.push((crate::settings::ENV_WORKER_BATCH.into(), "1".into()));
        }
        if self.speaks_node() {
            super::node::node_env(&mut env, id, &ours);
        }
        self.ensure_dispatch_hook(lp)?;
        let output = extra_env
            .iter()
            .rev()
            .find(|(k, _)| k == ENV_OUTPUT)
            .and_then(|(_, v)| v.to_str().and_then(ChildOutput::parse))
            .unwrap_or(self.settings.output);
        let pipe = lp.pipe_init(true)?;
        // Captured stdout and stderr: one socketpair each (the worker's end
        // is blocking, as a program expects of its stdio).
        let captured = match output {
            ChildOutput::Capture => match (lp.pipe_init(false), lp.pipe_init(false)) {
                (Ok(o), Ok(e)) => Some((o, e)),
                (o, e) => {
                    for s in [o, e].into_iter().flatten() {
                        let _ = lp.close(s, None);
                    }
                    let _ = lp.close(pipe, None);
                    return Err(Error::EMFILE);
                }
            },
            _ => None,
        };
        let stdio = match (output, captured) {
            (ChildOutput::QuietStdout, _) => [Stdio::Inherit, Stdio::Ignore, Stdio::Inherit, Stdio::Ipc(pipe)],
            (ChildOutput::Discard, _) => [Stdio::Ignore, Stdio::Ignore, Stdio::Ignore, Stdio::Ipc(pipe)],
            (_, Some((o, e))) => [Stdio::Ignore, Stdio::Pipe(o), Stdio::Pipe(e), Stdio::Ipc(pipe)],
            _ => [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit, Stdio::Ipc(pipe)],
        };
        let cpu = self.pick_cpu();
        let cpu_list = cpu.map(|c| [c]);
        let arg_refs: Vec<&OsStr> = self.life.args.iter().map(OsString::as_os_str).collect();
        let env_refs: Vec<(&OsStr, &OsStr)> = env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())).collect();
        let s = &self.settings;
        let opts = ProcessOptions::new(&self.life.exec)
            .args(&arg_refs)
            .env(Some(&env_refs))
            .stdio(&stdio)
            .cwd(s.cwd.as_deref())
            .uid(s.uid)
            .gid(s.gid)
            .groups(s.groups.as_deref())
            .cpu_affinity(cpu_list.as_ref().map(|c| &c[..]));
        let process = match lp.spawn(&opts, &self.cbs.exit) {
            Ok(p) => p,
            Err(e) => {
                let _ = lp.close(pipe, None);
                if let Some((o, e)) = captured {
                    let _ = (lp.close(o, None), lp.close(e, None));
                }
                self.release_if_idle(lp);
                return Err(e);
            }
        };
        let _ = lp.set_data(process, id as usize);
        let pid = lp.process_pid(process).unwrap_or(-1);
        if let Some((o, e)) = captured {
            for s in [o, e] {
                match lp.pipe_stream(s) {
                    Ok(stream) => self.capture(lp, stream, id, pid),
                    Err(_) => {
                        let _ = lp.close(s, None);
                    }
                }
            }
        }
        if self.life.batch_sched && self.speaks_node() {
            super::node::normal_sched(pid);
        }
        let mut info = WorkerInfo {
            id,
            pid,
            status: WorkerStatus::Starting,
            connected: true,
            exited_after_disconnect: false,
            unacked: 0,
            open_connections: 0,
        };
        // The spawn connected the socket: from now on it is the channel.
        let channel = match lp.pipe_stream(pipe) {
            Ok(ch) => Some(ch),
            Err(_) => {
                let _ = lp.close(pipe, None);
                info.connected = false;
                info.status = WorkerStatus::Disconnected;
                None
            }
        };
        let read_ok = match channel {
            Some(ch) => lp.set_data(ch, id as usize).is_ok() && lp.read_start(ch, &self.cbs.channel_read).is_ok(),
            None => true,
        };
        let decoder = self.channel_decoder(channel);
        self.workers.push(WorkerEntry {
            info,
            process: Some(process),
            channel,
            decoder: Some(decoder),
            disconnecting: false,
            env: extra_env,
            killed: false,
            listened: false,
            forked_at: lp.now(),
            last_heard: lp.now(),
            drain_timer: None,
            startup_timer: None,
            fds_lost: false,
            cpu,
            conns: super::handoff::WorkerConns::new(),
            figures: Default::default(),
        });
        self.events.queue.push_back(Event::Fork(info));
        self.start_heartbeats(lp);
        if !read_ok {
            self.channel_closed(lp, id);
        }
        Ok(id)
    }

    /// Worker `id`'s process exited: it leaves the table; a crash may be
    /// followed by a respawn (or a restart storm).
    fn worker_exited(&mut self, lp: &mut Loop<D>, id: WorkerId, code: i64, signal: i32) {
        // The exit came before the channel's EOF was read: the channel ends
        // here, as unexpectedly as an EOF would have said.
        if let Some(w) = self.entry(id) {
            if w.channel.is_some() && !w.disconnecting && !w.info.exited_after_disconnect && !w.killed {
                self.events.queue.push_back(Event::ChannelError(w.info(), super::ChannelFault::UnexpectedEof));
            }
        }
        self.channel_closed(lp, id);
        let Some(i) = self.workers.iter().position(|w| w.info.id == id) else { return };
        let w = self.workers.remove(i);
        for t in [w.drain_timer, w.startup_timer].into_iter().flatten() {
            let _ = lp.close(t, None);
        }
        if self.workers.is_empty() {
            if let Some(t) = self.life.heartbeat_timer.take() {
                let _ = lp.close(t, None);
            }
        }
        if !self.keeps_listeners(id) {
            self.close_idle_listeners(lp);
        }
        let mut info = w.info();
        info.status = WorkerStatus::Dead;
        info.connected = false;
        info.exited_after_disconnect |= w.killed;
        if self.life.exited.len() >= EXITED_KEPT {
            self.life.exited.pop_front();
        }
        self.life.exited.push_back(info);
        self.events.queue.push_back(Event::Exit(info, code, signal));
        let crashed = !info.exited_after_disconnect;
        // A worker in a rolling swap is not respawned: the old one's
        // replacement is already there; a replacement that died leaves its
        // old worker in place (a failed start). Either way the table stays
        // at its target.
        let swapping = self.rolling_swap_member(id);
        if crashed && swapping && !self.life.shutting_down {
            let now = lp.now();
            let decision =
                if w.listened { self.life.governor.on_crash(now) } else { self.life.governor.on_failed_start(now) };
            if decision == RespawnDecision::Storm {
                self.events.queue.push_back(Event::Storm);
            }
        }
        if crashed && !swapping && self.settings.respawn.enabled && !self.life.shutting_down {
            // A crash before it ever listened, soon after its fork, is a
            // failed start (a listen that cannot succeed, say).
            let now = lp.now();
            let early = now.saturating_sub(w.forked_at) < self.settings.startup_timeout.as_millis() as u64;
            let decision = if early && !w.listened {
                self.life.governor.on_failed_start(now)
            } else {
                self.life.governor.on_crash(now)
            };
            match decision {
                RespawnDecision::After(ms) => self.schedule_respawn(lp, ms, w.env, w.figures.restarts),
                RespawnDecision::Storm => {
                    // No respawn waits any more: the primary can end as soon
                    // as its last worker has.
                    for (t, ..) in std::mem::take(&mut self.life.respawn_timers) {
                        let _ = lp.close(t, None);
                    }
                    self.events.queue.push_back(Event::Storm);
                }
            }
        }
    }

    /// Starts the heartbeat timer (unreferenced) if it is not running.
    fn start_heartbeats(&mut self, lp: &mut Loop<D>) {
        let every = self.settings.heartbeat_interval;
        // Node's protocol has no heartbeat (see `WorkerProtocol::Node`).
        if every.is_zero() || self.life.heartbeat_timer.is_some() || self.speaks_node() {
            return;
        }
        let Ok(t) = lp.timer_init() else { return };
        if lp.unref_handle(t).is_ok() && lp.timer_start(t, every, every, &self.cbs.heartbeat).is_ok() {
            self.life.heartbeat_timer = Some(t);
        } else {
            let _ = lp.close(t, None);
        }
    }

    /// A heartbeat tick: a worker silent past the timeout is killed and its
    /// unacknowledged connections go to others now; the rest are asked.
    fn heartbeat_tick(&mut self, lp: &mut Loop<D>) {
        let now = lp.now();
        let timeout = self.settings.heartbeat_timeout.as_millis() as u64;
        self.life.heartbeat_seq = self.life.heartbeat_seq.wrapping_add(1);
        let seq = self.life.heartbeat_seq;
        let mut i = 0;
        while i < self.workers.len() {
            let w = &self.workers[i];
            i += 1;
            // A worker not online yet is the startup's business.
            if w.channel.is_none() || w.info.status == WorkerStatus::Starting {
                continue;
            }
            let id = w.info.id;
            if now.saturating_sub(w.last_heard) <= timeout {
                let _ = self.send_to(lp, id, &Frame::Heartbeat { seq, report: None });
                continue;
            }
            if let Some(p) = w.process {
                let _ = lp.process_kill(p, libc::SIGKILL);
            }
            let info = w.info();
            self.events.queue.push_back(Event::Unresponsive(info));
            self.channel_closed(lp, id);
        }
        self.check_memory(lp);
    }

    fn schedule_respawn(&mut self, lp: &mut Loop<D>, ms: u64, env: WorkerEnv, restarts: u32) {
        let Ok(t) = lp.timer_init() else { return };
        if lp.timer_start(t, Duration::from_millis(ms), Duration::ZERO, &self.cbs.respawn).is_ok() {
            self.life.respawn_timers.push((t, env, restarts));
        } else {
            let _ = lp.close(t, None);
        }
    }
}

/// The exit callback of every worker process (its data word is the id).
pub(super) fn on_worker_exit<D: PrimaryData>(pid: PrimaryId) -> OnExit<D> {
    OnExit::new(move |lp, d: &mut D, process, code, signal| {
        let _ = lp.close(process, None);
        let Some(p) = d.primary_by_id(pid) else { return };
        let id = lp.data(process).unwrap_or(0) as WorkerId;
        p.worker_exited(lp, id, code, signal);
        drain_events(lp, d, pid);
        let Some(p) = d.primary_by_id(pid) else { return };
        // `disconnect`'s callbacks run on a later loop turn.
        p.check_shutdown_done();
        p.schedule_drain(lp);
        p.release_if_idle(lp);
    })
}

/// A respawn timer fired: fork a replacement (unless a disconnect began).
pub(super) fn on_respawn<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, t| {
        let _ = lp.close(t, None);
        let Some(p) = d.primary_by_id(pid) else { return };
        let Some(i) = p.life.respawn_timers.iter().position(|(x, ..)| *x == t) else { return };
        let (_, env, restarts) = p.life.respawn_timers.swap_remove(i);
        if !p.life.shutting_down && !p.life.governor.stormed() {
            if let Ok(new) = p.fork_worker(lp, env) {
                p.inherit_restarts(restarts, new);
            }
            drain_events(lp, d, pid);
        }
    })
}

/// A disconnecting worker's drain deadline passed: it is killed.
pub(super) fn on_drain_deadline<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, t| {
        let _ = lp.close(t, None);
        let Some(p) = d.primary_by_id(pid) else { return };
        let id = lp.data(t).unwrap_or(0) as WorkerId;
        let Some(w) = p.entry_mut(id).filter(|w| w.drain_timer == Some(t)) else { return };
        w.drain_timer = None;
        let _ = p.kill(lp, id, libc::SIGKILL);
    })
}

/// A rolling replacement did not start in time: it is killed, and counts as
/// a failed start (the worker it was to replace stays).
pub(super) fn on_startup_deadline<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, t| {
        let _ = lp.close(t, None);
        let Some(p) = d.primary_by_id(pid) else { return };
        let id = lp.data(t).unwrap_or(0) as WorkerId;
        let Some(w) = p.entry_mut(id).filter(|w| w.startup_timer == Some(t)) else { return };
        w.startup_timer = None;
        if p.life.governor.on_failed_start(lp.now()) == RespawnDecision::Storm {
            p.events.queue.push_back(Event::Storm);
        }
        let _ = p.kill(lp, id, libc::SIGKILL);
        drain_events(lp, d, pid);
    })
}

/// The heartbeat timer fired.
pub(super) fn on_heartbeat<D: PrimaryData>(pid: PrimaryId) -> OnTimer<D> {
    OnTimer::new(move |lp, d: &mut D, _t| {
        let Some(p) = d.primary_by_id(pid) else { return };
        p.heartbeat_tick(lp);
        drain_events(lp, d, pid);
    })
}
