//! Name resolution: `getaddrinfo` and `getnameinfo`, blocking (the loop
//! runs them on its work pool). `EAI_*` codes become uvring errors.

use crate::error::{Error, Result};
use crate::sys::socket::SockAddr;
use std::ffi::{CStr, CString};
use std::net::SocketAddr;

/// glibc's `EAI_ADDRFAMILY` (a GNU extension the libc crate does not name).
const EAI_ADDRFAMILY: i32 = -9;

/// The `addrinfo` hints, in libc's terms.
#[derive(Copy, Clone, Debug, Default)]
pub struct Hints {
    pub family: i32,
    pub socktype: i32,
    pub protocol: i32,
    pub flags: i32,
}

/// The error for a `getaddrinfo`/`getnameinfo` return code; `EAI_SYSTEM`
/// is the thread's `errno`.
fn eai_error(code: i32) -> Error {
    match code {
        libc::EAI_AGAIN => Error::EAI_AGAIN,
        libc::EAI_BADFLAGS => Error::EAI_BADFLAGS,
        libc::EAI_FAIL => Error::EAI_FAIL,
        libc::EAI_FAMILY => Error::EAI_FAMILY,
        libc::EAI_MEMORY => Error::EAI_MEMORY,
        libc::EAI_NODATA => Error::EAI_NODATA,
        libc::EAI_NONAME => Error::EAI_NONAME,
        libc::EAI_OVERFLOW => Error::EAI_OVERFLOW,
        libc::EAI_SERVICE => Error::EAI_SERVICE,
        libc::EAI_SOCKTYPE => Error::EAI_SOCKTYPE,
        EAI_ADDRFAMILY => Error::EAI_ADDRFAMILY,
        libc::EAI_SYSTEM => Error::last_os_error(),
        _ => Error::EAI_FAIL,
    }
}

/// The IPv4 and IPv6 addresses `host`/`service` resolve to, in the order
/// `getaddrinfo` gives them, each once (with no socket type in the hints the
/// resolver lists every address once per type). `None` stands for a null
/// pointer. Blocks.
pub fn getaddrinfo(host: Option<&CStr>, service: Option<&CStr>, hints: &Hints) -> Result<Vec<SocketAddr>> {
    // SAFETY: addrinfo is plain data; all-zero is a valid value.
    let mut h: libc::addrinfo = unsafe { std::mem::zeroed() };
    h.ai_family = hints.family;
    h.ai_socktype = hints.socktype;
    h.ai_protocol = hints.protocol;
    h.ai_flags = hints.flags;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: the strings are NUL-terminated (or null), `h` is a valid
    // hints struct, and `list` receives a list we free below.
    let rc = unsafe { libc::getaddrinfo(ptr(host), ptr(service), &h, &mut list) };
    if rc != 0 {
        return Err(eai_error(rc));
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getaddrinfo returned, not yet freed.
        let ai = unsafe { &*cur };
        let len = ai.ai_addrlen as usize;
        if !ai.ai_addr.is_null() && len <= std::mem::size_of::<libc::sockaddr_storage>() {
            let mut sa = SockAddr::empty();
            // SAFETY: `ai_addr` points at `len` bytes of address, which fit
            // the storage; the regions do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    ai.ai_addr.cast::<u8>(),
                    (&mut sa.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                    len,
                )
            };
            sa.len = len as _;
            if let Some(addr) = sa.to_std() {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        cur = ai.ai_next;
    }
    // SAFETY: `list` came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(list) };
    Ok(out)
}

/// The host and service names of `addr` (`getnameinfo` with `flags`).
/// Blocks.
pub fn getnameinfo(addr: &SocketAddr, flags: i32) -> Result<(String, String)> {
    let sa = SockAddr::from_std(addr);
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    let mut service = [0 as libc::c_char; 32];
    // SAFETY: `sa` holds a valid address of `sa.len` bytes; both buffers
    // are writable for the lengths passed.
    let rc = unsafe {
        libc::getnameinfo(
            sa.as_ptr(),
            sa.len,
            host.as_mut_ptr(),
            host.len() as _,
            service.as_mut_ptr(),
            service.len() as _,
            flags,
        )
    };
    if rc != 0 {
        return Err(eai_error(rc));
    }
    // SAFETY: on success both buffers hold NUL-terminated strings.
    let text = |b: &[libc::c_char]| unsafe { CStr::from_ptr(b.as_ptr()) }.to_string_lossy().into_owned();
    Ok((text(&host), text(&service)))
}

/// A C string for the resolver; `EINVAL` for an interior NUL.
pub fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::EINVAL)
}

/// libc's values for the public hint and flag types.
pub mod consts {
    pub const AF_UNSPEC: i32 = libc::AF_UNSPEC;
    pub const AF_INET: i32 = libc::AF_INET;
    pub const AF_INET6: i32 = libc::AF_INET6;
    pub const SOCK_STREAM: i32 = libc::SOCK_STREAM;
    pub const SOCK_DGRAM: i32 = libc::SOCK_DGRAM;
    pub const AI_PASSIVE: i32 = libc::AI_PASSIVE;
    pub const AI_NUMERICHOST: i32 = libc::AI_NUMERICHOST;
    pub const AI_NUMERICSERV: i32 = libc::AI_NUMERICSERV;
    pub const AI_ADDRCONFIG: i32 = libc::AI_ADDRCONFIG;
    pub const AI_V4MAPPED: i32 = libc::AI_V4MAPPED;
    pub const AI_ALL: i32 = libc::AI_ALL;
    pub const NI_NUMERICHOST: i32 = libc::NI_NUMERICHOST;
    pub const NI_NUMERICSERV: i32 = libc::NI_NUMERICSERV;
    pub const NI_NOFQDN: i32 = libc::NI_NOFQDN;
    pub const NI_NAMEREQD: i32 = libc::NI_NAMEREQD;
    pub const NI_DGRAM: i32 = libc::NI_DGRAM;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_host_resolves_without_a_resolver() {
        let hints = Hints { flags: libc::AI_NUMERICHOST | libc::AI_NUMERICSERV, ..Hints::default() };
        let addrs = getaddrinfo(Some(c"127.0.0.1"), Some(c"80"), &hints).unwrap();
        assert_eq!(addrs, ["127.0.0.1:80".parse::<SocketAddr>().unwrap()], "each address once");
        let bad = getaddrinfo(Some(c"not a number"), None, &hints).unwrap_err();
        assert_eq!(bad, Error::EAI_NONAME);
        let bad_service = getaddrinfo(Some(c"127.0.0.1"), Some(c"http-ish"), &hints).unwrap_err();
        assert_eq!(bad_service, Error::EAI_NONAME);
    }

    #[test]
    fn numeric_name_info() {
        let addr: SocketAddr = "[::1]:8080".parse().unwrap();
        let (host, service) = getnameinfo(&addr, libc::NI_NUMERICHOST | libc::NI_NUMERICSERV).unwrap();
        assert_eq!((host.as_str(), service.as_str()), ("::1", "8080"));
    }

    #[test]
    fn every_eai_code_has_a_name() {
        for code in [-1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -12] {
            let e = eai_error(code);
            assert!(e.code() <= -3000 && e.errno().is_none(), "{code} -> {e:?}");
            assert!(!format!("{e}").is_empty());
        }
    }
}
