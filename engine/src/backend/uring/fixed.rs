//! Registered (fixed) files for the sockets the loop reads and writes, and
//! the registered ring fd.
//!
//! A sparse file table is registered at setup; a socket's slot in it is its
//! fd number (so no map is kept: a bit per slot says whether it is filled).
//! The first `Recv`, `RecvMsg` or `Send` on a socket fills its slot
//! (`IORING_REGISTER_FILES_UPDATE`, one syscall per connection, whether the
//! fd came from accept, connect or a message over IPC); from then on its
//! ops name the slot (`IOSQE_FIXED_FILE`), which spares the kernel an
//! `fget`/`fput` per op. `Driver::deregister`, which the loop calls before
//! closing an fd, empties the slot, so the close really closes. An fd past
//! the table's end, or one the kernel will not register, is used as a plain
//! fd: nothing depends on the table having room.

use io_uring::IoUring;
use std::os::fd::{AsRawFd, RawFd};

/// Most slots a table gets (further bounded by `RLIMIT_NOFILE`): fds past
/// it are used unregistered.
pub(super) const MAX_SLOTS: u32 = 16 * 1024;

pub(super) struct FixedFiles {
    /// Bit `fd` set: slot `fd` holds `fd`'s file.
    filled: Box<[u64]>,
    slots: u32,
}

impl FixedFiles {
    /// Registers a sparse table of `min(slots, RLIMIT_NOFILE)` slots; `None`
    /// if the kernel refuses (the backend then uses plain fds).
    pub fn new(ring: &IoUring, slots: u32) -> Option<FixedFiles> {
        let slots = slots.min(nofile_limit()).max(1);
        ring.submitter().register_files_sparse(slots).ok()?;
        Some(FixedFiles { filled: vec![0; slots.div_ceil(64) as usize].into_boxed_slice(), slots })
    }

    fn filled(&self, fd: RawFd) -> bool {
        fd >= 0 && (fd as u32) < self.slots && self.filled[fd as usize / 64] & (1 << (fd % 64)) != 0
    }

    /// The slot of `fd` if it is registered.
    pub fn lookup(&self, fd: RawFd) -> Option<u32> {
        self.filled(fd).then_some(fd as u32)
    }

    /// The slot of `fd`, registering it first if there is room; `None`:
    /// use the plain fd.
    pub fn slot(&mut self, ring: &IoUring, fd: RawFd) -> Option<u32> {
        if self.filled(fd) {
            return Some(fd as u32);
        }
        if fd < 0 || fd as u32 >= self.slots {
            return None;
        }
        match ring.submitter().register_files_update(fd as u32, &[fd]) {
            Ok(1) => {
                self.filled[fd as usize / 64] |= 1 << (fd % 64);
                Some(fd as u32)
            }
            _ => None,
        }
    }

    /// Empties `fd`'s slot (before the loop closes `fd`).
    pub fn release(&mut self, ring: &IoUring, fd: RawFd) {
        if self.filled(fd) {
            // -1 empties a slot. It cannot fail for a slot in range; if it
            // did, the table would keep the file open until the ring goes.
            let _ = ring.submitter().register_files_update(fd as u32, &[-1]);
            self.filled[fd as usize / 64] &= !(1 << (fd % 64));
        }
    }

    /// Slots filled (for tests).
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.filled.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// The soft `RLIMIT_NOFILE` (no fd can be at or past it), capped at
/// [`MAX_SLOTS`].
fn nofile_limit() -> u32 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur.min(MAX_SLOTS as libc::rlim_t) as u32
}

/// `IORING_REGISTER_RING_FDS` / `IORING_UNREGISTER_RING_FDS`.
const REGISTER_RING_FDS: libc::c_uint = 20;
const UNREGISTER_RING_FDS: libc::c_uint = 21;

/// `struct io_uring_rsrc_update`.
#[repr(C)]
struct RsrcUpdate {
    offset: u32,
    resv: u32,
    data: u64,
}

/// Registers the ring's fd with the calling thread (`IORING_REGISTER_RING_FDS`);
/// its index then names the ring in `io_uring_enter` with
/// `IORING_ENTER_REGISTERED_RING`. `None` if the kernel refuses (a thread
/// has at most 16 registered rings).
pub(super) fn register_ring_fd(ring: &IoUring) -> Option<u32> {
    let mut up = RsrcUpdate { offset: u32::MAX, resv: 0, data: ring.as_raw_fd() as u64 };
    // SAFETY: `up` is one io_uring_rsrc_update, valid (and written by the
    // kernel) for the call's duration; nr_args is 1.
    let res = unsafe {
        libc::syscall(libc::SYS_io_uring_register, ring.as_raw_fd(), REGISTER_RING_FDS, &mut up as *mut RsrcUpdate, 1)
    };
    (res == 1).then_some(up.offset)
}

/// Undoes [`register_ring_fd`]: the thread's registration holds a reference
/// to the ring, which would otherwise live until the thread exits.
pub(super) fn unregister_ring_fd(ring: &IoUring, index: u32) {
    let mut up = RsrcUpdate { offset: index, resv: 0, data: 0 };
    // SAFETY: as in `register_ring_fd`.
    let _ = unsafe {
        libc::syscall(libc::SYS_io_uring_register, ring.as_raw_fd(), UNREGISTER_RING_FDS, &mut up as *mut RsrcUpdate, 1)
    };
}

/// `io_uring_enter` on the ring named by `fd` (its fd, or its registered
/// index with `IORING_ENTER_REGISTERED_RING` in `flags`).
///
/// # Safety
/// `arg` must point at `size` bytes the kernel may read as `flags` say.
pub(super) unsafe fn enter(
    fd: RawFd,
    to_submit: u32,
    min_complete: u32,
    flags: u32,
    arg: *const libc::c_void,
    size: usize,
) -> std::io::Result<usize> {
    // SAFETY: forwarded from this function's contract.
    let res = unsafe { libc::syscall(libc::SYS_io_uring_enter, fd, to_submit, min_complete, flags, arg, size) };
    if res < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(res as usize)
    }
}
