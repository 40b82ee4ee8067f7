//! File system calls for file operations: blocking (the loop runs them on
//! its work pool) except where the io_uring backend does them itself, and
//! the conversion of a kernel `statx` record.

use crate::error::{Error, Result};
use crate::fs::{FileKind, FileStat};
use crate::sys::{owned, syscall};
use std::ffi::CStr;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `statx` is asked for: the basic fields and the birth time.
pub const STATX_MASK: u32 = libc::STATX_BASIC_STATS | libc::STATX_BTIME;
/// `AT_FDCWD`: paths relative to the working directory.
pub const AT_FDCWD: RawFd = libc::AT_FDCWD;
/// `statx` flags: don't follow a final symlink (`lstat`).
pub const AT_SYMLINK_NOFOLLOW: i32 = libc::AT_SYMLINK_NOFOLLOW;
/// `statx` flags: the fd itself (`fstat`), with an empty path.
pub const AT_EMPTY_PATH: i32 = libc::AT_EMPTY_PATH;
/// Every open gets it: no fd leaks into spawned children.
pub const O_CLOEXEC: i32 = libc::O_CLOEXEC;

/// A `statx` record for the kernel to fill.
pub type StatxBuf = libc::statx;

/// A zeroed `statx` record.
pub fn statx_buf() -> StatxBuf {
    // SAFETY: statx is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// `openat(AT_FDCWD, path, flags | O_CLOEXEC, mode)`.
pub fn open(path: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
    let fd = syscall!(openat(AT_FDCWD, path.as_ptr(), flags | O_CLOEXEC, mode as libc::c_uint))?;
    // SAFETY: openat returned a fresh fd that nobody else owns.
    Ok(unsafe { owned(fd) })
}

/// `pread` at `offset`, or `read` at the file position for `None`.
pub fn read_at(fd: RawFd, buf: &mut [u8], offset: Option<u64>) -> Result<usize> {
    let n = match offset {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        Some(off) => syscall!(pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t))?,
        // SAFETY: as above.
        None => syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len()))?,
    };
    Ok(n as usize)
}

/// One iovec, as a vectored file op hands the kernel.
pub type IoVec = libc::iovec;
/// Most buffers in one vectored read or write (`IOV_MAX` on Linux).
pub const IOV_MAX: usize = 1024;

/// An iovec per buffer of `bufs` (each its whole length), for a vectored
/// read or write. The iovecs point into the buffers' heap memory, which
/// stays put while the `Vec`s are not resized.
pub fn iovecs(bufs: &mut [Vec<u8>]) -> Vec<IoVec> {
    bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect()
}

/// `preadv` at `offset`, or `readv` at the file position for `None`,
/// filling `bufs` in order.
pub fn readv_at(fd: RawFd, bufs: &mut [Vec<u8>], offset: Option<u64>) -> Result<usize> {
    let iov = iovecs(bufs);
    let cnt = iov.len().min(IOV_MAX) as libc::c_int;
    let n = match offset {
        // SAFETY: each iovec describes a buffer of `bufs`, valid for writes
        // and borrowed mutably for the call.
        Some(off) => syscall!(preadv(fd, iov.as_ptr(), cnt, off as libc::off_t))?,
        // SAFETY: as above.
        None => syscall!(readv(fd, iov.as_ptr(), cnt))?,
    };
    Ok(n as usize)
}

/// `pwritev` at `offset`, or `writev` at the file position for `None`,
/// from `bufs` in order.
pub fn writev_at(fd: RawFd, bufs: &[Vec<u8>], offset: Option<u64>) -> Result<usize> {
    let iov: Vec<IoVec> =
        bufs.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() }).collect();
    let cnt = iov.len().min(IOV_MAX) as libc::c_int;
    let n = match offset {
        // SAFETY: each iovec describes a buffer of `bufs`, valid for reads
        // for the call (the kernel does not write through them).
        Some(off) => syscall!(pwritev(fd, iov.as_ptr(), cnt, off as libc::off_t))?,
        // SAFETY: as above.
        None => syscall!(writev(fd, iov.as_ptr(), cnt))?,
    };
    Ok(n as usize)
}

/// `pwrite` at `offset`, or `write` at the file position for `None`.
pub fn write_at(fd: RawFd, buf: &[u8], offset: Option<u64>) -> Result<usize> {
    let n = match offset {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        Some(off) => syscall!(pwrite(fd, buf.as_ptr().cast(), buf.len(), off as libc::off_t))?,
        // SAFETY: as above.
        None => syscall!(write(fd, buf.as_ptr().cast(), buf.len()))?,
    };
    Ok(n as usize)
}

/// `fsync`, or `fdatasync` with `data_only`.
pub fn fsync(fd: RawFd, data_only: bool) -> Result<()> {
    if data_only {
        syscall!(fdatasync(fd))?;
    } else {
        syscall!(fsync(fd))?;
    }
    Ok(())
}

/// `ftruncate`.
pub fn ftruncate(fd: RawFd, len: u64) -> Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| Error::EINVAL)?;
    syscall!(ftruncate(fd, len))?;
    Ok(())
}

/// `close`, reporting its error (`EIO` from a delayed write-back, `EBADF`).
pub fn close_checked(fd: OwnedFd) -> Result<()> {
    use std::os::fd::IntoRawFd;
    syscall!(close(fd.into_raw_fd()))?;
    Ok(())
}

/// `statx(dirfd, path, flags)` into `buf`.
pub fn statx(dirfd: RawFd, path: &CStr, flags: i32, buf: &mut StatxBuf) -> Result<()> {
    // SAFETY: `path` is NUL-terminated and `buf` a valid statx to fill.
    syscall!(statx(dirfd, path.as_ptr(), flags | libc::AT_STATX_SYNC_AS_STAT, STATX_MASK, buf))?;
    Ok(())
}

fn time(t: libc::statx_timestamp) -> SystemTime {
    let d = Duration::new(t.tv_sec.unsigned_abs(), t.tv_nsec);
    if t.tv_sec >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// The file type bits of a mode.
pub fn kind_of_mode(mode: u32) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        _ => FileKind::Unknown,
    }
}

/// A filled `statx` record as a [`FileStat`].
pub fn file_stat(st: &StatxBuf) -> FileStat {
    let mode = st.stx_mode as u32;
    FileStat {
        kind: kind_of_mode(mode),
        mode,
        dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
        rdev: libc::makedev(st.stx_rdev_major, st.stx_rdev_minor),
        ino: st.stx_ino,
        nlink: st.stx_nlink as u64,
        uid: st.stx_uid,
        gid: st.stx_gid,
        size: st.stx_size,
        blksize: st.stx_blksize as u64,
        blocks: st.stx_blocks,
        atime: time(st.stx_atime),
        mtime: time(st.stx_mtime),
        ctime: time(st.stx_ctime),
        birthtime: (st.stx_mask & libc::STATX_BTIME != 0).then(|| time(st.stx_btime)),
    }
}
