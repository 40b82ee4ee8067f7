//! Listen routing (Node's `queryServer`): a worker's listen asks the
//! primary, which keys listeners by address, index, flags and policy, binds
//! each once, and replies with the real port (port 0 gives every worker the
//! same port) or the bind error (and keeps no entry, so a retry binds
//! again). Under `rr` the primary accepts on the listener itself (see
//! `handoff`); under `shared` it sends the listening socket; under
//! `reuseport` a listen on port 0 asks too: the primary reserves the port
//! with a bound, non-listening `SO_REUSEPORT` socket and the workers bind
//! their own sockets to it.
//!
//! A listener whose workers are all gone (they died, or left in a
//! disconnect or a rolling restart) stays open, with its port, while the
//! cluster runs, so that their replacements get the same port (under `rr`
//! connections that come meanwhile are closed, under `shared` they wait in
//! the backlog). It closes when the last worker closes its server itself,
//! and at [`Primary::disconnect`].

use super::{Primary, PrimaryData};
use crate::proto::{Frame, ListenAddress, ListenFlags, ListenKey, SocketType};
use crate::schedule::{RoundRobin, WorkerId};
use crate::settings::SchedPolicy;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::BorrowedFd;
use uvring::{HandleId, Loop, Result, TcpListener, TcpSocket, TCP_IPV6ONLY, TCP_REUSEPORT};

/// The listeners the primary holds for its workers.
pub(super) struct Routing {
    listeners: Vec<Listener>,
    next_listener_id: u32,
}

enum ListenerMode {
    /// The primary accepts on the listener and hands connections over.
    RoundRobin(RoundRobin, TcpListener),
    /// The socket listens (outside the loop) and its members accept on
    /// copies of it.
    Shared(Vec<WorkerId>, TcpSocket),
    /// `reuseport`, port 0: a bound, non-listening `SO_REUSEPORT` socket
    /// holds the port; each member listens on a socket of its own.
    Reserved(Vec<WorkerId>, TcpSocket),
}

impl ListenerMode {
    fn policy(&self) -> SchedPolicy {
        match self {
            ListenerMode::RoundRobin(..) => SchedPolicy::RoundRobin,
            ListenerMode::Shared(..) => SchedPolicy::Shared,
            ListenerMode::Reserved(..) => SchedPolicy::ReusePort,
        }
    }
}

struct Listener {
    id: u32,
    requested: SocketAddr,
    index: u32,
    flags: u32,
    port: u16,
    mode: ListenerMode,
}

impl Listener {
    fn remove_member(&mut self, w: WorkerId) {
        match &mut self.mode {
            ListenerMode::RoundRobin(rr, _) => {
                rr.remove(w);
            }
            ListenerMode::Shared(v, _) | ListenerMode::Reserved(v, _) => v.retain(|&x| x != w),
        }
    }

    fn is_empty(&self) -> bool {
        match &self.mode {
            ListenerMode::RoundRobin(rr, _) => rr.is_empty(),
            ListenerMode::Shared(v, _) | ListenerMode::Reserved(v, _) => v.is_empty(),
        }
    }

    /// The loop handle of its socket.
    fn handle(&self) -> HandleId {
        match self.mode {
            ListenerMode::RoundRobin(_, l) => l.id(),
            ListenerMode::Shared(_, s) | ListenerMode::Reserved(_, s) => s.id(),
        }
    }
}

impl Routing {
    pub(super) fn new() -> Routing {
        Routing { listeners: Vec::new(), next_listener_id: 1 }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    /// The rotation of round-robin listener `listener_id`, if it is one.
    pub(super) fn round_robin(&mut self, listener_id: u32) -> Option<&mut RoundRobin> {
        match &mut self.listeners.iter_mut().find(|l| l.id == listener_id)?.mode {
            ListenerMode::RoundRobin(rr, _) => Some(rr),
            ListenerMode::Shared(..) | ListenerMode::Reserved(..) => None,
        }
    }
}

impl<D> Primary<D> {
    /// Listeners the primary holds open for workers.
    pub fn listener_count(&self) -> usize {
        self.routing.listeners.len()
    }

    /// Removes `w` from `listener_id` (it closed its server); closes the
    /// listener when it has no member left, unless `w` is leaving (a
    /// disconnect or a rolling restart: its replacement keeps the port).
    pub(super) fn leave_listener(&mut self, lp: &mut Loop<D>, listener_id: u32, w: WorkerId) {
        let leaving = self.entry(w).is_some_and(|e| e.disconnecting);
        let keep = leaving && self.keeps_listeners(w);
        let listeners = &mut self.routing.listeners;
        let Some(i) = listeners.iter().position(|l| l.id == listener_id) else { return };
        listeners[i].remove_member(w);
        if listeners[i].is_empty() && !keep {
            let l = listeners.swap_remove(i);
            let _ = lp.close(l.handle(), None);
        }
    }

    /// Removes `w` from every listener (its channel closed). A listener
    /// left empty stays open while the cluster runs (see the module docs).
    pub(super) fn leave_all_listeners(&mut self, lp: &mut Loop<D>, w: WorkerId) {
        let keep = self.keeps_listeners(w);
        let listeners = &mut self.routing.listeners;
        let mut i = 0;
        while i < listeners.len() {
            listeners[i].remove_member(w);
            if listeners[i].is_empty() && !keep {
                let l = listeners.swap_remove(i);
                let _ = lp.close(l.handle(), None);
            } else {
                i += 1;
            }
        }
    }
}

impl<D> Primary<D> {
    /// Whether a listener that `leaving` leaves empty stays open for a
    /// replacement: the cluster is not shutting down, and one is coming
    /// (respawning is on, a rolling restart runs, or another worker that
    /// is not leaving may listen on it).
    pub(super) fn keeps_listeners(&self, leaving: WorkerId) -> bool {
        !self.life.shutting_down
            && (self.settings.respawn.enabled
                || self.rolling.is_some()
                || self.workers.iter().any(|e| e.info.id != leaving && !e.disconnecting && e.channel.is_some()))
    }

    /// Closes every listener no worker is a member of (the cluster is
    /// shutting down, or no replacement is coming).
    pub(super) fn close_idle_listeners(&mut self, lp: &mut Loop<D>) {
        let listeners = &mut self.routing.listeners;
        let mut i = 0;
        while i < listeners.len() {
            if listeners[i].is_empty() {
                let l = listeners.swap_remove(i);
                let _ = lp.close(l.handle(), None);
            } else {
                i += 1;
            }
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Answers a worker's listen query: joins or creates the listener for
    /// the key, or reports the bind error.
    pub(super) fn query_server(&mut self, lp: &mut Loop<D>, id: WorkerId, seq: u32, key: &ListenKey<'_>) {
        let Some(ch) = self.entry(id).and_then(|w| w.channel) else { return };
        let reply_err = |p: &mut Primary<D>, lp: &mut Loop<D>, errno: i32| {
            let frame = Frame::QueryServerReply { seq, errno, port: 0, listener_id: 0, listener_fd: false };
            let _ = p.writer.send(lp, ch, &frame);
        };
        let ip: IpAddr = match key.address {
            ListenAddress::V4(ip) => ip.into(),
            ListenAddress::V6(ip) => ip.into(),
            ListenAddress::Unix(_) => return reply_err(self, lp, libc::EAFNOSUPPORT),
        };
        if key.socket_type != SocketType::Tcp {
            return reply_err(self, lp, libc::EAFNOSUPPORT);
        }
        let requested = SocketAddr::new(ip, key.port);
        let flags = if key.flags.contains(ListenFlags::IPV6_ONLY) { TCP_IPV6ONLY } else { 0 };
        let policy = self.settings.policy;
        let shared = policy == SchedPolicy::Shared;
        let existing = self.routing.listeners.iter().position(|l| {
            l.requested == requested && l.index == key.index && l.flags == flags && l.mode.policy() == policy
        });
        let i = match existing {
            Some(i) => i,
            None => {
                let backlog = i32::try_from(key.backlog).unwrap_or(i32::MAX);
                match self.open_listener(lp, requested, flags, backlog, policy) {
                    Ok((mode, port)) => {
                        let lid = self.routing.next_listener_id;
                        self.routing.next_listener_id = lid.wrapping_add(1).max(1);
                        let l = Listener { id: lid, requested, index: key.index, flags, port, mode };
                        let _ = lp.set_data(l.handle(), lid as usize);
                        self.routing.listeners.push(l);
                        self.routing.listeners.len() - 1
                    }
                    Err(e) => return reply_err(self, lp, e.errno().unwrap_or(libc::EINVAL)),
                }
            }
        };
        let l = &mut self.routing.listeners[i];
        let shared_socket = match &mut l.mode {
            ListenerMode::RoundRobin(rr, _) => {
                rr.add(id);
                None
            }
            ListenerMode::Shared(v, socket) => {
                if !v.contains(&id) {
                    v.push(id);
                }
                Some(*socket)
            }
            ListenerMode::Reserved(v, _) => {
                if !v.contains(&id) {
                    v.push(id);
                }
                None
            }
        };
        let (lid, port) = (l.id, l.port);
        let frame = Frame::QueryServerReply { seq, errno: 0, port, listener_id: lid, listener_fd: shared };
        let sent = match shared_socket {
            Some(socket) => self.writer.send_handle(lp, ch, &frame, socket),
            None => self.writer.send(lp, ch, &frame),
        };
        if sent.is_err() {
            self.leave_listener(lp, lid, id);
        }
    }

    /// Binds a listener for `addr`: under `shared` a socket that listens
    /// outside the loop (the workers accept on copies of it), under
    /// `reuseport` one that only holds the port (bound with `SO_REUSEPORT`,
    /// not listening: the workers bind theirs to the same port), else one
    /// the loop accepts on for round robin. Returns it with its real port.
    fn open_listener(
        &mut self,
        lp: &mut Loop<D>,
        addr: SocketAddr,
        flags: u32,
        backlog: i32,
        policy: SchedPolicy,
    ) -> Result<(ListenerMode, u16)> {
        let shared = policy == SchedPolicy::Shared;
        let reserve = policy == SchedPolicy::ReusePort;
        // An inherited socket (systemd, an upgrade) listens already: it
        // is taken instead of a bind (`upgrade.rs`).
        let s = match self.inherited_socket(lp, addr)? {
            Some(s) => s,
            None => {
                let s = lp.tcp_init()?;
                let bind_flags = if reserve { flags | TCP_REUSEPORT } else { flags };
                if let Err(e) = lp.tcp_bind(s, addr, bind_flags) {
                    let _ = lp.close(s, None);
                    return Err(e);
                }
                s
            }
        };
        if reserve {
            return match lp.tcp_getsockname(s) {
                Ok(a) => Ok((ListenerMode::Reserved(Vec::new(), s), a.port())),
                Err(e) => {
                    let _ = lp.close(s, None);
                    Err(e)
                }
            };
        }
        if shared {
            // The workers accept; the primary only makes the port listen
            // now, so a competing bind fails at once.
            let res = lp.fileno(s).and_then(|fd| {
                // SAFETY: `fd` is the socket of `s`, which the loop owns and
                // keeps open at least until `s` is closed, after this call.
                uvring::os::listen(unsafe { BorrowedFd::borrow_raw(fd) }, backlog)?;
                lp.tcp_getsockname(s).map(|a| a.port())
            });
            return match res {
                Ok(port) => Ok((ListenerMode::Shared(Vec::new(), s), port)),
                Err(e) => {
                    let _ = lp.close(s, None);
                    Err(e)
                }
            };
        }
        let l = match lp.listen(s, backlog, &self.cbs.rr_connection) {
            Ok(l) => l,
            Err(e) => {
                let _ = lp.close(s, None);
                return Err(e);
            }
        };
        match lp.tcp_getsockname(l) {
            Ok(a) => Ok((ListenerMode::RoundRobin(RoundRobin::with_slack(self.settings.load_slack), l), a.port())),
            Err(e) => {
                let _ = lp.close(l, None);
                Err(e)
            }
        }
    }
}

impl<D> Primary<D> {
    /// The listening sockets an upgrade hands over (`rr` and `shared`):
    /// each one's handle, the address its workers asked for, and its
    /// `rr` listener (the primary accepts on it) if it is one.
    pub(super) fn handover_listeners(&self) -> Vec<(HandleId, SocketAddr, Option<TcpListener>)> {
        let mut out = Vec::new();
        for l in &self.routing.listeners {
            match l.mode {
                ListenerMode::RoundRobin(_, rr) => out.push((l.handle(), l.requested, Some(rr))),
                ListenerMode::Shared(..) => out.push((l.handle(), l.requested, None)),
                ListenerMode::Reserved(..) => {}
            }
        }
        out
    }
}
