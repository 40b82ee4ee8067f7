//! File-to-socket calls: `sendfile(2)`, and the page-cache probe
//! (`cachestat(2)`) that lets the loop thread call it without ever waiting
//! for a disk read, plus the blocking warm-up the work pool runs on a miss.

use crate::error::{Error, Result};
use crate::sys::syscall;
use std::cell::RefCell;
use std::os::fd::RawFd;

/// `cachestat(2)`'s number (Linux 6.5; the same on every architecture,
/// from the unified syscall table).
const SYS_CACHESTAT: libc::c_long = 451;

#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// `sendfile(sock, file, &offset, count)`: bytes sent (0 at the file's
/// end). `sock` is non-blocking, so a full socket is `EAGAIN`; a page
/// missing from the page cache makes the call wait for the disk, which is
/// why the loop asks [`cached`] first.
pub fn sendfile(sock: RawFd, file: RawFd, offset: u64, count: usize) -> Result<usize> {
    let mut off = libc::off_t::try_from(offset).map_err(|_| Error::EINVAL)?;
    // SAFETY: `off` is a valid off_t for the call to update.
    let n = syscall!(sendfile(sock, file, &mut off, count))?;
    Ok(n as usize)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Whether every page of `file`'s `offset..offset + len` is in the page
/// cache (`cachestat`, which never blocks). `Err` where the kernel or the
/// file system cannot say (`ENOSYS` before Linux 6.5, `EOPNOTSUPP`): the
/// caller treats that as a miss.
pub fn cached(file: RawFd, offset: u64, len: u64) -> Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let page = page_size();
    let pages = (offset + len).div_ceil(page) - offset / page;
    let range = CachestatRange { off: offset, len };
    let mut st = Cachestat::default();
    // SAFETY: `range` and `st` are valid, correctly laid out records for
    // the duration of the call.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file as libc::c_uint,
            &range as *const CachestatRange,
            &mut st as *mut Cachestat,
            0,
        )
    };
    if r < 0 {
        return Err(Error::last_os_error());
    }
    Ok(st.nr_cache >= pages)
}

thread_local! {
    /// The warm-up's scratch buffer, one per pool thread, kept.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads `offset..offset + len` of `file` (or up to its end) into the page
/// cache, blocking: a work-pool thread runs it before the loop sends a
/// range the probe found missing.
pub fn warm(file: RawFd, offset: u64, len: u64) -> Result<()> {
    const STEP: usize = 128 * 1024;
    SCRATCH.with(|s| {
        let mut buf = s.borrow_mut();
        if buf.len() < STEP {
            buf.resize(STEP, 0);
        }
        let mut off = offset;
        let end = offset.saturating_add(len);
        while off < end {
            let n = (end - off).min(STEP as u64) as usize;
            let got = crate::sys::fs::read_at(file, &mut buf[..n], Some(off))?;
            if got == 0 {
                break;
            }
            off += got as u64;
        }
        Ok(())
    })
}

/// `poll(2)`'s writable event, for the loop's wait on a full socket.
pub const POLLOUT: u32 = libc::POLLOUT as u32;
/// An interrupted call, to retry.
pub const EINTR: i32 = libc::EINTR;
