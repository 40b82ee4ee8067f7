//! UDP sockets (`uv_udp_t`): datagrams sent and received as loop callbacks.
//!
//! **Sending.** Each `udp_send` copies its bytes into a buffer of the
//! socket's own pool and becomes one `SendTo` op with its own token, so any
//! number of sends are in flight per socket (epoll sends them in order, in
//! batches; io_uring runs each as its own `SENDMSG`). The buffers keep
//! their capacity and are recycled across sockets, so sending allocates
//! nothing after warm-up. Callbacks run in the order the sends were made:
//! a send whose completion arrives early waits for the ones before it. The
//! datagrams leave in that order too, except on io_uring while the socket's
//! send buffer is full: there each waiting send is retried by the kernel on
//! its own, and they may leave in another order (UDP promises no order;
//! loopback never fills up, as its datagrams leave the sender at once).
//!
//! **Receiving.** One persistent `RecvFrom` op per receiving socket. Each
//! datagram arrives in a pool buffer as a record with the sender's address
//! and reaches the callback as a [`Datagram`] lent for the call; the buffer
//! goes back to the pool when the callback returns. A datagram longer than
//! the buffer's payload space arrives cut and flagged
//! [`RecvFlags::TRUNCATED`]. A datagram that arrives after `udp_recv_stop`,
//! before the cancelled op has ended, is kept and delivered first on the
//! next `udp_recv_start`: nothing the kernel handed over is lost.
//!
//! **Closing** cancels the receive and every send in flight; the slot lives
//! until the backend has returned them all. Then the fd is closed and the
//! send callbacks run in order: `Ok` for datagrams the kernel took before
//! the cancel landed, `ECANCELED` for the others.

use crate::backend::{parse_record, Completion, Driver, Op, RecordLayout, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop, Pending, F_CLOSING};
use crate::handle::*;
use crate::stream::OpState;
use crate::sys::{self, socket, socket::SockAddr};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// `udp_bind` flag: IPv6 only, no IPv4-mapped traffic (`UV_UDP_IPV6ONLY`).
pub const UDP_IPV6ONLY: u32 = 1;
/// `udp_bind` flag: `SO_REUSEADDR` (`UV_UDP_REUSEADDR`): on Linux, several
/// sockets may bind one multicast address and port.
pub const UDP_REUSEADDR: u32 = 2;
/// `udp_bind` flag: `SO_REUSEPORT` (`UV_UDP_REUSEPORT`): several sockets on
/// one port, the kernel spreading unicast datagrams among them.
pub const UDP_REUSEPORT: u32 = 4;
const UDP_BIND_FLAGS: u32 = UDP_IPV6ONLY | UDP_REUSEADDR | UDP_REUSEPORT;

/// Send buffers a closed socket's parts keep for the next socket.
const SPARE_SEND_BUFFERS: usize = 64;

/// Join or leave a multicast group (`uv_membership`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Membership {
    /// Join the group (`IP_ADD_MEMBERSHIP` / `IPV6_JOIN_GROUP`).
    Join,
    /// Leave the group (`IP_DROP_MEMBERSHIP` / `IPV6_LEAVE_GROUP`).
    Leave,
}

/// The interface a multicast operation uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MulticastInterface {
    /// The kernel's choice (the routing table's interface).
    Any,
    /// The interface with this IPv4 address (IPv4 groups and sockets only).
    Addr(Ipv4Addr),
    /// The interface with this index (`if_nametoindex`), either family.
    Index(u32),
}

/// Where one send stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SendState {
    /// Its `SendTo` op is in the backend.
    InFlight(Token),
    /// Its op completed with this result (`>= 0`: sent, else `-errno`);
    /// the callback waits for the sends before it.
    Done(i32),
}

pub(crate) struct SendReq<D> {
    state: SendState,
    /// The buffer of `UdpParts::bufs` holding the datagram.
    buf: u32,
    len: usize,
    cb: Option<Rc<StatusFn<D>>>,
}

/// The growable parts of a UDP socket, recycled across sockets.
pub(crate) struct UdpParts<D> {
    /// Sends not yet reported, in the order they were made.
    sends: VecDeque<SendReq<D>>,
    /// Datagram buffers; one lent to each send in flight. The `Vec`s' heap
    /// memory does not move when this list grows, so a lent buffer stays
    /// put until its send's completion.
    bufs: Vec<Vec<u8>>,
    /// Indices of `bufs` not lent.
    free: Vec<u32>,
    /// Receive results (`res`, buffer) that arrived while not receiving.
    stash: VecDeque<(i32, Option<u16>)>,
}

impl<D> UdpParts<D> {
    fn new() -> UdpParts<D> {
        UdpParts { sends: VecDeque::new(), bufs: Vec::new(), free: Vec::new(), stash: VecDeque::new() }
    }
}

pub(crate) struct UdpState<D> {
    pub fd: RawFd,
    /// `AF_INET` or `AF_INET6` once the socket exists.
    family: i32,
    bound: bool,
    connected: bool,
    receiving: bool,
    on_recv: Option<Rc<RecvFn<D>>>,
    recv_op: OpState,
    /// Sends whose op has not completed: how many, and their bytes.
    queued_count: usize,
    queued_bytes: usize,
    parts: UdpParts<D>,
}

impl<D> UdpState<D> {
    /// Gives the parts back for another socket: every buffer free, queues
    /// empty (their capacity kept).
    pub(crate) fn into_parts(self) -> UdpParts<D> {
        let mut parts = self.parts;
        parts.sends.clear();
        parts.stash.clear();
        parts.bufs.truncate(SPARE_SEND_BUFFERS);
        parts.free.clear();
        parts.free.extend((0..parts.bufs.len() as u32).rev());
        parts
    }

    /// Closes the socket (used when the loop is dropped).
    pub(crate) fn drop_fd(&mut self) {
        if self.fd >= 0 {
            sys::close(self.fd);
            self.fd = -1;
        }
    }
}

/// Errors a socket reports for an earlier datagram (ICMP), after which
/// receiving goes on; any other receive error stops it.
fn is_transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENETDOWN
            | libc::EMSGSIZE
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::ECONNRESET
            | libc::ETIMEDOUT
    )
}

fn family_of(addr: &SocketAddr) -> i32 {
    if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

impl<D> Loop<D> {
    /// A live UDP socket's state (not closing).
    fn udp_state(&mut self, h: HandleId) -> Result<&mut UdpState<D>> {
        match &mut self.open_slot_mut(h)?.kind {
            Kind::Udp(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    fn udp_ref(&self, u: Udp) -> Result<&UdpState<D>> {
        let slot = self.slot(u.0)?;
        if slot.flags & F_CLOSING != 0 {
            return Err(Error::STALE_HANDLE);
        }
        match &slot.kind {
            Kind::Udp(st) => Ok(st),
            _ => Err(Error::WRONG_TYPE),
        }
    }

    /// The state of a UDP socket, closing or not (for the close path).
    fn udp_any_state(&mut self, h: HandleId) -> Option<&mut UdpState<D>> {
        match self.slot_mut(h).map(|s| &mut s.kind) {
            Ok(Kind::Udp(st)) => Some(st),
            _ => None,
        }
    }

    /// The socket's fd and family; `EBADF` before it has a socket.
    fn udp_fd(&self, u: Udp) -> Result<(RawFd, i32)> {
        let st = self.udp_ref(u)?;
        if st.fd < 0 {
            return Err(Error::EBADF);
        }
        Ok((st.fd, st.family))
    }

    fn new_udp(&mut self, fd: RawFd, family: i32) -> Result<Udp> {
        let parts = self.udp_spare.pop().unwrap_or_else(UdpParts::new);
        let st = UdpState {
            fd,
            family,
            bound: false,
            connected: false,
            receiving: false,
            on_recv: None,
            recv_op: OpState::Idle,
            queued_count: 0,
            queued_bytes: 0,
            parts,
        };
        Ok(Udp(self.insert(Kind::Udp(st))?))
    }

    /// A UDP handle without a socket yet (`uv_udp_init`): `udp_bind`,
    /// `udp_connect`, the first send or `udp_recv_start` makes one for the
    /// address family they need (the last two bind it to the unspecified
    /// address with a kernel-chosen port, as libuv does).
    ///
    /// # Errors
    ///
    /// `ENOSPC` when the loop's handle table is full (over 2^24 handles).
    pub fn udp_init(&mut self) -> Result<Udp> {
        self.new_udp(-1, libc::AF_UNSPEC)
    }

    /// Wraps an existing UDP socket (`uv_udp_open`), bound or not,
    /// connected or not. It is made non-blocking and close-on-exec; the
    /// loop owns it from now on (on error too: it is closed then). `EINVAL`
    /// for a socket that is not an IPv4 or IPv6 datagram socket.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a socket that is not an IPv4 or IPv6 datagram socket; `ENOTSOCK` for an fd that
    /// is no socket; the errno of `fcntl`; `ENOSPC` if the handle table is full. The fd is closed
    /// on every error.
    pub fn udp_open(&mut self, fd: OwnedFd) -> Result<Udp> {
        let raw = fd.as_raw_fd();
        let (ty, _) = socket::socket_kind(raw)?;
        let name = socket::sockname(raw)?;
        let family = name.family();
        if ty != libc::SOCK_DGRAM || !(family == libc::AF_INET || family == libc::AF_INET6) {
            return Err(Error::EINVAL);
        }
        sys::set_nonblocking(raw, true)?;
        sys::set_cloexec(raw, true)?;
        let bound = name.to_std().is_some_and(|a| a.port() != 0);
        let connected = socket::peername(raw).is_ok();
        let u = self.new_udp(fd.into_raw_fd(), family).inspect_err(|_| sys::close(raw))?;
        let st = self.udp_state(u.0)?;
        st.bound = bound;
        st.connected = connected;
        Ok(u)
    }

    /// Makes the socket for `family` if there is none yet.
    fn udp_socket(&mut self, h: HandleId, family: i32) -> Result<RawFd> {
        let st = self.udp_state(h)?;
        if st.fd >= 0 {
            return Ok(st.fd);
        }
        let fd = socket::dgram_socket(family)?.into_raw_fd();
        st.fd = fd;
        st.family = family;
        Ok(fd)
    }

    /// Gives a socket-less handle a socket bound to the unspecified address
    /// of `family`, port 0 (libuv's deferred bind); a dual-stack one for
    /// IPv6. A handle with a socket is left as it is.
    fn udp_ensure_socket(&mut self, h: HandleId, family: i32) -> Result<RawFd> {
        let st = self.udp_state(h)?;
        if st.fd >= 0 {
            return Ok(st.fd);
        }
        let fd = self.udp_socket(h, family)?;
        let any: SocketAddr = if family == libc::AF_INET6 {
            socket::set_ipv6only(fd, false)?;
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        socket::bind(fd, &SockAddr::from_std(&any))?;
        self.udp_state(h)?.bound = true;
        Ok(fd)
    }

    /// Binds to `addr` (`uv_udp_bind`; flags: [`UDP_IPV6ONLY`],
    /// [`UDP_REUSEADDR`], [`UDP_REUSEPORT`]). An IPv6 socket is dual-stack
    /// unless `UDP_IPV6ONLY` is given. `EINVAL` for unknown flags,
    /// `UDP_IPV6ONLY` with an IPv4 address, or a socket already bound.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EINVAL` for unknown flags,
    /// `UDP_IPV6ONLY` with an IPv4 address, or a socket already bound (by `udp_bind`, a send,
    /// `udp_recv_start` or a membership); the errno of `socket`, `setsockopt` or `bind(2)`:
    /// `EADDRINUSE` (the port is taken without `UDP_REUSEADDR`/`UDP_REUSEPORT` on both sockets),
    /// `EACCES` (a privileged port), `EADDRNOTAVAIL` (not a local address).
    ///
    /// # Examples
    ///
    /// ```
    /// use uvring::{Loop, UDP_REUSEADDR};
    ///
    /// let mut lp: Loop<()> = Loop::new()?;
    /// let u = lp.udp_init()?;
    /// lp.udp_bind(u, "127.0.0.1:0".parse().unwrap(), UDP_REUSEADDR)?;
    /// assert_ne!(lp.udp_getsockname(u)?.port(), 0); // the kernel chose a port
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn udp_bind(&mut self, u: Udp, addr: SocketAddr, flags: u32) -> Result<()> {
        if flags & !UDP_BIND_FLAGS != 0 || (flags & UDP_IPV6ONLY != 0 && addr.is_ipv4()) {
            return Err(Error::EINVAL);
        }
        if self.udp_state(u.0)?.bound {
            return Err(Error::EINVAL);
        }
        let fd = self.udp_socket(u.0, family_of(&addr))?;
        if flags & UDP_REUSEADDR != 0 {
            socket::set_reuseaddr(fd)?;
        }
        if flags & UDP_REUSEPORT != 0 {
            socket::set_reuseport(fd)?;
        }
        if addr.is_ipv6() {
            socket::set_ipv6only(fd, flags & UDP_IPV6ONLY != 0)?;
        }
        socket::bind(fd, &SockAddr::from_std(&addr))?;
        self.udp_state(u.0)?.bound = true;
        Ok(())
    }

    /// Associates the socket with `addr` (`uv_udp_connect`): sends without
    /// an address go there, and only its datagrams are received. `None`
    /// dissolves the association. `EISCONN` if already connected (connect
    /// `None` first); `ENOTCONN` to disconnect a socket that is not
    /// connected. Linux gives a kernel-chosen port back at the disconnect
    /// (the socket is bound again at its next send): bind a fixed port to
    /// keep one.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EISCONN` if already connected;
    /// `ENOTCONN` to disconnect a socket that is not connected; the errno of `socket`, the implicit
    /// `bind` or `connect(2)` (`EAFNOSUPPORT` for an address of the other family than the socket's,
    /// `ENETUNREACH`).
    pub fn udp_connect(&mut self, u: Udp, addr: Option<SocketAddr>) -> Result<()> {
        let connected = self.udp_state(u.0)?.connected;
        match addr {
            Some(addr) => {
                if connected {
                    return Err(Error::from_errno(libc::EISCONN));
                }
                let fd = self.udp_ensure_socket(u.0, family_of(&addr))?;
                socket::connect(fd, &SockAddr::from_std(&addr))?;
                self.udp_state(u.0)?.connected = true;
            }
            None => {
                if !connected {
                    return Err(Error::ENOTCONN);
                }
                let fd = self.udp_state(u.0)?.fd;
                socket::disconnect(fd)?;
                self.udp_state(u.0)?.connected = false;
            }
        }
        Ok(())
    }

    /// The address the socket is bound to; `EBADF` before it has a socket.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet.
    pub fn udp_getsockname(&self, u: Udp) -> Result<SocketAddr> {
        let (fd, _) = self.udp_fd(u)?;
        socket::sockname(fd)?.to_std().ok_or(Error::EINVAL)
    }

    /// The address the socket is connected to; `ENOTCONN` if it is not.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `ENOTCONN` if it has no socket or is
    /// not connected.
    pub fn udp_getpeername(&self, u: Udp) -> Result<SocketAddr> {
        let st = self.udp_ref(u)?;
        if st.fd < 0 || !st.connected {
            return Err(Error::ENOTCONN);
        }
        socket::peername(st.fd)?.to_std().ok_or(Error::EINVAL)
    }

    /// Checks a send's destination against the socket's state.
    fn udp_check_dest(&mut self, u: Udp, addr: Option<SocketAddr>) -> Result<RawFd> {
        let connected = self.udp_state(u.0)?.connected;
        match addr {
            Some(_) if connected => Err(Error::from_errno(libc::EISCONN)),
            None if !connected => Err(Error::from_errno(libc::EDESTADDRREQ)),
            Some(a) => self.udp_ensure_socket(u.0, family_of(&a)),
            None => Ok(self.udp_state(u.0)?.fd),
        }
    }

    /// Sends `data` as one datagram (`uv_udp_send`): to `addr`, or, with
    /// `None`, to the connected peer. The bytes are copied, so the caller's
    /// buffer is free at once; any number of sends may be in flight. `cb`
    /// runs when the kernel has taken the datagram (or with the error it
    /// gave, e.g. `EMSGSIZE`, `EACCES` for a broadcast address without
    /// [`udp_set_broadcast`](Self::udp_set_broadcast)), or with `ECANCELED`
    /// if the socket is closed first; callbacks run in the order of the
    /// sends. An immediate `Err` means nothing was queued: `EISCONN` for
    /// an address on a connected socket, `EDESTADDRREQ` for none on an
    /// unconnected one. A socket without one gets a socket bound to the
    /// unspecified address.
    ///
    /// # Errors
    ///
    /// Nothing is queued and `cb` never runs: [`Error::STALE_HANDLE`] if `u` is closed or closing;
    /// `EISCONN` for an address on a connected socket; `EDESTADDRREQ` for none on an unconnected
    /// one; the errno of making the implicit socket (`socket`, `bind`); `ENOSPC` if the loop's
    /// operation table is full. The kernel's verdict on the datagram (`EMSGSIZE`, `EACCES`,
    /// `ENETUNREACH`, ...) and `ECANCELED` for a socket closed first reach `cb`.
    ///
    /// # Examples
    ///
    /// One datagram over loopback, from a socket that is bound implicitly by
    /// its first send:
    ///
    /// ```
    /// use uvring::{Loop, OnRecv, OnSend, RunMode, Udp};
    ///
    /// #[derive(Default)]
    /// struct State {
    ///     sent: bool,
    ///     got: Vec<u8>,
    /// }
    ///
    /// let mut lp: Loop<State> = Loop::new()?;
    /// let rx = lp.udp_init()?;
    /// lp.udp_bind(rx, "127.0.0.1:0".parse().unwrap(), 0)?;
    /// let to = lp.udp_getsockname(rx)?;
    /// let on_recv = OnRecv::new(|lp: &mut Loop<State>, st: &mut State, u: Udp, dgram| {
    ///     if let Ok(d) = dgram {
    ///         st.got.extend_from_slice(d.data);
    ///         lp.close(u, None).unwrap_or(());
    ///     }
    /// });
    /// lp.udp_recv_start(rx, &on_recv)?;
    /// let tx = lp.udp_init()?;
    /// let on_send = OnSend::new(|lp: &mut Loop<State>, st: &mut State, u: Udp, status| {
    ///     st.sent = status.is_ok();
    ///     lp.close(u, None).unwrap_or(());
    /// });
    /// lp.udp_send(tx, b"datagram", Some(to), Some(&on_send))?;
    /// let mut st = State::default();
    /// lp.run(RunMode::Default, &mut st)?;
    /// assert!(st.sent);
    /// assert_eq!(st.got, b"datagram");
    /// # Ok::<(), uvring::Error>(())
    /// ```
    pub fn udp_send(&mut self, u: Udp, data: &[u8], addr: Option<SocketAddr>, cb: Option<&OnSend<D>>) -> Result<()> {
        let fd = self.udp_check_dest(u, addr)?;
        let st = self.udp_state(u.0)?;
        let parts = &mut st.parts;
        let buf = match parts.free.pop() {
            Some(i) => i,
            None => {
                parts.bufs.push(Vec::new());
                (parts.bufs.len() - 1) as u32
            }
        };
        let bytes = &mut parts.bufs[buf as usize];
        bytes.clear();
        bytes.extend_from_slice(data);
        let iov = [libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() }];
        let dest = addr.map(|a| SockAddr::from_std(&a));
        // SAFETY: buffer `buf` is lent to this send alone and not touched
        // (nor freed: its `Vec` only moves within `bufs`, its heap memory
        // stays put) until the op's final completion has been dispatched:
        // `on_udp_send` or the close path gives it back after that.
        let token = match unsafe { self.submit_op(u.0, Op::SendTo { fd, iov: &iov, addr: dest.as_ref() }) } {
            Ok(token) => token,
            Err(e) => {
                if let Ok(st) = self.udp_state(u.0) {
                    st.parts.free.push(buf);
                }
                return Err(e);
            }
        };
        let st = self.udp_state(u.0)?;
        st.parts.sends.push_back(SendReq {
            state: SendState::InFlight(token),
            buf,
            len: data.len(),
            cb: cb.map(|c| c.f.clone()),
        });
        st.queued_count += 1;
        st.queued_bytes += data.len();
        self.active_reqs += 1;
        Ok(())
    }

    /// Sends `data` now if the socket takes it, without queueing
    /// (`uv_udp_try_send`); returns its length. `EAGAIN` if sends are in
    /// flight (to keep datagrams in order) or the socket's buffer is full;
    /// the same destination rules as [`udp_send`](Self::udp_send).
    ///
    /// # Errors
    ///
    /// As [`udp_send`](Self::udp_send) for the destination (`STALE_HANDLE`, `EISCONN`,
    /// `EDESTADDRREQ`); `EAGAIN` if sends are in flight or the socket's buffer is full; the errno
    /// of `sendto` (`EMSGSIZE`, `EACCES`, ...).
    pub fn udp_try_send(&mut self, u: Udp, data: &[u8], addr: Option<SocketAddr>) -> Result<usize> {
        let fd = self.udp_check_dest(u, addr)?;
        if !self.udp_state(u.0)?.parts.sends.is_empty() {
            return Err(Error::EAGAIN);
        }
        socket::send_to(fd, data, addr.map(|a| SockAddr::from_std(&a)).as_ref())
    }

    /// Bytes of sends whose datagrams the kernel has not yet taken
    /// (`uv_udp_get_send_queue_size`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing.
    pub fn udp_send_queue_size(&self, u: Udp) -> Result<usize> {
        Ok(self.udp_ref(u)?.queued_bytes)
    }

    /// Sends whose datagrams the kernel has not yet taken
    /// (`uv_udp_get_send_queue_count`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing.
    pub fn udp_send_queue_count(&self, u: Udp) -> Result<usize> {
        Ok(self.udp_ref(u)?.queued_count)
    }

    /// Starts receiving (`uv_udp_recv_start`): `cb` runs for each datagram
    /// with its sender, or with an error the socket reported. A socket-less
    /// handle gets an IPv4 socket bound to 0.0.0.0 with a kernel-chosen
    /// port. `EALREADY` if already receiving.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EALREADY` if already receiving; the
    /// errno of making the implicit socket (`socket`, `bind`); `ENOSPC` if the operation table is
    /// full. Errors the socket reports later (an ICMP port unreachable on a connected socket as
    /// `ECONNREFUSED`) reach `cb`, and receiving goes on.
    pub fn udp_recv_start(&mut self, u: Udp, cb: &OnRecv<D>) -> Result<()> {
        if self.udp_state(u.0)?.receiving {
            return Err(Error::from_errno(libc::EALREADY));
        }
        self.udp_ensure_socket(u.0, libc::AF_INET)?;
        let st = self.udp_state(u.0)?;
        st.receiving = true;
        st.on_recv = Some(cb.f.clone());
        let stashed = !st.parts.stash.is_empty();
        if let Err(e) = self.udp_recv_arm(u.0) {
            self.udp_state(u.0)?.receiving = false;
            return Err(e);
        }
        self.set_active(u.0, true);
        if stashed {
            self.push_pending(Pending::Udp(u.0));
        }
        Ok(())
    }

    /// Stops receiving (`uv_udp_recv_stop`); datagrams wait in the socket.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing.
    pub fn udp_recv_stop(&mut self, u: Udp) -> Result<()> {
        self.udp_state(u.0)?;
        self.udp_stop_receiving(u.0);
        Ok(())
    }

    fn udp_stop_receiving(&mut self, h: HandleId) {
        let Ok(st) = self.udp_state(h) else { return };
        st.receiving = false;
        if let OpState::Armed(token) = st.recv_op {
            st.recv_op = OpState::Ending(token);
            let fd = st.fd;
            self.driver.cancel(fd, token);
        }
        self.set_active(h, false);
    }

    /// Submits the receive op unless one is armed. While a cancelled one
    /// has not ended, the new one waits for its end (two receives on one
    /// socket would share its datagrams out of order).
    fn udp_recv_arm(&mut self, h: HandleId) -> Result<()> {
        let st = self.udp_state(h)?;
        if !st.receiving || !matches!(st.recv_op, OpState::Idle) {
            return Ok(());
        }
        let fd = st.fd;
        // SAFETY: a receive lends nothing (it reads into pool buffers).
        let token = unsafe { self.submit_op(h, Op::RecvFrom { fd })? };
        self.udp_state(h)?.recv_op = OpState::Armed(token);
        Ok(())
    }

    /// A receive completion: deliver (or keep) the datagram or error, then
    /// arm again if the op ended and the socket still receives.
    pub(crate) fn on_udp_recv(&mut self, h: HandleId, c: Completion, d: &mut D) {
        let Ok(st) = self.udp_state(h) else {
            self.release(c);
            return;
        };
        debug_assert!(matches!(st.recv_op, OpState::Armed(t) | OpState::Ending(t) if t == c.token));
        let was_ending = matches!(st.recv_op, OpState::Ending(_));
        if !c.more {
            st.recv_op = OpState::Idle;
        }
        let event = match c.res {
            n if n > 0 => true,
            e if e == -libc::ECANCELED && was_ending => false,
            0 => false,
            _ => true,
        };
        if event {
            if st.receiving && st.parts.stash.is_empty() {
                self.deliver_datagram(h, c.res, c.buf, d);
            } else {
                st.parts.stash.push_back((c.res, c.buf));
                if st.receiving {
                    self.push_pending(Pending::Udp(h));
                }
            }
        } else if let Some(id) = c.buf {
            self.driver.recycle(id);
        }
        if !c.more {
            if let Err(e) = self.udp_recv_arm(h) {
                self.udp_recv_failed(h, e, d);
            }
        }
    }

    /// Receiving cannot go on: stop, and tell the callback why.
    fn udp_recv_failed(&mut self, h: HandleId, e: Error, d: &mut D) {
        let Ok(st) = self.udp_state(h) else { return };
        let cb = st.on_recv.clone();
        self.udp_stop_receiving(h);
        if let Some(cb) = cb {
            cb(self, d, h, Err(e));
        }
    }

    /// Runs the receive callback for one result, then recycles its buffer.
    fn deliver_datagram(&mut self, h: HandleId, res: i32, buf: Option<u16>, d: &mut D) {
        let Ok(st) = self.udp_state(h) else {
            if let Some(id) = buf {
                self.driver.recycle(id);
            }
            return;
        };
        let cb = st.on_recv.clone();
        if res < 0 {
            if let Some(id) = buf {
                self.driver.recycle(id);
            }
            let e = Error::from_neg(res);
            if is_transient(-res) {
                if let Some(cb) = cb {
                    cb(self, d, h, Err(e));
                }
            } else {
                self.udp_recv_failed(h, e, d);
            }
            return;
        }
        let Some(id) = buf else { return };
        let pool = self.pool.clone();
        // SAFETY: buffer `id` was lent to the loop by its completion and is
        // recycled only below, after the callback; `pool` (an Rc clone) keeps
        // the memory alive even if the callback replaces the loop.
        let record = unsafe { pool.slice(id, res as usize) };
        let datagram = match parse_record(record, RecordLayout::DATAGRAM) {
            Some(rec) => Ok(Datagram {
                data: rec.payload,
                addr: SockAddr::from_bytes(rec.name).to_std(),
                flags: if rec.flags & libc::MSG_TRUNC != 0 { RecvFlags::TRUNCATED } else { RecvFlags::empty() },
            }),
            None => Err(Error::EINVAL),
        };
        if let Some(cb) = cb {
            cb(self, d, h, datagram);
        }
        self.driver.recycle(id);
    }

    /// Pending phase: deliver datagrams kept while the socket was not
    /// receiving, in order, while it receives.
    pub(crate) fn udp_pending(&mut self, h: HandleId, d: &mut D) {
        loop {
            let Ok(st) = self.udp_state(h) else { return };
            if !st.receiving {
                return;
            }
            let Some((res, buf)) = st.parts.stash.pop_front() else { return };
            self.deliver_datagram(h, res, buf, d);
        }
    }

    /// A send's op completed: record its result, then run the callbacks of
    /// every send at the front of the queue whose op has completed.
    pub(crate) fn on_udp_send(&mut self, h: HandleId, token: Token, res: i32, d: &mut D) {
        if let Some(st) = self.udp_any_state(h) {
            st.send_completed(token, res);
        }
        loop {
            let Ok(st) = self.udp_state(h) else { return };
            if !st.parts.sends.front().is_some_and(|r| matches!(r.state, SendState::Done(_))) {
                return;
            }
            let req = st.parts.sends.pop_front().expect("front exists");
            st.parts.free.push(req.buf);
            self.active_reqs -= 1;
            let SendState::Done(res) = req.state else { unreachable!("checked above") };
            if let Some(cb) = req.cb {
                cb(self, d, h, if res >= 0 { Ok(()) } else { Err(Error::from_neg(res)) });
            }
        }
    }

    /// A send completed after close began: record whether it went out.
    pub(crate) fn udp_send_done_closing(&mut self, h: HandleId, token: Token, res: i32) {
        if let Some(st) = self.udp_any_state(h) {
            st.send_completed(token, res);
        }
    }

    /// First half of closing: cancel the receive and every send in flight.
    /// The slot stays until the backend has returned them.
    pub(crate) fn udp_close(&mut self, h: HandleId) {
        let Some(st) = self.udp_any_state(h) else { return };
        st.receiving = false;
        let fd = st.fd;
        if let OpState::Armed(token) = st.recv_op {
            st.recv_op = OpState::Ending(token);
            self.driver.cancel(fd, token);
        }
        let mut i = 0;
        while let Some(state) = self.udp_any_state(h).and_then(|st| st.parts.sends.get(i).map(|r| r.state)) {
            if let SendState::InFlight(token) = state {
                self.driver.cancel(fd, token);
            }
            i += 1;
        }
        // Kept datagrams hold receive buffers: give them back now.
        while let Some((_, buf)) = self.udp_any_state(h).and_then(|st| st.parts.stash.pop_front()) {
            if let Some(id) = buf {
                self.driver.recycle(id);
            }
        }
    }

    /// Second half of closing: nothing is in flight any more. Close the fd
    /// and run the send callbacks, in order: `Ok` for datagrams that went
    /// out, the error for ones that failed, `ECANCELED` for the rest.
    pub(crate) fn udp_finish_close(&mut self, h: HandleId, d: &mut D) {
        let Some(st) = self.udp_any_state(h) else { return };
        let fd = std::mem::replace(&mut st.fd, -1);
        if fd >= 0 {
            self.driver.deregister(fd);
            sys::close(fd);
        }
        while let Some(req) = self.udp_any_state(h).and_then(|st| {
            let req = st.parts.sends.pop_front()?;
            st.parts.free.push(req.buf);
            Some(req)
        }) {
            self.active_reqs -= 1;
            let status = match req.state {
                SendState::Done(res) if res >= 0 => Ok(()),
                SendState::Done(res) => Err(Error::from_neg(res)),
                SendState::InFlight(_) => Err(Error::ECANCELED),
            };
            if let Some(cb) = req.cb {
                cb(self, d, h, status);
            }
        }
    }

    // ---- options --------------------------------------------------------

    /// `SO_BROADCAST` (`uv_udp_set_broadcast`): allows sending to a
    /// broadcast address.
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `setsockopt`.
    pub fn udp_set_broadcast(&mut self, u: Udp, on: bool) -> Result<()> {
        let (fd, _) = self.udp_fd(u)?;
        socket::set_broadcast(fd, on)
    }

    /// The unicast TTL, or hop limit on IPv6 (`uv_udp_set_ttl`): 1 to 255,
    /// else `EINVAL`.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a TTL outside 1..=255; [`Error::STALE_HANDLE`] if `u` is closed or closing;
    /// `EBADF` if it has no socket yet; the errno of `setsockopt`.
    pub fn udp_set_ttl(&mut self, u: Udp, ttl: u32) -> Result<()> {
        if !(1..=255).contains(&ttl) {
            return Err(Error::EINVAL);
        }
        let (fd, family) = self.udp_fd(u)?;
        socket::set_ttl(fd, family == libc::AF_INET6, ttl as i32)
    }

    /// The multicast TTL, or hop limit on IPv6 (`uv_udp_set_multicast_ttl`):
    /// 0 (this host only) to 255, else `EINVAL`.
    ///
    /// # Errors
    ///
    /// `EINVAL` for a TTL over 255; [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if
    /// it has no socket yet; the errno of `setsockopt`.
    pub fn udp_set_multicast_ttl(&mut self, u: Udp, ttl: u32) -> Result<()> {
        if ttl > 255 {
            return Err(Error::EINVAL);
        }
        let (fd, family) = self.udp_fd(u)?;
        socket::set_multicast_ttl(fd, family == libc::AF_INET6, ttl as i32)
    }

    /// Whether multicast sent from this socket also reaches this host's
    /// members (`uv_udp_set_multicast_loop`; on by default).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `setsockopt`.
    pub fn udp_set_multicast_loop(&mut self, u: Udp, on: bool) -> Result<()> {
        let (fd, family) = self.udp_fd(u)?;
        socket::set_multicast_loop(fd, family == libc::AF_INET6, on)
    }

    /// The interface multicast leaves by (`uv_udp_set_multicast_interface`).
    /// An IPv6 socket takes [`Any`](MulticastInterface::Any) or an
    /// [`Index`](MulticastInterface::Index) (`EINVAL` for an address).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet;
    /// `EINVAL` for an address on an IPv6 socket; the errno of `setsockopt` (`EADDRNOTAVAIL` for an
    /// address no interface has, `ENODEV` for an unknown index).
    pub fn udp_set_multicast_interface(&mut self, u: Udp, iface: MulticastInterface) -> Result<()> {
        let (fd, family) = self.udp_fd(u)?;
        match (family == libc::AF_INET6, iface) {
            (false, MulticastInterface::Any) => socket::set_multicast_if_v4(fd, Ipv4Addr::UNSPECIFIED, 0),
            (false, MulticastInterface::Addr(a)) => socket::set_multicast_if_v4(fd, a, 0),
            (false, MulticastInterface::Index(i)) => socket::set_multicast_if_v4(fd, Ipv4Addr::UNSPECIFIED, i),
            (true, MulticastInterface::Any) => socket::set_multicast_if_v6(fd, 0),
            (true, MulticastInterface::Index(i)) => socket::set_multicast_if_v6(fd, i),
            (true, MulticastInterface::Addr(_)) => Err(Error::EINVAL),
        }
    }

    /// Joins or leaves multicast group `group` on `iface`
    /// (`uv_udp_set_membership`). A socket-less handle gets a socket of the
    /// group's family, bound to the unspecified address. An IPv6 group takes
    /// [`Any`](MulticastInterface::Any) or an
    /// [`Index`](MulticastInterface::Index).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EINVAL` for an interface address with
    /// an IPv6 group; the errno of making the implicit socket or of `setsockopt` (`EINVAL` for a
    /// group that is not multicast, `EADDRINUSE` when joining twice, `EADDRNOTAVAIL` when leaving a
    /// group not joined, `ENODEV` for no such interface).
    pub fn udp_set_membership(
        &mut self,
        u: Udp,
        group: IpAddr,
        iface: MulticastInterface,
        membership: Membership,
    ) -> Result<()> {
        let join = membership == Membership::Join;
        let fd = self.udp_ensure_socket(u.0, if group.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 })?;
        match (group, iface) {
            (IpAddr::V4(g), MulticastInterface::Any) => socket::membership_v4(fd, g, Ipv4Addr::UNSPECIFIED, 0, join),
            (IpAddr::V4(g), MulticastInterface::Addr(a)) => socket::membership_v4(fd, g, a, 0, join),
            (IpAddr::V4(g), MulticastInterface::Index(i)) => {
                socket::membership_v4(fd, g, Ipv4Addr::UNSPECIFIED, i, join)
            }
            (IpAddr::V6(g), MulticastInterface::Any) => socket::membership_v6(fd, g, 0, join),
            (IpAddr::V6(g), MulticastInterface::Index(i)) => socket::membership_v6(fd, g, i, join),
            (IpAddr::V6(_), MulticastInterface::Addr(_)) => Err(Error::EINVAL),
        }
    }

    /// Joins or leaves the source-specific group (`group`, `source`) on
    /// `iface` (`uv_udp_set_source_membership`): only `source`'s datagrams
    /// to `group` are received. `group` and `source` are of one family
    /// (else `EINVAL`); interfaces as for
    /// [`udp_set_membership`](Self::udp_set_membership).
    ///
    /// # Errors
    ///
    /// `EINVAL` if `group` and `source` differ in family or for an interface address with IPv6;
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; the errno of making the implicit socket
    /// or of `setsockopt`, as for [`udp_set_membership`](Self::udp_set_membership).
    pub fn udp_set_source_membership(
        &mut self,
        u: Udp,
        group: IpAddr,
        iface: MulticastInterface,
        source: IpAddr,
        membership: Membership,
    ) -> Result<()> {
        let join = membership == Membership::Join;
        if group.is_ipv4() != source.is_ipv4() {
            return Err(Error::EINVAL);
        }
        let fd = self.udp_ensure_socket(u.0, if group.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 })?;
        let index = |i: u32| {
            let (g, s): (SocketAddr, SocketAddr) = ((group, 0).into(), (source, 0).into());
            socket::source_membership(fd, &g, &s, i, join)
        };
        match (group, source, iface) {
            (IpAddr::V4(g), IpAddr::V4(s), MulticastInterface::Any) => {
                socket::source_membership_v4(fd, g, Ipv4Addr::UNSPECIFIED, s, join)
            }
            (IpAddr::V4(g), IpAddr::V4(s), MulticastInterface::Addr(a)) => {
                socket::source_membership_v4(fd, g, a, s, join)
            }
            (_, _, MulticastInterface::Index(i)) => index(i),
            (IpAddr::V6(_), _, MulticastInterface::Any) => index(0),
            _ => Err(Error::EINVAL),
        }
    }

    /// The socket's send buffer size (`SO_SNDBUF`; Linux reports twice
    /// what was set, the rest being its bookkeeping).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `getsockopt`.
    pub fn udp_send_buffer_size(&self, u: Udp) -> Result<usize> {
        let (fd, _) = self.udp_fd(u)?;
        socket::buffer_size(fd, true)
    }

    /// Sets the socket's send buffer size (`SO_SNDBUF`), within the
    /// system's limits (`net.core.wmem_max`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `setsockopt` (`EINVAL` for a size the kernel refuses).
    pub fn udp_set_send_buffer_size(&mut self, u: Udp, bytes: usize) -> Result<()> {
        let (fd, _) = self.udp_fd(u)?;
        socket::set_buffer_size(fd, true, bytes)
    }

    /// The socket's receive buffer size (`SO_RCVBUF`; Linux reports twice
    /// what was set).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `getsockopt`.
    pub fn udp_recv_buffer_size(&self, u: Udp) -> Result<usize> {
        let (fd, _) = self.udp_fd(u)?;
        socket::buffer_size(fd, false)
    }

    /// Sets the socket's receive buffer size (`SO_RCVBUF`), within the
    /// system's limits (`net.core.rmem_max`).
    ///
    /// # Errors
    ///
    /// [`Error::STALE_HANDLE`] if `u` is closed or closing; `EBADF` if it has no socket yet; the
    /// errno of `setsockopt` (`EINVAL` for a size the kernel refuses).
    pub fn udp_set_recv_buffer_size(&mut self, u: Udp, bytes: usize) -> Result<()> {
        let (fd, _) = self.udp_fd(u)?;
        socket::set_buffer_size(fd, false, bytes)
    }
}

impl<D> UdpState<D> {
    /// Records the result of the send whose op is `token`.
    fn send_completed(&mut self, token: Token, res: i32) {
        let Some(req) = self.parts.sends.iter_mut().find(|r| r.state == SendState::InFlight(token)) else {
            debug_assert!(false, "a send completion for no send in flight: {token:?}");
            return;
        };
        req.state = SendState::Done(res);
        self.queued_count -= 1;
        self.queued_bytes -= req.len;
    }
}
