//! Name resolution on the work pool (`uv_getaddrinfo`, `uv_getnameinfo`)
//! and connecting by host name.
//!
//! The resolver (`getaddrinfo(3)`: `/etc/hosts`, DNS, NSS modules) blocks,
//! so each request is a work item ([`Loop::queue_work`]): its callback runs
//! on the loop with the result, and [`Loop::cancel_work`] cancels it before
//! a pool thread starts it (the callback then gets `ECANCELED`). Failures
//! are values: `EAI_*` codes become [`Error::EAI_NONAME`],
//! [`Error::EAI_AGAIN`], ... (libuv's `UV_EAI_*` values), never a panic.

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::handle::{OnConnect, TcpSocket, TcpStream};
use crate::stream::Stream;
use crate::sys::dns::{self as sysdns, consts as c};
use crate::work::Work;
use std::net::{IpAddr, SocketAddr};

/// The address family asked for (`ai_family`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 and IPv6 (`AF_UNSPEC`).
    #[default]
    Any,
    /// IPv4 only (`AF_INET`).
    Ipv4,
    /// IPv6 only (`AF_INET6`).
    Ipv6,
}

/// The socket type asked for (`ai_socktype`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// Any type (each address is still reported once).
    #[default]
    Any,
    /// Stream sockets (`SOCK_STREAM`, TCP).
    Stream,
    /// Datagram sockets (`SOCK_DGRAM`, UDP).
    Datagram,
}

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $value:expr,)* }) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Default, PartialEq, Eq, Hash, Debug)]
        pub struct $name(i32);

        impl $name {
            $($(#[$fdoc])* pub const $flag: $name = $name($value);)*

            /// No flag.
            pub const fn empty() -> $name {
                $name(0)
            }
            /// Whether every flag of `other` is set.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }
    };
}

flag_set!(
    /// `ai_flags` for [`AddrInfoHints`].
    AddrInfoFlags {
        /// Addresses for binding (the wildcard address when the host is empty).
        PASSIVE = c::AI_PASSIVE,
        /// The host must be a numeric address: no lookup.
        NUMERIC_HOST = c::AI_NUMERICHOST,
        /// The service must be a port number.
        NUMERIC_SERVICE = c::AI_NUMERICSERV,
        /// Only families the host has a (non-loopback) address of.
        ADDRCONFIG = c::AI_ADDRCONFIG,
        /// IPv4-mapped IPv6 addresses when asking for IPv6 and there is none.
        V4MAPPED = c::AI_V4MAPPED,
        /// With `V4MAPPED`: IPv6 and IPv4-mapped addresses.
        ALL = c::AI_ALL,
    }
);

flag_set!(
    /// Flags for [`Loop::getnameinfo`].
    NameInfoFlags {
        /// The numeric form of the host, no reverse lookup.
        NUMERIC_HOST = c::NI_NUMERICHOST,
        /// The port number, not the service name.
        NUMERIC_SERVICE = c::NI_NUMERICSERV,
        /// Only the host part of a local name.
        NO_FQDN = c::NI_NOFQDN,
        /// Fail (`EAI_NONAME`) instead of giving the numeric form when the
        /// address has no name.
        NAME_REQUIRED = c::NI_NAMEREQD,
        /// The service is a datagram one (names differ for a few ports).
        DATAGRAM = c::NI_DGRAM,
    }
);

/// What [`Loop::getaddrinfo`] looks for (`struct addrinfo` hints).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrInfoHints {
    /// The address family wanted; default [`AddressFamily::Any`].
    pub family: AddressFamily,
    /// The socket type wanted; default [`SocketKind::Any`].
    pub socket: SocketKind,
    /// `ai_flags`; default none.
    pub flags: AddrInfoFlags,
}

impl AddrInfoHints {
    /// Sets the family.
    pub fn family(mut self, family: AddressFamily) -> Self {
        self.family = family;
        self
    }
    /// Sets the socket type.
    pub fn socket(mut self, socket: SocketKind) -> Self {
        self.socket = socket;
        self
    }
    /// Sets the flags.
    pub fn flags(mut self, flags: AddrInfoFlags) -> Self {
        self.flags = flags;
        self
    }

    fn to_sys(self) -> sysdns::Hints {
        sysdns::Hints {
            family: match self.family {
                AddressFamily::Any => c::AF_UNSPEC,
                AddressFamily::Ipv4 => c::AF_INET,
                AddressFamily::Ipv6 => c::AF_INET6,
            },
            socktype: match self.socket {
                SocketKind::Any => 0,
                SocketKind::Stream => c::SOCK_STREAM,
                SocketKind::Datagram => c::SOCK_DGRAM,
            },
            protocol: 0,
            flags: self.flags.0,
        }
    }
}

/// Splits `"host:port"` (`"[v6]:port"` for an IPv6 literal); `EINVAL` if
/// there is no host or the port is not a number.
fn split_host_port(target: &str) -> Result<(&str, u16)> {
    let (host, port) = target.rsplit_once(':').ok_or(Error::EINVAL)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or(Error::EINVAL)?,
        None if host.contains(':') => return Err(Error::EINVAL),
        None => host,
    };
    if host.is_empty() {
        return Err(Error::EINVAL);
    }
    Ok((host, port.parse().map_err(|_| Error::EINVAL)?))
}

impl<D: 'static> Loop<D> {
    /// Resolves `host` and `service` on the work pool (`uv_getaddrinfo`);
    /// `cb` gets the addresses in the resolver's order, each once, with
    /// the port from `service` (0 without one), or an error value
    /// ([`Error::EAI_NONAME`] for an unknown name, [`Error::EAI_AGAIN`] when
    /// no name server answered, ...). An empty `host` means none (with
    /// [`AddrInfoFlags::PASSIVE`]: the wildcard address). `EINVAL` here for
    /// a string with a NUL byte; the returned request can be cancelled with
    /// [`cancel_work`](Self::cancel_work).
    ///
    /// # Errors
    ///
    /// `EINVAL` for a `host` or `service` with a NUL byte; `EAGAIN` if the work pool has no thread
    /// and none can be started. Resolution failures (`EAI_NONAME`, `EAI_AGAIN`, `EAI_NODATA` for an
    /// answer without addresses, ...) and `ECANCELED` after [`cancel_work`](Self::cancel_work)
    /// reach `cb`.
    pub fn getaddrinfo(
        &mut self,
        host: &str,
        service: Option<&str>,
        hints: AddrInfoHints,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<Vec<SocketAddr>>) + 'static,
    ) -> Result<Work> {
        let host = if host.is_empty() { None } else { Some(sysdns::c_string(host)?) };
        let service = service.map(sysdns::c_string).transpose()?;
        let hints = hints.to_sys();
        self.queue_work(
            move || sysdns::getaddrinfo(host.as_deref(), service.as_deref(), &hints),
            move |lp, d, r| {
                let r = r.and_then(|found| found).and_then(|addrs| match addrs.is_empty() {
                    true => Err(Error::EAI_NODATA),
                    false => Ok(addrs),
                });
                cb(lp, d, r)
            },
        )
    }

    /// The host and service names of `addr` (`uv_getnameinfo`), resolved on
    /// the work pool; `cb` gets `(host, service)` or an error value.
    ///
    /// # Errors
    ///
    /// `EAGAIN` if the work pool has no thread and none can be started. Lookup failures
    /// (`EAI_NONAME` with [`NameInfoFlags::NAME_REQUIRED`], `EAI_AGAIN`, ...) and `ECANCELED` reach
    /// `cb`.
    pub fn getnameinfo(
        &mut self,
        addr: SocketAddr,
        flags: NameInfoFlags,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<(String, String)>) + 'static,
    ) -> Result<Work> {
        self.queue_work(move || sysdns::getnameinfo(&addr, flags.0), move |lp, d, r| cb(lp, d, r.and_then(|n| n)))
    }

    /// Connects to `"host:port"` (`"[v6]:port"` for an IPv6 literal): the
    /// host is resolved on the work pool, then each of its addresses is
    /// tried in turn, as [`tcp_connect_addrs`](Self::tcp_connect_addrs)
    /// does; `cb` runs once, with `Ok` for the first address that accepted,
    /// the last address's error, or the resolver's error. A numeric host
    /// is not resolved. The socket becomes the returned [`TcpStream`] at
    /// once: reads, writes and a shutdown may be queued, and start after
    /// the connect. Closing it meanwhile cancels the request (`cb` gets
    /// `ECANCELED`). `EINVAL` here for a malformed target.
    ///
    /// # Errors
    ///
    /// Returned here, `cb` never runs: `EINVAL` for a target that is not `host:port` with a port
    /// number (or `[v6]:port`); [`Error::STALE_HANDLE`] if `s` is closed or closing;
    /// [`Error::INVALID_STATE`] if it is connecting, connected or listening; `EAGAIN` if the work
    /// pool cannot start; for a numeric host, as [`tcp_connect_addrs`](Self::tcp_connect_addrs).
    /// Resolver errors (`EAI_NONAME`, ...), connect errors and `ECANCELED` (closed meanwhile) reach
    /// `cb`.
    pub fn tcp_connect_host(&mut self, s: TcpSocket, target: &str, cb: &OnConnect<D, TcpStream>) -> Result<TcpStream> {
        let (host, port) = split_host_port(target)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.tcp_connect_addrs(s, &[SocketAddr::new(ip, port)], cb);
        }
        let stream = Stream::of(s);
        let st = self.stream_state(stream)?;
        if st.on_connect.is_some() || st.listening || st.connected {
            return Err(Error::INVALID_STATE);
        }
        let hints = AddrInfoHints::default().socket(SocketKind::Stream);
        let w = self.getaddrinfo(host, Some(&port.to_string()), hints, move |lp, d, r| lp.on_resolved(stream, r, d))?;
        self.connecting(stream)?.resolve = Some(w);
        let st = self.stream_state(stream)?;
        st.on_connect = Some(cb.f.clone());
        self.active_reqs += 1;
        Ok(TcpStream(stream.0))
    }

    /// A connect's name is resolved: try its addresses, or fail the
    /// connect with the resolver's error. A stream closed meanwhile has
    /// had its callback (`ECANCELED`) from the close.
    fn on_resolved(&mut self, s: Stream, r: Result<Vec<SocketAddr>>, d: &mut D) {
        let Ok(c) = self.connecting(s) else { return };
        c.resolve = None;
        let addrs = match r {
            Ok(addrs) => addrs,
            Err(e) => return self.connect_done(s, Err(e), d),
        };
        c.addrs.clear();
        c.addrs.extend(addrs.iter().rev());
        if let Err(e) = self.connect_filter_bound(s) {
            return self.connect_done(s, Err(e), d);
        }
        self.connect_next(s, Error::EAI_NODATA, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split() {
        assert_eq!(split_host_port("localhost:80"), Ok(("localhost", 80)));
        assert_eq!(split_host_port("[::1]:8080"), Ok(("::1", 8080)));
        assert_eq!(split_host_port("10.0.0.1:0"), Ok(("10.0.0.1", 0)));
        for bad in ["localhost", ":80", "host:port", "host:65536", "::1:80", "[::1:80", "[]:1"] {
            assert_eq!(split_host_port(bad), Err(Error::EINVAL), "{bad}");
        }
    }
}
