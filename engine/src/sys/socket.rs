//! Socket syscalls: creation, addresses, options, and the send/recv family
//! including `SCM_RIGHTS` file-descriptor passing.

use super::{owned, syscall};
use crate::error::{Error, Result};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

/// Most fds one message may carry (Linux's `SCM_MAX_FD` is 253).
pub const MAX_FDS_PER_MSG: usize = 64;

/// Bytes of control-message space for `MAX_FDS_PER_MSG` fds (`CMSG_SPACE`).
pub const CONTROL_LEN: usize = cmsg_space(MAX_FDS_PER_MSG * mem::size_of::<RawFd>());

/// `CMSG_SPACE(len)` computed in const context.
pub const fn cmsg_space(len: usize) -> usize {
    let align = mem::size_of::<usize>();
    let hdr = (mem::size_of::<libc::cmsghdr>() + align - 1) & !(align - 1);
    hdr + ((len + align - 1) & !(align - 1))
}

/// A socket address in kernel form, `Copy` so backends can keep a stable copy
/// for the duration of an asynchronous `connect`.
#[derive(Copy, Clone)]
pub struct SockAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_std() {
            Some(addr) => write!(f, "SockAddr({addr})"),
            None => write!(f, "SockAddr(family {}, {} bytes)", self.family(), self.len),
        }
    }
}

impl SockAddr {
    pub fn empty() -> SockAddr {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
        SockAddr { storage: unsafe { mem::zeroed() }, len: mem::size_of::<libc::sockaddr_storage>() as _ }
    }

    pub fn from_std(addr: &SocketAddr) -> SockAddr {
        let mut out = SockAddr::empty();
        match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as _,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut out.storage as *mut libc::sockaddr_storage).cast(), sin) };
                out.len = mem::size_of::<libc::sockaddr_in>() as _;
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as _,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&mut out.storage as *mut libc::sockaddr_storage).cast(), sin6) };
                out.len = mem::size_of::<libc::sockaddr_in6>() as _;
            }
        }
        out
    }

    /// A Unix-domain address; `ENAMETOOLONG` if the path does not fit.
    pub fn unix(path: &Path) -> Result<SockAddr> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        let mut out = SockAddr::empty();
        // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
        let sun = unsafe { &mut *(&mut out.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
        if bytes.len() >= sun.sun_path.len() {
            return Err(Error::from_errno(libc::ENAMETOOLONG));
        }
        sun.sun_family = libc::AF_UNIX as _;
        for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        out.len = (mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as _;
        Ok(out)
    }

    pub fn family(&self) -> i32 {
        self.storage.ss_family as i32
    }

    pub fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// The std form of an IPv4/IPv6 address; `None` for other families.
    pub fn to_std(self) -> Option<SocketAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// A new non-blocking, close-on-exec stream socket.
pub fn stream_socket(family: i32) -> Result<OwnedFd> {
    let fd = syscall!(socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0))?;
    // SAFETY: socket returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// A connected pair of non-blocking, close-on-exec Unix stream sockets.
pub fn socketpair(nonblocking: bool) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    let nb = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: `fds` has room for the two fds socketpair writes.
    syscall!(socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | nb, 0, fds.as_mut_ptr()))?;
    // SAFETY: socketpair returned two fresh fds that nobody else owns.
    Ok(unsafe { (owned(fds[0]), owned(fds[1])) })
}

pub fn bind(fd: RawFd, addr: &SockAddr) -> Result<()> {
    syscall!(bind(fd, addr.as_ptr(), addr.len))?;
    Ok(())
}

pub fn listen(fd: RawFd, backlog: i32) -> Result<()> {
    syscall!(listen(fd, backlog))?;
    Ok(())
}

/// Accepts one connection as a non-blocking, close-on-exec fd.
pub fn accept(fd: RawFd) -> Result<OwnedFd> {
    let new =
        syscall!(accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC))?;
    // SAFETY: accept4 returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(new) })
}

/// Starts a non-blocking connect; `EINPROGRESS` comes back as an error for
/// the caller to wait on.
pub fn connect(fd: RawFd, addr: &SockAddr) -> Result<()> {
    syscall!(connect(fd, addr.as_ptr(), addr.len))?;
    Ok(())
}

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> Result<()> {
    syscall!(setsockopt(fd, level, name, (&value as *const i32).cast(), mem::size_of::<i32>() as libc::socklen_t))?;
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> Result<i32> {
    let mut value: i32 = 0;
    let mut len = mem::size_of::<i32>() as libc::socklen_t;
    syscall!(getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len))?;
    Ok(value)
}

/// The pending socket error (`SO_ERROR`), used to finish a non-blocking connect.
pub fn take_error(fd: RawFd) -> Result<i32> {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
}

pub fn set_reuseaddr(fd: RawFd) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

pub fn set_reuseport(fd: RawFd) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
}

pub fn set_ipv6only(fd: RawFd, on: bool) -> Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, on as i32)
}

pub fn set_nodelay(fd: RawFd, on: bool) -> Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, on as i32)
}

/// Enables keep-alive with the given idle delay in seconds, or disables it.
pub fn set_keepalive(fd: RawFd, delay_secs: Option<u32>) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, delay_secs.is_some() as i32)?;
    if let Some(d) = delay_secs {
        setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, d.max(1) as i32)?;
    }
    Ok(())
}

/// `SO_LINGER` with a zero timeout: `close` then sends RST.
pub fn set_linger_zero(fd: RawFd) -> Result<()> {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `l` is a valid `linger` for the length passed.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&l as *const libc::linger).cast(),
        std::mem::size_of::<libc::linger>() as libc::socklen_t
    ))?;
    Ok(())
}

/// The socket type (`SOCK_STREAM`, ...) and whether it is listening.
pub fn socket_kind(fd: RawFd) -> Result<(i32, bool)> {
    let ty = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let listening = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    Ok((ty, listening))
}

/// Whether `fd` is a listening stream socket.
pub fn is_listening_stream(fd: RawFd) -> bool {
    matches!(socket_kind(fd), Ok((libc::SOCK_STREAM, true)))
}

pub fn sockname(fd: RawFd) -> Result<SockAddr> {
    let mut addr = SockAddr::empty();
    // SAFETY: `addr.storage` has room for `addr.len` bytes.
    syscall!(getsockname(fd, (&mut addr.storage as *mut libc::sockaddr_storage).cast(), &mut addr.len))?;
    Ok(addr)
}

pub fn peername(fd: RawFd) -> Result<SockAddr> {
    let mut addr = SockAddr::empty();
    // SAFETY: `addr.storage` has room for `addr.len` bytes.
    syscall!(getpeername(fd, (&mut addr.storage as *mut libc::sockaddr_storage).cast(), &mut addr.len))?;
    Ok(addr)
}

pub fn shutdown_write(fd: RawFd) -> Result<()> {
    syscall!(shutdown(fd, libc::SHUT_WR))?;
    Ok(())
}

/// `recv` without flags. Returns 0 at end of stream.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = syscall!(recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))?;
    Ok(n as usize)
}

/// Sends the iovecs (and, if any, `fds` as one `SCM_RIGHTS` message) with
/// `MSG_NOSIGNAL`, so a closed peer gives `EPIPE`, never `SIGPIPE`.
///
/// # Safety
/// Every iovec must describe memory valid for reads for the call's duration.
pub unsafe fn sendmsg(fd: RawFd, iov: &[libc::iovec], fds: &[RawFd]) -> Result<usize> {
    let mut control = [0u64; CONTROL_LEN / 8 + 1];
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        let n = fds.len().min(MAX_FDS_PER_MSG);
        // SAFETY: `control` has room for CMSG_SPACE(n fds) bytes and is u64-aligned.
        unsafe { fill_rights(control.as_mut_ptr().cast(), &fds[..n]) };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(n * mem::size_of::<RawFd>());
    }
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// Writes one `SCM_RIGHTS` control message carrying `fds` at `control`.
///
/// # Safety
/// `control` must be valid for writes of `cmsg_space(fds.len() * 4)` bytes
/// and aligned for `cmsghdr`.
pub unsafe fn fill_rights(control: *mut u8, fds: &[RawFd]) {
    let data_len = mem::size_of_val(fds);
    // SAFETY: per the function contract, `control` holds a whole cmsghdr + data.
    unsafe {
        let cmsg = control.cast::<libc::cmsghdr>();
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len);
    }
}

/// Calls `f` for each fd carried by `SCM_RIGHTS` messages in `control`.
/// Never reads past `control`; a malformed header ends the walk.
pub fn for_each_rights_fd(control: &[u8], mut f: impl FnMut(RawFd)) {
    let hdr_len = cmsg_space(0);
    let mut off = 0usize;
    while off + mem::size_of::<libc::cmsghdr>() <= control.len() {
        // SAFETY: the bounds check above keeps the unaligned read inside `control`.
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control.as_ptr().add(off).cast()) };
        let len = hdr.cmsg_len;
        // A bogus length (up to usize::MAX) must end the walk, not overflow.
        match off.checked_add(len) {
            Some(end) if len >= hdr_len && end <= control.len() => {}
            _ => break,
        }
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            let data = &control[off + hdr_len..off + len];
            for chunk in data.chunks_exact(mem::size_of::<RawFd>()) {
                f(RawFd::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            }
        }
        off += cmsg_space(len - hdr_len);
    }
}

/// `recvmsg` into `data` with `control` for fds (`MSG_CMSG_CLOEXEC`).
/// Returns (bytes, msg_flags, control bytes used).
pub fn recvmsg(fd: RawFd, data: &mut [u8], control: &mut [u8]) -> Result<(usize, i32, usize)> {
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    // SAFETY: `msg` points at `iov` (valid for `data`) and at `control`, both live.
    let n = syscall!(recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC))?;
    Ok((n as usize, msg.msg_flags, msg.msg_controllen))
}

// ---- datagrams -------------------------------------------------------------

impl SockAddr {
    /// An address from the kernel's bytes (a recvmsg name), cut to the
    /// storage size; `to_std` is `None` if they are not an IP address.
    pub fn from_bytes(bytes: &[u8]) -> SockAddr {
        let mut out = SockAddr::empty();
        let n = bytes.len().min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `n` bytes fit in the storage; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut out.storage as *mut libc::sockaddr_storage).cast(), n)
        };
        out.len = n as _;
        out
    }
}

/// A new non-blocking, close-on-exec datagram (UDP) socket.
pub fn dgram_socket(family: i32) -> Result<OwnedFd> {
    let fd = syscall!(socket(family, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0))?;
    // SAFETY: socket returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// Dissolves a datagram socket's association (`connect` to `AF_UNSPEC`).
pub fn disconnect(fd: RawFd) -> Result<()> {
    let mut addr = SockAddr::empty();
    addr.storage.ss_family = libc::AF_UNSPEC as _;
    addr.len = mem::size_of::<libc::sa_family_t>() as _;
    match connect(fd, &addr) {
        // Some kernels answer EAFNOSUPPORT yet disconnect (libuv ignores it too).
        Err(e) if e.errno() == Some(libc::EAFNOSUPPORT) => Ok(()),
        r => r,
    }
}

/// Sends `data` as one datagram to `addr` (or the connected peer) with
/// `MSG_NOSIGNAL`, now or `EAGAIN`.
pub fn send_to(fd: RawFd, data: &[u8], addr: Option<&SockAddr>) -> Result<usize> {
    let (ptr, len) = match addr {
        Some(a) => (a.as_ptr(), a.len),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `data` and `addr` are valid for reads for the call.
    let n = syscall!(sendto(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL, ptr, len))?;
    Ok(n as usize)
}

/// `sendmmsg` with `MSG_NOSIGNAL`: sends the messages in order until one
/// would block or fails; returns how many went (`Err` if the first did not).
///
/// # Safety
/// Every pointer in `msgs` (names, iovec arrays, the memory they describe)
/// must be valid for reads for the call's duration.
pub unsafe fn sendmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> Result<usize> {
    let n = syscall!(sendmmsg(fd, msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// `recvmmsg` without waiting: fills the messages in order until the socket
/// is drained; returns how many were filled (`Err`, `EAGAIN` included, if
/// none was). Each filled header's `msg_len`, `msg_namelen` and `msg_flags`
/// say what arrived.
///
/// # Safety
/// Every pointer in `msgs` (names, iovec arrays, control buffers, the memory
/// the iovecs describe) must be valid for writes, and not accessed by anyone
/// else, for the call's duration.
pub unsafe fn recvmmsg(fd: RawFd, msgs: &mut [libc::mmsghdr]) -> Result<usize> {
    let n = syscall!(recvmmsg(
        fd,
        msgs.as_mut_ptr(),
        msgs.len() as u32,
        libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        std::ptr::null_mut()
    ))?;
    Ok(n as usize)
}

fn setsockopt_val<T>(fd: RawFd, level: i32, name: i32, value: &T) -> Result<()> {
    // SAFETY: `value` is a valid `T` for the length passed.
    syscall!(setsockopt(fd, level, name, (value as *const T).cast(), mem::size_of::<T>() as libc::socklen_t))?;
    Ok(())
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr { s_addr: u32::from_ne_bytes(a.octets()) }
}

pub fn set_broadcast(fd: RawFd, on: bool) -> Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, on as i32)
}

/// The unicast TTL (IPv4) or hop limit (IPv6).
pub fn set_ttl(fd: RawFd, ipv6: bool, ttl: i32) -> Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, ttl)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TTL, ttl)
    }
}

/// The multicast TTL (IPv4) or hop limit (IPv6).
pub fn set_multicast_ttl(fd: RawFd, ipv6: bool, ttl: i32) -> Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, ttl)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, ttl)
    }
}

pub fn set_multicast_loop(fd: RawFd, ipv6: bool, on: bool) -> Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, on as i32)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, on as i32)
    }
}

/// The interface IPv4 multicast leaves by: the one with address `addr`, or
/// interface `ifindex` (0 with an unspecified `addr`: the routing table's).
pub fn set_multicast_if_v4(fd: RawFd, addr: Ipv4Addr, ifindex: u32) -> Result<()> {
    let req = libc::ip_mreqn {
        imr_multiaddr: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_address: in_addr(addr),
        imr_ifindex: ifindex as i32,
    };
    setsockopt_val(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &req)
}

/// The interface IPv6 multicast leaves by (0: the routing table's).
pub fn set_multicast_if_v6(fd: RawFd, ifindex: u32) -> Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, ifindex as i32)
}

/// Joins or leaves IPv4 group `group` on the interface with address
/// `iface` or index `ifindex` (both unspecified: the kernel chooses).
pub fn membership_v4(fd: RawFd, group: Ipv4Addr, iface: Ipv4Addr, ifindex: u32, join: bool) -> Result<()> {
    let req =
        libc::ip_mreqn { imr_multiaddr: in_addr(group), imr_address: in_addr(iface), imr_ifindex: ifindex as i32 };
    let name = if join { libc::IP_ADD_MEMBERSHIP } else { libc::IP_DROP_MEMBERSHIP };
    setsockopt_val(fd, libc::IPPROTO_IP, name, &req)
}

/// Joins or leaves IPv6 group `group` on interface `ifindex` (0: the
/// kernel chooses).
pub fn membership_v6(fd: RawFd, group: Ipv6Addr, ifindex: u32, join: bool) -> Result<()> {
    let req =
        libc::ipv6_mreq { ipv6mr_multiaddr: libc::in6_addr { s6_addr: group.octets() }, ipv6mr_interface: ifindex };
    let name = if join { libc::IPV6_ADD_MEMBERSHIP } else { libc::IPV6_DROP_MEMBERSHIP };
    setsockopt_val(fd, libc::IPPROTO_IPV6, name, &req)
}

/// Joins or leaves the IPv4 source-specific group (`group`, `source`) on
/// the interface with address `iface`.
pub fn source_membership_v4(fd: RawFd, group: Ipv4Addr, iface: Ipv4Addr, source: Ipv4Addr, join: bool) -> Result<()> {
    let req = libc::ip_mreq_source {
        imr_multiaddr: in_addr(group),
        imr_interface: in_addr(iface),
        imr_sourceaddr: in_addr(source),
    };
    let name = if join { libc::IP_ADD_SOURCE_MEMBERSHIP } else { libc::IP_DROP_SOURCE_MEMBERSHIP };
    setsockopt_val(fd, libc::IPPROTO_IP, name, &req)
}

/// Joins or leaves the source-specific group (`group`, `source`), both of
/// one family, on interface `ifindex` (`MCAST_JOIN_SOURCE_GROUP`: IPv6, or
/// IPv4 by interface index).
pub fn source_membership(fd: RawFd, group: &SocketAddr, source: &SocketAddr, ifindex: u32, join: bool) -> Result<()> {
    let level = if group.is_ipv4() { libc::IPPROTO_IP } else { libc::IPPROTO_IPV6 };
    let req = libc::group_source_req {
        gsr_interface: ifindex,
        gsr_group: SockAddr::from_std(group).storage,
        gsr_source: SockAddr::from_std(source).storage,
    };
    let name = if join { libc::MCAST_JOIN_SOURCE_GROUP } else { libc::MCAST_LEAVE_SOURCE_GROUP };
    setsockopt_val(fd, level, name, &req)
}

/// `SO_SNDBUF` (`send == true`) or `SO_RCVBUF`, as the kernel reports it
/// (Linux doubles what was set, for its bookkeeping).
pub fn buffer_size(fd: RawFd, send: bool) -> Result<usize> {
    let name = if send { libc::SO_SNDBUF } else { libc::SO_RCVBUF };
    Ok(getsockopt_int(fd, libc::SOL_SOCKET, name)?.max(0) as usize)
}

pub fn set_buffer_size(fd: RawFd, send: bool, bytes: usize) -> Result<()> {
    let name = if send { libc::SO_SNDBUF } else { libc::SO_RCVBUF };
    let value = i32::try_from(bytes).map_err(|_| Error::EINVAL)?;
    setsockopt_int(fd, libc::SOL_SOCKET, name, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, level: i32, ty: i32) -> Vec<u8> {
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out
    }

    /// Found by the `cmsg` fuzz target: a `cmsg_len` near `usize::MAX`
    /// overflowed the bounds check. It must end the walk.
    #[test]
    fn a_huge_cmsg_len_ends_the_walk() {
        let mut control = header(cmsg_space(0) + 4, libc::SOL_SOCKET, libc::SCM_RIGHTS);
        control.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        control.extend(header(usize::MAX - 3, libc::SOL_SOCKET, libc::SCM_RIGHTS));
        control.extend_from_slice(&[9; 16]);
        let mut fds = Vec::new();
        for_each_rights_fd(&control, |fd| fds.push(fd));
        assert_eq!(fds, [7]);
    }
}
