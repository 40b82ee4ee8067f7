//! File operations (`uv_fs_*`) as requests that complete on the loop.
//!
//! Every operation runs off the loop thread and calls back from the loop's
//! phases with its result as a value (`ENOENT`, `EISDIR`, ...): on the work
//! pool ([`Loop::queue_work`]), or, on the io_uring backend, as ring
//! operations where the kernel has the opcode (read, write, fsync, statx,
//! openat; each probed). `UVRING_FS_IO_URING=0` sends every file operation
//! to the pool (libuv turned io_uring file I/O off by default over kernel
//! bugs; this is the switch to do the same).
//!
//! Files are [`std::fs::File`]s: [`fs_open`](Loop::fs_open) gives one,
//! operations borrow it (`&impl AsFd`), [`fs_close`](Loop::fs_close) takes
//! it. Keep a file open until the operations on it have called back, as in
//! libuv: an fd closed under an operation fails it (`EBADF`), or names
//! whatever file reuses its number.
//!
//! A read or write owns its buffer until it completes (the backend
//! contract's rule 3: memory lent to the kernel stays lent): the `Vec` is
//! moved in and handed back to the callback, whatever the result,
//! cancellation included.

use crate::error::{Error, Result};
use crate::event_loop::Loop;
use crate::sys::fs as sysfs;
use crate::work::{Task, Work};
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

fn stat_path(path: &CString, flags: i32) -> Result<FileStat> {
    let mut buf = sysfs::statx_buf();
    sysfs::statx(sysfs::AT_FDCWD, path, flags, &mut buf)?;
    Ok(sysfs::file_stat(&buf))
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

    /// Cancels a file operation that has not started (`uv_cancel`): its
    /// callback runs from the loop with `ECANCELED` (a read or write gets
    /// its buffer back). `EBUSY` if it is under way; a stale request is
    /// [`Error::STALE_REQUEST`].
    pub fn fs_cancel(&mut self, req: FsRequest) -> Result<()> {
        match req.0 {
            FsReqId::Pool(w) => self.cancel_work(w),
        }
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
        self.fs_pool(move || stat_path(&path, 0), cb)
    }

    /// The metadata of `path` itself, a symlink included (`uv_fs_lstat`).
    pub fn fs_lstat(
        &mut self,
        path: impl AsRef<Path>,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        let path = c_path(path.as_ref())?;
        self.fs_pool(move || stat_path(&path, sysfs::AT_SYMLINK_NOFOLLOW), cb)
    }

    /// The metadata of an open file (`uv_fs_fstat`).
    pub fn fs_fstat(
        &mut self,
        file: &impl AsFd,
        cb: impl FnOnce(&mut Loop<D>, &mut D, Result<FileStat>) + 'static,
    ) -> Result<FsRequest> {
        let fd = file.as_fd().as_raw_fd();
        self.fs_pool(
            move || {
                let mut buf = sysfs::statx_buf();
                sysfs::statx(fd, c"", sysfs::AT_EMPTY_PATH, &mut buf)?;
                Ok(sysfs::file_stat(&buf))
            },
            cb,
        )
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
