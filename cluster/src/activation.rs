//! Listening sockets a primary inherits instead of binding: systemd socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, fds from 3 on,
//! see `sd_listen_fds(3)`) and the hand-over of a zero-downtime upgrade,
//! which passes the old primary's listeners the same way under uvring's
//! own names (`UVRING_LISTEN_FDS`, `UVRING_LISTEN_FDNAMES`; no pid check,
//! since the old primary cannot know its child's pid before the exec).
//!
//! [`ListenFds::from_env`] claims the fds, makes them close-on-exec (so the
//! workers, and anything else spawned later, never inherit them by
//! accident) and unsets the variables (so the workers, which inherit the
//! environment, do not try to adopt them). Give the result to
//! [`Primary::adopt`](crate::Primary::adopt): a worker's listen on a
//! matching address then gets the inherited socket instead of a new bind.

use crate::settings::ENV_NORMAL_SCHED;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use uvring::{Error, Result};

/// systemd's `LISTEN_FDS` (the number of fds passed, from fd 3 on).
pub const ENV_SD_LISTEN_FDS: &str = "LISTEN_FDS";
/// systemd's `LISTEN_PID`: the fds are for this process only.
pub const ENV_SD_LISTEN_PID: &str = "LISTEN_PID";
/// systemd's `LISTEN_FDNAMES`: `:`-separated names, one per fd.
pub const ENV_SD_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// An upgrade's hand-over: the number of listening fds passed, from fd 3 on.
pub const ENV_LISTEN_FDS: &str = "UVRING_LISTEN_FDS";
/// An upgrade's hand-over: `;`-separated names, one per fd (the address the
/// workers asked for, which differs from the bound one for port 0).
pub const ENV_LISTEN_FDNAMES: &str = "UVRING_LISTEN_FDNAMES";
/// An upgrade's hand-over: the fd on which the new primary says, with one
/// byte, that its workers listen (the old one then drains and exits).
pub const ENV_UPGRADE_READY_FD: &str = "UVRING_UPGRADE_READY_FD";

/// The first inherited fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More inherited fds than this is a broken environment, not a unit file.
const MAX_LISTEN_FDS: usize = 4096;

/// Where inherited sockets came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ListenSource {
    /// None were passed.
    #[default]
    None,
    /// systemd socket activation (`LISTEN_FDS` for this pid).
    Systemd,
    /// The primary this one replaces (a zero-downtime upgrade).
    Upgrade,
}

impl std::fmt::Display for ListenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListenSource::None => "none",
            ListenSource::Systemd => "systemd",
            ListenSource::Upgrade => "upgrade",
        })
    }
}

/// One inherited listening socket.
#[derive(Debug)]
struct Inherited {
    fd: OwnedFd,
    /// Its bound address.
    local: SocketAddr,
    /// The address the workers asked for, when the hand-over named it.
    requested: Option<SocketAddr>,
}

/// The listening sockets this process inherited, claimed and close-on-exec
/// (see the module docs).
#[derive(Debug, Default)]
pub struct ListenFds {
    source: ListenSource,
    sockets: Vec<Inherited>,
    /// fds passed that are not listening TCP sockets (closed), with why.
    ignored: Vec<(RawFd, &'static str)>,
    /// The upgrade's readiness fd (see [`ENV_UPGRADE_READY_FD`]).
    ready: Option<OwnedFd>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn count(v: &str) -> Result<usize> {
    let n: usize = v.trim().parse().map_err(|_| Error::EINVAL)?;
    if n > MAX_LISTEN_FDS {
        return Err(Error::EINVAL);
    }
    Ok(n)
}

impl ListenFds {
    /// Nothing inherited.
    pub fn none() -> ListenFds {
        ListenFds::default()
    }

    /// Claims the sockets named by the environment: an upgrade's
    /// `UVRING_LISTEN_FDS` first, else systemd's `LISTEN_FDS` when
    /// `LISTEN_PID` is this process. Unsets every one of these variables
    /// either way, and makes the claimed fds close-on-exec. An fd that is
    /// not a listening TCP socket (a UNIX or UDP socket from the unit file,
    /// say) is closed and listed in [`ignored`](Self::ignored). `EINVAL`
    /// when a count is not a number (or absurdly large); nothing is
    /// claimed then.
    ///
    /// Call it early in `main`, before threads start: it changes the
    /// process environment.
    pub fn from_env() -> Result<ListenFds> {
        let upgrade = var(ENV_LISTEN_FDS);
        let upgrade_names = var(ENV_LISTEN_FDNAMES);
        let ready = var(ENV_UPGRADE_READY_FD);
        let sd = var(ENV_SD_LISTEN_FDS);
        let sd_pid = var(ENV_SD_LISTEN_PID);
        let sd_names = var(ENV_SD_LISTEN_FDNAMES);
        for name in [
            ENV_LISTEN_FDS,
            ENV_LISTEN_FDNAMES,
            ENV_UPGRADE_READY_FD,
            ENV_SD_LISTEN_FDS,
            ENV_SD_LISTEN_PID,
            ENV_SD_LISTEN_FDNAMES,
        ] {
            std::env::remove_var(name);
        }
        let mut out = ListenFds::default();
        let (n, names, sep) = if let Some(n) = upgrade {
            out.source = ListenSource::Upgrade;
            (count(&n)?, upgrade_names, ';')
        } else if let Some(n) =
            sd.filter(|_| sd_pid.and_then(|p| p.trim().parse::<u32>().ok()) == Some(std::process::id()))
        {
            out.source = ListenSource::Systemd;
            (count(&n)?, sd_names, ':')
        } else {
            return Ok(out);
        };
        if out.source == ListenSource::Upgrade && std::env::var_os(ENV_NORMAL_SCHED).is_some() {
            // The old primary ran under `SCHED_BATCH`, which this process
            // inherited: back to the normal policy before deciding anew.
            std::env::remove_var(ENV_NORMAL_SCHED);
            let _ = uvring::os::set_sched_batch(false);
        }
        if out.source == ListenSource::Upgrade {
            if let Some(fd) = ready.and_then(|v| v.trim().parse::<RawFd>().ok()) {
                if fd >= LISTEN_FDS_START + n as RawFd {
                    // SAFETY: the old primary put this fd here for us;
                    // nothing in this process has claimed it.
                    out.ready = unsafe { uvring::os::adopt_inherited(fd) }.ok();
                }
            }
        }
        let names: Vec<&str> = names.as_deref().map(|s| s.split(sep).collect()).unwrap_or_default();
        for i in 0..n {
            let raw = LISTEN_FDS_START + i as RawFd;
            // SAFETY: the fds from 3 on were passed to this process for it
            // to take (sd_listen_fds(3)); nothing here has claimed them.
            let Ok(fd) = (unsafe { uvring::os::adopt_inherited(raw) }) else {
                out.ignored.push((raw, "not open"));
                continue;
            };
            if !uvring::os::is_listening_stream(fd.as_fd()) {
                out.ignored.push((raw, "not a listening stream socket"));
                continue;
            }
            let Ok(local) = uvring::os::local_addr(fd.as_fd()) else {
                out.ignored.push((raw, "not a TCP socket"));
                continue;
            };
            let requested = names.get(i).and_then(|s| s.parse().ok());
            out.sockets.push(Inherited { fd, local, requested });
        }
        Ok(out)
    }

    /// Where the sockets came from.
    pub fn source(&self) -> ListenSource {
        self.source
    }

    /// The inherited sockets not yet taken by a listener.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether no socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The bound addresses of the sockets not yet taken.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|s| s.local).collect()
    }

    /// fds that were passed but are not listening TCP sockets (they were
    /// closed), with the reason.
    pub fn ignored(&self) -> &[(RawFd, &'static str)] {
        &self.ignored
    }

    /// Whether this process was started by an upgrade that waits for
    /// [`Primary::announce_ready`](crate::Primary::announce_ready).
    pub fn is_upgrade(&self) -> bool {
        self.source == ListenSource::Upgrade
    }

    /// Takes the socket for a listen on `requested`: the one the hand-over
    /// named with that address, else the one bound to it (a listen on the
    /// wildcard address matches a socket bound to either wildcard on the
    /// same port). Port 0 matches only by name.
    pub(crate) fn take(&mut self, requested: SocketAddr) -> Option<OwnedFd> {
        let by_name = self.sockets.iter().position(|s| s.requested == Some(requested));
        let i = by_name.or_else(|| {
            if requested.port() == 0 {
                return None;
            }
            self.sockets.iter().position(|s| {
                s.local == requested
                    || (s.local.port() == requested.port()
                        && s.local.ip().is_unspecified()
                        && requested.ip().is_unspecified())
            })
        })?;
        Some(self.sockets.swap_remove(i).fd)
    }

    /// Drops every socket left (closes this process's copies).
    pub(crate) fn clear(&mut self) {
        self.sockets.clear();
    }

    /// The upgrade's readiness fd, taken.
    pub(crate) fn take_ready(&mut self) -> Option<OwnedFd> {
        self.ready.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(local: &str, requested: Option<&str>) -> Inherited {
        let l = std::net::TcpListener::bind(local).unwrap();
        let local = l.local_addr().unwrap();
        Inherited { fd: OwnedFd::from(l), local, requested: requested.map(|r| r.parse().unwrap()) }
    }

    fn fds(sockets: Vec<Inherited>) -> ListenFds {
        ListenFds { source: ListenSource::Upgrade, sockets, ..ListenFds::default() }
    }

    #[test]
    fn take_matches_the_name_then_the_bound_address() {
        let a = socket("127.0.0.1:0", Some("127.0.0.1:0"));
        let b = socket("127.0.0.1:0", None);
        let (a_addr, b_addr) = (a.local, b.local);
        let mut f = fds(vec![a, b]);
        // Port 0 matches only the socket named for it.
        let fd = f.take("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(uvring::os::local_addr(fd.as_fd()).unwrap(), a_addr);
        assert!(f.take("127.0.0.1:0".parse().unwrap()).is_none());
        // Another address does not match; the bound one does, once.
        assert!(f.take(SocketAddr::new([127, 0, 0, 2].into(), b_addr.port())).is_none());
        assert!(f.take(b_addr).is_some());
        assert!(f.take(b_addr).is_none() && f.is_empty());
    }

    #[test]
    fn a_wildcard_listen_matches_either_wildcard_on_its_port() {
        let s = socket("0.0.0.0:0", None);
        let port = s.local.port();
        let mut f = fds(vec![s]);
        assert_eq!(f.addresses(), vec![SocketAddr::new([0, 0, 0, 0].into(), port)]);
        assert!(f.take(SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port)).is_some());
    }

    #[test]
    fn counts_are_checked() {
        assert_eq!(count(" 2 "), Ok(2));
        assert_eq!(count("x"), Err(Error::EINVAL));
        assert_eq!(count("-1"), Err(Error::EINVAL));
        assert_eq!(count("100000"), Err(Error::EINVAL));
    }
}
