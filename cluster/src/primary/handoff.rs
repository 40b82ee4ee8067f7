//! Round-robin hand-off: the primary accepts on its `rr` listeners, queues
//! the connections, and once per loop iteration (a check hook) sends each to
//! a worker chosen by its listener's [`RoundRobin`](crate::RoundRobin), in
//! batches of up to 16 fds per frame. A connection stays the primary's
//! (numbered, in the worker's `unacked`) until the worker acknowledges it;
//! a refusal, or the worker's channel closing first, re-routes it (see the
//! module docs of `primary`).

use super::codec::ChannelWriter;
use super::{drain_events, ClusterStats, Primary, PrimaryData, PrimaryId, WorkerEntry};
use crate::proto::{Frame, LOAD_EXEMPT, MAX_FDS_PER_FRAME};
use crate::schedule::WorkerId;
use crate::settings::SchedPolicy;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use uvring::{
    Error, HandleId, Hook, HookKind, ListenerHandle, Loop, OnClose, OnConnection, OnHook, PipeStream, Result,
};

/// A connection refused or orphaned this many times is closed.
const MAX_ATTEMPTS: u8 = 8;

/// The hand-off's own state.
pub(super) struct Handoff {
    /// Accepted connections waiting for the dispatch hook.
    pending: VecDeque<PendingConn>,
    /// Unacknowledged connections of closed channels, until the loop has
    /// freed the channel (see the module docs of `primary`).
    pub(super) limbo: Vec<(PipeStream, PendingConn)>,
    /// The check hook that dispatches `pending`.
    dispatch_hook: Option<Hook>,
    pub(super) stats: ClusterStats,
}

impl Handoff {
    pub(super) fn new() -> Handoff {
        Handoff {
            pending: VecDeque::with_capacity(256),
            limbo: Vec::new(),
            dispatch_hook: None,
            stats: ClusterStats::default(),
        }
    }

    /// Whether no connection is waiting anywhere.
    pub(super) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.limbo.is_empty()
    }
}

/// A connection waiting for a worker.
pub(super) struct PendingConn {
    listener_id: u32,
    attempts: u8,
    /// Workers that refused it (one at its fd limit does).
    refusals: u8,
    exclude: Option<WorkerId>,
    pub(super) fd: OwnedFd,
}

/// A connection sent to a worker and not yet acknowledged.
pub(super) struct Unacked {
    seq: u64,
    listener_id: u32,
    attempts: u8,
    refusals: u8,
    pub(super) fd: OwnedFd,
}

/// One worker's hand-off state (part of its table entry).
pub(super) struct WorkerConns {
    pub(super) unacked: VecDeque<Unacked>,
    next_seq: u64,
    pub(super) reported_load: u32,
    /// `shared`: the worker's load when it joined the balance, less the
    /// least load then (so it joins level with the least-loaded worker),
    /// and the limit last sent to it (see `Primary::rebalance`).
    share_base: Option<u32>,
    share_sent: Option<u32>,
    /// `shared`: load reports received from it (see `WorkerStats`).
    pub(super) load_reports: u64,
    /// Connections of the batch being built: the last `batch_len` entries
    /// of `unacked`.
    batch_len: usize,
    batch_listener: u32,
    batch_first_seq: u64,
    /// Connections sent to the worker, and of those acknowledged as
    /// accepted or refused (its figures, see `WorkerStats`).
    pub(super) handed_off: u64,
    pub(super) acked: u64,
    pub(super) refused: u64,
}

impl WorkerConns {
    pub(super) fn new() -> WorkerConns {
        WorkerConns {
            unacked: VecDeque::with_capacity(64),
            next_seq: 1,
            reported_load: 0,
            share_base: None,
            share_sent: None,
            load_reports: 0,
            batch_len: 0,
            batch_listener: 0,
            batch_first_seq: 0,
            handed_off: 0,
            acked: 0,
            refused: 0,
        }
    }
}

impl WorkerEntry {
    fn load(&self) -> Option<u32> {
        if self.channel.is_none() || self.disconnecting {
            return None;
        }
        // Acknowledged connections count through the worker's next report
        // (counting them here too would turn throughput into load).
        Some(self.conns.unacked.len() as u32 + self.conns.reported_load)
    }
}

/// The `on_connection` of every `rr` listener (its data word is the
/// listener id): takes every waiting connection as a bare fd.
pub(super) fn on_rr_connection<D: PrimaryData, L: ListenerHandle>(pid: PrimaryId) -> OnConnection<D, L> {
    OnConnection::new(move |lp, d: &mut D, server: L, res| {
        if res.is_err() {
            // EMFILE and friends: the engine backs off; nothing was accepted.
            return;
        }
        let Some(p) = d.primary_by_id(pid) else { return };
        let listener_id = lp.data(server).unwrap_or(0) as u32;
        while let Ok(fd) = lp.accept_fd(server) {
            p.handoff.pending.push_back(PendingConn { listener_id, attempts: 0, refusals: 0, exclude: None, fd });
        }
    })
}

/// The dispatch hook (check phase): hands the queued connections out.
pub(super) fn on_dispatch<D: PrimaryData>(pid: PrimaryId) -> OnHook<D> {
    OnHook::new(move |lp, d: &mut D, _h| {
        let Some(p) = d.primary_by_id(pid) else { return };
        if p.dispatch(lp) {
            drain_events(lp, d, pid);
        }
    })
}

/// A closed channel is freed (nothing of it is left in the kernel): its
/// connections in `limbo` can go to other workers.
pub(super) fn on_channel_freed<D: PrimaryData>(pid: PrimaryId) -> OnClose<D> {
    OnClose::new(move |_lp, d: &mut D, h| {
        let Some(p) = d.primary_by_id(pid) else { return };
        let handoff = &mut p.handoff;
        let mut i = 0;
        while i < handoff.limbo.len() {
            if HandleId::from(handoff.limbo[i].0) == h {
                let (_, conn) = handoff.limbo.swap_remove(i);
                handoff.pending.push_back(conn);
            } else {
                i += 1;
            }
        }
    })
}

impl<D> Primary<D> {
    /// Round-robin counters.
    pub fn stats(&self) -> ClusterStats {
        self.handoff.stats
    }

    /// Hands every queued connection to a worker; see the module docs.
    /// Returns whether a worker's channel broke (its events are queued).
    fn dispatch(&mut self, lp: &mut Loop<D>) -> bool {
        if self.handoff.pending.is_empty() {
            return false;
        }
        let mut broken: [WorkerId; 8] = [0; 8];
        let mut nbroken = 0;
        // A connection refused more times than there are connected workers
        // is closed (and counted), not sent round again: they are all at
        // their limits. (A worker that refused and then left counts no
        // more; the margin of one keeps its refusals from closing what the
        // others would take.)
        let routable = self.workers.iter().filter(|e| e.channel.is_some()).count();
        while let Some(conn) = self.handoff.pending.pop_front() {
            let stats = &mut self.handoff.stats;
            if conn.attempts >= MAX_ATTEMPTS || usize::from(conn.refusals) > routable {
                stats.closed_unroutable += 1;
                continue;
            }
            let Some(rr) = self.routing.round_robin(conn.listener_id) else {
                stats.closed_unroutable += 1;
                continue;
            };
            let workers = &self.workers;
            let load = |w: WorkerId| workers.iter().find(|e| e.info.id == w).and_then(WorkerEntry::load);
            let Some(wid) = rr.choose(load, conn.exclude) else {
                stats.closed_unroutable += 1;
                continue;
            };
            let Some(w) = self.workers.iter_mut().find(|e| e.info.id == wid) else { continue };
            let c = &mut w.conns;
            let full = c.batch_len >= MAX_FDS_PER_FRAME;
            let switch = c.batch_len > 0 && (c.batch_listener != conn.listener_id || full);
            if switch && flush_batch(&mut self.writer, lp, w).is_err() && nbroken < broken.len() {
                broken[nbroken] = wid;
                nbroken += 1;
            }
            let c = &mut w.conns;
            let seq = c.next_seq;
            c.next_seq += 1;
            if c.batch_len == 0 {
                c.batch_listener = conn.listener_id;
                c.batch_first_seq = seq;
            }
            c.batch_len += 1;
            c.unacked.push_back(Unacked {
                seq,
                listener_id: conn.listener_id,
                attempts: conn.attempts,
                refusals: conn.refusals,
                fd: conn.fd,
            });
        }
        for w in self.workers.iter_mut() {
            if w.conns.batch_len > 0 && flush_batch(&mut self.writer, lp, w).is_err() && nbroken < broken.len() {
                broken[nbroken] = w.info.id;
                nbroken += 1;
            }
        }
        // A worker whose channel cannot take the frame is treated as gone:
        // its unacknowledged connections go to the others on the next turn.
        for &id in &broken[..nbroken] {
            self.channel_closed(lp, id);
        }
        nbroken > 0
    }

    /// Worker `id` acknowledged connections `conn_seq ..+ count`.
    pub(super) fn on_ack(&mut self, lp: &mut Loop<D>, id: WorkerId, conn_seq: u64, count: u32, accepted: bool) {
        let Some(w) = self.workers.iter_mut().find(|w| w.info.id == id) else { return };
        let (handoff, unacked) = (&mut self.handoff, &mut w.conns.unacked);
        let end = conn_seq.saturating_add(u64::from(count));
        while unacked.front().is_some_and(|u| u.seq >= conn_seq && u.seq < end) {
            let Some(u) = unacked.pop_front() else { break };
            if accepted {
                handoff.stats.handed_off += 1;
                w.conns.acked += 1;
                // The worker has its own copy; ours is closed by the loop
                // (with io_uring's `close` feature, in its next submission).
                lp.close_fd(u.fd);
            } else {
                handoff.stats.refused += 1;
                w.conns.refused += 1;
                handoff.pending.push_back(PendingConn {
                    listener_id: u.listener_id,
                    attempts: u.attempts.saturating_add(1),
                    refusals: u.refusals.saturating_add(1),
                    exclude: Some(id),
                    fd: u.fd,
                });
            }
        }
    }

    /// Worker `id` reported its open connections (under `shared`: its
    /// load, open plus accepted connections, see `rebalance`).
    pub(super) fn on_load(&mut self, lp: &mut Loop<D>, id: WorkerId, open_connections: u32) {
        let shared = self.settings.policy == SchedPolicy::Shared;
        if shared && self.entry(id).is_some_and(|w| w.conns.share_base.is_none()) {
            let least = self.least_share(Some(id)).unwrap_or(0);
            if let Some(w) = self.entry_mut(id) {
                w.conns.share_base = Some(open_connections.wrapping_sub(least));
            }
        }
        if let Some(w) = self.entry_mut(id) {
            w.conns.reported_load = open_connections;
            w.conns.load_reports += u64::from(shared);
        }
        if shared {
            self.rebalance(lp);
        }
    }

    /// `shared`: a worker's load relative to its base.
    fn share_of(w: &WorkerEntry) -> Option<u32> {
        let base = w.conns.share_base?;
        (w.channel.is_some() && !w.disconnecting).then(|| w.conns.reported_load.wrapping_sub(base))
    }

    /// The least load among the balanced workers (but `except`).
    fn least_share(&self, except: Option<WorkerId>) -> Option<u32> {
        self.workers.iter().filter(|w| Some(w.info.id) != except).filter_map(Self::share_of).min()
    }

    /// `shared`: tells every balanced worker the most it may hold, the
    /// least-loaded worker's load in its own units (see the worker's
    /// `Share`), when that changed. Run after each load report and when a
    /// worker leaves (the least load may rise).
    ///
    /// One least-loaded worker (the first in the table) is told its limit
    /// plus [`LOAD_EXEMPT`]: it does not pause while its reports are
    /// rate-limited (the worker's `Share`), however stale they are, so
    /// some worker always accepts.
    pub(super) fn rebalance(&mut self, lp: &mut Loop<D>) {
        if self.settings.policy != SchedPolicy::Shared {
            return;
        }
        let Some(least) = self.least_share(None) else { return };
        let exempt = self.workers.iter().find(|w| Self::share_of(w) == Some(least)).map(|w| w.info.id);
        for w in self.workers.iter_mut() {
            let (Some(base), Some(ch)) = (w.conns.share_base, w.channel) else { continue };
            if w.disconnecting {
                continue;
            }
            let limit = least.wrapping_add(base);
            let limit = if Some(w.info.id) == exempt { limit.wrapping_add(LOAD_EXEMPT) } else { limit };
            if w.conns.share_sent != Some(limit) {
                w.conns.share_sent = Some(limit);
                let _ = self.writer.send(lp, ch, &Frame::Load { open_connections: limit });
            }
        }
    }

    /// Worker `id`'s channel `ch` is closing: its unacknowledged
    /// connections wait in `limbo` for the channel to be freed (a send
    /// queued on it may still name them), then go to other workers.
    pub(super) fn orphan_unacked(&mut self, id: WorkerId, ch: PipeStream) {
        let Some(w) = self.workers.iter_mut().find(|w| w.info.id == id) else { return };
        w.conns.batch_len = 0;
        while let Some(u) = w.conns.unacked.pop_front() {
            self.handoff.stats.redistributed += 1;
            let conn = PendingConn {
                listener_id: u.listener_id,
                attempts: u.attempts.saturating_add(1),
                refusals: u.refusals,
                exclude: Some(id),
                fd: u.fd,
            };
            self.handoff.limbo.push((ch, conn));
        }
    }

    /// Closes the dispatch hook (nothing is left to hand out).
    pub(super) fn release_dispatch_hook(&mut self, lp: &mut Loop<D>) {
        if let Some(h) = self.handoff.dispatch_hook.take() {
            let _ = lp.close(h, None);
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Starts the dispatch hook (before the first fork).
    pub(super) fn ensure_dispatch_hook(&mut self, lp: &mut Loop<D>) -> Result<()> {
        if self.handoff.dispatch_hook.is_some() {
            return Ok(());
        }
        let h = lp.hook_init(HookKind::Check)?;
        lp.hook_start(h, &self.cbs.dispatch)?;
        lp.unref_handle(h)?;
        self.handoff.dispatch_hook = Some(h);
        Ok(())
    }
}

fn flush_batch<D>(writer: &mut ChannelWriter, lp: &mut Loop<D>, w: &mut WorkerEntry) -> Result<()> {
    let c = &mut w.conns;
    let n = c.batch_len.min(MAX_FDS_PER_FRAME);
    c.batch_len = 0;
    let mut fds: [RawFd; MAX_FDS_PER_FRAME] = [-1; MAX_FDS_PER_FRAME];
    let first = c.unacked.len() - n;
    for (dst, u) in fds.iter_mut().zip(c.unacked.range(first..)) {
        *dst = u.fd.as_raw_fd();
    }
    let frame =
        Frame::NewConnection { listener_id: c.batch_listener, first_conn_seq: c.batch_first_seq, count: n as u8 };
    let sent = match w.channel {
        // SAFETY: the fds belong to the batch's entries in `unacked`, which
        // are closed only once this worker acknowledges them (it received
        // them: the send is done) or, when the channel closes first, after
        // the loop has freed the channel (`limbo`); see the module docs of
        // `primary`. On error nothing was queued.
        Some(ch) => unsafe { writer.send_fds_borrowed(lp, ch, &frame, &fds[..n]) },
        None => Err(Error::ENOTCONN),
    };
    if sent.is_ok() {
        w.conns.handed_off += n as u64;
    }
    sent
}
