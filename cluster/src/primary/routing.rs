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
//! A UDP bind (Node's `SharedHandle` for `udp4`/`udp6`) is shared under
//! every policy: the primary binds the socket once per key and sends a copy
//! to every worker that asks; each receives on it, and the kernel hands
//! each datagram to one of them. The primary never receives on it; its
//! copy goes when the last worker closes theirs.
//!
//! A pipe listen on a Unix path is routed like TCP: under `rr` the primary
//! accepts and hands the connections over, under `shared` (and
//! `reuseport`, which Unix sockets do not have) it sends the listening
//! socket. The path is bound once; the primary's pipe removes it from the
//! filesystem when it closes, after the last worker (as libuv does for a
//! pipe it bound). An abstract name (a leading NUL) is the bytes given.
//!
//! A listen on an fd (Node's `listen({fd})` in a worker) names a socket in
//! the primary's fd table by number: the primary listens on a duplicate
//! of it (the fd itself stays open, the caller's) under `rr`, or shares it
//! under the other policies. TCP sockets only.
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
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use uvring::{
    FdBatch, HandleId, Loop, OnConnection, Result, SocketHandle, TcpListener, TcpSocket, Udp, TCP_IPV6ONLY,
    TCP_REUSEPORT, UDP_IPV6ONLY, UDP_REUSEADDR, UDP_REUSEPORT,
};

/// The listeners the primary holds for its workers.
pub(super) struct Routing {
    listeners: Vec<Listener>,
    next_listener_id: u32,
}

enum ListenerMode {
    /// The primary accepts on the listener (TCP or pipe) and hands
    /// connections over; the `TcpListener` is kept for a TCP one (an
    /// upgrade stops accepting on it).
    RoundRobin(RoundRobin, HandleId, Option<TcpListener>),
    /// The socket (TCP or pipe) listens, outside the loop, and its members
    /// accept on copies of it.
    Shared(Vec<WorkerId>, HandleId),
    /// `reuseport`, port 0: a bound, non-listening `SO_REUSEPORT` socket
    /// holds the port; each member listens on a socket of its own.
    Reserved(Vec<WorkerId>, TcpSocket),
    /// A bound UDP socket (whatever the policy): every member receives on
    /// a copy of it.
    Dgram(Vec<WorkerId>, Udp),
}

impl ListenerMode {
    /// Whether a listener in this mode serves a query of `socket_type`
    /// under `policy`.
    fn serves(&self, socket_type: SocketType, policy: SchedPolicy, fd: bool) -> bool {
        match self {
            ListenerMode::Dgram(..) => socket_type == SocketType::Udp,
            ListenerMode::RoundRobin(..) => socket_type != SocketType::Udp && policy == SchedPolicy::RoundRobin,
            // Unix sockets have no SO_REUSEPORT: a pipe is shared then.
            ListenerMode::Shared(..) => match socket_type {
                // An fd is one socket: shared under `reuseport` too.
                SocketType::Tcp => policy == SchedPolicy::Shared || (fd && policy == SchedPolicy::ReusePort),
                SocketType::Pipe => policy != SchedPolicy::RoundRobin,
                SocketType::Udp => false,
            },
            ListenerMode::Reserved(..) => socket_type == SocketType::Tcp && policy == SchedPolicy::ReusePort,
        }
    }
}

/// What a listener listens on, as the workers asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    Ip(SocketAddr),
    Unix(PathBuf),
    Fd(i32),
}

struct Listener {
    id: u32,
    requested: Address,
    index: u32,
    flags: u32,
    port: u16,
    mode: ListenerMode,
}

impl Listener {
    fn remove_member(&mut self, w: WorkerId) {
        match &mut self.mode {
            ListenerMode::RoundRobin(rr, ..) => {
                rr.remove(w);
            }
            ListenerMode::Shared(v, _) | ListenerMode::Reserved(v, _) | ListenerMode::Dgram(v, _) => {
                v.retain(|&x| x != w)
            }
        }
    }

    fn is_empty(&self) -> bool {
        match &self.mode {
            ListenerMode::RoundRobin(rr, ..) => rr.is_empty(),
            ListenerMode::Shared(v, _) | ListenerMode::Reserved(v, _) | ListenerMode::Dgram(v, _) => v.is_empty(),
        }
    }

    /// The loop handle of its socket.
    fn handle(&self) -> HandleId {
        match self.mode {
            ListenerMode::RoundRobin(_, h, _) | ListenerMode::Shared(_, h) => h,
            ListenerMode::Reserved(_, s) => s.id(),
            ListenerMode::Dgram(_, u) => u.id(),
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
            ListenerMode::RoundRobin(rr, ..) => Some(rr),
            ListenerMode::Shared(..) | ListenerMode::Reserved(..) | ListenerMode::Dgram(..) => None,
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
        let requested = match key.address {
            ListenAddress::V4(ip) => Address::Ip(SocketAddr::new(IpAddr::V4(ip), key.port)),
            ListenAddress::V6(ip) => Address::Ip(SocketAddr::new(IpAddr::V6(ip), key.port)),
            ListenAddress::Unix(path) => Address::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(path))),
            // At most i32::MAX (the decoder checks).
            ListenAddress::Fd(fd) => Address::Fd(i32::try_from(fd).unwrap_or(-1)),
        };
        let fd = matches!(requested, Address::Fd(_));
        let flags = match key.socket_type {
            SocketType::Tcp if key.flags.contains(ListenFlags::IPV6_ONLY) => TCP_IPV6ONLY,
            SocketType::Tcp | SocketType::Pipe => 0,
            SocketType::Udp => udp_flags(key.flags),
        };
        let policy = self.settings.policy;
        let existing = self.routing.listeners.iter().position(|l| {
            l.requested == requested
                && l.index == key.index
                && l.flags == flags
                && l.mode.serves(key.socket_type, policy, fd)
        });
        let i = match existing {
            Some(i) => i,
            None => {
                let backlog = i32::try_from(key.backlog).unwrap_or(i32::MAX);
                let opened = match (&requested, key.socket_type) {
                    (Address::Ip(addr), SocketType::Udp) => open_dgram(lp, *addr, flags),
                    (Address::Ip(addr), _) => self.open_listener(lp, *addr, flags, backlog, policy),
                    (Address::Unix(path), _) => self.open_pipe_listener(lp, path, backlog, policy),
                    (&Address::Fd(fd), _) => self.open_fd_listener(lp, fd, backlog, policy),
                };
                match opened {
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
        let join = |v: &mut Vec<WorkerId>| {
            if !v.contains(&id) {
                v.push(id);
            }
        };
        // The socket that goes with the reply, if any.
        let socket: Option<HandleId> = match &mut l.mode {
            ListenerMode::RoundRobin(rr, ..) => {
                rr.add(id);
                None
            }
            ListenerMode::Shared(v, socket) => {
                join(v);
                Some(*socket)
            }
            ListenerMode::Reserved(v, _) => {
                join(v);
                None
            }
            ListenerMode::Dgram(v, u) => {
                join(v);
                Some(u.id())
            }
        };
        let (lid, port) = (l.id, l.port);
        let frame = Frame::QueryServerReply { seq, errno: 0, port, listener_id: lid, listener_fd: socket.is_some() };
        let sent = match socket {
            Some(h) => dup_socket(lp, h).and_then(|mut fds| self.writer.send_fds(lp, ch, &frame, &mut fds)),
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
                Ok(port) => Ok((ListenerMode::Shared(Vec::new(), s.id()), port)),
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
            Ok(a) => Ok((
                ListenerMode::RoundRobin(RoundRobin::with_slack(self.settings.load_slack), l.id(), Some(l)),
                a.port(),
            )),
            Err(e) => {
                let _ = lp.close(l, None);
                Err(e)
            }
        }
    }
}

impl<D: PrimaryData> Primary<D> {
    /// Listens on a duplicate of this process's fd `fd`, a TCP socket
    /// (bound, listening or not): under `rr` the loop accepts on it, else it
    /// is shared. `EBADF` if no such fd is open, `ENOTSOCK` if it is not a
    /// socket, `EINVAL` if it is not a TCP stream socket.
    fn open_fd_listener(
        &mut self,
        lp: &mut Loop<D>,
        fd: i32,
        backlog: i32,
        policy: SchedPolicy,
    ) -> Result<(ListenerMode, u16)> {
        let dup = uvring::os::dup_fd(fd)?;
        if !uvring::os::is_socket(dup.as_fd()) {
            return Err(uvring::Error::from_errno(libc::ENOTSOCK));
        }
        if !uvring::os::is_stream_socket(dup.as_fd()) {
            return Err(uvring::Error::EINVAL);
        }
        let port = uvring::os::local_addr(dup.as_fd())?.port();
        let s = lp.tcp_open(dup)?;
        let mode = if policy == SchedPolicy::RoundRobin {
            self.listen_round_robin(lp, s, backlog, &self.cbs.rr_connection)
        } else {
            listen_shared(lp, s, backlog)
        };
        Ok((mode?, port))
    }

    /// The loop listens on `s` and accepts for the `rr` hand-off (`s` is
    /// closed on error).
    fn listen_round_robin<S: SocketHandle>(
        &self,
        lp: &mut Loop<D>,
        s: S,
        backlog: i32,
        cb: &OnConnection<D, S::Listener>,
    ) -> Result<ListenerMode> {
        match lp.listen(s, backlog, cb) {
            Ok(l) => Ok(ListenerMode::RoundRobin(RoundRobin::with_slack(self.settings.load_slack), l.into(), None)),
            Err(e) => {
                let _ = lp.close(s, None);
                Err(e)
            }
        }
    }

    /// Binds a pipe listener on `path` (once for every worker): under `rr`
    /// the loop accepts on it for the hand-off, else it listens outside the
    /// loop and the workers accept on copies. Its close removes the path.
    fn open_pipe_listener(
        &mut self,
        lp: &mut Loop<D>,
        path: &Path,
        backlog: i32,
        policy: SchedPolicy,
    ) -> Result<(ListenerMode, u16)> {
        let s = lp.pipe_init(false)?;
        if let Err(e) = lp.pipe_bind(s, path) {
            let _ = lp.close(s, None);
            return Err(e);
        }
        let mode = if policy == SchedPolicy::RoundRobin {
            self.listen_round_robin(lp, s, backlog, &self.cbs.rr_pipe_connection)
        } else {
            listen_shared(lp, s, backlog)
        };
        Ok((mode?, 0))
    }
}

/// The socket `s` listens, outside the loop, for the workers to accept on
/// copies of it (`s` is closed on error).
fn listen_shared<D, S: SocketHandle>(lp: &mut Loop<D>, s: S, backlog: i32) -> Result<ListenerMode> {
    let res = lp.fileno(s).and_then(|fd| {
        // SAFETY: `fd` is the socket of `s`, which the loop owns and keeps
        // open at least until `s` is closed, after this call.
        uvring::os::listen(unsafe { BorrowedFd::borrow_raw(fd) }, backlog)
    });
    match res {
        Ok(()) => Ok(ListenerMode::Shared(Vec::new(), s.into())),
        Err(e) => {
            let _ = lp.close(s, None);
            Err(e)
        }
    }
}

/// The engine's UDP bind flags for a query's flags.
fn udp_flags(flags: ListenFlags) -> u32 {
    let mut out = 0;
    if flags.contains(ListenFlags::IPV6_ONLY) {
        out |= UDP_IPV6ONLY;
    }
    if flags.contains(ListenFlags::REUSE_ADDR) {
        out |= UDP_REUSEADDR;
    }
    if flags.contains(ListenFlags::REUSE_PORT) {
        out |= UDP_REUSEPORT;
    }
    out
}

/// Binds the UDP socket of a key (Node's `SharedHandle` for `udp4`/`udp6`);
/// returns it with its real port. The primary never receives on it.
fn open_dgram<D>(lp: &mut Loop<D>, addr: SocketAddr, flags: u32) -> Result<(ListenerMode, u16)> {
    let u = lp.udp_init()?;
    match lp.udp_bind(u, addr, flags).and_then(|()| lp.udp_getsockname(u)) {
        Ok(a) => Ok((ListenerMode::Dgram(Vec::new(), u), a.port())),
        Err(e) => {
            let _ = lp.close(u, None);
            Err(e)
        }
    }
}

/// A copy of the socket of handle `h`, to send to a worker.
fn dup_socket<D>(lp: &Loop<D>, h: HandleId) -> Result<FdBatch> {
    let fd = lp.fileno(h)?;
    if fd < 0 {
        return Err(uvring::Error::EBADF);
    }
    // SAFETY: `fd` is the socket of `h`, which the loop owns and keeps open
    // at least until `h` is closed, after this call.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned().map_err(uvring::Error::from)?;
    let mut batch = FdBatch::new();
    batch.push(dup).map_err(|_| uvring::Error::EINVAL)?;
    Ok(batch)
}

impl<D> Primary<D> {
    /// The listening sockets an upgrade hands over (TCP on an address,
    /// `rr` and `shared`): each one's handle, the address its workers asked
    /// for, and its `rr` listener (the primary accepts on it) if it is one.
    pub(super) fn handover_listeners(&self) -> Vec<(HandleId, SocketAddr, Option<TcpListener>)> {
        let mut out = Vec::new();
        for l in &self.routing.listeners {
            let Address::Ip(addr) = l.requested else { continue };
            match l.mode {
                ListenerMode::RoundRobin(_, _, Some(rr)) => out.push((l.handle(), addr, Some(rr))),
                ListenerMode::Shared(..) => out.push((l.handle(), addr, None)),
                ListenerMode::RoundRobin(..) | ListenerMode::Reserved(..) | ListenerMode::Dgram(..) => {}
            }
        }
        out
    }
}
