//! File operations (`uv_fs_*`) as requests that complete on the loop.
//!
//! Every operation runs off the loop thread and calls back from the loop's
//! phases with its result as a value (`ENOENT`, `EISDIR`, ...): on the work
//! pool ([`Loop::queue_work`]), or, on the io_uring backend, as ring
//! operations where the kernel has the opcode (read, write, their vectored
//! forms, fsync, statx, openat; each probed). `UVRING_FS_IO_URING=0` sends every file operation
//! to the pool (libuv turned io_uring file I/O off by default over kernel
//! bugs; this is the switch to do the same).
//!
//! Files are [`std::fs::File`]s: [`fs_open`](Loop::fs_open) gives one,
//! operations borrow it (`&impl AsFd`), [`fs_close`](Loop::fs_close) takes
//! it. Keep a file open until the operations on it have called back, as in
//! libuv: an fd closed under an operation fails it (`EBADF`), or names
//! whatever file reuses its number.
//!
//! A read or write owns its buffer (a vectored one, its buffers and the
//! iovecs naming them) until it completes (the backend
//! contract's rule 3: memory lent to the kernel stays lent): the `Vec` is
//! moved in and handed back to the callback, whatever the result,
//! cancellation included.

use crate::backend::{Driver, Op, OpKind, Token};
use crate::error::{Error, Result};
use crate::event_loop::{Kind, Loop};
use crate::handle::HandleId;
use crate::sys::fs as sysfs;
use crate::work::{Task, Work};
use slab::Slab;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What kind of file a [`FileStat`] or [`DirEntry`] describes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// Not reported (some file systems leave directory entry types out).
    Unknown,
}

/// A file's metadata, from `statx` (`uv_stat_t`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub kind: FileKind,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub dev: u64,
    pub rdev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Creation time, where the file system records it.
    pub birthtime: Option<SystemTime>,
}

impl FileStat {
    pub fn is_file(&self) -> bool {
        self.kind == FileKind::File
    }
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }
    pub fn is_symlink(&self) -> bool {
        self.kind == FileKind::Symlink
    }
    /// The permission bits (`mode & 0o7777`).
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// One entry of [`fs_scandir`](Loop::fs_scandir) (`uv_dirent_t`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DirEntry {
    pub name: OsString,
    pub kind: FileKind,
}

/// How [`fs_open`](Loop::fs_open) opens (`open(2)` flags; `O_CLOEXEC` is
/// always added). Combine with `|`: `OpenFlags::WRITE_ONLY | OpenFlags::CREATE`.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct OpenFlags(i32);

impl OpenFlags {
    pub const READ_ONLY: OpenFlags = OpenFlags(libc::O_RDONLY);
    pub const WRITE_ONLY: OpenFlags = OpenFlags(libc::O_WRONLY);
    pub const READ_WRITE: OpenFlags = OpenFlags(libc::O_RDWR);
    /// Create the file if it does not exist (with the mode given).
    pub const CREATE: OpenFlags = OpenFlags(libc::O_CREAT);
    /// With `CREATE`: fail with `EEXIST` if it exists.
    pub const EXCLUSIVE: OpenFlags = OpenFlags(libc::O_EXCL);
    pub const TRUNCATE: OpenFlags = OpenFlags(libc::O_TRUNC);
    pub const APPEND: OpenFlags = OpenFlags(libc::O_APPEND);
    /// Fail with `ENOTDIR` unless it is a directory.
    pub const DIRECTORY: OpenFlags = OpenFlags(libc::O_DIRECTORY);
    /// Fail with `ELOOP` if the last component is a symlink.
    pub const NOFOLLOW: OpenFlags = OpenFlags(libc::O_NOFOLLOW);
    pub const SYNC: OpenFlags = OpenFlags(libc::O_SYNC);
    pub const DSYNC: OpenFlags = OpenFlags(libc::O_DSYNC);

    /// The `open(2)` flags.
    pub fn bits(self) -> i32 {
        self.0
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, rhs: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | rhs.0)
    }
}

/// How [`fs_copyfile`](Loop::fs_copyfile) copies.
#[derive(Copy, Clone, Default, PartialEq, Eq, Hash, Debug)]
pub struct CopyFlags(u32);

impl CopyFlags {
    /// Fail with `EEXIST` if the destination exists (`UV_FS_COPYFILE_EXCL`).
    pub const EXCLUSIVE: CopyFlags = CopyFlags(1);

    pub const fn empty() -> CopyFlags {
        CopyFlags(0)
    }
    pub const fn contains(self, other: CopyFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A file operation in flight (`uv_fs_t`): a request, not a handle. Cancel
/// it with [`fs_cancel`](Loop::fs_cancel).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct FsRequest(pub(crate) FsReqId);

#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum FsReqId {
    /// Running on the work pool.
    Pool(Work),
    /// An op in the backend: an entry of `FsState::reqs`.
    Ring { index: u32, generation: u32 },
}

/// Reads `UVRING_FS_IO_URING`: file operations go through io_uring unless
/// it says `0`, `false`, `off` or `no`.
pub(crate) fn fs_io_uring_from_env() -> bool {
    match std::env::var("UVRING_FS_IO_URING") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off" | "no"),
        Err(_) => true,
    }
}

/// A file operation's callback, boxed: `(loop, data, result)`.
type FsCb<D, T> = Box<dyn FnOnce(&mut Loop<D>, &mut D, Result<T>)>;
/// A read's or write's callback, boxed: `(loop, data, count, buffer)`.
type RwCb<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<u8>)>;
/// A vectored read's or write's callback, boxed: `(loop, data, count, buffers)`.
type RwvCb<D> = Box<dyn FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<Vec<u8>>)>;

/// What a file operation in the backend calls back with.
enum RingDone<D> {
    Rw(RwCb<D>),
    Unit(FsCb<D, ()>),
    Stat(FsCb<D, FileStat>),
    Open(FsCb<D, File>),
    Rwv(RwvCb<D>),
}

/// A file operation in the backend, with everything it lends the kernel
/// (contract rule 3): the buffer, the path, the `statx` record. The entry
/// lives until the op's final completion; the loop's drop frees the
/// backend (which ends every op) before this table.
struct RingReq<D> {
    generation: u32,
    token: Option<Token>,
    /// The fd the op works on (for cancel); -1 for a path.
    fd: RawFd,
    cancelled: bool,
    buf: Vec<u8>,
    path: Option<CString>,
    statx: Option<Box<sysfs::StatxBuf>>,
    /// A vectored read's or write's buffers and the iovecs naming them.
    vectored: Option<Box<Vectored>>,
    done: RingDone<D>,
}

/// What a vectored read or write lends the kernel: the buffers, and the
/// iovecs pointing into their heap memory (which moves with neither).
struct Vectored {
    bufs: Vec<Vec<u8>>,
    iov: Vec<sysfs::IoVec>,
}

/// A loop's file operations in the backend.
pub(crate) struct FsState<D> {
    /// File operations may go through the backend (`UVRING_FS_IO_URING`).
    ring: bool,
    /// The internal handle that owns the ops.
    owner: Option<HandleId>,
    reqs: Slab<RingReq<D>>,
    next_generation: u32,
    /// `statx` records of finished stats, reused.
    #[allow(clippy::vec_box)]
    statx_spare: Vec<Box<sysfs::StatxBuf>>,
}

impl<D> FsState<D> {
    pub(crate) fn new(ring: bool) -> FsState<D> {
        FsState { ring, owner: None, reqs: Slab::new(), next_generation: 1, statx_spare: Vec::new() }
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().to_owned().into_vec()).map_err(|_| Error::EINVAL)
}

/// A read or write on the pool: the buffer travels with the task and comes
/// back with it, run or cancelled.
struct RwTask {
    fd: RawFd,
    buf: Vec<u8>,
    offset: Option<u64>,
    write: bool,
}

impl Task for RwTask {
    type Output = Result<usize>;
    fn run(&mut self) -> Result<usize> {
        if self.write {
            sysfs::write_at(self.fd, &self.buf, self.offset)
        } else {
            sysfs::read_at(self.fd, &mut self.buf, self.offset)
        }
    }
}

fn scandir(path: &Path) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let kind = match e.file_type() {
            Ok(t) if t.is_file() => FileKind::File,
            Ok(t) if t.is_dir() => FileKind::Dir,
            Ok(t) if t.is_symlink() => FileKind::Symlink,
            Ok(t) => {
                use std::os::unix::fs::FileTypeExt;
                if t.is_fifo() {
                    FileKind::Fifo
                } else if t.is_socket() {
                    FileKind::Socket
                } else if t.is_char_device() {
                    FileKind::CharDevice
                } else if t.is_block_device() {
                    FileKind::BlockDevice
                } else {
                    FileKind::Unknown
                }
            }
            Err(_) => FileKind::Unknown,
        };
        out.push(DirEntry { name: e.file_name(), kind });
    }
    // As libuv's scandir: sorted by name, bytewise.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn copyfile(from: &Path, to: &Path, flags: CopyFlags) -> Result<u64> {
    if !flags.contains(CopyFlags::EXCLUSIVE) {
        return Ok(std::fs::copy(from, to)?);
    }
    let mut src = File::open(from)?;
    let perm = src.metadata()?.permissions();
    // std opens with O_CLOEXEC.
    let mut dst = std::fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    let n = std::io::copy(&mut src, &mut dst)?;
    dst.set_permissions(perm)?;
    Ok(n)
}

impl<D> Loop<D> {
    /// The internal handle that owns file ops in the backend.
    fn fs_owner(&mut self) -> Result<HandleId> {
        if let Some(h) = self.fs.owner {
            return Ok(h);
        }
        let h = self.insert(Kind::FileOps)?;
        self.set_internal(h);
        self.fs.owner = Some(h);
        Ok(h)
    }

    /// A file operation in the backend completed: its callback runs with
    /// the result and gets back what it lent.
    pub(crate) fn on_file_op(&mut self, req: u32, token: Token, res: i32, d: &mut D) {
        let index = req as usize;
        if !self.fs.reqs.get(index).is_some_and(|r| r.token == Some(token)) {
            if token.kind() == Some(OpKind::OpenAt) && res >= 0 {
                crate::sys::close(res);
            }
            return;
        }
        let r = self.fs.reqs.remove(index);
        self.active_reqs -= 1;
        let status = if res < 0 { Err(Error::from_neg(res)) } else { Ok(res) };
        match r.done {
            RingDone::Rw(cb) => cb(self, d, status.map(|n| n as usize), r.buf),
            RingDone::Unit(cb) => cb(self, d, status.map(|_| ())),
            RingDone::Stat(cb) => {
                let stat = r.statx.as_deref().map(sysfs::file_stat);
                if let Some(b) = r.statx {
                    self.fs.statx_spare.push(b);
                }
                cb(self, d, status.and_then(|_| stat.ok_or(Error::EINVAL)))
            }
            RingDone::Rwv(cb) => {
                cb(self, d, status.map(|n| n as usize), r.vectored.map(|v| v.bufs).unwrap_or_default())
            }
            RingDone::Open(cb) => {
                // SAFETY: a successful openat's result is a new fd that
                // the loop owns (contract rule 4) and hands on here.
                let file = status.map(|fd| File::from(unsafe { crate::sys::owned(fd) }));
                cb(self, d, file)
            }
        }
    }
}

impl<D: 'static> Loop<D> {
    /// Runs `op` on the pool; `cb` gets its result (`ECANCELED` if
    /// cancelled first).
    fn fs_pool<T: Send + 'static>(
        &mut self,
        op: impl FnOnce() -> Result<T> + Send + 'static,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<T>) + 'static,
    ) -> Result<FsRequest> {
        let w = self.queue_work(op, move |lp, d, r| cb(lp, d, r.and_then(|r| r)))?;
        Ok(FsRequest(FsReqId::Pool(w)))
    }

    /// Cancels a file operation (`uv_cancel`): on the work pool, one that
    /// has not started (`EBUSY` otherwise); in io_uring, any (the kernel
    /// ends it soon, or it finishes first). Its callback runs from the loop
    /// with `ECANCELED` or its real result (a read or write gets its buffer
    /// back either way). A request whose callback ran is
    /// [`Error::STALE_REQUEST`]; cancelling twice is `EBUSY`.
    pub fn fs_cancel(&mut self, req: FsRequest) -> Result<()> {
        match req.0 {
            FsReqId::Pool(w) => self.cancel_work(w),
            FsReqId::Ring { index, generation } => {
                let r = match self.fs.reqs.get_mut(index as usize) {
                    Some(r) if r.generation == generation => r,
                    _ => return Err(Error::STALE_REQUEST),
                };
                if r.cancelled {
                    return Err(Error::EBUSY);
                }
                r.cancelled = true;
                if let Some(token) = r.token {
                    let fd = r.fd;
                    self.driver.cancel(fd, token);
                }
                Ok(())
            }
        }
    }

    /// Whether file operations go through io_uring on this loop (for the
    /// opcodes the kernel has): the backend is io_uring and
    /// `UVRING_FS_IO_URING` (or [`LoopOptions::fs_io_uring`]) did not turn
    /// it off.
    ///
    /// [`LoopOptions::fs_io_uring`]: crate::LoopOptions::fs_io_uring
    pub fn fs_io_uring(&self) -> bool {
        self.fs.ring && self.driver.supports(OpKind::FileRead)
    }

    /// Whether ops of `kind` go through the backend.
    fn fs_ring(&self, kind: OpKind) -> bool {
        self.fs.ring && self.driver.supports(kind)
    }

    /// Starts a file operation in the backend: the request is stored first
    /// (what it lends gets its final address), then `op` is built from it
    /// and submitted. `Err` gives the request back (the backend refused:
    /// the caller runs it on the pool instead).
    fn fs_ring_start(
        &mut self,
        req: RingReq<D>,
        op: impl FnOnce(&mut RingReq<D>) -> Op<'static>,
    ) -> std::result::Result<FsRequest, RingReq<D>> {
        let owner = match self.fs_owner() {
            Ok(h) => h,
            Err(_) => return Err(req),
        };
        let generation = self.fs.next_generation;
        self.fs.next_generation = generation.wrapping_add(1).max(1);
        let index = self.fs.reqs.insert(RingReq { generation, ..req });
        let op = op(&mut self.fs.reqs[index]);
        // SAFETY: what `op` points at (the buffer's heap memory, the path,
        // the boxed statx record) is owned by request `index`, which is
        // removed only by the op's final completion (`on_file_op`), or by
        // the loop's drop after the backend has ended every op; nothing
        // else touches it meanwhile.
        match unsafe { self.submit_op_req(owner, index as u32, op) } {
            Ok(token) => {
                self.fs.reqs[index].token = Some(token);
                self.active_reqs += 1;
                Ok(FsRequest(FsReqId::Ring { index: index as u32, generation }))
            }
            Err(_) => Err(self.fs.reqs.remove(index)),
        }
    }

    fn ring_req(fd: RawFd, done: RingDone<D>) -> RingReq<D> {
        RingReq {
            generation: 0,
            token: None,
            fd,
            cancelled: false,
            buf: Vec::new(),
            path: None,
            statx: None,
            vectored: None,
            done,
        }
    }

    fn statx_box(&mut self) -> Box<sysfs::StatxBuf> {
        self.fs.statx_spare.pop().unwrap_or_else(|| Box::new(sysfs::statx_buf()))
    }

    /// A stat through the backend, or the pool.
    fn fs_statx(
        &mut self,
        fd: RawFd,
        path: Option<CString>,
        flags: i32,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        if self.fs_ring(OpKind::Statx) {
            let mut req = Self::ring_req(fd, RingDone::Stat(Box::new(cb)));
            req.statx = Some(self.statx_box());
            req.path = path;
            let dirfd = if fd >= 0 { fd } else { sysfs::AT_FDCWD };
            let started = self.fs_ring_start(req, |r| Op::Statx {
                dirfd,
                path: r.path.as_deref().unwrap_or(c"").as_ptr(),
                flags,
                buf: r.statx.as_deref_mut().map_or(std::ptr::null_mut(), |b| b as *mut _),
            });
            match started {
                Ok(req) => return Ok(req),
                Err(RingReq { done: RingDone::Stat(cb), path, .. }) => return self.fs_statx_pool(fd, path, flags, cb),
                Err(_) => return Err(Error::INVALID_STATE),
            }
        }
        self.fs_statx_pool(fd, path, flags, cb)
    }

    fn fs_statx_pool(
        &mut self,
        fd: RawFd,
        path: Option<CString>,
        flags: i32,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_pool(
            move || {
                let mut buf = sysfs::statx_buf();
                let dirfd = if fd >= 0 { fd } else { sysfs::AT_FDCWD };
                sysfs::statx(dirfd, path.as_deref().unwrap_or(c""), flags, &mut buf)?;
                Ok(sysfs::file_stat(&buf))
            },
            cb,
        )
    }

    /// Opens `path` (`uv_fs_open`); `mode` applies when the file is created.
    pub fn fs_open(
        &mut self,
        path: impl AsRef<Path>,
        flags: OpenFlags,
        mode: u32,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<File>) + 'static,
    ) -> Result<FsRequest> {
        let path = c_path(path.as_ref())?;
        if self.fs_ring(OpKind::OpenAt) {
            let mut req = Self::ring_req(-1, RingDone::Open(Box::new(cb)));
            req.path = Some(path);
            let flags = flags.0 | sysfs::O_CLOEXEC;
            let started = self.fs_ring_start(req, |r| Op::OpenAt {
                path: r.path.as_deref().unwrap_or(c"").as_ptr(),
                flags,
                mode,
            });
            return match started {
                Ok(req) => Ok(req),
                Err(RingReq { done: RingDone::Open(cb), path: Some(path), .. }) => {
                    self.fs_pool(move || Ok(File::from(sysfs::open(&path, flags, mode)?)), cb)
                }
                Err(_) => Err(Error::INVALID_STATE),
            };
        }
        self.fs_pool(move || Ok(File::from(sysfs::open(&path, flags.0, mode)?)), cb)
    }

    /// Closes `file` (`uv_fs_close`), reporting the error `close` finds
    /// (a delayed write-back's `EIO`, for example).
    pub fn fs_close(
        &mut self,
        file: File,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_pool(move || sysfs::close_checked(file.into()), cb)
    }

    /// Reads into `buf` (its whole length) at `offset`, or at the file
    /// position for `None` (`uv_fs_read`); `cb` gets the count (0 at end of
    /// file) and the buffer back.
    pub fn fs_read(
        &mut self,
        file: &impl AsFd,
        buf: Vec<u8>,
        offset: Option<u64>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<u8>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_rw(file.as_fd().as_raw_fd(), buf, offset, false, cb)
    }

    /// Writes `buf` at `offset`, or at the file position for `None`
    /// (`uv_fs_write`); `cb` gets the count (perhaps short) and the buffer
    /// back.
    pub fn fs_write(
        &mut self,
        file: &impl AsFd,
        buf: Vec<u8>,
        offset: Option<u64>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<u8>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_rw(file.as_fd().as_raw_fd(), buf, offset, true, cb)
    }

    fn fs_rw(
        &mut self,
        fd: RawFd,
        buf: Vec<u8>,
        offset: Option<u64>,
        write: bool,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<u8>) + 'static,
    ) -> Result<FsRequest> {
        let kind = if write { OpKind::FileWrite } else { OpKind::FileRead };
        if self.fs_ring(kind) {
            let mut req = Self::ring_req(fd, RingDone::Rw(Box::new(cb)));
            req.buf = buf;
            let started = self.fs_ring_start(req, |r| {
                let len = r.buf.len();
                if write {
                    Op::FileWrite { fd, ptr: r.buf.as_ptr(), len, offset }
                } else {
                    Op::FileRead { fd, ptr: r.buf.as_mut_ptr(), len, offset }
                }
            });
            return match started {
                Ok(req) => Ok(req),
                Err(RingReq { done: RingDone::Rw(cb), buf, .. }) => self.fs_rw_pool(fd, buf, offset, write, cb),
                Err(_) => Err(Error::INVALID_STATE),
            };
        }
        self.fs_rw_pool(fd, buf, offset, write, cb)
    }

    fn fs_rw_pool(
        &mut self,
        fd: RawFd,
        buf: Vec<u8>,
        offset: Option<u64>,
        write: bool,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<u8>) + 'static,
    ) -> Result<FsRequest> {
        let task = RwTask { fd, buf, offset, write };
        let w = self.queue_task(task, move |lp, d, task, r| cb(lp, d, r.and_then(|r| r), task.buf))?;
        Ok(FsRequest(FsReqId::Pool(w)))
    }

    /// Flushes the file's data and metadata to its device (`uv_fs_fsync`).
    pub fn fs_fsync(
        &mut self,
        file: &impl AsFd,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_sync(file.as_fd().as_raw_fd(), false, cb)
    }

    /// Flushes the file's data (and the metadata needed to read it back)
    /// (`uv_fs_fdatasync`).
    pub fn fs_fdatasync(
        &mut self,
        file: &impl AsFd,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_sync(file.as_fd().as_raw_fd(), true, cb)
    }

    fn fs_sync(
        &mut self,
        fd: RawFd,
        data_only: bool,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        if self.fs_ring(OpKind::Fsync) {
            let req = Self::ring_req(fd, RingDone::Unit(Box::new(cb)));
            return match self.fs_ring_start(req, |_| Op::Fsync { fd, data_only }) {
                Ok(req) => Ok(req),
                Err(RingReq { done: RingDone::Unit(cb), .. }) => self.fs_pool(move || sysfs::fsync(fd, data_only), cb),
                Err(_) => Err(Error::INVALID_STATE),
            };
        }
        self.fs_pool(move || sysfs::fsync(fd, data_only), cb)
    }

    /// Sets the file's length (`uv_fs_ftruncate`).
    pub fn fs_ftruncate(
        &mut self,
        file: &impl AsFd,
        len: u64,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        let fd = file.as_fd().as_raw_fd();
        self.fs_pool(move || sysfs::ftruncate(fd, len), cb)
    }

    /// The metadata of `path`, following symlinks (`uv_fs_stat`).
    pub fn fs_stat(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        let path = c_path(path.as_ref())?;
        self.fs_statx(-1, Some(path), 0, cb)
    }

    /// The metadata of `path` itself, a symlink included (`uv_fs_lstat`).
    pub fn fs_lstat(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        let path = c_path(path.as_ref())?;
        self.fs_statx(-1, Some(path), sysfs::AT_SYMLINK_NOFOLLOW, cb)
    }

    /// The metadata of an open file (`uv_fs_fstat`).
    pub fn fs_fstat(
        &mut self,
        file: &impl AsFd,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        let fd = file.as_fd().as_raw_fd();
        self.fs_statx(fd, None, sysfs::AT_EMPTY_PATH, cb)
    }

    /// Removes a file or symlink (`uv_fs_unlink`).
    pub fn fs_unlink(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        let path = path.as_ref().to_owned();
        self.fs_pool(move || Ok(std::fs::remove_file(path)?), cb)
    }

    /// Renames `from` to `to`, replacing `to` (`uv_fs_rename`).
    pub fn fs_rename(
        &mut self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        let (from, to) = (from.as_ref().to_owned(), to.as_ref().to_owned());
        self.fs_pool(move || Ok(std::fs::rename(from, to)?), cb)
    }

    /// Makes a directory with permission bits `mode` (`uv_fs_mkdir`).
    pub fn fs_mkdir(
        &mut self,
        path: impl AsRef<Path>,
        mode: u32,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        use std::os::unix::fs::DirBuilderExt;
        let path = path.as_ref().to_owned();
        self.fs_pool(move || Ok(std::fs::DirBuilder::new().mode(mode).create(path)?), cb)
    }

    /// Removes an empty directory (`uv_fs_rmdir`).
    pub fn fs_rmdir(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        let path = path.as_ref().to_owned();
        self.fs_pool(move || Ok(std::fs::remove_dir(path)?), cb)
    }

    /// The entries of a directory, `.` and `..` left out, sorted by name
    /// (`uv_fs_scandir`).
    pub fn fs_scandir(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<Vec<DirEntry>>) + 'static,
    ) -> Result<FsRequest> {
        let path = path.as_ref().to_owned();
        self.fs_pool(move || scandir(&path), cb)
    }

    /// The target of a symlink (`uv_fs_readlink`).
    pub fn fs_readlink(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<PathBuf>) + 'static,
    ) -> Result<FsRequest> {
        let path = path.as_ref().to_owned();
        self.fs_pool(move || Ok(std::fs::read_link(path)?), cb)
    }

    /// Makes `link` a symlink to `target` (`uv_fs_symlink`).
    pub fn fs_symlink(
        &mut self,
        target: impl AsRef<Path>,
        link: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<()>) + 'static,
    ) -> Result<FsRequest> {
        let (target, link) = (target.as_ref().to_owned(), link.as_ref().to_owned());
        self.fs_pool(move || Ok(std::os::unix::fs::symlink(target, link)?), cb)
    }

    /// Copies the contents and permission bits of `from` to `to`
    /// (`uv_fs_copyfile`; the kernel copies in place where it can); `cb`
    /// gets the bytes copied.
    pub fn fs_copyfile(
        &mut self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        flags: CopyFlags,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<u64>) + 'static,
    ) -> Result<FsRequest> {
        let (from, to) = (from.as_ref().to_owned(), to.as_ref().to_owned());
        self.fs_pool(move || copyfile(&from, &to, flags), cb)
    }
}

/// A vectored read or write on the pool: the buffers travel with the task
/// and come back with it, run or cancelled.
struct RwvTask {
    fd: RawFd,
    bufs: Vec<Vec<u8>>,
    offset: Option<u64>,
    write: bool,
}

impl Task for RwvTask {
    type Output = Result<usize>;
    fn run(&mut self) -> Result<usize> {
        if self.write {
            sysfs::writev_at(self.fd, &self.bufs, self.offset)
        } else {
            sysfs::readv_at(self.fd, &mut self.bufs, self.offset)
        }
    }
}

/// Vectored reads and writes (`uv_fs_read`/`uv_fs_write` with several
/// buffers).
impl<D: 'static> Loop<D> {
    /// Reads into `bufs`, filling each (its whole length) in order before
    /// the next, at `offset`, or at the file position for `None`
    /// (`uv_fs_read` with several buffers: `preadv`; io_uring's `READV`).
    /// `cb` gets the total count (0 at end of file; a short count leaves the
    /// later buffers' tails untouched) and the buffers back, whatever the
    /// result: they are the operation's until it completes. At most
    /// 1024 buffers (`IOV_MAX`; `EINVAL` beyond).
    pub fn fs_read_vectored(
        &mut self,
        file: &impl AsFd,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<Vec<u8>>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_rwv(file.as_fd().as_raw_fd(), bufs, offset, false, cb)
    }

    /// Writes `bufs` in order, as one write, at `offset`, or at the file
    /// position for `None` (`uv_fs_write` with several buffers:
    /// `pwritev`; io_uring's `WRITEV`). `cb` gets the count (perhaps short)
    /// and the buffers back. At most 1024 buffers (`EINVAL` beyond).
    pub fn fs_write_vectored(
        &mut self,
        file: &impl AsFd,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<Vec<u8>>) + 'static,
    ) -> Result<FsRequest> {
        self.fs_rwv(file.as_fd().as_raw_fd(), bufs, offset, true, cb)
    }

    fn fs_rwv(
        &mut self,
        fd: RawFd,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        write: bool,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<Vec<u8>>) + 'static,
    ) -> Result<FsRequest> {
        if bufs.len() > sysfs::IOV_MAX {
            return Err(Error::EINVAL);
        }
        let kind = if write { OpKind::FileWritev } else { OpKind::FileReadv };
        if self.fs_ring(kind) {
            let mut req = Self::ring_req(fd, RingDone::Rwv(Box::new(cb)));
            let mut bufs = bufs;
            let iov = sysfs::iovecs(&mut bufs);
            req.vectored = Some(Box::new(Vectored { bufs, iov }));
            let started = self.fs_ring_start(req, |r| {
                let (iov, iovcnt) =
                    r.vectored.as_ref().map_or((std::ptr::null(), 0), |v| (v.iov.as_ptr(), v.iov.len()));
                if write {
                    Op::FileWritev { fd, iov, iovcnt, offset }
                } else {
                    Op::FileReadv { fd, iov, iovcnt, offset }
                }
            });
            return match started {
                Ok(req) => Ok(req),
                Err(RingReq { done: RingDone::Rwv(cb), vectored, .. }) => {
                    self.fs_rwv_pool(fd, vectored.map(|v| v.bufs).unwrap_or_default(), offset, write, cb)
                }
                Err(_) => Err(Error::INVALID_STATE),
            };
        }
        self.fs_rwv_pool(fd, bufs, offset, write, cb)
    }

    fn fs_rwv_pool(
        &mut self,
        fd: RawFd,
        bufs: Vec<Vec<u8>>,
        offset: Option<u64>,
        write: bool,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<usize>, Vec<Vec<u8>>) + 'static,
    ) -> Result<FsRequest> {
        let task = RwvTask { fd, bufs, offset, write };
        let w = self.queue_task(task, move |lp, d, task, r| cb(lp, d, r.and_then(|r| r), task.bufs))?;
        Ok(FsRequest(FsReqId::Pool(w)))
    }
}
